package gateway

import (
	"errors"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/acl"
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
//
// Every publish, a device's or a Will's, is authorized here by the one
// topic authorization (acl) before it goes anywhere, and every message is
// checked again, on its topic, for each subscriber it would reach. Secure
// data, published over TLS or on a --secure-topics topic, is marked TLSOnly
// so that session.CheckTransport keeps it off plain sockets.
type router struct {
	upstream *bridge.Bridge // nil without --upstream
	acl      *acl.Authorizer
	// origins remembers what devices published over TLS, to recognise the
	// broker's copy (upstream only; nil without).
	origins *originSet
	log     *zap.Logger // sampled
	stats   *routeStats

	mu   sync.RWMutex // guards subs
	subs map[string]map[*session.Session]byte
}

// routeStats counts the router's refusals. Safe for concurrent use.
type routeStats struct {
	publishRefused atomic.Uint64 // publishes (and Wills) the topic authorization refused
	plainSecure    atomic.Uint64 // publishes on a secure topic over plain, refused
	readWithheld   atomic.Uint64 // deliveries the topic authorization kept from a subscriber
	secureWithheld atomic.Uint64 // secure data kept from a plain subscriber by CheckTransport
	secureEchoes   atomic.Uint64 // broker messages recognised as published over TLS here
}

func newRouter(a *acl.Authorizer, log *zap.Logger, stats *routeStats) *router {
	return &router{acl: a, log: log, stats: stats, subs: make(map[string]map[*session.Session]byte)}
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
		r.upstream.Subscribe(s, session.Subscription{Filter: filter, QoS: qos}, true, nil)
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

// Publish takes a device's message (or Will): refused when the topic
// authorization says no, else up to the broker, or straight to the local
// subscribers without one.
func (r *router) Publish(m *session.Message, ack func(mqttcodec.ReasonCode)) {
	if v := r.acl.Publish(m.ClientID, m.Username, m.Topic, m.TLS); v != acl.Allowed {
		if v == acl.PlainSecure {
			r.stats.plainSecure.Add(1)
		} else {
			r.stats.publishRefused.Add(1)
		}
		r.log.Info("device publish refused", zap.String("client", m.ClientID), zap.String("topic", m.Topic),
			zap.Bool("secure_topic_over_plain", v == acl.PlainSecure))
		if ack != nil {
			ack(mqttcodec.NotAuthorized)
		}
		return
	}
	if r.upstream != nil {
		if m.TLS {
			// Before it leaves: the broker's copy may come back at once.
			r.origins.add(m.Topic, m.Payload)
		}
		r.upstream.Publish(m, ack)
		return
	}
	r.fanout(m.Topic, m.Payload, m.QoS, m.TLS || r.acl.Secure(m.Topic))
	if ack != nil {
		ack(mqttcodec.Success)
	}
}

// fromUpstream fans a broker message out to the local subscribers. A copy
// of what a device published here over TLS, or a secure topic, goes to TLS
// sessions only.
func (r *router) fromUpstream(m bridge.Message) {
	r.fanout(m.Topic, m.Payload, m.QoS, r.secureFromUpstream(m))
}

func (r *router) secureFromUpstream(m bridge.Message) bool {
	if r.acl.Secure(m.Topic) {
		return true
	}
	if r.origins.seen(m.Topic, m.Payload) {
		r.stats.secureEchoes.Add(1)
		return true
	}
	return false
}

// fanout delivers to every local subscriber with a matching filter, once
// per session however many of its filters match, at the lower of the
// message's QoS and the highest matching subscription's [MQTT-3.3.5-1].
// It runs on the bridge's receive goroutine (or, without an upstream, on
// the publishing device's event loop) and never waits on a subscriber:
// Exec queues each delivery to the subscriber's owner (its event loop,
// or its TLS connection's queue), so a slow device slows nobody else.
func (r *router) fanout(topic string, payload []byte, qos byte, tlsOnly bool) {
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
		d := &session.Delivery{Topic: topic, Payload: payload, QoS: min(sq, qos), TLSOnly: tlsOnly}
		s.Exec(func(s *session.Session) { r.deliver(s, d) })
	}
}

// deliver writes a routed message to one subscriber, in its owner
// context, if the topic authorization lets it read the topic; what may be
// written to its socket is session.CheckTransport's to decide.
func (r *router) deliver(s *session.Session, d *session.Delivery) {
	if !r.acl.Read(s.ClientID(), s.Username(), d.Topic) {
		r.stats.readWithheld.Add(1)
		return
	}
	if err := s.Deliver(d); errors.Is(err, session.ErrInsecureTransport) {
		r.stats.secureWithheld.Add(1)
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
	if len(targets) == 0 {
		return
	}
	tlsOnly := r.secureFromUpstream(m)
	for i, s := range targets {
		d := &session.Delivery{Topic: m.Topic, Payload: m.Payload, QoS: qos[i], Retain: true, TLSOnly: tlsOnly}
		s.Exec(func(s *session.Session) { r.deliver(s, d) })
	}
}
