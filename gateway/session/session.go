package session

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dualgate/dualgate/gateway/acl"
	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Transport is what a Session needs from its connection. The plain (gnet)
// and TLS connections implement it.
type Transport interface {
	// Write sends b, or queues it behind bytes already waiting. Called by the
	// owner only; b is not retained after Write returns.
	Write(b []byte) error
	// Close closes the connection once queued bytes are flushed, waiting
	// at most a short while for a device that does not read. It never
	// blocks its caller on the socket. Owner only.
	Close()
	// Finish writes b, the session's last packet (a DISCONNECT), and
	// closes as Close does; where the transport can, b leaves in the
	// segment that carries the FIN. The error is the write's: the
	// connection closes either way. Owner only.
	Finish(b []byte) error
	// Buffered is how many bytes were written but have not reached the
	// socket yet (the device is not reading fast enough). Owner only.
	Buffered() int
	// Exec runs fn in owner context, later, in order, even when the
	// connection has closed by then (fn must check). Safe from any
	// goroutine.
	Exec(fn func())
	// Mode is the transport the device is on.
	Mode() registry.Mode
	// Remote is the device's address (from the PROXY header when one was sent).
	Remote() string
	// Local is the gateway address the device connected to.
	Local() string
	// PeerIdentity lists the names of a verified client certificate (TLS only).
	PeerIdentity() []string
	// PauseRead stops reading from the device until ResumeRead: the
	// bytes it sends wait in the kernel, then its own sending stalls (TCP
	// flow control). Whatever the transport had already read stays with
	// it and is fed to the session after ResumeRead, in order; Feed
	// stops at the packet that paused. Keepalive does not run out while
	// reading is paused. Owner only; pausing twice is pausing once.
	//
	// The session pauses an MQTT 3.1.1 device that has Env.ReceiveMaximum
	// QoS 1/2 publishes waiting for the Sink; any owner of a reason to hold
	// a device back (the bridge's QoS 0 backpressure) may call it through
	// Session.PauseReading, which keeps the reasons apart.
	PauseRead()
	// ResumeRead reads from the device again after PauseRead. Owner only.
	ResumeRead()
	// Release sends at once what the transport holds back. A TLS
	// connection holds what it writes from its start until released
	// (where it can: TCP_CORK; the kernel sends what is held after
	// 200 ms anyway), so that its CONNACK leaves in one segment with
	// the commands the dispatcher delivers at the CONNECT. Owner only;
	// releasing twice is releasing once, and a transport that holds
	// nothing does nothing.
	Release()
	// ChannelBinding is the connection's exported keying material
	// (control.ExporterLabel, control.ExporterLen bytes); nil on plain or
	// when the TLS connection cannot export it safely (TLS 1.2 without
	// extended master secret). Owner context; called once, at CONNECT.
	ChannelBinding() []byte
}

// Message is an application message a device published.
type Message struct {
	ClientID string
	// Username is the CONNECT user name when the topic authorization
	// needs it (an acl file is in force), else "".
	Username string
	Topic    string
	Payload  []byte
	QoS      byte
	Retain   bool
	// TLS reports that the device published it over TLS: it is then
	// written to TLS sessions only.
	TLS bool
	// Props are the message's MQTT 5 properties that travel with it to
	// the broker and to subscribers (nil: none).
	Props *MessageProps
	// Expires is when the message's Message Expiry Interval runs out
	// (zero: it does not expire).
	Expires time.Time
	// From is the publishing session when the Sink's Publish runs in its
	// owner context (a device's PUBLISH being read), nil otherwise (a
	// will): the Sink may then call From.PauseReading at once, so that
	// the rest of what was read from the device waits. Not to be kept
	// after Publish returns.
	From *Session
}

// MessageProps are the MQTT 5 properties of an application message that
// travel, unchanged, from its publisher to its subscribers
// [MQTT-3.3.2-4, MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-17, MQTT-3.3.2-20].
// The Message Expiry Interval travels as an absolute time beside them
// (Message.Expires, Delivery.Expires), so that what a subscriber gets is
// the time left. Shared between the copies of a message: never modified
// once built.
type MessageProps struct {
	PayloadFormat    byte // 1: the payload is UTF-8; meaningful with HasPayloadFormat
	HasPayloadFormat bool
	ContentType      string
	ResponseTopic    string
	CorrelationData  []byte
	User             []UserProp // in the order sent, repeated keys kept
}

// UserProp is one MQTT 5 User Property.
type UserProp struct{ Key, Value string }

// Sink receives what devices publish. Publish must not block. For QoS 1 and 2
// it calls ack exactly once, from any goroutine, when the message is safely
// taken (mqttcodec.Success) or refused (an MQTT 5 reason code); the device
// gets its PUBACK or PUBREC then. For QoS 0 ack is nil. The Message's slices
// belong to the Sink.
type Sink interface {
	Publish(m *Message, ack func(mqttcodec.ReasonCode))
}

// Hooks are told of the moments the command dispatcher cares about. They run
// in owner context and must not block. Online, Subscribed and Unsubscribed
// run just before the CONNACK, SUBACK or UNSUBACK is written, so that the
// device's routes are in place when it learns of them; whatever a hook
// sends the device goes through Exec and so follows the acknowledgement.
type Hooks interface {
	// Online: the session is connected and registered.
	Online(s *Session)
	// Query: the device published on control.QueryTopic.
	Query(s *Session)
	// Subscribed: the device subscribed to subs (each new, or replacing
	// one with the same filter). The session holds them already (local
	// routes find them) and stops reading the device until ready is
	// called: then the SUBACK is written, with failures[i] (a reason code
	// >= 0x80) for subs[i] the routes could not be put in place for (the
	// upstream broker refused, or did not answer in time), 0 for the
	// others. ready is called exactly once, from any goroutine; failures
	// may be nil (every one in place). So a device that publishes right
	// after its SUBSCRIBE, even before the SUBACK, gets its own message
	// back.
	Subscribed(s *Session, subs []SubscribeEvent, ready func(failures []mqttcodec.ReasonCode))
	// Unsubscribed: the device removed filter.
	Unsubscribed(s *Session, filter string)
	// Acked: the device acknowledged the delivery with this token.
	Acked(s *Session, token string)
	// Offline: the session ended; unacked lists the tokens of deliveries it
	// had not acknowledged.
	Offline(s *Session, unacked []string)
}

// Env is what all sessions of a gateway share: settings and collaborators.
// It is built once; its fields must not change while sessions run.
type Env struct {
	Logger   *zap.Logger
	Registry *registry.Registry[*Session]
	Auth     auth.Authenticator
	// Identity decides, after Auth accepted a CONNECT, whether its client
	// id is proven on this connection (secure commands may be written to
	// it), or refuses the CONNECT (ok false: a certificate naming another
	// client id). nil: every TLS session is proven (--secure-identity none).
	Identity func(req *auth.Request, res auth.Result) (proven bool, refusal auth.Result, ok bool)
	Sink     Sink
	Hooks    Hooks // nil: no command dispatcher
	Stats    *Stats
	// Sessions holds the state of disconnected persistent sessions.
	Sessions *Store
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ACL is the topic authorization: subscriptions and Wills are checked
	// by the session, publishes by the Sink. nil: every topic is allowed.
	ACL *acl.Authorizer

	// ConnectTimeout is how long a new connection may take to send CONNECT.
	ConnectTimeout time.Duration
	// MaxPacketSize is the largest packet accepted from a device.
	MaxPacketSize uint32
	// MaxKeepAlive, when non-zero, caps an MQTT 5 client's keepalive (and
	// replaces a keepalive of 0) through the Server Keep Alive property.
	MaxKeepAlive uint16
	// ReceiveMaximum is how many QoS 1/2 publishes a device may have
	// unacknowledged toward the gateway (MQTT 5: advertised in CONNACK).
	ReceiveMaximum uint16
	// TopicAliasMaximum is how many topic aliases an MQTT 5 device may use.
	TopicAliasMaximum uint16
	// MaxClientIDLen bounds client identifiers.
	MaxClientIDLen int
	// MaxSessionExpiry caps the session expiry a device asks for, and is the
	// expiry of an MQTT 3.1.1 session with clean session 0.
	MaxSessionExpiry time.Duration
	// MaxSubscriptions bounds the subscriptions of one session.
	MaxSubscriptions int
	// MaxTopicLen bounds, in bytes, the topics a device publishes on
	// (and its Will topic) and the filters it subscribes to (0: 1024).
	MaxTopicLen int
	// MaxQoS2Unreleased bounds the QoS 2 publishes an MQTT 3.1.1 device
	// may leave unreleased (PUBREC sent, no PUBREL yet): state only the
	// device can free, so past it the connection is closed. MQTT 5
	// devices count them against ReceiveMaximum.
	MaxQoS2Unreleased int
	// MaxQueued bounds the messages waiting for room in one device's
	// Receive Maximum (0: DefaultMaxQueued); their bytes count against
	// MaxOutbound. Past either bound a routed message is dropped and
	// counted (Stats.QueueDropped).
	MaxQueued int
	// MaxConnections bounds live sessions (0: no bound); past it CONNECT is
	// refused with Server busy (3.1.1: Server unavailable).
	MaxConnections int
	// MaxPlain and MaxTLS bound live sessions per transport (0: no bound).
	MaxPlain, MaxTLS int
	// ConnectLimiter, when set, bounds the rate of accepted CONNECTs; past
	// it CONNECT is refused with Connection rate exceeded.
	ConnectLimiter *rate.Limiter
	// SourceLimiter, when set, bounds the rate of CONNECTs per source
	// address (host of Transport.Remote); past it CONNECT is refused with
	// Connection rate exceeded.
	SourceLimiter interface {
		Allow(host string, now time.Time) bool
	}
	// ControlGrace is how long a 3.1.1 device has to leave after a
	// reconnect instruction before the gateway closes the connection.
	ControlGrace time.Duration
	// MaxOutbound bounds the bytes waiting to be sent to one device (0:
	// DefaultMaxOutbound). A device that does not read is disconnected
	// when its queue would pass the bound, rather than anyone waiting on
	// it.
	MaxOutbound int
	// NoSharedSubscriptions refuses "$share/group/filter" subscriptions
	// (SUBACK 0x9E, 3.1.1: 0x80) and says so in CONNACK (Shared
	// Subscription Available 0). By default they are accepted: the
	// session holds them, and whoever routes gives each message to one
	// member of the group with Delivery.Filter set.
	NoSharedSubscriptions bool
	// MoveGrace is how long the will of a device whose connection the
	// gateway closed to move it (reconnect instruction, drain) is held:
	// dropped if the device connects again in time, published otherwise.
	// A move is not an outage.
	MoveGrace time.Duration

	// acks batches the Sink's late acknowledgements (set by NewEnv; nil:
	// one task per acknowledgement).
	acks *ackBatcher
}

// DefaultMaxOutbound is the default bound on one device's outbound queue.
const DefaultMaxOutbound = 2 << 20

// Defaults of the flow-control bounds.
const (
	DefaultMaxQueued         = 1000
	DefaultMaxQoS2Unreleased = 1024
	DefaultMaxTopicLen       = 1024
)

// DefaultEnv fills the zero settings of e with the defaults and returns it.
func (e Env) withDefaults() Env {
	if e.Logger == nil {
		e.Logger = zap.NewNop()
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.Stats == nil {
		e.Stats = new(Stats)
	}
	if e.ConnectTimeout <= 0 {
		e.ConnectTimeout = 10 * time.Second
	}
	if e.MaxPacketSize == 0 {
		e.MaxPacketSize = 1 << 20
	}
	if e.ReceiveMaximum == 0 {
		e.ReceiveMaximum = 64
	}
	if e.TopicAliasMaximum == 0 {
		e.TopicAliasMaximum = 16
	}
	if e.MaxClientIDLen <= 0 {
		e.MaxClientIDLen = 128
	}
	if e.MaxSessionExpiry <= 0 {
		e.MaxSessionExpiry = 24 * time.Hour
	}
	if e.MaxSubscriptions <= 0 {
		e.MaxSubscriptions = 64
	}
	if e.MaxTopicLen <= 0 {
		e.MaxTopicLen = DefaultMaxTopicLen
	}
	if e.MaxQoS2Unreleased <= 0 {
		e.MaxQoS2Unreleased = DefaultMaxQoS2Unreleased
	}
	if e.MaxQueued <= 0 {
		e.MaxQueued = DefaultMaxQueued
	}
	if e.ControlGrace <= 0 {
		e.ControlGrace = 5 * time.Second
	}
	if e.MaxOutbound <= 0 {
		e.MaxOutbound = max(DefaultMaxOutbound, 2*int(e.MaxPacketSize))
	}
	if e.MoveGrace <= 0 {
		e.MoveGrace = 30 * time.Second
	}
	return e
}

// NewEnv returns a copy of e with defaults filled in. Registry, Auth, Sink
// and Sessions are required.
func NewEnv(e Env) (*Env, error) {
	if e.Registry == nil || e.Auth == nil || e.Sink == nil || e.Sessions == nil {
		return nil, errors.New("session: Env needs Registry, Auth, Sink and Sessions")
	}
	out := e.withDefaults()
	out.acks = newAckBatcher()
	return &out, nil
}

// Subscription is one filter a device subscribed to, with its options.
type Subscription struct {
	// Filter is as the device sent it: "$share/group/filter" for a shared
	// subscription.
	Filter string
	QoS    byte // granted
	// MQTT 5 subscription options [MQTT-3.8.3-3..5].
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	// ID is the Subscription Identifier (0: none).
	ID uint32
}

// SubscribeEvent is one subscription of a SUBSCRIBE, for Hooks.Subscribed.
type SubscribeEvent struct {
	Sub Subscription
	// New: the session held no subscription with this filter before
	// (Retain Handling 1 sends retained messages only then).
	New bool
}

// state of a session, in order.
const (
	stateNew       uint8 = iota // waiting for CONNECT
	stateConnected              // CONNACK accepted sent
	stateClosing                // the session asked its transport to close
	stateClosed                 // Closed was called
)

// Session is one device connection's MQTT state. Its zero value is not
// usable: call Init. The struct is kept small: idle plain connections are
// the product, and each holds one.
type Session struct {
	env *Env
	t   Transport
	// entry is what the registry knows of the session: client id, protocol
	// level, mode, connect time, last activity. Its fields are set by
	// CONNECT before the session is registered (flagRegistered).
	entry registry.Entry

	// subs is replaced, never mutated, so Subscriptions may read it from any
	// goroutine.
	subs atomic.Pointer[[]Subscription]

	// deadline is when the connection is closed unless something happens
	// first, in Unix nanoseconds; 0 means none.
	deadline int64
	// keepAlive is the negotiated keepalive in seconds (0: none).
	keepAlive uint16
	nextPID   uint16
	// inboundQoS counts device publishes waiting for the Sink's ack.
	inboundQoS    uint16
	state         uint8
	flags         uint16
	sessionExpiry uint32

	// rare holds what most idle sessions never need.
	rare *rareState
}

// flags bits.
const (
	flagCleanStart uint16 = 1 << iota
	flagGracefulEnd
	flagInstructed // a reconnect instruction is outstanding
	flagRegistered // CONNECT put the session in the registry
	flagProven     // the client id was proven on this TLS connection (--secure-identity)
	flagUserIsID   // the CONNECT user name is the client id (kept for the acl file)
	flagMoved      // the gateway ends the connection to move the device (instruction, drain)
	flagReadPaused // the transport was told to stop reading (flow control)
	flagKept       // Closed kept the session's state for resumption (Store.Keep)
)

// rareState is allocated on first need, so an idle session does not pay for it.
type rareState struct {
	// recvMax is the device's receive maximum (MQTT 5; 0: 65535, the
	// default and the 3.1.1 value).
	recvMax uint16
	// maxPacket is the largest packet the device accepts (MQTT 5; 0: no
	// limit).
	maxPacket uint32

	aliases map[uint16]string // MQTT 5 inbound topic aliases
	qos2    map[uint16]struct{}
	// inflight are the outbound QoS 1 deliveries waiting for PUBACK and
	// the QoS 2 ones waiting for PUBREC or PUBCOMP.
	inflight []inflight
	// queued holds routed QoS 1/2 messages waiting for room in the
	// device's Receive Maximum, in order; queuedBytes their payloads and
	// topics; queuedPIDs how many of them keep the packet identifier of
	// an earlier connection (kept sessions).
	queued      []Delivery
	queuedBytes int
	queuedPIDs  int
	// inflightBytes sums deliverySize of the routed messages in flight.
	inflightBytes int
	// pauses is why reading is paused (flagReadPaused): pauseFlow and
	// the reasons of PauseReading.
	pauses ReadPause
	will   *Will
	// username is the CONNECT user name, kept only while an acl file is
	// in force and when it is not the client id (flagUserIsID).
	username string
}

// clientRecvMax is how many QoS 1 deliveries the device accepts unacknowledged.
func (r *rareState) clientRecvMax() int {
	if r.recvMax == 0 {
		return 65535
	}
	return int(r.recvMax)
}

// tooLarge reports whether a packet of size bytes exceeds the device's
// Maximum Packet Size.
func (s *Session) tooLarge(size int) bool {
	return s.rare != nil && s.rare.maxPacket != 0 && uint32(size) > s.rare.maxPacket
}

// inflight is one outbound QoS 1 or 2 exchange.
type inflight struct {
	pid   uint16
	token string
	// msg is a routed message (no token), kept to be sent again when the
	// connection ends before its acknowledgement and the session is kept.
	msg *Delivery
	qos byte
	// released: a QoS 2 message whose PUBREC came; the PUBREL was sent
	// and the PUBCOMP is awaited. msg is let go then.
	released bool
}

// unsent lists the routed messages the device has not acknowledged: those
// in flight, marked Dup and with their packet identifier (the released
// QoS 2 ones as a PUBREL to send again), then those queued, in order.
func (r *rareState) unsent() []Delivery {
	var out []Delivery
	for _, f := range r.inflight {
		switch {
		case f.released:
			out = append(out, Delivery{QoS: 2, PacketID: f.pid, released: true})
		case f.msg != nil:
			d := *f.msg
			d.Dup = true
			d.PacketID = f.pid
			out = append(out, d)
		}
	}
	return append(out, r.queued...)
}

// Init makes s a new session on transport t, with the CONNECT deadline set.
func (s *Session) Init(env *Env, t Transport) {
	*s = Session{env: env, t: t}
	s.deadline = env.Now().Add(env.ConnectTimeout).UnixNano()
	env.Stats.Accepted.Add(1)
}

// ClientID is the device's client identifier ("" before CONNECT). Set once
// before the session is registered; safe to read from any goroutine after.
func (s *Session) ClientID() string { return s.entry.ClientID }

// RegistryEntry is the session's registry entry: a *Session is what the
// gateway's registry holds.
func (s *Session) RegistryEntry() *registry.Entry { return &s.entry }

// Version is the protocol level: mqttcodec.V311 or mqttcodec.V5.
func (s *Session) Version() byte { return s.entry.Protocol }

// Mode is the transport the session runs on.
func (s *Session) Mode() registry.Mode { return s.t.Mode() }

// Remote is the device's address (from the PROXY header when one was
// sent). Owner context only: from elsewhere, ask through Exec.
func (s *Session) Remote() string { return s.t.Remote() }

// LocalAddr is the gateway address the device connected to.
func (s *Session) LocalAddr() string { return s.t.Local() }

// Connected reports whether CONNECT was accepted and the session is live.
func (s *Session) Connected() bool { return s.state == stateConnected }

// Subscriptions returns the session's current filters. Safe from any
// goroutine; the slice must not be modified.
func (s *Session) Subscriptions() []Subscription {
	if p := s.subs.Load(); p != nil {
		return *p
	}
	return nil
}

// Release sends what the session's transport holds back (Transport.Release):
// the dispatcher's to call once it has delivered what waited for the
// device at its CONNECT, or found nothing to deliver. Owner context.
func (s *Session) Release() { s.t.Release() }

// Exec runs fn in owner context. It runs even when the session has ended
// meanwhile, so a caller waiting for fn's result always gets one: the
// session's methods then report ErrNotConnected and write nothing.
func (s *Session) Exec(fn func(s *Session)) {
	s.t.Exec(func() { fn(s) })
}

// Username is the CONNECT user name as the topic authorization sees it:
// kept only while an acl file is in force, "" otherwise. Owner context.
func (s *Session) Username() string {
	switch {
	case s.flags&flagUserIsID != 0:
		return s.entry.ClientID
	case s.rare != nil:
		return s.rare.username
	}
	return ""
}

// IdentityProven reports whether the client id was proven on this TLS
// connection as --secure-identity asks, so that secure commands may be
// written to it. Owner context.
func (s *Session) IdentityProven() bool { return s.flags&flagProven != 0 }

// Instructed reports whether a reconnect instruction is outstanding.
func (s *Session) Instructed() bool { return s.flags&flagInstructed != 0 }

// packetPool holds decode targets: a Packet is large, and only needed while
// bytes are being handled.
var packetPool = sync.Pool{New: func() any { return new(mqttcodec.Packet) }}

// bufPool holds encode buffers.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Feed handles the whole packets at the front of b and returns how many
// bytes it used; the caller keeps the rest until more arrive. closeConn
// reports that the connection must be closed (after what was written).
func (s *Session) Feed(b []byte) (used int, closeConn bool) {
	used, closeConn = s.feed(b)
	s.env.Stats.BytesIn[s.t.Mode()].Add(uint64(used))
	return used, closeConn
}

func (s *Session) feed(b []byte) (used int, closeConn bool) {
	if s.state >= stateClosing {
		return len(b), true
	}
	p := packetPool.Get().(*mqttcodec.Packet)
	defer packetPool.Put(p)
	for used < len(b) {
		if s.flags&flagReadPaused != 0 {
			// Held back (flow control): the rest waits with the
			// transport until ResumeRead.
			break
		}
		n, err := mqttcodec.Decode(b[used:], s.entry.Protocol, s.env.MaxPacketSize, p)
		if err != nil {
			s.decodeError(p, err)
			return len(b), true
		}
		if n == 0 {
			break
		}
		used += n
		s.env.Stats.PacketsIn.Add(1)
		s.handle(p)
		if s.state >= stateClosing {
			return len(b), true
		}
	}
	return used, false
}

// handle acts on one decoded packet.
func (s *Session) handle(p *mqttcodec.Packet) {
	now := s.env.Now()
	if s.state == stateNew {
		// Decode accepts only CONNECT before CONNECT [MQTT-3.1.0-1].
		s.handleConnect(&p.Connect, now)
		return
	}
	s.touch(now)
	switch p.Type {
	case mqttcodec.PUBLISH:
		s.handlePublish(&p.Publish)
	case mqttcodec.PUBACK:
		s.handlePuback(&p.Ack)
	case mqttcodec.PUBREC:
		s.handlePubrec(&p.Ack)
	case mqttcodec.PUBREL:
		s.handlePubrel(&p.Ack)
	case mqttcodec.PUBCOMP:
		s.handlePubcomp(&p.Ack)
	case mqttcodec.SUBSCRIBE:
		s.handleSubscribe(&p.Subscribe)
	case mqttcodec.UNSUBSCRIBE:
		s.handleUnsubscribe(&p.Unsubscribe)
	case mqttcodec.PINGREQ:
		s.write(mqttcodec.AppendPingresp)
	case mqttcodec.DISCONNECT:
		s.handleDisconnect(&p.Disconnect)
	case mqttcodec.CONNECT:
		// A second CONNECT is a protocol violation [MQTT-3.1.0-2].
		s.protocolError("second CONNECT", mqttcodec.ProtocolError)
	case mqttcodec.AUTH:
		// Enhanced authentication is not offered, so AUTH never belongs.
		s.protocolError("AUTH without an authentication method", mqttcodec.ProtocolError)
	default:
		// CONNACK, SUBACK, UNSUBACK, PINGRESP: server-to-client packets.
		s.protocolError("packet type "+p.Type.String()+" from a client", mqttcodec.ProtocolError)
	}
}

// touch records activity: the keepalive deadline moves on.
func (s *Session) touch(now time.Time) {
	if s.flags&flagRegistered != 0 {
		s.entry.Touch(now)
	}
	if s.flags&flagInstructed != 0 && s.entry.Protocol == mqttcodec.V311 {
		return // the grace deadline after an instruction stands
	}
	s.deadline = s.keepAliveDeadline(now)
}

func (s *Session) keepAliveDeadline(now time.Time) int64 {
	if s.keepAlive == 0 {
		return 0
	}
	// [MQTT-3.1.2-24]: one and a half times the keepalive.
	return now.UnixNano() + int64(s.keepAlive)*int64(1500*time.Millisecond)
}

// Tick closes the connection when its deadline has passed. The transport's
// sweep calls it in owner context; it reports whether the session closed.
func (s *Session) Tick(now time.Time) bool {
	if s.deadline == 0 || now.UnixNano() < s.deadline || s.state >= stateClosing {
		return false
	}
	switch {
	case s.state == stateNew:
		s.env.Stats.ConnectTimeouts.Add(1)
		s.env.Logger.Debug("no CONNECT in time", zap.String("remote", s.t.Remote()))
		s.closeNow()
	case s.flags&flagInstructed != 0 && s.entry.Protocol == mqttcodec.V311:
		s.env.Stats.InstructionGraceClosed.Add(1)
		s.env.Logger.Info("device did not leave after a reconnect instruction; closing",
			zap.String("client", s.entry.ClientID))
		s.closeNow()
	case s.flags&flagReadPaused != 0:
		// The gateway is not reading: the device's PINGREQs wait unread.
		// Its keepalive runs again from ResumeRead.
		return false
	default:
		s.env.Stats.KeepAliveTimeouts.Add(1)
		s.env.Logger.Debug("keepalive expired", zap.String("client", s.entry.ClientID))
		s.disconnect(mqttcodec.KeepAliveTimeout, "")
	}
	return true
}

// write encodes one packet with enc into a pooled buffer and sends it.
func (s *Session) write(enc func(dst []byte) []byte) bool {
	if s.state == stateClosed {
		return false
	}
	bp := bufPool.Get().(*[]byte)
	b := enc((*bp)[:0])
	err := s.t.Write(b)
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		bufPool.Put(bp)
	}
	if err != nil {
		s.env.Logger.Debug("write failed", zap.String("client", s.entry.ClientID), zap.Error(err))
		s.state = stateClosing
		return false
	}
	s.env.Stats.PacketsOut.Add(1)
	s.env.Stats.BytesOut[s.t.Mode()].Add(uint64(len(b)))
	if s.t.Buffered() > s.env.MaxOutbound {
		// The device does not read: nobody waits for it. Its
		// unacknowledged QoS 1 deliveries go back to their owners
		// (Hooks.Offline): commands stay pending for its next session.
		s.env.Stats.SlowReaderClosed.Add(1)
		s.env.Logger.Info("device does not read its messages; disconnecting",
			zap.String("client", s.entry.ClientID), zap.Int("queued_bytes", s.t.Buffered()),
			zap.Int("max_outbound", s.env.MaxOutbound))
		s.closeNow()
	}
	return true
}

// disconnect ends the session from the server side: MQTT 5 devices get a
// DISCONNECT with the reason code (and a reason string), 3.1.1 devices are
// simply closed.
func (s *Session) disconnect(rc mqttcodec.ReasonCode, reason string) {
	if s.state >= stateClosing {
		return
	}
	if s.entry.Protocol == mqttcodec.V5 && s.state == stateConnected {
		d := mqttcodec.Disconnect{ReasonCode: rc}
		if reason != "" {
			d.Properties.SetReasonString([]byte(reason))
		}
		s.closeWith(&d)
		return
	}
	s.closeNow()
}

// closeWith ends the session with an MQTT 5 DISCONNECT d, written as the
// connection's last packet (Transport.Finish); Closed follows.
func (s *Session) closeWith(d *mqttcodec.Disconnect) {
	if s.state >= stateClosing {
		return
	}
	s.state = stateClosing
	bp := bufPool.Get().(*[]byte)
	b := mqttcodec.AppendDisconnect((*bp)[:0], mqttcodec.V5, d)
	if err := s.t.Finish(b); err != nil {
		s.env.Logger.Debug("write failed", zap.String("client", s.entry.ClientID), zap.Error(err))
	} else {
		s.env.Stats.PacketsOut.Add(1)
		s.env.Stats.BytesOut[s.t.Mode()].Add(uint64(len(b)))
	}
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		bufPool.Put(bp)
	}
}

// closeNow asks the transport to close; Closed follows.
func (s *Session) closeNow() {
	if s.state >= stateClosing {
		return
	}
	s.state = stateClosing
	s.t.Close()
}

// protocolError ends the session for a rule broken by a decoded packet.
func (s *Session) protocolError(what string, rc mqttcodec.ReasonCode) {
	s.env.Stats.ProtocolErrors.Add(1)
	s.env.Logger.Info("protocol error; closing", zap.String("client", s.entry.ClientID),
		zap.String("remote", s.t.Remote()), zap.String("error", what), zap.Stringer("reason", rc))
	s.disconnect(rc, what)
}

// Kick ends the session from another goroutine, e.g. on takeover (reason
// SessionTakenOver) or shutdown (ServerShuttingDown).
func (s *Session) Kick(rc mqttcodec.ReasonCode, reason string) {
	s.t.Exec(func() {
		if rc == mqttcodec.SessionTakenOver {
			// The successor owns the registry entry and the stored state.
			s.flags |= flagGracefulEnd
			s.env.Stats.Takeovers.Add(1)
		}
		s.disconnect(rc, reason)
	})
}

// Closed is called by the transport, in owner context, once the connection
// is gone, whoever closed it. It unregisters the session, publishes the will
// if the end was not graceful, tells the hooks which deliveries were left
// unacknowledged, and keeps a persistent session's state: its
// subscriptions and the routed messages not acknowledged, to send again
// when the device resumes it (Kept). A session taken over by a connection
// that resumed it hands those messages to its successor instead.
func (s *Session) Closed() {
	if s.state == stateClosed {
		return
	}
	registered := s.flags&flagRegistered != 0
	wasConnected := s.state == stateConnected || (s.state == stateClosing && registered)
	s.state = stateClosed
	if !wasConnected || !registered {
		return
	}
	stillOwner := s.env.Registry.Unregister(s)
	s.env.Stats.Disconnects.Add(1)
	var unacked []string
	var will *Will
	var unsent []Delivery
	var received []uint16
	if s.rare != nil {
		for _, f := range s.rare.inflight {
			if f.token != "" {
				unacked = append(unacked, f.token)
			}
		}
		will = s.rare.will
		unsent = s.rare.unsent()
		for pid := range s.rare.qos2 {
			received = append(received, pid)
		}
	}
	if s.flags&flagGracefulEnd != 0 || !stillOwner {
		// A normal DISCONNECT discards the will [MQTT-3.1.2-10]; a session
		// taken over leaves it to its successor, also when its end is
		// handled before the takeover's Kick reached it (a device moved
		// by the gateway that is back already).
		will = nil
	}
	now := s.env.Now()
	expiry := time.Duration(s.sessionExpiry) * time.Second
	kept := stillOwner && expiry > 0
	if kept {
		s.flags |= flagKept
	}
	if will != nil {
		// The will waits for its delay, or until the session ends if
		// that is sooner [MQTT-3.1.3-9].
		delay := min(will.Delay, expiry)
		if s.flags&flagMoved != 0 {
			// The gateway closed the connection to move the device:
			// the will waits at least MoveGrace for the device to
			// connect again, and is dropped if it does, whatever its
			// Clean Start. Only a device that does not come back is
			// offline.
			s.env.Sessions.HoldWill(s.entry.ClientID, will, now, now.Add(max(delay, s.env.MoveGrace)))
		} else {
			s.env.Sessions.ScheduleWill(s.entry.ClientID, will, now, now.Add(delay))
		}
	}
	// The hooks learn of the end first (Kept tells them whether the
	// session stays), the store second: a kept session the store lets go
	// at once (its bounds) is reported through Store.OnEnd after it.
	if s.env.Hooks != nil {
		s.env.Hooks.Offline(s, unacked)
	}
	switch {
	case kept:
		// Routed messages not acknowledged stay with the session and go
		// out again when the device resumes it [MQTT-4.4.0-1]; so do
		// the device's QoS 2 messages waiting for their PUBREL, not to
		// be delivered twice when it sends them again.
		s.env.Sessions.keep(s.entry.ClientID, s.Subscriptions(), unsent, received, now.Add(expiry))
	case !stillOwner && len(unsent)+len(received) > 0:
		s.handOver(unsent, received)
	}
}

// restoreReceived takes over the identifiers of QoS 2 messages the device
// sent on an earlier connection of the session, acknowledged with PUBREC,
// whose PUBREL had not come: sent again, they are acknowledged, not
// delivered twice [MQTT-4.3.3-10]; their PUBREL is answered. They count
// as unreleased, within the same bounds as on the earlier connection.
func (s *Session) restoreReceived(received []uint16) {
	for _, pid := range received {
		s.rareState().qos2Add(pid)
	}
}

// Kept reports whether Closed kept this session's state for the device
// to resume (Store.Keep): its subscriptions stand, and routed messages
// for it go to the store (Store.Enqueue) until it comes back or
// Store.OnEnd reports its end. Owner context, or after Closed.
func (s *Session) Kept() bool { return s.flags&flagKept != 0 }

// handOver gives the routed messages a session taken over had not had
// acknowledged, and the identifiers of the device's QoS 2 messages
// waiting for their PUBREL, to the connection that took it over, if that
// one resumed the session (Clean Start 0): the session goes on there
// [MQTT-4.4.0-1].
// Each is sent again as a delivery that may have reached the device
// (Dup), with its packet identifier when the successor has it free. A
// successor that started clean discards them, as it discarded the rest
// of the session.
func (s *Session) handOver(msgs []Delivery, received []uint16) {
	next, ok := s.env.Registry.Get(s.entry.ClientID)
	if !ok || next == s {
		return
	}
	next.Exec(func(n *Session) {
		if n.flags&flagCleanStart != 0 {
			return
		}
		if n.state == stateConnected {
			n.restoreReceived(received)
		}
		for i := range msgs {
			d := &msgs[i]
			if err := n.resend(d); err != nil {
				n.env.Logger.Debug("message of a session taken over not sent again",
					zap.String("client", n.entry.ClientID), zap.Error(err))
			}
		}
	})
}
