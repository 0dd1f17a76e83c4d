package auth

import (
	"sync"
	"time"
)

// MQTT 5 CONNACK reason codes an Authenticator returns. A session speaking
// MQTT 3.1.1 maps them to its return codes: 0x85 to 0x02 (identifier
// rejected), 0x86 to 0x04 (bad user name or password), 0x87 to 0x05 (not
// authorized), 0x88 and 0x89 to 0x03 (server unavailable).
const (
	ReasonSuccess               byte = 0x00
	ReasonClientIDNotValid      byte = 0x85
	ReasonBadUserNameOrPassword byte = 0x86
	ReasonNotAuthorized         byte = 0x87
	ReasonServerUnavailable     byte = 0x88
	ReasonServerBusy            byte = 0x89
)

// Request is what an Authenticator knows about a CONNECT.
//
// The byte slices and strings may be views of a connection's read buffer:
// an Authenticator must not keep them after Authenticate returns.
type Request struct {
	ClientID string
	Username string
	Password []byte
	// Peer, when set, gives the device's address. It is asked only by an
	// Authenticator that wants it (Remote): reading it from the socket is
	// a system call, which most CONNECTs need not pay.
	Peer Peer
	TLS  bool // the connection arrived over TLS
	// PeerIdentity holds the client ids a client certificate the TLS layer
	// verified names: its subject common name and the ids of its URI SANs
	// urn:dualgate:client:<id> (never its DNS SANs); empty otherwise. See
	// CertNamesClient.
	PeerIdentity []string
	// ChannelBinding is keying material exported from the TLS connection
	// the CONNECT arrived on (RFC 5705/9266, see ExporterLabel); nil on
	// plain. A token bound to it cannot be replayed on another connection.
	ChannelBinding []byte
	// Now is the time of the CONNECT by the caller's clock. When zero, the
	// Authenticator uses its own clock.
	Now time.Time
}

// Peer is the connection a CONNECT arrived on, as far as an Authenticator
// may ask it.
type Peer interface {
	// Remote is the device's address, host:port ("" once the connection
	// is gone).
	Remote() string
}

// Remote is the device's address, host:port, or "" when unknown.
func (r *Request) Remote() string {
	if r.Peer == nil {
		return ""
	}
	return r.Peer.Remote()
}

// Result is the verdict on a CONNECT.
type Result struct {
	OK bool
	// Reason is the MQTT 5 CONNACK reason code: ReasonSuccess when OK,
	// otherwise one of the other Reason constants.
	Reason byte
	// Msg says why, for the operator's log. It never holds a secret, but it
	// may tell an unknown client id from a bad token: do not send it to the
	// device (as a CONNACK reason string), where it would let anyone probe
	// which client ids exist.
	Msg string
	// Proven reports that the CONNECT proved, on this TLS connection, that
	// the device holds the client id's credential in a way a capture of
	// other traffic cannot replay (a channel-bound token). Only an OK
	// Result over TLS can be Proven.
	Proven bool
	// Pending, when not nil, means the verdict waits on a remote check
	// (the replay memory the gateways of a cluster share, SharedReplay):
	// the other fields are unset, and Pending.Then delivers the verdict.
	Pending *Pending
}

// Pending is a verdict that waits on a remote check. Its answer comes
// exactly once, from any goroutine, within the bound of the check (a
// SharedReplay answers by its timeout, refusing when it has no answer).
type Pending struct {
	mu      sync.Mutex
	settled bool
	res     Result
	then    func(Result)
}

// Then calls done with the verdict, once, from any goroutine: at once
// (before Then returns) when the verdict is already known. Call it once.
func (p *Pending) Then(done func(Result)) {
	p.mu.Lock()
	if p.settled {
		res := p.res
		p.mu.Unlock()
		done(res)
		return
	}
	p.then = done
	p.mu.Unlock()
}

// settle gives the verdict; a second call does nothing.
func (p *Pending) settle(res Result) {
	p.mu.Lock()
	if p.settled {
		p.mu.Unlock()
		return
	}
	p.settled, p.res = true, res
	done := p.then
	p.then = nil
	p.mu.Unlock()
	if done != nil {
		done(res)
	}
}

// Authenticator decides whether a CONNECT is accepted. Implementations are
// safe for concurrent use: every event loop and TLS connection calls the
// same one. Authenticate never blocks: a verdict that needs a remote check
// is returned Pending (Result.Pending).
type Authenticator interface {
	Authenticate(req *Request) Result
}

// AuthenticatorFunc adapts a function to the Authenticator interface.
type AuthenticatorFunc func(req *Request) Result

// Authenticate returns f(req).
func (f AuthenticatorFunc) Authenticate(req *Request) Result { return f(req) }

// AllowAll returns an Authenticator that accepts every CONNECT, for
// development. It looks at nothing, not even the client id.
func AllowAll() Authenticator { return allowAll{} }

type allowAll struct{}

func (allowAll) Authenticate(*Request) Result {
	return Result{OK: true, Reason: ReasonSuccess, Msg: "allow-all"}
}
