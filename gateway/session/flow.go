package session

import (
	"go.uber.org/zap"
)

// Flow control, both ways.
//
// Inbound, a device is held back by not reading it (Transport.PauseRead),
// never by closing it for a window it was not told of: see takeInbound.
// Each reason to hold a device back is a ReadPause bit; reading resumes
// when no reason is left.
//
// Outbound, a routed QoS 1 or 2 message that finds the device's Receive
// Maximum full waits in the session's queue (rareState.queued) and goes
// out as PUBACKs and PUBCOMPs free the window (a QoS 2 message holds its
// slot until its PUBCOMP). Commands (a Delivery with a Token) are
// not queued: Deliver answers ErrInflightFull and the dispatcher, which
// keeps them durably, sends them again later; one slot of a window of two
// or more is left to them, so routed traffic alone never holds a command
// back.

// ReadPause is a reason to stop reading a device.
type ReadPause uint8

// Reasons to stop reading a device.
const (
	// pauseInbound: an MQTT 3.1.1 device has ReceiveMaximum publishes
	// waiting for the Sink.
	pauseInbound ReadPause = 1 << iota
	// PauseUpstream: where the device's messages go cannot take more of
	// them now (the bridge's QoS 0 backpressure).
	PauseUpstream
	// pauseSubscribe: a SUBSCRIBE waits for its routes (Hooks.Subscribed's
	// ready) before its SUBACK.
	pauseSubscribe
	// pauseConnect: a CONNECT waits for its verdict (auth.Result.Pending)
	// before its CONNACK.
	pauseConnect
)

// PauseReading stops reading the device for reason until ResumeReading
// with the same reason: what it sends waits in its socket, then its own
// sending stalls (TCP backpressure); its keepalive does not run out
// meanwhile. Owner context: from another goroutine, call it through Exec.
func (s *Session) PauseReading(reason ReadPause) {
	if s.state >= stateClosing {
		return
	}
	r := s.rareState()
	r.pauses |= reason
	if s.flags&flagReadPaused == 0 {
		s.flags |= flagReadPaused
		s.env.Stats.ReadPauses.Add(1)
		s.t.PauseRead()
	}
}

// ResumeReading drops reason to hold the device back; reading resumes
// once no reason is left, the keepalive counting from then. Owner context.
func (s *Session) ResumeReading(reason ReadPause) {
	if s.rare == nil || s.rare.pauses&reason == 0 {
		return
	}
	s.rare.pauses &^= reason
	if s.rare.pauses != 0 || s.flags&flagReadPaused == 0 {
		return
	}
	s.flags &^= flagReadPaused
	if s.state >= stateClosing {
		return
	}
	s.deadline = s.keepAliveDeadline(s.env.Now())
	s.t.ResumeRead()
}

// ReadingPaused reports whether the gateway holds the device back. Owner
// context.
func (s *Session) ReadingPaused() bool { return s.flags&flagReadPaused != 0 }

// windowFull reports whether a QoS 1 or 2 delivery must wait: the device's
// Receive Maximum is reached, or, for a routed message (no token), all
// but the slot kept for commands. Routed messages in flight are kept
// until their PUBACK (to be sent again), so they are also bounded by the
// gateway: MaxQueued of them, MaxOutbound bytes, whatever window the
// device claims.
func (s *Session) windowFull(d *Delivery) bool {
	r := s.rare
	if r == nil {
		return false
	}
	limit := r.clientRecvMax()
	if d.Token == "" {
		if limit > 1 {
			limit--
		}
		limit = min(limit, s.env.MaxQueued)
		if r.inflightBytes > 0 && r.inflightBytes+deliverySize(d) > s.env.MaxOutbound {
			return true
		}
	}
	return len(r.inflight) >= limit
}

// deliverySize is what a kept message costs in the bounds: topic,
// payload and properties.
func deliverySize(d *Delivery) int { return len(d.Topic) + len(d.Payload) + propsSize(d.Props) }

// enqueue keeps a routed QoS 1 or 2 message until the device's window has
// room. Past MaxQueued messages or MaxOutbound bytes it is dropped,
// counted and logged: the device takes its messages more slowly than
// they come. A message of a resumed session (kept) waits whatever the
// bounds: it was counted in the bounds of the store or of the session it
// comes from. An expired message is dropped (ErrExpired).
func (s *Session) enqueue(d *Delivery, kept bool) error {
	if expired(d.Expires, s.env.Now()) && !sentBefore(d) {
		s.env.Stats.MessagesExpired.Add(1)
		return ErrExpired
	}
	r := s.rareState()
	size := deliverySize(d)
	if !kept && (len(r.queued) >= s.env.MaxQueued || r.queuedBytes+size > s.env.MaxOutbound) {
		s.env.Stats.QueueDropped.Add(1)
		if s.env.Stats.QueueDropped.Load()&(s.env.Stats.QueueDropped.Load()-1) == 0 {
			// Logged at the 1st, 2nd, 4th, 8th... drop: a bounded rate.
			s.env.Logger.Info("device's queue is full; message dropped",
				zap.String("client", s.entry.ClientID), zap.String("topic", d.Topic),
				zap.Int("queued", len(r.queued)), zap.Int("queued_bytes", r.queuedBytes))
		}
		return ErrQueueFull
	}
	r.push(d)
	s.env.Stats.Queued.Add(1)
	return nil
}

// push appends d to the queue.
func (r *rareState) push(d *Delivery) {
	r.queued = append(r.queued, *d)
	r.queuedBytes += deliverySize(d)
	if d.PacketID != 0 {
		r.queuedPIDs++
	}
}

// sendQueued sends queued messages while the device's window has room.
func (s *Session) sendQueued() {
	r := s.rare
	for r != nil && len(r.queued) > 0 && s.state == stateConnected {
		d := &r.queued[0]
		if s.windowFull(d) {
			return
		}
		dd := *d
		r.queuedBytes -= deliverySize(d)
		if dd.PacketID != 0 {
			r.queuedPIDs--
		}
		r.queued[0] = Delivery{}
		r.queued = r.queued[1:]
		if len(r.queued) == 0 {
			r.queued, r.queuedBytes, r.queuedPIDs = nil, 0, 0
		}
		if err := s.send(&dd); err != nil {
			s.env.Logger.Debug("queued message not sent", zap.String("client", s.entry.ClientID), zap.Error(err))
		}
	}
}

// Queued reports how many routed messages wait for the device's window.
// Owner context.
func (s *Session) Queued() int {
	if s.rare == nil {
		return 0
	}
	return len(s.rare.queued)
}
