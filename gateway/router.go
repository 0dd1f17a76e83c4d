package gateway

import (
	"sync"

	"github.com/dualgate/dualgate/gateway/bridge"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// router is where device publishes and subscriptions go. With an upstream
// broker, publishes go up through the bridge and come back from the broker
// (with what other clients publish) to be fanned out to local subscribers;
// subscriptions are mirrored upstream. Without one, the gateway routes its
// devices' publishes to its own subscribers: a small broker for its devices,
// without retained messages.
type router struct {
	upstream *bridge.Bridge // nil without --upstream

	mu   sync.RWMutex // guards subs
	subs map[string]map[*session.Session]byte
}

func newRouter() *router {
	return &router{subs: make(map[string]map[*session.Session]byte)}
}

func (r *router) subscribe(s *session.Session, filter string, qos byte) {
	r.mu.Lock()
	m := r.subs[filter]
	if m == nil {
		m = make(map[*session.Session]byte)
		r.subs[filter] = m
	}
	m[s] = qos
	r.mu.Unlock()
	if r.upstream != nil {
		r.upstream.Subscribe(s, filter, qos)
	}
}

func (r *router) unsubscribe(s *session.Session, filter string) {
	r.mu.Lock()
	if m := r.subs[filter]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(r.subs, filter)
		}
	}
	r.mu.Unlock()
	if r.upstream != nil {
		r.upstream.Unsubscribe(s, filter)
	}
}

// sync adds a session's subscriptions (a resumed persistent session).
func (r *router) sync(s *session.Session, subs []session.Subscription) {
	for _, sub := range subs {
		r.subscribe(s, sub.Filter, sub.QoS)
	}
}

func (r *router) drop(s *session.Session, subs []session.Subscription) {
	for _, sub := range subs {
		r.unsubscribe(s, sub.Filter)
	}
}

// Publish takes a device's message: up to the broker, or straight to the
// local subscribers without one.
func (r *router) Publish(m *session.Message, ack func(mqttcodec.ReasonCode)) {
	if r.upstream != nil {
		r.upstream.Publish(m, ack)
		return
	}
	r.fanout(m.Topic, m.Payload, m.QoS)
	if ack != nil {
		ack(mqttcodec.Success)
	}
}

// fromUpstream fans a broker message out to the local subscribers.
func (r *router) fromUpstream(m bridge.Message) { r.fanout(m.Topic, m.Payload, m.QoS) }

// fanout delivers to every local subscriber with a matching filter, once
// per session however many of its filters match, at the lower of the
// message's QoS and the highest matching subscription's [MQTT-3.3.5-1].
func (r *router) fanout(topic string, payload []byte, qos byte) {
	targets := map[*session.Session]byte{}
	tb := []byte(topic)
	r.mu.RLock()
	for filter, subs := range r.subs {
		if !mqttcodec.MatchTopic([]byte(filter), tb) {
			continue
		}
		for s, sq := range subs {
			if q, ok := targets[s]; !ok || sq > q {
				targets[s] = sq
			}
		}
	}
	r.mu.RUnlock()
	for s, sq := range targets {
		d := &session.Delivery{Topic: topic, Payload: payload, QoS: min(sq, qos)}
		s.Exec(func(s *session.Session) { _ = s.Deliver(d) })
	}
}

// retainedFromUpstream delivers a retained message to the subscribers
// whose new subscription made the broker send it, with the retain flag set
// [MQTT-3.3.1-8].
func (r *router) retainedFromUpstream(filter string, subscribers []any, m bridge.Message) {
	r.mu.RLock()
	subs := r.subs[filter]
	var targets []*session.Session
	var qos []byte
	for _, h := range subscribers {
		s, ok := h.(*session.Session)
		if !ok {
			continue
		}
		if sq, ok := subs[s]; ok {
			targets = append(targets, s)
			qos = append(qos, min(sq, m.QoS))
		}
	}
	r.mu.RUnlock()
	for i, s := range targets {
		d := &session.Delivery{Topic: m.Topic, Payload: m.Payload, QoS: qos[i], Retain: true}
		s.Exec(func(s *session.Session) { _ = s.Deliver(d) })
	}
}
