package session

import (
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Errors of Deliver and Instruct.
var (
	// ErrInsecureTransport: a secure payload was about to be written to a
	// plain connection. It never is.
	ErrInsecureTransport = errors.New("session: secure payload refused on a plain connection")
	// ErrIdentityUnproven: a secure command was about to be written to a
	// TLS session whose client id was not proven on that connection
	// (--secure-identity). It never is; the command stays pending.
	ErrIdentityUnproven = errors.New("session: secure command refused: the client id is not proven on this TLS connection")
	ErrNotConnected     = errors.New("session: not connected")
	// ErrInflightFull: the device's receive maximum is reached (commands;
	// routed messages wait in the session's queue instead).
	ErrInflightFull = errors.New("session: device's receive maximum reached")
	// ErrQueueFull: a routed message found the device's queue full
	// (Env.MaxQueued, Env.MaxOutbound) and was dropped.
	ErrQueueFull = errors.New("session: device's queue is full")
	// ErrExpired: the message's expiry passed before it could be
	// written; it was dropped and counted (Stats.MessagesExpired)
	// [MQTT-3.3.2-5].
	ErrExpired = errors.New("session: message expired before it could be written")
	// ErrTooLarge: the packet exceeds the device's maximum packet size.
	ErrTooLarge = errors.New("session: packet exceeds the device's maximum packet size")
	// ErrDowngradeOnPlain: a plain instruction may only travel over TLS.
	ErrDowngradeOnPlain = errors.New("session: a mode plain instruction is sent over TLS only")
	// ErrInstructed: an instruction is already outstanding.
	ErrInstructed = errors.New("session: a reconnect instruction is already outstanding")
)

// Delivery is a message for the device, such as a command.
type Delivery struct {
	Topic   string
	Payload []byte
	QoS     byte
	// Secure marks a secure command: written only to a TLS session whose
	// client id was proven on that connection.
	Secure bool
	// TLSOnly marks secure data (published over TLS, or on a secure
	// topic): written only to TLS sessions, proven or not.
	TLSOnly bool
	// Token identifies the delivery to Hooks.Acked and Hooks.Offline.
	Token string
	// Dup marks a delivery that may have reached the device before.
	Dup bool
	// Retain marks a retained message sent because of a new subscription
	// (Filter's): always written with the retain flag [MQTT-3.3.1-8].
	Retain bool
	// Retained reports that the message was published with the retain
	// flag: a live message keeps the flag only for subscriptions with
	// Retain As Published [MQTT-3.3.1-12, MQTT-3.3.1-13].
	Retained bool
	// Filter, when set, names the one subscription of the session this
	// delivery is for: the subscription whose SUBSCRIBE caused a retained
	// message, or the shared subscription ("$share/group/filter") the
	// message was given to. Empty: every matching non-shared subscription
	// of the session (Session.Route).
	Filter string
	// Publisher is the client id of the device of this gateway that
	// published the message, when known ("": another publisher), for No
	// Local.
	Publisher string
	// Props are the message's MQTT 5 properties (nil: none), Expires when
	// it expires (zero: never).
	Props   *MessageProps
	Expires time.Time
	// SubIDs are the identifiers of the subscriptions the delivery
	// answers (set by Route; written to MQTT 5 devices).
	SubIDs []uint32
	// PacketID is the packet identifier a kept message had, to be sent
	// again with it [MQTT-4.4.0-1]; 0: a new one.
	PacketID uint16

	// released marks a kept QoS 2 exchange whose PUBREC came: only the
	// PUBREL (PacketID) is sent again.
	released bool
}

// CheckTransport is the one rule that decides what may be written to a
// socket: secure commands and secure data never go to a plain socket, and
// a secure command goes only to a TLS session whose client id was proven
// on that connection. Every outbound message passes it, in Deliver, right
// before its bytes are encoded for the connection.
func CheckTransport(mode registry.Mode, proven bool, d *Delivery) error {
	if (d.Secure || d.TLSOnly) && mode != registry.ModeTLS {
		return ErrInsecureTransport
	}
	if d.Secure && !proven {
		return ErrIdentityUnproven
	}
	return nil
}

// Deliver writes d to the device. Owner context.
//
// A command (Token set) goes out at QoS 0 or 1 (the dispatcher waits for
// its PUBACK); it is refused with ErrInflightFull when the device's
// window is full. A routed message (no Token) goes out at its QoS, 2
// included, or waits in the session's bounded queue behind those already
// waiting. A message whose Expires has passed is dropped (ErrExpired).
// A session not connected answers ErrNotConnected before anything else,
// and nothing changes. CheckTransport decides, before a byte is encoded,
// what may be written to the socket.
func (s *Session) Deliver(d *Delivery) error { return s.deliver(d, false) }

// deliver is Deliver; kept marks a message of a resumed or taken-over
// session, which waits in the queue whatever its bounds: they were
// counted where it was kept.
func (s *Session) deliver(d *Delivery, kept bool) error {
	if s.state != stateConnected {
		// Nothing is written, nothing counted: the caller may keep the
		// message elsewhere (Store.Enqueue).
		return ErrNotConnected
	}
	if err := CheckTransport(s.t.Mode(), s.IdentityProven(), d); err != nil {
		if errors.Is(err, ErrInsecureTransport) {
			s.env.Stats.RefusedOnPlain.Add(1)
			if d.Secure {
				s.env.Logger.Error("secure delivery refused on a plain connection",
					zap.String("client", s.entry.ClientID), zap.String("token", d.Token))
			}
		} else {
			s.env.Stats.RefusedUnproven.Add(1)
		}
		return err
	}
	if d.QoS > 0 {
		switch {
		case d.Token != "" && s.windowFull(d):
			return ErrInflightFull
		case d.Token == "" && (s.Queued() > 0 || s.windowFull(d)):
			// In order behind what waits already [MQTT-4.6.0-6].
			return s.enqueue(d, kept)
		}
	}
	return s.send(d)
}

// send writes d, which has room in the device's window. What may be
// written to the socket was decided by Deliver (CheckTransport); it is
// asked again for a message that waited, at no cost.
func (s *Session) send(d *Delivery) error {
	if err := CheckTransport(s.t.Mode(), s.IdentityProven(), d); err != nil {
		return err
	}
	if d.released {
		s.release(d.PacketID)
		return nil
	}
	now := s.env.Now()
	if expired(d.Expires, now) && !sentBefore(d) {
		s.env.Stats.MessagesExpired.Add(1)
		return ErrExpired
	}
	qos := min(d.QoS, 2)
	if d.Token != "" {
		// Commands stay QoS 1: the dispatcher records a PUBACK.
		qos = min(qos, 1)
	}
	pub := mqttcodec.Publish{Topic: []byte(d.Topic), Payload: d.Payload, QoS: qos, Dup: d.Dup && qos > 0, Retain: d.Retain}
	if qos > 0 {
		// A kept message goes out again with its packet identifier
		// [MQTT-4.4.0-1], unless another exchange holds it now.
		pub.PacketID = d.PacketID
		if pub.PacketID == 0 || (s.rare != nil && s.rare.pidInUse(pub.PacketID)) {
			pub.PacketID = s.allocPID()
		}
	}
	if s.entry.Protocol == mqttcodec.V5 {
		setPublishProps(&pub.Properties, d, now)
	}
	if err := s.writePublish(&pub); err != nil {
		return err
	}
	if qos > 0 {
		r := s.rareState()
		f := inflight{pid: pub.PacketID, token: d.Token, qos: qos}
		if d.Token == "" {
			m := *d
			m.PacketID = pub.PacketID
			f.msg = &m
			r.inflightBytes += deliverySize(d)
		}
		r.inflight = append(r.inflight, f)
	}
	s.env.Stats.Deliveries.Add(1)
	return nil
}

// sentBefore reports whether d is a QoS 2 message that went out on an
// earlier connection of the session, its PUBREC not received. It is sent
// again even past its expiry: once a QoS 2 PUBLISH has been sent, expiry
// no longer applies to it [MQTT-4.3.3-7] (the device, which may hold its
// packet identifier as received, would otherwise take the next message
// given that identifier for a duplicate). Its Message Expiry Interval is
// then written as 1.
func sentBefore(d *Delivery) bool {
	return d.QoS == 2 && d.Token == "" && d.Dup && d.PacketID != 0
}

// release sends PUBREL for an outbound QoS 2 exchange and waits for its
// PUBCOMP: for a PUBREC that came, or again for a kept session's
// exchange that had its PUBREC [MQTT-4.4.0-1].
func (s *Session) release(pid uint16) {
	s.writeAck(mqttcodec.PUBREL, pid, mqttcodec.Success)
	r := s.rareState()
	r.inflight = append(r.inflight, inflight{pid: pid, qos: 2, released: true})
}

// resend sends again a message a kept session, or a session taken over,
// had not had acknowledged: with its packet identifier unless this
// session uses it already, through the window and the queue, whatever
// the queue's bounds. A session that is ending keeps it with its own.
func (s *Session) resend(d *Delivery) error {
	if d.PacketID != 0 && s.rare != nil && s.rare.pidInUse(d.PacketID) {
		if d.released {
			return nil // that exchange cannot be completed here
		}
		d.PacketID = 0
	}
	switch s.state {
	case stateConnected:
		if d.released {
			s.release(d.PacketID)
			return nil
		}
		return s.deliver(d, true)
	case stateClosing:
		if s.flags&flagRegistered != 0 {
			s.rareState().push(d)
			return nil
		}
	case stateClosed:
		if s.Kept() && !d.released {
			s.env.Sessions.Enqueue(s.entry.ClientID, d)
			return nil
		}
	}
	return ErrNotConnected
}

// Route writes a routed message (not a command: no Token) to the device
// as its subscriptions ask (MatchDelivery): nothing when none of them
// takes it, else one copy, whatever the number of matching subscriptions
// (MQTT 5 allows one copy carrying every identifier [MQTT-3.3.4-4]), at
// the highest QoS they granted, with their Subscription Identifiers and
// the retain flag they call for. It goes through Deliver: CheckTransport
// decides what may reach the socket. Owner context.
//
// A session that is no longer connected returns ErrNotConnected and
// changes nothing: the message is the caller's to give to the store
// (Store.Enqueue) if the session was kept (Kept). A session that is
// closing (its end not handled yet: Store.Enqueue would not find it)
// keeps a QoS 1/2 message that matches with those it had not sent, as a
// queued one, and returns nil: Closed keeps them with the session, hands
// them to the connection that took it over, or drops them with a session
// that is not kept, as it does the rest. A QoS 0 message for a closing
// session is ErrNotConnected.
func (s *Session) Route(d *Delivery) error {
	if s.state != stateConnected && (s.state != stateClosing || s.flags&flagRegistered == 0) {
		return ErrNotConnected
	}
	m, ok := MatchDelivery(s.Subscriptions(), s.entry.ClientID, d)
	if !ok {
		return nil
	}
	if s.state == stateClosing {
		if m.QoS == 0 {
			return ErrNotConnected
		}
		return s.enqueue(&m, false)
	}
	return s.Deliver(&m)
}

// MatchDelivery is what a session with subs, of device clientID, makes of
// a routed message d: false when none of its subscriptions takes it,
// else the one copy to write.
//
// The subscriptions that take d: with d.Filter set, the one subscription
// with exactly that filter (a retained message for a new subscription, or
// a shared subscription's share); otherwise every subscription whose
// filter matches d.Topic, shared ones excepted (a shared subscription
// gets only what is given to it by name). Of those, a subscription with
// No Local takes nothing its own device published (d.Publisher ==
// clientID) [MQTT-3.8.3-3].
//
// The copy, one per session (MQTT 5 allows one copy carrying every
// identifier [MQTT-3.3.4-4]): QoS the lower of d's and the highest QoS
// granted among those subscriptions [MQTT-3.3.4-2]; SubIDs the non-zero
// identifiers of those subscriptions [MQTT-3.3.4-3]; Retain d.Retain (a
// retained message sent for a new subscription [MQTT-3.3.1-8]), or
// d.Retained when one of them asked for Retain As Published
// [MQTT-3.3.1-12, MQTT-3.3.1-13]. The rest of d is shared with the copy.
func MatchDelivery(subs []Subscription, clientID string, d *Delivery) (Delivery, bool) {
	var (
		found bool
		qos   byte
		rap   bool
		ids   []uint32
	)
	self := d.Publisher != "" && d.Publisher == clientID
	for i := range subs {
		sub := &subs[i]
		if d.Filter != "" {
			if sub.Filter != d.Filter {
				continue
			}
		} else if isShared(sub.Filter) || !mqttcodec.MatchTopic([]byte(sub.Filter), []byte(d.Topic)) {
			continue
		}
		if sub.NoLocal && self {
			continue
		}
		found = true
		qos = max(qos, sub.QoS)
		rap = rap || sub.RetainAsPublished
		if sub.ID != 0 {
			ids = append(ids, sub.ID)
		}
	}
	if !found {
		return Delivery{}, false
	}
	m := *d
	m.QoS = min(d.QoS, qos)
	m.SubIDs = ids
	m.Retain = d.Retain || (d.Retained && rap)
	return m, true
}

// isShared reports whether filter names a shared subscription.
func isShared(filter string) bool { return strings.HasPrefix(filter, sharePrefix) }

// sharePrefix starts every shared subscription's filter.
const sharePrefix = "$share/"

// Inflight lists the tokens of deliveries the device has not acknowledged.
func (s *Session) Inflight() []string {
	if s.rare == nil {
		return nil
	}
	out := make([]string, 0, len(s.rare.inflight))
	for _, f := range s.rare.inflight {
		if f.token != "" {
			out = append(out, f.token)
		}
	}
	return out
}

// writePublish encodes and sends a PUBLISH unless it exceeds the device's
// maximum packet size [MQTT-3.1.2-24]: nil when it was sent, ErrTooLarge,
// or ErrNotConnected when the connection is closed or its write failed
// (the two must not be confused: a command too large is given up, one
// not written is written again later).
func (s *Session) writePublish(pub *mqttcodec.Publish) error {
	var size int
	sent := s.write(func(dst []byte) []byte {
		out := mqttcodec.AppendPublish(dst, s.entry.Protocol, pub)
		size = len(out) - len(dst)
		if s.tooLarge(size) {
			return dst // nothing written
		}
		return out
	})
	switch {
	case size > 0 && s.tooLarge(size):
		return ErrTooLarge
	case !sent:
		return ErrNotConnected
	}
	return nil
}

// allocPID returns a packet identifier not in use by an outbound
// exchange, nor kept by a queued message of a resumed session.
func (s *Session) allocPID() uint16 {
	for {
		s.nextPID++
		if s.nextPID == 0 {
			s.nextPID = 1
		}
		if s.rare == nil || !s.rare.pidInUse(s.nextPID) {
			return s.nextPID
		}
	}
}

func (r *rareState) pidInUse(pid uint16) bool {
	for _, f := range r.inflight {
		if f.pid == pid {
			return true
		}
	}
	if r.queuedPIDs > 0 {
		for i := range r.queued {
			if r.queued[i].PacketID == pid {
				return true
			}
		}
	}
	return false
}

// Instruct sends a reconnect instruction: move to mode at addr. MQTT 5
// devices get DISCONNECT 0x9C (Use another server) with the Server
// Reference and the connection closes; 3.1.1 devices get a PUBLISH QoS 1 on
// control.ControlTopic and ControlGrace to leave before the gateway closes.
// Owner context.
func (s *Session) Instruct(mode control.Mode, addr, reason string) error {
	if s.state != stateConnected {
		return ErrNotConnected
	}
	if mode == control.ModePlain && s.t.Mode() != registry.ModeTLS {
		// Anti-downgrade: a device obeys plain only over TLS, so the
		// gateway never sends it otherwise.
		return ErrDowngradeOnPlain
	}
	if s.flags&flagInstructed != 0 {
		return ErrInstructed
	}
	s.flags |= flagInstructed | flagMoved
	s.env.Stats.Instructions.Add(1)
	s.env.Logger.Debug("reconnect instruction", zap.String("client", s.entry.ClientID),
		zap.String("mode", string(mode)), zap.String("addr", addr), zap.String("reason", reason))
	if s.entry.Protocol == mqttcodec.V5 {
		d := mqttcodec.Disconnect{ReasonCode: mqttcodec.UseAnotherServer}
		d.Properties.SetServerReference([]byte(control.ServerReference(mode, addr)))
		d.Properties.SetReasonString([]byte(reason))
		s.closeWith(&d)
		return nil
	}
	in := control.Instruction{V: control.Version, Op: control.OpReconnect, Mode: mode, Addr: addr, Reason: reason}
	pub := mqttcodec.Publish{Topic: []byte(control.ControlTopic), Payload: in.Marshal(), QoS: 1, PacketID: s.allocPID()}
	if err := s.writePublish(&pub); err != nil {
		return err
	}
	r := s.rareState()
	r.inflight = append(r.inflight, inflight{pid: pub.PacketID, qos: 1})
	s.deadline = s.env.Now().Add(s.env.ControlGrace).UnixNano()
	return nil
}

// Drain moves the device off this gateway: an MQTT 5 device gets
// DISCONNECT 0x9C with ref as its Server Reference (another gateway), or
// 0x8B Server shutting down when ref is empty; a 3.1.1 device is closed
// and reconnects through its load balancer. Owner context.
func (s *Session) Drain(ref string) {
	if s.state != stateConnected {
		s.closeNow()
		return
	}
	s.flags |= flagMoved
	if s.entry.Protocol == mqttcodec.V5 && ref != "" {
		d := mqttcodec.Disconnect{ReasonCode: mqttcodec.UseAnotherServer}
		d.Properties.SetServerReference([]byte(ref))
		d.Properties.SetReasonString([]byte(control.ReasonDrain))
		s.closeWith(&d)
		return
	}
	s.disconnect(mqttcodec.ServerShuttingDown, control.ReasonDrain)
}
