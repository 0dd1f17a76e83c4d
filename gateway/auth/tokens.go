package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// Defaults of the replay cache's bounds: DefaultReplayPerDevice unbound
// tokens per client id within its window (a device connecting on plain a
// few times a minute uses two or three), and DefaultReplayCapacity in all,
// some 60 MB at most.
const (
	DefaultReplayPerDevice = 32
	DefaultReplayCapacity  = 1 << 20
)

// TokenConfig configures Tokens. The zero value of every field but Secrets
// and MasterKey means its default.
type TokenConfig struct {
	// Secrets maps a client id to its device secret (at least MinSecretLen
	// bytes). NewTokens copies the map and the secrets.
	Secrets map[string][]byte
	// MasterKey, when set (at least MinSecretLen bytes), gives every client
	// id missing from Secrets the secret control.DeriveSecret(MasterKey, id), so a
	// fleet needs no per-device file. Secrets wins where both apply.
	MasterKey []byte
	// Window is how far a token's time may lie from the gateway's clock,
	// either way; rounded up to whole seconds. Default DefaultWindow.
	Window time.Duration
	// AcceptClientCert accepts, without a token, a TLS CONNECT whose
	// verified client certificate names its client id (CertNamesClient:
	// the subject common name or a urn:dualgate:client:<id> URI SAN).
	AcceptClientCert bool
	// ReplayPerDevice bounds the unbound tokens remembered per client id.
	// Default DefaultReplayPerDevice. When a client id holds that many
	// live tokens, its new ones are refused with ReasonServerBusy until
	// the oldest expire; other client ids are not affected.
	ReplayPerDevice int
	// ReplayCapacity bounds the unbound tokens remembered in all. Default
	// DefaultReplayCapacity. When it is reached, new tokens are refused
	// with ReasonServerBusy until remembered ones expire.
	ReplayCapacity int
	// Dir, when set, is the directory of the replay log (ReplayLogFile),
	// so that an unbound token accepted before a restart is refused after
	// it. The directory is created if needed and locked: one Tokens per
	// directory. Close the Tokens to write the log completely.
	Dir string
	// FlushInterval is how often the replay log is written. Default
	// DefaultFlushInterval.
	FlushInterval time.Duration
	// OnLogError, when set, is told when a write of the replay log fails
	// (once, until a write succeeds again). Meanwhile unbound tokens dated
	// beyond the last mark on disk are refused with ReasonServerBusy.
	OnLogError func(error)
	// Clock tells the time when a Request has none. Default time.Now.
	Clock func() time.Time
	// ReplayUnavailableLocal, with a shared replay memory (ShareReplay),
	// accepts an unbound token that memory could not check in time
	// (ClaimUnavailable) on the word of this gateway's own cache, instead
	// of refusing it with ReasonServerUnavailable: while the shared memory
	// is away, a token accepted by another gateway can be replayed here.
	ReplayUnavailableLocal bool
}

// Tokens authenticates devices by time-bound HMAC-SHA256 tokens made from a
// per-device secret (see the package documentation), and optionally by
// client certificate. It is safe for concurrent use.
type Tokens struct {
	secrets    atomic.Pointer[map[string][]byte] // replaced whole by SetSecrets, never mutated
	master     []byte
	window     int64 // seconds
	acceptCert bool
	// unavailableLocal: TokenConfig.ReplayUnavailableLocal.
	unavailableLocal bool
	clock            func() time.Time
	replay           *replayCache
	log              *replayLog // nil without TokenConfig.Dir
	// shared, when set (ShareReplay), is the replay memory of the
	// cluster, asked after replay for every unbound token.
	shared atomic.Pointer[sharedReplay]
	// decoy keys the HMAC computed for an unknown client id, so that an
	// unknown id costs the same time as a known one with a bad token.
	decoy []byte
}

// Result messages of Tokens, for the operator's log.
const (
	msgOKToken        = "token"
	msgOKUnchecked    = "token, checked by this gateway only: the cluster's replay memory (redis) did not answer in time"
	msgOKBound        = "token bound to the TLS connection"
	msgOKCert         = "client certificate"
	msgEmptyClientID  = "empty client id: a token is bound to a client id"
	msgUsername       = "user name is neither empty nor the client id"
	msgNoPassword     = "no password and no client certificate naming the client id"
	msgUnboundTLS     = "unbound (v1) token over TLS: a token sent on plain could be replayed; over TLS the device must send a v2 token bound to the connection"
	msgBoundPlain     = "bound (v2) token on plain TCP: there is no TLS connection to bind to; on plain the device sends a v1 token"
	msgNoExporter     = "the TLS connection exports no keying material (TLS 1.2 without extended master secret): a bound token cannot be checked; use TLS 1.3, or TLS 1.2 with extended master secret"
	msgExpired        = "token expired"
	msgFuture         = "token time is ahead of the gateway clock by more than the window"
	msgUnknownClient  = "unknown client id"
	msgBadMAC         = "token hmac does not match"
	msgReplayed       = "token replayed"
	msgDeviceFull     = "too many tokens of this client id within the window"
	msgReplayFull     = "replay cache full"
	msgBeforeFloor    = "token dated before the end of a gateway run that stopped without saving its replay cache: retry with a new token later"
	msgNotDurable     = "replay log behind (disk slow or failing): token time beyond its saved mark"
	msgReplayedShared = "token replayed (the cluster's replay memory has it: accepted by this or another gateway)"
	msgSharedDown     = "the cluster's replay memory (redis) did not answer in time: a token that cannot be checked could be a replay"
	msgSharedBusy     = "too many token checks waiting for the cluster's replay memory (redis)"
)

// ReplayClaim is a SharedReplay's answer.
type ReplayClaim uint8

// Answers of a SharedReplay.
const (
	ClaimNew         ReplayClaim = iota // first sight in the cluster: recorded
	ClaimReplayed                       // recorded before, by any gateway, and not expired
	ClaimDeviceFull                     // the client id holds its bound of live tokens
	ClaimUnavailable                    // no answer within the bound (Redis down or hung)
	ClaimBusy                           // too many claims waiting: not asked
)

// SharedReplay is a replay memory the gateways of a cluster share (Redis:
// package cluster), so that an unbound token accepted by one gateway is
// refused by every other within its window.
type SharedReplay interface {
	// Claim records key, the first half of the hmac of an unbound token
	// of clientID, valid until expiry (unix seconds) as seen at now, and
	// calls done exactly once, from any goroutine (before Claim returns
	// when the answer is known at once), with the answer, within a bound
	// of time it keeps. It never blocks, and keeps no view of clientID.
	Claim(clientID string, key [16]byte, expiry, now int64, done func(ReplayClaim))
}

type sharedReplay struct{ SharedReplay }

// NewTokens returns a Tokens for cfg, or an error if cfg is unusable.
func NewTokens(cfg TokenConfig) (*Tokens, error) {
	if cfg.Window < 0 {
		return nil, fmt.Errorf("auth: token window %v is negative", cfg.Window)
	}
	if cfg.ReplayCapacity < 0 {
		return nil, fmt.Errorf("auth: replay capacity %d is negative", cfg.ReplayCapacity)
	}
	if cfg.ReplayPerDevice < 0 {
		return nil, fmt.Errorf("auth: replay bound per device %d is negative", cfg.ReplayPerDevice)
	}
	if cfg.FlushInterval < 0 {
		return nil, fmt.Errorf("auth: flush interval %v is negative", cfg.FlushInterval)
	}
	if cfg.MasterKey != nil && len(cfg.MasterKey) < MinSecretLen {
		return nil, fmt.Errorf("auth: master key is %d bytes, want at least %d", len(cfg.MasterKey), MinSecretLen)
	}
	if len(cfg.Secrets) == 0 && cfg.MasterKey == nil && !cfg.AcceptClientCert {
		return nil, errors.New("auth: no device secrets, no master key and client certificates not accepted: no device could connect")
	}
	window := cfg.Window
	if window == 0 {
		window = DefaultWindow
	}
	capacity := cfg.ReplayCapacity
	if capacity == 0 {
		capacity = DefaultReplayCapacity
	}
	perDevice := cfg.ReplayPerDevice
	if perDevice == 0 {
		perDevice = DefaultReplayPerDevice
	}
	every := cfg.FlushInterval
	if every == 0 {
		every = DefaultFlushInterval
	}
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	secs := int64((window + time.Second - 1) / time.Second)
	t := &Tokens{
		master:           slices.Clone(cfg.MasterKey),
		window:           secs,
		acceptCert:       cfg.AcceptClientCert,
		unavailableLocal: cfg.ReplayUnavailableLocal,
		clock:            clock,
		replay:           newReplayCache(perDevice, capacity),
		decoy:            make([]byte, sha256.Size),
	}
	rand.Read(t.decoy) // crypto/rand.Read never returns an error; it crashes the process instead
	if err := t.SetSecrets(cfg.Secrets); err != nil {
		return nil, err
	}
	if cfg.Dir != "" {
		log, err := openReplayLog(cfg.Dir, secs, t.replay, clock, every, cfg.OnLogError)
		if err != nil {
			return nil, err
		}
		t.log = log
	}
	return t, nil
}

// ReplayFloor returns the time up to which unbound tokens are refused
// because the previous run stopped without writing its replay log (a
// crash), or the zero Time when there is no such floor.
func (t *Tokens) ReplayFloor() time.Time {
	if t.log == nil || t.log.floor == 0 {
		return time.Time{}
	}
	return time.Unix(t.log.floor, 0)
}

// Close writes the replay log completely, marks it cleanly stopped and
// releases it; after Close, unbound tokens are refused. Call it once no
// more CONNECTs arrive. It is safe to call twice, and does nothing without
// TokenConfig.Dir.
func (t *Tokens) Close() error {
	if t.log == nil {
		return nil
	}
	return t.log.close()
}

// SetSecrets replaces the per-device secrets, for example after the secrets
// file changed. It copies m. Tokens already accepted stay remembered, so a
// reload does not reopen the replay window. On error nothing changes.
func (t *Tokens) SetSecrets(m map[string][]byte) error {
	ids := slices.Sorted(maps.Keys(m)) // report the first bad id deterministically
	cp := make(map[string][]byte, len(m))
	for _, id := range ids {
		if id == "" {
			return errors.New("auth: device secret for an empty client id")
		}
		if len(m[id]) < MinSecretLen {
			return fmt.Errorf("auth: device secret of %q is %d bytes, want at least %d", id, len(m[id]), MinSecretLen)
		}
		cp[id] = slices.Clone(m[id])
	}
	t.secrets.Store(&cp)
	return nil
}

// ShareReplay makes r the memory of unbound tokens this gateway shares
// with the others of its cluster: once the local cache took a token (so a
// replay on this gateway is refused without asking), r is asked, and the
// verdict is a Pending one (Result.Pending) that r settles. Call it before
// CONNECTs arrive; nil stops sharing.
func (t *Tokens) ShareReplay(r SharedReplay) {
	if r == nil {
		t.shared.Store(nil)
		return
	}
	t.shared.Store(&sharedReplay{r})
}

// ReplayLen returns the number of unbound tokens remembered, for a gauge.
// It also frees the memory of those that expired, by the configured clock.
// With TokenConfig.Dir the log's writer does this at every write; without,
// call it now and then so that memory returns even when few devices
// connect.
func (t *Tokens) ReplayLen() int { return t.replay.sweep(t.clock().Unix()) }

// Window returns the accepted distance between a token's time and the
// gateway's clock.
func (t *Tokens) Window() time.Duration { return time.Duration(t.window) * time.Second }

// Authenticate checks a CONNECT: a client certificate naming the client id
// (when accepted), or else a token made for the client id. See the package
// documentation for the rules and reason codes.
func (t *Tokens) Authenticate(req *Request) Result {
	if req.ClientID == "" {
		return refuse(ReasonClientIDNotValid, msgEmptyClientID)
	}
	if req.Username != "" && req.Username != req.ClientID {
		return refuse(ReasonBadUserNameOrPassword, msgUsername)
	}
	if t.acceptCert && req.TLS && CertNamesClient(req.PeerIdentity, req.ClientID) {
		return Result{OK: true, Reason: ReasonSuccess, Msg: msgOKCert}
	}
	if len(req.Password) == 0 {
		return refuse(ReasonNotAuthorized, msgNoPassword)
	}
	tok, err := parseToken(req.Password)
	if err != nil {
		return refuse(ReasonBadUserNameOrPassword, err.Error())
	}
	bound := tok.version == TokenVersionBound
	switch {
	case req.TLS && !bound:
		return refuse(ReasonNotAuthorized, msgUnboundTLS)
	case !req.TLS && bound:
		return refuse(ReasonNotAuthorized, msgBoundPlain)
	case bound && len(req.ChannelBinding) != control.ExporterLen:
		return refuse(ReasonNotAuthorized, msgNoExporter)
	}

	now := req.Now
	if now.IsZero() {
		now = t.clock()
	}
	sec := now.Unix()
	switch {
	case sec-tok.ts > t.window:
		return refuse(ReasonBadUserNameOrPassword, msgExpired)
	case tok.ts-sec > t.window:
		return refuse(ReasonBadUserNameOrPassword, msgFuture)
	}

	secret, known := (*t.secrets.Load())[req.ClientID]
	if !known && t.master != nil {
		secret, known = control.DeriveSecret(t.master, req.ClientID), true
	}
	if !known {
		secret = t.decoy
	}
	var sum [sha256.Size]byte
	control.TokenMAC(hmac.New(sha256.New, secret), tok.version, req.ClientID, tok.tsText, tok.nonce, req.ChannelBinding, sum[:0])
	if !hmac.Equal(sum[:], tok.mac[:]) || !known {
		if !known {
			return refuse(ReasonBadUserNameOrPassword, msgUnknownClient)
		}
		return refuse(ReasonBadUserNameOrPassword, msgBadMAC)
	}
	if bound {
		// Bound to this TLS connection, which carries one CONNECT: a copy
		// fails its hmac on any other, so it needs no replay memory.
		return Result{OK: true, Reason: ReasonSuccess, Msg: msgOKBound, Proven: true}
	}

	if t.log != nil {
		if !t.log.afterFloor(tok.ts) {
			return refuse(ReasonServerBusy, msgBeforeFloor)
		}
		if !t.log.belowMark(tok.ts) {
			t.log.wake()
			return refuse(ReasonServerBusy, msgNotDurable)
		}
	}
	key := replayKey(sum[:16])
	expiry := tok.ts + t.window
	switch t.replay.add(req.ClientID, key, expiry, sec) {
	case addAccepted:
		if t.log != nil {
			t.log.record(req.ClientID, replayEntry{expiry: expiry, key: key})
		}
		if shared := t.shared.Load(); shared != nil {
			return t.claim(shared, req.ClientID, key, expiry, sec)
		}
		return Result{OK: true, Reason: ReasonSuccess, Msg: msgOKToken}
	case addReplayed:
		return refuse(ReasonNotAuthorized, msgReplayed)
	case addDeviceFull:
		return refuse(ReasonServerBusy, msgDeviceFull)
	default:
		return refuse(ReasonServerBusy, msgReplayFull)
	}
}

// claim asks the cluster's replay memory about a token the local cache
// took: the verdict is Pending until it answers.
func (t *Tokens) claim(shared *sharedReplay, id string, key replayKey, expiry, now int64) Result {
	p := new(Pending)
	local := t.unavailableLocal
	shared.Claim(id, key, expiry, now, func(c ReplayClaim) {
		switch {
		case c == ClaimUnavailable && local:
			p.settle(Result{OK: true, Reason: ReasonSuccess, Msg: msgOKUnchecked})
		case c == ClaimNew:
			p.settle(Result{OK: true, Reason: ReasonSuccess, Msg: msgOKToken})
		case c == ClaimReplayed:
			p.settle(refuse(ReasonNotAuthorized, msgReplayedShared))
		case c == ClaimDeviceFull:
			p.settle(refuse(ReasonServerBusy, msgDeviceFull))
		case c == ClaimBusy:
			p.settle(refuse(ReasonServerBusy, msgSharedBusy))
		default:
			p.settle(refuse(ReasonServerUnavailable, msgSharedDown))
		}
	})
	return Result{Pending: p}
}

func refuse(reason byte, msg string) Result {
	return Result{OK: false, Reason: reason, Msg: msg}
}
