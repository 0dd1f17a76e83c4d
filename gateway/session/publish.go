package session

import (
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
		if !s.takeInbound() {
			return
		}
		s.sinkWithAck(s.message(p, topic), mqttcodec.PUBACK, p.PacketID)
	case 2:
		if _, dup := s.rareState().qos2[p.PacketID]; dup {
			// Already taken: answer again, deliver once [MQTT-4.3.3-9].
			s.writeAck(mqttcodec.PUBREC, p.PacketID, mqttcodec.Success)
			return
		}
		if !s.takeInbound() {
			return
		}
		s.sinkWithAck(s.message(p, topic), mqttcodec.PUBREC, p.PacketID)
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
		s.rareState().qos2Add(p.PacketID)
		s.writeAck(mqttcodec.PUBREC, p.PacketID, mqttcodec.Success)
	}
	if s.env.Hooks != nil && s.state == stateConnected {
		s.env.Hooks.Query(s)
	}
}

// takeInbound counts a QoS 1/2 publish against the receive maximum
// [MQTT-3.3.4-9].
func (s *Session) takeInbound() bool {
	if s.inboundQoS >= s.env.ReceiveMaximum {
		s.protocolError("receive maximum exceeded", mqttcodec.ReceiveMaximumExceeded)
		return false
	}
	s.inboundQoS++
	return true
}

func (s *Session) message(p *mqttcodec.Publish, topic string) *Message {
	return &Message{
		ClientID: s.entry.ClientID,
		Username: s.Username(),
		Topic:    topic,
		Payload:  append([]byte(nil), p.Payload...),
		QoS:      p.QoS,
		Retain:   p.Retain,
		TLS:      s.t.Mode() == registry.ModeTLS,
	}
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
	if s.inboundQoS > 0 {
		s.inboundQoS--
	}
	if t == mqttcodec.PUBREC && rc < 0x80 {
		s.rareState().qos2Add(pid)
	}
	if rc >= 0x80 && s.entry.Protocol != mqttcodec.V5 {
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

// handlePubrel completes an inbound QoS 2 exchange [MQTT-4.3.3-11].
func (s *Session) handlePubrel(a *mqttcodec.Ack) {
	rc := mqttcodec.Success
	if s.rare == nil || !s.rare.qos2Del(a.PacketID) {
		rc = mqttcodec.PacketIdentifierNotFound
	}
	s.writeAck(mqttcodec.PUBCOMP, a.PacketID, rc)
}

// handlePuback completes an outbound QoS 1 delivery.
func (s *Session) handlePuback(a *mqttcodec.Ack) {
	if s.rare == nil {
		return
	}
	for i, f := range s.rare.inflight {
		if f.pid != a.PacketID {
			continue
		}
		s.rare.inflight = append(s.rare.inflight[:i], s.rare.inflight[i+1:]...)
		if len(s.rare.inflight) == 0 {
			s.rare.inflight = nil
		}
		if f.token != "" && s.env.Hooks != nil {
			s.env.Hooks.Acked(s, f.token)
		}
		return
	}
	s.env.Logger.Debug("PUBACK for an unknown packet id", zap.String("client", s.entry.ClientID),
		zap.Uint16("packet_id", a.PacketID))
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
