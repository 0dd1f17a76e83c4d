package session

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/acl"
	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

// handleConnect is the first step of every session: check, authenticate,
// register (taking over an older connection of the same client), answer.
func (s *Session) handleConnect(c *mqttcodec.Connect, now time.Time) {
	s.entry.Protocol = c.ProtocolVersion
	v5 := s.entry.Protocol == mqttcodec.V5
	if c.CleanStart {
		s.flags |= flagCleanStart
	}

	id := string(c.ClientID)
	assigned := false
	if id == "" {
		if !v5 && !c.CleanStart {
			// [MQTT-3.1.3-8]: a zero-byte ClientId needs CleanSession 1.
			s.refuse(mqttcodec.ClientIdentifierNotValid, "empty client id with clean session 0")
			return
		}
		id = newClientID()
		assigned = true
	}
	if why := s.badClientID(id); why != "" {
		s.refuse(mqttcodec.ClientIdentifierNotValid, why)
		return
	}
	if v5 && c.Properties.Has(mqttcodec.PropAuthMethod) {
		// Enhanced authentication is not offered [MQTT-4.12.0-1].
		s.refuse(mqttcodec.BadAuthenticationMethod, "enhanced authentication is not supported")
		return
	}
	if why := s.overloaded(id, now); why != "" {
		rc := mqttcodec.ServerBusy
		if strings.Contains(why, "rate") {
			rc = mqttcodec.ConnectionRateExceeded
		}
		s.refuse(rc, why)
		return
	}
	var will *Will
	if c.WillFlag {
		// Copied out of the packet now (the codec reuses its buffer); it
		// is checked once the device is authenticated.
		will = newWill(c, v5)
	}
	req := &auth.Request{
		ClientID:     id,
		Username:     string(c.Username),
		Password:     c.Password,
		Peer:         s.t,
		TLS:          s.t.Mode() == registry.ModeTLS,
		PeerIdentity: s.t.PeerIdentity(),
		Now:          now,
	}
	if req.TLS {
		req.ChannelBinding = s.t.ChannelBinding()
	}
	res := s.env.Auth.Authenticate(req)
	if res.Pending != nil {
		pc := &pendingConnect{c: keepConnect(c), will: will, req: *req, assigned: assigned}
		pc.req.Password = nil // a view of the read buffer, and needed no more
		s.awaitVerdict(pc, res.Pending)
		return
	}
	s.connectAuthenticated(c, will, req, res, assigned, now)
}

// newWill copies the Will of c out of the packet.
func newWill(c *mqttcodec.Connect, v5 bool) *Will {
	w := &Will{
		Topic:   string(c.WillTopic),
		Payload: append([]byte(nil), c.WillPayload...),
		QoS:     c.WillQoS,
		Retain:  c.WillRetain,
	}
	if v5 {
		wp := &c.WillProperties
		if wp.Has(mqttcodec.PropWillDelay) {
			w.Delay = time.Duration(wp.WillDelay) * time.Second
		}
		// Copied out of the packet buffer, which the codec reuses.
		w.Props = messageProps(wp)
		if wp.Has(mqttcodec.PropMessageExpiry) {
			w.Expiry = wp.MessageExpiry
		}
	}
	return w
}

// pendingConnect is a CONNECT whose verdict waits on a remote check
// (auth.Result.Pending): what its handling needs once the verdict comes,
// copied out of the read buffer.
type pendingConnect struct {
	c        *mqttcodec.Connect // keepConnect
	will     *Will
	req      auth.Request // Password dropped
	assigned bool
}

// keepConnect copies what connectAuthenticated reads of c: its scalars,
// the properties it looks at, and the user name. The Will is copied by
// newWill.
func keepConnect(c *mqttcodec.Connect) *mqttcodec.Connect {
	k := &mqttcodec.Connect{
		ProtocolVersion: c.ProtocolVersion,
		CleanStart:      c.CleanStart,
		KeepAlive:       c.KeepAlive,
		UsernameFlag:    c.UsernameFlag,
		Username:        append([]byte(nil), c.Username...),
		WillFlag:        c.WillFlag,
	}
	p := &c.Properties
	if p.Has(mqttcodec.PropReceiveMaximum) {
		k.Properties.SetReceiveMaximum(p.ReceiveMaximum)
	}
	if p.Has(mqttcodec.PropMaximumPacketSize) {
		k.Properties.SetMaximumPacketSize(p.MaximumPacketSize)
	}
	if p.Has(mqttcodec.PropSessionExpiry) {
		k.Properties.SetSessionExpiry(p.SessionExpiry)
	}
	return k
}

// awaitVerdict waits for the verdict on a CONNECT without waiting: nothing
// more is read from the device until it comes (what the device sent after
// its CONNECT waits with the transport, in order), and the CONNACK is
// written then, in owner context through Exec. A verdict that is there
// before Then returns is applied at once. The CONNECT deadline
// (Env.ConnectTimeout) still runs: a verdict that never came would leave
// the connection to it.
func (s *Session) awaitVerdict(pc *pendingConnect, p *auth.Pending) {
	var state atomic.Int32
	var early auth.Result
	p.Then(func(res auth.Result) {
		early = res
		if state.CompareAndSwap(ackWaiting, ackSync) {
			return
		}
		s.t.Exec(func() { s.finishConnect(pc, res) })
	})
	if !state.CompareAndSwap(ackWaiting, ackAsync) {
		s.connectAuthenticated(pc.c, pc.will, &pc.req, early, pc.assigned, s.env.Now())
		return
	}
	s.env.Stats.ConnectsWaited.Add(1)
	s.PauseReading(pauseConnect)
}

// finishConnect applies the verdict that came for a waiting CONNECT and
// reads the device again. A session that ended meanwhile (the device went
// away, the CONNECT deadline passed) does nothing. Owner context.
func (s *Session) finishConnect(pc *pendingConnect, res auth.Result) {
	if s.state != stateNew {
		return
	}
	if why := s.overCapacity(pc.req.ClientID); why != "" && res.OK {
		s.refuse(mqttcodec.ServerBusy, why)
		return
	}
	s.connectAuthenticated(pc.c, pc.will, &pc.req, res, pc.assigned, s.env.Now())
	s.ResumeReading(pauseConnect)
}

// connectAuthenticated goes on with a CONNECT once its verdict is known:
// refuse, or register and answer. c is the packet or, after a wait, what
// keepConnect kept of it.
func (s *Session) connectAuthenticated(c *mqttcodec.Connect, will *Will, req *auth.Request, res auth.Result, assigned bool, now time.Time) {
	v5 := s.entry.Protocol == mqttcodec.V5
	id := req.ClientID
	if !res.OK {
		// res.Msg is for the operator: it may tell an unknown client from
		// a wrong secret, which the device must not learn.
		s.refuseQuietly(mqttcodec.ReasonCode(res.Reason), res.Msg)
		return
	}
	if req.TLS {
		proven := true
		if s.env.Identity != nil {
			var refusal auth.Result
			var ok bool
			if proven, refusal, ok = s.env.Identity(req, res); !ok {
				s.refuseQuietly(mqttcodec.ReasonCode(refusal.Reason), refusal.Msg)
				return
			}
		}
		if proven {
			s.flags |= flagProven
		}
	}
	s.entry.ClientID = id

	ka := c.KeepAlive
	serverKA := false
	if v5 && s.env.MaxKeepAlive > 0 && (ka == 0 || ka > s.env.MaxKeepAlive) {
		ka, serverKA = s.env.MaxKeepAlive, true
	}
	s.keepAlive = ka
	maxExpiry := uint32(s.env.MaxSessionExpiry / time.Second)
	expiryCapped := false
	if v5 {
		// A device's own limits are rare: they live in rareState.
		if c.Properties.Has(mqttcodec.PropReceiveMaximum) && c.Properties.ReceiveMaximum != 65535 {
			s.rareState().recvMax = c.Properties.ReceiveMaximum
		}
		if c.Properties.Has(mqttcodec.PropMaximumPacketSize) {
			s.rareState().maxPacket = c.Properties.MaximumPacketSize
		}
		if c.Properties.Has(mqttcodec.PropSessionExpiry) {
			s.sessionExpiry = c.Properties.SessionExpiry
			if s.sessionExpiry > maxExpiry {
				s.sessionExpiry, expiryCapped = maxExpiry, true
			}
		}
	} else if !c.CleanStart {
		// A 3.1.1 session with CleanSession 0 lasts, here, up to the
		// configured maximum rather than forever.
		s.sessionExpiry = maxExpiry
	}
	if len(c.Username) > 0 && s.env.ACL != nil && s.env.ACL.HasFile() {
		// Only an acl file looks at user names; most devices send their
		// client id, which costs a flag rather than a string.
		if string(c.Username) == id {
			s.flags |= flagUserIsID
		} else {
			s.rareState().username = string(c.Username)
		}
	}
	if w := will; w != nil {
		w.Username, w.TLS = s.Username(), s.t.Mode() == registry.ModeTLS
		if len(w.Topic) > s.env.MaxTopicLen {
			s.refuse(mqttcodec.TopicNameInvalid, "will topic longer than the gateway accepts")
			return
		}
		if s.env.ACL != nil && s.env.ACL.Publish(id, w.Username, w.Topic, w.TLS) != acl.Allowed {
			// The Will is checked again when it is published, under the
			// rules in force then.
			s.env.Stats.WillRefused.Add(1)
			s.refuse(mqttcodec.NotAuthorized, "will topic not authorized")
			return
		}
		s.rareState().will = w
	}

	s.entry.Mode = s.t.Mode()
	s.entry.ConnectedAt = now.UnixNano()
	s.entry.Touch(now)
	prev := s.env.Registry.Register(s)
	s.flags |= flagRegistered
	var subs []Subscription
	var resend []Delivery
	var received []uint16
	present := false
	if prev != nil {
		if !c.CleanStart {
			subs, present = prev.Subscriptions(), true
		}
		prev.Kick(mqttcodec.SessionTakenOver, "another connection with the same client id")
	}
	if c.CleanStart {
		s.env.Sessions.Drop(id, now)
	} else if kept, msgs, rcvd, ok := s.env.Sessions.take(id, now); ok && prev == nil {
		subs, resend, received, present = kept, msgs, rcvd, true
	}
	s.restoreReceived(received)
	if len(subs) > 0 {
		s.subs.Store(&subs)
	}
	s.state = stateConnected
	s.deadline = s.keepAliveDeadline(now)

	ack := mqttcodec.Connack{SessionPresent: present, ReasonCode: mqttcodec.Success}
	if v5 {
		pr := &ack.Properties
		pr.SetReceiveMaximum(s.env.ReceiveMaximum)
		pr.SetTopicAliasMaximum(s.env.TopicAliasMaximum)
		pr.SetMaximumPacketSize(s.env.MaxPacketSize)
		pr.SetSubIDAvailable(1)
		if s.env.NoSharedSubscriptions {
			pr.SetSharedSubAvailable(0)
		} else {
			pr.SetSharedSubAvailable(1)
		}
		if assigned {
			pr.SetAssignedClientID([]byte(id))
		}
		if serverKA {
			pr.SetServerKeepAlive(ka)
		}
		if expiryCapped {
			pr.SetSessionExpiry(s.sessionExpiry)
		}
	}
	// A resumed session's subscriptions are routed before the CONNACK
	// leaves, as a new subscription is before its SUBACK; what Online
	// starts for this session comes through Exec, after the CONNACK.
	if s.env.Hooks != nil {
		s.env.Hooks.Online(s)
	}
	if s.write(func(dst []byte) []byte { return mqttcodec.AppendConnack(dst, s.entry.Protocol, &ack) }) {
		s.env.Stats.Connects.Add(1)
	}
	// What the kept session had not had acknowledged goes out again,
	// first, with its packet identifiers (PUBLISH with DUP, or PUBREL
	// for the QoS 2 ones whose PUBREC came) [MQTT-4.4.0-1]; then what
	// was queued for the device while it was away, in order; through
	// the device's window and queue.
	for i := range resend {
		if err := s.resend(&resend[i]); err != nil {
			s.env.Logger.Debug("kept message not sent again", zap.String("client", id), zap.Error(err))
		}
	}
}

// overloaded says why a new session cannot be taken now, or "". A device
// that replaces its own live session is not counted twice.
func (s *Session) overloaded(id string, now time.Time) string {
	if lim := s.env.SourceLimiter; lim != nil {
		host, _, err := net.SplitHostPort(s.t.Remote())
		if err != nil {
			host = s.t.Remote()
		}
		if !lim.Allow(host, now) {
			return "connection rate limit for this source address"
		}
	}
	if lim := s.env.ConnectLimiter; lim != nil && !lim.AllowN(now, 1) {
		return "connection rate limit"
	}
	return s.overCapacity(id)
}

// overCapacity says why a session of client id would pass a connection
// limit (--max-connections, per transport), or "". A CONNECT that waited
// for its verdict is checked again when it comes: sessions that connected
// meanwhile count.
func (s *Session) overCapacity(id string) string {
	if s.env.MaxConnections == 0 && s.env.MaxPlain == 0 && s.env.MaxTLS == 0 {
		return ""
	}
	if _, replacing := s.env.Registry.Get(id); replacing {
		return ""
	}
	if s.env.MaxConnections > 0 && s.env.Registry.Len() >= s.env.MaxConnections {
		return "connection limit reached"
	}
	plain, tlsN := s.env.Registry.CountByMode()
	if s.t.Mode() == registry.ModeTLS {
		if s.env.MaxTLS > 0 && tlsN >= s.env.MaxTLS {
			return "TLS connection limit reached"
		}
	} else if s.env.MaxPlain > 0 && plain >= s.env.MaxPlain {
		return "plain connection limit reached"
	}
	return ""
}

// badClientID says why id cannot be used, or "".
func (s *Session) badClientID(id string) string {
	if err := CheckClientID(id, s.env.MaxClientIDLen); err != nil {
		return err.Error()
	}
	return ""
}

// CheckClientID says whether id can name a device. Every UTF-8 id that is
// valid as one topic level is accepted, spaces included (MQTT lets a
// server allow them, and Mosquitto does): client ids are substituted into
// topic templates (devices/{client}/...), so only what cannot stand in
// one level is refused: the separator and wildcards, NUL and other
// control characters, invalid UTF-8, and overlong ids.
func CheckClientID(id string, maxLen int) error {
	if id == "" || len(id) > maxLen {
		return fmt.Errorf("client id must be 1..%d bytes", maxLen)
	}
	for _, r := range id {
		switch {
		case r == '/' || r == '+' || r == '#':
			return fmt.Errorf("client id must not contain %q", r)
		case r == utf8.RuneError || unicode.IsControl(r):
			return errors.New("client id must not contain control characters or invalid UTF-8")
		}
	}
	return nil
}

// refuse answers CONNECT with a failure, telling an MQTT 5 device why in
// the reason string, and closes [MQTT-3.2.2-6].
func (s *Session) refuse(rc mqttcodec.ReasonCode, why string) { s.refuseWith(rc, why, why) }

// refuseQuietly refuses with the reason code alone; why is only logged.
func (s *Session) refuseQuietly(rc mqttcodec.ReasonCode, why string) { s.refuseWith(rc, why, "") }

func (s *Session) refuseWith(rc mqttcodec.ReasonCode, why, tell string) {
	if rc < 0x80 {
		rc = mqttcodec.NotAuthorized
	}
	s.env.Stats.Refused[rc].Add(1)
	s.env.Logger.Info("connection refused",
		zap.String("remote", s.t.Remote()), zap.Stringer("reason", rc), zap.String("why", why))
	ack := mqttcodec.Connack{ReasonCode: rc}
	version := s.entry.Protocol
	if version == mqttcodec.V5 {
		if tell != "" {
			ack.Properties.SetReasonString([]byte(tell))
		}
	} else {
		version = mqttcodec.V311
		ack.ReasonCode = mqttcodec.ReasonCode(mqttcodec.ConnackCode311(rc))
	}
	s.write(func(dst []byte) []byte { return mqttcodec.AppendConnack(dst, version, &ack) })
	s.closeNow()
}

// decodeError ends the session on bytes that break the protocol. Before
// CONNECT, an MQTT 5 client gets a CONNACK with the reason, and a client of
// an unknown protocol level the 3.1.1 CONNACK 0x01 [MQTT-3.1.2-2]; after,
// an MQTT 5 client gets a DISCONNECT with the reason [MQTT-4.13.1-1]. p is
// what the codec decoded: for a CONNECT, the level it read.
func (s *Session) decodeError(p *mqttcodec.Packet, err error) {
	s.env.Stats.MalformedPackets.Add(1)
	rc := mqttcodec.MalformedPacket
	var ce *mqttcodec.Error
	if errors.As(err, &ce) {
		rc = ce.Reason
	}
	s.env.Logger.Info("bad packet; closing", zap.String("client", s.entry.ClientID),
		zap.String("remote", s.t.Remote()), zap.Error(err))
	if s.state != stateNew {
		s.disconnect(rc, err.Error())
		return
	}
	level := byte(0)
	if p.Type == mqttcodec.CONNECT {
		level = p.Connect.ProtocolVersion
	}
	switch {
	case rc == mqttcodec.UnsupportedProtocolVersion && level != mqttcodec.V5:
		s.entry.Protocol = mqttcodec.V311
		s.refuse(rc, err.Error())
	case level == mqttcodec.V5:
		s.entry.Protocol = mqttcodec.V5
		s.refuse(rc, err.Error())
	default:
		s.closeNow()
	}
}

// newClientID makes an identifier for a client that sent none.
func newClientID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "dg-" + hex.EncodeToString(b[:])
}

// rareState returns the session's rarely needed state, allocating it once.
func (s *Session) rareState() *rareState {
	if s.rare == nil {
		s.rare = new(rareState)
	}
	return s.rare
}
