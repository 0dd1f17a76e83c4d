package gateway

import (
	"sync"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// router delivers what devices publish to the gateway's own subscribed
// devices. Without an upstream broker it is the gateway's Sink, so a
// gateway on its own behaves as a small broker for its devices (no retained
// messages: see docs/operations.md).
type router struct {
	next session.Sink // where messages go after local delivery; nil: nowhere

	mu   sync.RWMutex // guards subs
	subs map[string]map[*session.Session]byte
}

func newRouter(next session.Sink) *router {
	return &router{next: next, subs: make(map[string]map[*session.Session]byte)}
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
}

// sync makes the index match the session's current subscriptions.
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

// Publish delivers m to every local subscriber whose filter matches, at the
// lower of the two QoS levels, then hands it on.
func (r *router) Publish(m *session.Message, ack func(mqttcodec.ReasonCode)) {
	type target struct {
		s   *session.Session
		qos byte
	}
	var targets []target
	topic := []byte(m.Topic)
	r.mu.RLock()
	for filter, subs := range r.subs {
		if !mqttcodec.MatchTopic([]byte(filter), topic) {
			continue
		}
		for s, qos := range subs {
			targets = append(targets, target{s, min(qos, m.QoS)})
		}
	}
	r.mu.RUnlock()
	for _, t := range targets {
		d := &session.Delivery{Topic: m.Topic, Payload: m.Payload, QoS: t.qos}
		t.s.Exec(func(s *session.Session) { _ = s.Deliver(d) })
	}
	if r.next != nil {
		r.next.Publish(m, ack)
		return
	}
	if ack != nil {
		ack(mqttcodec.Success)
	}
}
