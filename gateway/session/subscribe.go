package session

import (
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// maxGrantedQoS is the highest QoS the gateway delivers to devices.
const maxGrantedQoS = 1

// handleSubscribe records filters and answers with one SUBACK code each
// [MQTT-3.8.4-6]. The codec has already refused malformed filters.
func (s *Session) handleSubscribe(p *mqttcodec.Subscribe) {
	v5 := s.entry.Protocol == mqttcodec.V5
	if v5 && p.Properties.Has(mqttcodec.PropSubscriptionID) {
		// CONNACK said Subscription Identifier Available = 0.
		s.protocolError("subscription identifiers are not supported", mqttcodec.SubscriptionIdentifiersNotSupported)
		return
	}
	failure := mqttcodec.ReasonCode(0x80) // 3.1.1 SUBACK failure
	next := slices.Clone(s.Subscriptions())
	codes := make([]mqttcodec.ReasonCode, len(p.Subscriptions))
	var added []Subscription
	for i := range p.Subscriptions {
		sub := &p.Subscriptions[i]
		f := string(sub.Filter)
		switch {
		case strings.HasPrefix(f, "$share/"):
			codes[i] = pick(v5, mqttcodec.SharedSubscriptionsNotSupported, failure)
			continue
		case len(f) > s.env.MaxTopicLen:
			// Filters are kept for as long as the session: bounded.
			s.env.Stats.SubscribeTooLong.Add(1)
			codes[i] = pick(v5, mqttcodec.TopicFilterInvalid, failure)
			continue
		case s.env.ACL != nil && !s.env.ACL.Subscribe(s.entry.ClientID, s.Username(), f):
			// Another device's commands, the gateway's $dualgate/ topics
			// (control messages need no subscription), or what the acl
			// file does not grant.
			s.env.Stats.SubscribeRefused.Add(1)
			s.env.Logger.Info("subscription refused", zap.String("client", s.entry.ClientID), zap.String("filter", f))
			codes[i] = pick(v5, mqttcodec.NotAuthorized, failure)
			continue
		}
		qos := min(sub.QoS, maxGrantedQoS)
		j := slices.IndexFunc(next, func(x Subscription) bool { return x.Filter == f })
		switch {
		case j >= 0:
			next[j].QoS = qos // a repeated filter replaces the old one [MQTT-3.8.4-3]
		case len(next) >= s.env.MaxSubscriptions:
			codes[i] = pick(v5, mqttcodec.QuotaExceeded, failure)
			continue
		default:
			next = append(next, Subscription{Filter: f, QoS: qos})
		}
		codes[i] = mqttcodec.ReasonCode(qos)
		added = append(added, Subscription{Filter: f, QoS: qos})
	}
	s.subs.Store(&next)
	// The subscriptions are in force before the SUBACK leaves: a device
	// that publishes on another connection as soon as it has its SUBACK
	// must get the message. What the hooks start for this session
	// (deliveries, pending commands) comes through Exec, so after the
	// SUBACK.
	ack := mqttcodec.Suback{PacketID: p.PacketID, ReasonCodes: codes}
	if s.env.Hooks == nil || len(added) == 0 {
		s.write(func(dst []byte) []byte { return mqttcodec.AppendSuback(dst, s.entry.Protocol, &ack) })
		return
	}
	evs := make([]SubscribeEvent, len(added))
	for i, sub := range added {
		evs[i] = SubscribeEvent{Sub: sub, New: true}
	}
	s.env.Hooks.Subscribed(s, evs, func([]mqttcodec.ReasonCode) {})
	s.write(func(dst []byte) []byte { return mqttcodec.AppendSuback(dst, s.entry.Protocol, &ack) })
}

// handleUnsubscribe removes filters; MQTT 5 devices learn which existed.
func (s *Session) handleUnsubscribe(p *mqttcodec.Unsubscribe) {
	next := slices.Clone(s.Subscriptions())
	codes := make([]mqttcodec.ReasonCode, len(p.Filters))
	for i, f := range p.Filters {
		j := slices.IndexFunc(next, func(x Subscription) bool { return x.Filter == string(f) })
		if j < 0 {
			codes[i] = mqttcodec.NoSubscriptionExisted
			continue
		}
		next = slices.Delete(next, j, j+1)
		codes[i] = mqttcodec.Success
		if s.env.Hooks != nil {
			s.env.Hooks.Unsubscribed(s, string(f))
		}
	}
	s.subs.Store(&next)
	ack := mqttcodec.Unsuback{PacketID: p.PacketID, ReasonCodes: codes}
	s.write(func(dst []byte) []byte { return mqttcodec.AppendUnsuback(dst, s.entry.Protocol, &ack) })
}

// handleDisconnect ends the session at the device's request.
func (s *Session) handleDisconnect(d *mqttcodec.Disconnect) {
	if s.entry.Protocol == mqttcodec.V5 {
		if d.Properties.Has(mqttcodec.PropSessionExpiry) {
			if s.sessionExpiry == 0 && d.Properties.SessionExpiry != 0 {
				// [MQTT-3.14.2-2]: expiry 0 at CONNECT cannot be raised now.
				s.protocolError("session expiry set on DISCONNECT after 0 at CONNECT", mqttcodec.ProtocolError)
				return
			}
			s.sessionExpiry = min(d.Properties.SessionExpiry, uint32(s.env.MaxSessionExpiry.Seconds()))
		}
		if d.ReasonCode == mqttcodec.DisconnectWithWill {
			s.closeNow()
			return
		}
	}
	s.env.Logger.Debug("device disconnected", zap.String("client", s.entry.ClientID))
	s.flags |= flagGracefulEnd
	s.closeNow()
}

func pick(v5 bool, a, b mqttcodec.ReasonCode) mqttcodec.ReasonCode {
	if v5 {
		return a
	}
	return b
}
