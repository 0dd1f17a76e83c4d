package session

import (
	"slices"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// maxGrantedQoS is the highest QoS the gateway grants devices.
const maxGrantedQoS = 2

// handleSubscribe records filters and answers with one SUBACK code each
// [MQTT-3.8.4-6]. The codec has already refused malformed filters (and,
// for MQTT 5, malformed shared ones, No Local on a shared subscription
// and a Subscription Identifier of 0).
//
// The subscriptions are in force at once (local routes find them), and
// the hooks are asked to put their routes in place (Hooks.Subscribed);
// reading the device pauses until they are (ready), then the SUBACK
// leaves with the failures they report, those subscriptions undone.
func (s *Session) handleSubscribe(p *mqttcodec.Subscribe) {
	v5 := s.entry.Protocol == mqttcodec.V5
	var subID uint32
	if v5 && p.Properties.Has(mqttcodec.PropSubscriptionID) && len(p.Properties.SubscriptionIDs) > 0 {
		subID = p.Properties.SubscriptionIDs[0]
		if subID == 0 {
			s.protocolError("subscription identifier 0", mqttcodec.ProtocolError)
			return
		}
	}
	failure := mqttcodec.ReasonCode(0x80) // 3.1.1 SUBACK failure
	next := slices.Clone(s.Subscriptions())
	pend := &pendingSubscribe{packetID: p.PacketID, codes: make([]mqttcodec.ReasonCode, len(p.Subscriptions))}
	for i := range p.Subscriptions {
		sub := &p.Subscriptions[i]
		f := string(sub.Filter)
		_, inner, shared, err := mqttcodec.ParseShared(sub.Filter)
		switch {
		case len(f) > s.env.MaxTopicLen:
			// Filters are kept for as long as the session: bounded.
			s.env.Stats.SubscribeTooLong.Add(1)
			pend.codes[i] = pick(v5, mqttcodec.TopicFilterInvalid, failure)
			continue
		case shared && s.env.NoSharedSubscriptions:
			pend.codes[i] = pick(v5, mqttcodec.SharedSubscriptionsNotSupported, failure)
			continue
		case shared && (err != nil || mqttcodec.ValidTopicFilter(inner) != nil):
			// An MQTT 3.1.1 filter the codec took for an ordinary one.
			pend.codes[i] = pick(v5, mqttcodec.TopicFilterInvalid, failure)
			continue
		case shared && sub.NoLocal:
			s.protocolError("No Local on a shared subscription", mqttcodec.ProtocolError) // [MQTT-3.8.3-4]
			return
		case s.env.ACL != nil && !s.env.ACL.Subscribe(s.entry.ClientID, s.Username(), string(inner)):
			// Another device's commands, the gateway's $dualgate/ topics
			// (control messages need no subscription), or what the acl
			// file does not grant. A shared subscription is judged by
			// the filter it shares.
			s.env.Stats.SubscribeRefused.Add(1)
			s.env.Logger.Info("subscription refused", zap.String("client", s.entry.ClientID), zap.String("filter", f))
			pend.codes[i] = pick(v5, mqttcodec.NotAuthorized, failure)
			continue
		}
		ns := Subscription{Filter: f, QoS: min(sub.QoS, maxGrantedQoS)}
		if v5 {
			ns.NoLocal, ns.RetainAsPublished, ns.RetainHandling, ns.ID = sub.NoLocal, sub.RetainAsPublished, sub.RetainHandling, subID
		}
		ev := pendingSub{at: i}
		j := slices.IndexFunc(next, func(x Subscription) bool { return x.Filter == f })
		switch {
		case j >= 0:
			// A repeated filter replaces the old subscription [MQTT-3.8.4-3].
			ev.prev, ev.replaced = next[j], true
			next[j] = ns
		case len(next) >= s.env.MaxSubscriptions:
			pend.codes[i] = pick(v5, mqttcodec.QuotaExceeded, failure)
			continue
		default:
			next = append(next, ns)
		}
		pend.codes[i] = mqttcodec.ReasonCode(ns.QoS)
		pend.subs = append(pend.subs, ev)
		pend.events = append(pend.events, SubscribeEvent{Sub: ns, New: !ev.replaced})
	}
	s.subs.Store(&next)
	// The subscriptions are in force before the SUBACK leaves: a device
	// that publishes on another connection as soon as it has its SUBACK
	// must get the message. What the hooks start for this session
	// (deliveries, pending commands) comes through Exec, so after the
	// SUBACK unless the routes take longer.
	if s.env.Hooks == nil || len(pend.events) == 0 {
		s.finishSubscribe(pend, nil)
		return
	}
	var called atomic.Bool
	var state atomic.Int32
	var early []mqttcodec.ReasonCode
	s.env.Hooks.Subscribed(s, pend.events, func(failures []mqttcodec.ReasonCode) {
		if called.Swap(true) {
			return // called once only
		}
		early = failures
		if state.CompareAndSwap(ackWaiting, ackSync) {
			return
		}
		s.t.Exec(func() { s.finishSubscribe(pend, failures) })
	})
	if !state.CompareAndSwap(ackWaiting, ackAsync) {
		s.finishSubscribe(pend, early)
		return
	}
	// The routes take a while: nothing more is read from the device
	// until they are in place (the packet after this one waits with the
	// transport). ready's answer runs in owner context, after this.
	s.PauseReading(pauseSubscribe)
}

// pendingSubscribe is a SUBSCRIBE waiting for its routes.
type pendingSubscribe struct {
	packetID uint16
	codes    []mqttcodec.ReasonCode // one per filter of the packet
	events   []SubscribeEvent       // what the hooks were told
	subs     []pendingSub           // one per event
}

// pendingSub is how to undo one subscription of a SUBSCRIBE.
type pendingSub struct {
	at       int          // its filter's index in the packet
	prev     Subscription // what it replaced (replaced)
	replaced bool
}

// finishSubscribe answers a SUBSCRIBE once its routes are in place:
// subscriptions the hooks could not route are undone (the one each
// replaced is back) and get the failure code in the SUBACK; reading
// resumes. A session that ended meanwhile does nothing. Owner context.
func (s *Session) finishSubscribe(p *pendingSubscribe, failures []mqttcodec.ReasonCode) {
	if s.state != stateConnected {
		return
	}
	v5 := s.entry.Protocol == mqttcodec.V5
	var next []Subscription
	for i := len(p.subs) - 1; i >= 0; i-- { // last first: a filter repeated in the packet comes back right
		if i >= len(failures) || failures[i] < 0x80 {
			continue
		}
		if next == nil {
			next = slices.Clone(s.Subscriptions())
		}
		ps := &p.subs[i]
		f := p.events[i].Sub.Filter
		if j := slices.IndexFunc(next, func(x Subscription) bool { return x.Filter == f }); j >= 0 {
			if ps.replaced {
				next[j] = ps.prev
			} else {
				next = slices.Delete(next, j, j+1)
			}
		}
		p.codes[ps.at] = pick(v5, failures[i], 0x80)
	}
	if next != nil {
		s.subs.Store(&next)
	}
	ack := mqttcodec.Suback{PacketID: p.packetID, ReasonCodes: p.codes}
	s.write(func(dst []byte) []byte { return mqttcodec.AppendSuback(dst, s.entry.Protocol, &ack) })
	s.ResumeReading(pauseSubscribe)
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
