package session

import (
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// handlePublish takes an application message from the device.
func (s *Session) handlePublish(p *mqttcodec.Publish) {
	topic, ok := s.resolveTopic(p)
	if !ok {
		return
	}
	if len(topic) > s.env.MaxTopicLen {
		s.protocolError("topic longer than the gateway accepts", mqttcodec.TopicNameInvalid)
		return
	}
	if p.Properties.Has(mqttcodec.PropSubscriptionID) {
		// A device's PUBLISH carries none [MQTT-3.3.4-6].
		s.protocolError("subscription identifier in a PUBLISH from a client", mqttcodec.ProtocolError)
		return
	}
	s.env.Stats.PublishesIn.Add(1)

	if topic == control.QueryTopic {
		s.handleQuery(p)
		return
	}
	// Everything else, '$' topics included, goes to the Sink, which asks
	// the topic authorization (Env.ACL) and refuses with NotAuthorized:
	// MQTT 5 devices get the reason code, 3.1.1 devices are closed
	// (finishInbound), QoS 0 messages are dropped.
	switch p.QoS {
	case 0:
		s.env.Sink.Publish(s.message(p, topic), nil)
	case 1:
		if !s.takeInbound(1) {
			return
		}
		s.sinkWithAck(s.message(p, topic), mqttcodec.PUBACK, p.PacketID)
		s.holdBackInbound()
	case 2:
		if _, dup := s.rareState().qos2[p.PacketID]; dup {
			// Already taken: answer again, deliver once [MQTT-4.3.3-9].
			s.writeAck(mqttcodec.PUBREC, p.PacketID, mqttcodec.Success)
			return
		}
		if !s.takeInbound(2) {
			return
		}
		s.sinkWithAck(s.message(p, topic), mqttcodec.PUBREC, p.PacketID)
		s.holdBackInbound()
	}
}

// resolveTopic applies MQTT 5 topic aliases [MQTT-3.3.2-8..12].
func (s *Session) resolveTopic(p *mqttcodec.Publish) (string, bool) {
	if s.entry.Protocol != mqttcodec.V5 || !p.Properties.Has(mqttcodec.PropTopicAlias) {
		return string(p.Topic), true
	}
	a := p.Properties.TopicAlias
	if a == 0 || a > s.env.TopicAliasMaximum {
		s.protocolError("topic alias out of range", mqttcodec.TopicAliasInvalid)
		return "", false
	}
	r := s.rareState()
	if len(p.Topic) == 0 {
		t, ok := r.aliases[a]
		if !ok {
			s.protocolError("unknown topic alias", mqttcodec.ProtocolError)
			return "", false
		}
		return t, true
	}
	if r.aliases == nil {
		r.aliases = make(map[uint16]string)
	}
	t := string(p.Topic)
	r.aliases[a] = t
	return t, true
}

// handleQuery answers the device's query on control.QueryTopic: the
// gateway's own topic, never routed.
func (s *Session) handleQuery(p *mqttcodec.Publish) {
	switch p.QoS {
	case 1:
		s.writeAck(mqttcodec.PUBACK, p.PacketID, mqttcodec.Success)
	case 2:
		if _, dup := s.rareState().qos2[p.PacketID]; !dup {
			if !s.takeInbound(2) {
				return
			}
			s.inboundQoS-- // answered at once: only the release is awaited
			s.rare.qos2Add(p.PacketID)
		}
		s.writeAck(mqttcodec.PUBREC, p.PacketID, mqttcodec.Success)
	}
	if s.env.Hooks != nil && s.state == stateConnected {
		s.env.Hooks.Query(s)
	}
}

// takeInbound counts a QoS 1/2 publish in flight from the device.
//
// An MQTT 5 device was told the Receive Maximum in CONNACK: its QoS 1
// publishes count until their PUBACK, its QoS 2 ones until the PUBCOMP
// (their PUBREL arrived), and one more than advertised is a protocol
// error, DISCONNECT 0x93 [MQTT-3.3.4-9].
//
// An MQTT 3.1.1 device was told nothing: it is never closed for the
// number it sends. Past ReceiveMaximum publishes waiting for the Sink the
// gateway stops reading it (holdBackInbound) until acknowledgements
// return. Its unreleased QoS 2 publishes are state only the device can
// free (its PUBRELs may sit behind publishes the gateway would not read),
// so they are bounded apart, by MaxQoS2Unreleased, past which it is closed.
func (s *Session) takeInbound(qos byte) bool {
	unreleased := 0
	if s.rare != nil {
		unreleased = len(s.rare.qos2)
	}
	switch {
	case s.entry.Protocol == mqttcodec.V5:
		if int(s.inboundQoS)+unreleased >= int(s.env.ReceiveMaximum) {
			s.env.Stats.ReceiveMaximumExceeded.Add(1)
			s.protocolError("receive maximum exceeded", mqttcodec.ReceiveMaximumExceeded)
			return false
		}
	case qos == 2 && unreleased >= s.env.MaxQoS2Unreleased:
		s.env.Stats.QoS2Unreleased.Add(1)
		s.env.Logger.Info("device leaves too many QoS 2 publishes unreleased; closing",
			zap.String("client", s.entry.ClientID), zap.Int("unreleased", unreleased))
		s.closeNow()
		return false
	}
	s.inboundQoS++
	return true
}

// holdBackInbound stops reading an MQTT 3.1.1 device that has
// ReceiveMaximum publishes waiting for the Sink (TCP backpressure); the
// acknowledgements that return resume it (finishInbound).
func (s *Session) holdBackInbound() {
	if s.entry.Protocol != mqttcodec.V5 && s.inboundQoS >= s.env.ReceiveMaximum && s.state == stateConnected {
		s.PauseReading(pauseInbound)
	}
}

// message copies an application message out of the packet (whose
// slices the codec reuses), with its MQTT 5 properties and expiry.
func (s *Session) message(p *mqttcodec.Publish, topic string) *Message {
	m := &Message{
		ClientID: s.entry.ClientID,
		Username: s.Username(),
		Topic:    topic,
		Payload:  append([]byte(nil), p.Payload...),
		QoS:      p.QoS,
		Retain:   p.Retain,
		TLS:      s.t.Mode() == registry.ModeTLS,
		From:     s,
	}
	if s.entry.Protocol == mqttcodec.V5 {
		m.Props = messageProps(&p.Properties)
		m.Expires = expiresAt(&p.Properties, s.env.Now())
	}
	return m
}

// ack states of sinkWithAck.
const (
	ackWaiting int32 = iota
	ackSync          // ack was called before Publish returned
	ackAsync         // Publish returned first: ack comes from elsewhere
)

// sinkWithAck hands m to the Sink and answers the device (PUBACK or PUBREC)
// when the Sink acknowledges: at once if it does so before Publish returns,
// otherwise in owner context through the transport.
func (s *Session) sinkWithAck(m *Message, t mqttcodec.Type, pid uint16) {
	var state atomic.Int32
	var rcSync atomic.Uint32
	s.env.Sink.Publish(m, func(rc mqttcodec.ReasonCode) {
		rcSync.Store(uint32(rc))
		if state.CompareAndSwap(ackWaiting, ackSync) {
			return
		}
		if s.env.acks != nil {
			s.env.acks.add(s, asyncAck{t: t, pid: pid, rc: rc})
			return
		}
		s.t.Exec(func() {
			if s.state == stateConnected {
				s.finishInbound(t, pid, rc)
			}
		})
	})
	if !state.CompareAndSwap(ackWaiting, ackAsync) {
		s.finishInbound(t, pid, mqttcodec.ReasonCode(rcSync.Load()))
	}
}

func (s *Session) finishInbound(t mqttcodec.Type, pid uint16, rc mqttcodec.ReasonCode) {
	s.settleInbound(t, pid, rc)
	s.resumeInbound()
	if s.refusesV3(rc) {
		// A 3.1.1 acknowledgement cannot say no: rather than a PUBACK for
		// a message that was not taken, the connection is closed and the
		// device sends it again after reconnecting [MQTT-3.3.5-2].
		s.env.Logger.Info("publish refused; closing the 3.1.1 connection so the device retries",
			zap.String("client", s.entry.ClientID), zap.Stringer("reason", rc))
		s.closeNow()
		return
	}
	s.writeAck(t, pid, rc)
}

// settleInbound frees the device's window slot of an acknowledged
// publish.
func (s *Session) settleInbound(t mqttcodec.Type, pid uint16, rc mqttcodec.ReasonCode) {
	if s.inboundQoS > 0 {
		s.inboundQoS--
	}
	if t == mqttcodec.PUBREC && rc < 0x80 {
		// Until its PUBREL the QoS 2 publish still counts toward the
		// device's window (MQTT 5), as an unreleased one (3.1.1).
		s.rareState().qos2Add(pid)
	}
}

// resumeInbound reads the device again once half its window is free
// (holdBackInbound paused it). Waiting for half rather than one slot
// spares the poller a change per message.
func (s *Session) resumeInbound() {
	if s.rare != nil && s.rare.pauses&pauseInbound != 0 && s.inboundQoS <= s.env.ReceiveMaximum/2 {
		s.ResumeReading(pauseInbound)
	}
}

// refusesV3 reports a refusal that an MQTT 3.1.1 acknowledgement cannot
// carry.
func (s *Session) refusesV3(rc mqttcodec.ReasonCode) bool {
	return rc >= 0x80 && s.entry.Protocol != mqttcodec.V5
}

// asyncAck is the Sink's answer to a device publish, given after Publish
// returned.
type asyncAck struct {
	t   mqttcodec.Type
	pid uint16
	rc  mqttcodec.ReasonCode
}

// ackBatcher gathers the answers the Sink gives from its own goroutines
// (the upstream bridge's, as the broker acknowledges) per session, so that
// a device gets every answer ready for it in one task on its event loop
// and one write: under load a burst of PUBACKs costs one system call
// instead of one each. The order of a device's answers is kept.
type ackBatcher struct {
	mu      sync.Mutex
	pending map[*Session][]asyncAck
	spare   sync.Pool // *[]asyncAck
}

func newAckBatcher() *ackBatcher {
	return &ackBatcher{pending: make(map[*Session][]asyncAck)}
}

// add queues a for s; the first answer of a batch schedules the task
// that writes them all.
func (b *ackBatcher) add(s *Session, a asyncAck) {
	b.mu.Lock()
	q, scheduled := b.pending[s]
	if !scheduled {
		if p, ok := b.spare.Get().(*[]asyncAck); ok {
			q = (*p)[:0]
		}
	}
	b.pending[s] = append(q, a)
	b.mu.Unlock()
	if !scheduled {
		s.t.Exec(func() { b.run(s) })
	}
}

// run answers what waits for s, in owner context.
func (b *ackBatcher) run(s *Session) {
	b.mu.Lock()
	acks := b.pending[s]
	delete(b.pending, s)
	b.mu.Unlock()
	s.finishInbounds(acks)
	if cap(acks) <= 1024 {
		clear(acks)
		acks = acks[:0]
		b.spare.Put(&acks)
	}
}

// finishInbounds answers acks, in order, with one write for a run of
// answers: finishInbound, batched.
func (s *Session) finishInbounds(acks []asyncAck) {
	for len(acks) > 0 && s.state == stateConnected {
		n := 0
		for n < len(acks) && !s.refusesV3(acks[n].rc) {
			n++
		}
		if n == 0 {
			a := acks[0]
			s.finishInbound(a.t, a.pid, a.rc) // closes the connection
			return
		}
		run := acks[:n]
		acks = acks[n:]
		for _, a := range run {
			s.settleInbound(a.t, a.pid, a.rc)
		}
		if s.write(func(dst []byte) []byte {
			for _, a := range run {
				ack := mqttcodec.Ack{PacketID: a.pid, ReasonCode: a.rc}
				dst = mqttcodec.AppendAck(dst, s.entry.Protocol, a.t, &ack)
			}
			return dst
		}) {
			s.env.Stats.PacketsOut.Add(uint64(n - 1)) // write counted one
		}
		s.resumeInbound()
	}
}

// handlePubrel completes an inbound QoS 2 exchange [MQTT-4.3.3-11].
func (s *Session) handlePubrel(a *mqttcodec.Ack) {
	rc := mqttcodec.Success
	if s.rare == nil || !s.rare.qos2Del(a.PacketID) {
		rc = mqttcodec.PacketIdentifierNotFound
	}
	s.writeAck(mqttcodec.PUBCOMP, a.PacketID, rc)
}

// Outbound QoS 1 and 2 toward the device. A QoS 1 delivery waits for its
// PUBACK. A QoS 2 one waits for its PUBREC; then the gateway sends PUBREL
// and waits for the PUBCOMP, the message itself let go (only the PUBREL
// is sent again on a resumed session). A PUBREC with a failure reason
// ends the exchange (its packet identifier is free again). The slot in the device's window is
// freed at the end of the exchange and goes to the next queued message.

// inflightIndex finds the outbound exchange with packet id pid (-1: none).
func (s *Session) inflightIndex(pid uint16) int {
	if s.rare == nil {
		return -1
	}
	for i := range s.rare.inflight {
		if s.rare.inflight[i].pid == pid {
			return i
		}
	}
	return -1
}

// handlePuback completes an outbound QoS 1 delivery; the freed slot goes
// to the next queued message.
func (s *Session) handlePuback(a *mqttcodec.Ack) {
	i := s.inflightIndex(a.PacketID)
	if i < 0 {
		s.env.Logger.Debug("PUBACK for an unknown packet id", zap.String("client", s.entry.ClientID),
			zap.Uint16("packet_id", a.PacketID))
		return
	}
	if s.rare.inflight[i].qos == 2 {
		s.protocolError("PUBACK for a QoS 2 message", mqttcodec.ProtocolError)
		return
	}
	s.finishOutbound(i)
}

// handlePubrec answers the device's receipt of a QoS 2 message: PUBREL,
// or, for a refusal, the end of the exchange.
func (s *Session) handlePubrec(a *mqttcodec.Ack) {
	i := s.inflightIndex(a.PacketID)
	if i < 0 {
		// Not an exchange of this session (any more): release it, so the
		// device can forget the identifier.
		s.writeAck(mqttcodec.PUBREL, a.PacketID, mqttcodec.PacketIdentifierNotFound)
		return
	}
	f := &s.rare.inflight[i]
	if f.qos != 2 {
		s.protocolError("PUBREC for a QoS 1 message", mqttcodec.ProtocolError)
		return
	}
	if a.ReasonCode >= 0x80 {
		// The device refused the message: no PUBREL follows.
		if !f.released {
			s.finishOutbound(i)
		}
		return
	}
	if !f.released {
		f.released = true
		if f.msg != nil {
			s.rare.inflightBytes -= deliverySize(f.msg)
			f.msg = nil
		}
	}
	s.writeAck(mqttcodec.PUBREL, a.PacketID, mqttcodec.Success)
}

// handlePubcomp completes an outbound QoS 2 exchange; the freed slot goes
// to the next queued message.
func (s *Session) handlePubcomp(a *mqttcodec.Ack) {
	i := s.inflightIndex(a.PacketID)
	if i < 0 {
		s.env.Logger.Debug("PUBCOMP for an unknown packet id", zap.String("client", s.entry.ClientID),
			zap.Uint16("packet_id", a.PacketID))
		return
	}
	if !s.rare.inflight[i].released {
		s.protocolError("PUBCOMP before the PUBREL", mqttcodec.ProtocolError)
		return
	}
	s.finishOutbound(i)
}

// finishOutbound ends the outbound exchange at index i: the hooks learn
// of an acknowledged command, and the freed slot goes to the next queued
// message.
func (s *Session) finishOutbound(i int) {
	r := s.rare
	f := r.inflight[i]
	r.inflight = append(r.inflight[:i], r.inflight[i+1:]...)
	if len(r.inflight) == 0 {
		r.inflight = nil
	}
	if f.msg != nil {
		r.inflightBytes -= deliverySize(f.msg)
	}
	if f.token != "" && s.env.Hooks != nil {
		s.env.Hooks.Acked(s, f.token)
	}
	s.sendQueued()
}

// writeAck sends PUBACK, PUBREC, PUBREL or PUBCOMP. A 3.1.1 device only
// ever sees the packet id: its acks carry no reason.
func (s *Session) writeAck(t mqttcodec.Type, pid uint16, rc mqttcodec.ReasonCode) {
	a := mqttcodec.Ack{PacketID: pid, ReasonCode: rc}
	s.write(func(dst []byte) []byte { return mqttcodec.AppendAck(dst, s.entry.Protocol, t, &a) })
}

func (r *rareState) qos2Add(pid uint16) {
	if r.qos2 == nil {
		r.qos2 = make(map[uint16]struct{})
	}
	r.qos2[pid] = struct{}{}
}

func (r *rareState) qos2Del(pid uint16) bool {
	if _, ok := r.qos2[pid]; !ok {
		return false
	}
	delete(r.qos2, pid)
	return true
}
