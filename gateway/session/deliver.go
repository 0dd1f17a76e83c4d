package session

import (
	"errors"
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
func (s *Session) Deliver(d *Delivery) error {
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
	if s.state != stateConnected {
		return ErrNotConnected
	}
	if d.QoS > 0 {
		switch {
		case d.Token != "" && s.windowFull(d):
			return ErrInflightFull
		case d.Token == "" && (s.Queued() > 0 || s.windowFull(d)):
			// In order behind what waits already [MQTT-4.6.0-6].
			return s.enqueue(d)
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
	pub := mqttcodec.Publish{Topic: []byte(d.Topic), Payload: d.Payload, QoS: min(d.QoS, 1), Dup: d.Dup && d.QoS > 0, Retain: d.Retain}
	if pub.QoS > 0 {
		pub.PacketID = s.allocPID()
	}
	if !s.writePublish(&pub) {
		return ErrTooLarge
	}
	if pub.QoS > 0 {
		r := s.rareState()
		f := inflight{pid: pub.PacketID, token: d.Token}
		if d.Token == "" {
			m := *d
			f.msg = &m
			r.inflightBytes += deliverySize(d)
		}
		r.inflight = append(r.inflight, f)
	}
	s.env.Stats.Deliveries.Add(1)
	return nil
}

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
// maximum packet size [MQTT-3.1.2-24]; it reports whether it was sent.
func (s *Session) writePublish(pub *mqttcodec.Publish) bool {
	var size int
	sent := s.write(func(dst []byte) []byte {
		out := mqttcodec.AppendPublish(dst, s.entry.Protocol, pub)
		size = len(out) - len(dst)
		if s.tooLarge(size) {
			return dst // nothing written
		}
		return out
	})
	return sent && !s.tooLarge(size)
}

// allocPID returns a packet identifier not in use by an outbound delivery.
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
		s.write(func(dst []byte) []byte { return mqttcodec.AppendDisconnect(dst, mqttcodec.V5, &d) })
		s.closeNow()
		return nil
	}
	in := control.Instruction{V: control.Version, Op: control.OpReconnect, Mode: mode, Addr: addr, Reason: reason}
	pub := mqttcodec.Publish{Topic: []byte(control.ControlTopic), Payload: in.Marshal(), QoS: 1, PacketID: s.allocPID()}
	if !s.writePublish(&pub) {
		return ErrTooLarge
	}
	r := s.rareState()
	r.inflight = append(r.inflight, inflight{pid: pub.PacketID})
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
		s.write(func(dst []byte) []byte { return mqttcodec.AppendDisconnect(dst, mqttcodec.V5, &d) })
		s.closeNow()
		return
	}
	s.disconnect(mqttcodec.ServerShuttingDown, control.ReasonDrain)
}
