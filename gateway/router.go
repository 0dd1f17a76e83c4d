package gateway

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/acl"
	"github.com/dualgate/dualgate/gateway/bridge"
	"github.com/dualgate/dualgate/gateway/registry"
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
// A subscriber is a live session (*session.Session) or a persistent
// session kept while its device is away (keptRef): messages for a kept
// session wait in the session store (session.Store.Enqueue) until the
// device resumes it, and its subscriptions stay in place upstream. The
// routes move from the session to its kept handle when it ends (Offline,
// Session.Kept) and back when the device resumes it (Online); the store
// tells when a kept session ends unresumed (Store.OnEnd).
//
// Which of a session's subscriptions a message answers, at which QoS,
// with which identifiers, and whether No Local keeps it from its own
// publisher is the session's to decide (Session.Route,
// session.MatchDelivery): the router finds the subscribers, once each.
// Shared subscriptions ($share/group/filter) give each message to one
// member of the group, in turn.
//
// Every publish, a device's or a Will's, is authorized here by the one
// topic authorization (acl) before it goes anywhere, and every message is
// checked again, on its topic, for each subscriber it would reach. Secure
// data, published over TLS or on a --secure-topics topic, is marked TLSOnly
// so that session.CheckTransport keeps it off plain sockets.
type router struct {
	upstream *bridge.Bridge // nil without --upstream
	acl      *acl.Authorizer
	kept     *session.Store
	reg      *registry.Registry[*session.Session]
	// origins remembers what devices published over TLS, to recognise the
	// broker's copy (upstream only; nil without).
	origins *originSet
	// publishers remembers who published what while some subscription has
	// No Local, to recognise a device's own message in the broker's copy
	// (upstream only; nil without).
	publishers *originSet
	noLocal    atomic.Int64 // subscriptions with No Local in force
	log        *zap.Logger  // sampled
	stats      *routeStats

	mu     sync.RWMutex            // guards the fields below
	subs   map[string]subscribers  // non-shared filter -> subscribers
	groups map[string]*sharedGroup // "$share/group/filter" -> its members
	keptBy map[string]keptRef      // client id -> its kept handle
}

// subscribers maps a subscriber (*session.Session or keptRef) to whether
// its subscription has No Local.
type subscribers map[any]bool

// keptRef is the handle of a persistent session kept while its device is
// away: comparable, so the bridge can count it as a subscriber.
type keptRef struct{ id, username string }

// sharedGroup is one shared subscription: its inner filter and members,
// given messages in turn.
type sharedGroup struct {
	filter  string // the filter after $share/group/
	members []any
	next    int
}

// routeStats counts the router's refusals. Safe for concurrent use.
type routeStats struct {
	publishRefused atomic.Uint64 // publishes (and Wills) the topic authorization refused
	plainSecure    atomic.Uint64 // publishes on a secure topic over plain, refused
	readWithheld   atomic.Uint64 // deliveries the topic authorization kept from a subscriber
	secureWithheld atomic.Uint64 // secure data kept from a plain subscriber by CheckTransport
	secureEchoes   atomic.Uint64 // broker messages recognised as published over TLS here
	queuedOffline  atomic.Uint64 // messages handed to kept sessions
}

func newRouter(a *acl.Authorizer, reg *registry.Registry[*session.Session], log *zap.Logger, stats *routeStats) *router {
	return &router{acl: a, reg: reg, log: log, stats: stats,
		subs: make(map[string]subscribers), groups: make(map[string]*sharedGroup), keptBy: make(map[string]keptRef)}
}

// sharedFilter splits "$share/group/filter"; ok is false for other filters.
func sharedFilter(f string) (inner string, ok bool) {
	rest, ok := strings.CutPrefix(f, "$share/")
	if !ok {
		return "", false
	}
	_, inner, ok = strings.Cut(rest, "/")
	return inner, ok
}

// add records a route; it reports whether it is new for sub.
func (r *router) add(sub any, s session.Subscription) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if inner, ok := sharedFilter(s.Filter); ok {
		g := r.groups[s.Filter]
		if g == nil {
			g = &sharedGroup{filter: inner}
			r.groups[s.Filter] = g
		}
		for _, m := range g.members {
			if m == sub {
				return false
			}
		}
		g.members = append(g.members, sub)
		return true
	}
	m := r.subs[s.Filter]
	if m == nil {
		m = make(subscribers)
		r.subs[s.Filter] = m
	}
	old, had := m[sub]
	m[sub] = s.NoLocal
	switch {
	case s.NoLocal && (!had || !old):
		r.noLocal.Add(1)
	case !s.NoLocal && had && old:
		r.noLocal.Add(-1)
	}
	return !had
}

// remove forgets a route; it reports whether there was one.
func (r *router) remove(sub any, filter string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g := r.groups[filter]; g != nil {
		for i, m := range g.members {
			if m == sub {
				g.members = append(g.members[:i], g.members[i+1:]...)
				if len(g.members) == 0 {
					delete(r.groups, filter)
				}
				return true
			}
		}
		return false
	}
	m := r.subs[filter]
	noLocal, ok := m[sub]
	if !ok {
		return false
	}
	if noLocal {
		r.noLocal.Add(-1)
	}
	delete(m, sub)
	if len(m) == 0 {
		delete(r.subs, filter)
	}
	return true
}

// subscribe routes a new subscription of s, and holds it upstream: done
// gets the granted QoS once the subscription is in place, or a failure
// reason. retained asks the broker for the filter's retained messages.
func (r *router) subscribe(s *session.Session, sub session.Subscription, retained bool, done func(mqttcodec.ReasonCode)) {
	r.add(s, sub)
	if r.upstream != nil {
		r.upstream.Subscribe(s, sub, retained, done)
		return
	}
	done(mqttcodec.ReasonCode(sub.QoS))
}

func (r *router) unsubscribe(sub any, filter string) {
	if r.remove(sub, filter) && r.upstream != nil {
		r.upstream.Unsubscribe(sub, filter)
	}
}

// online takes over the routes of a session: a resumed persistent session
// takes them from its kept handle, a session that took over a live one
// holds them beside the old one until that one's end drops its own. The
// upstream subscriptions stay in place throughout (the bridge counts the
// new subscriber before the old one leaves), and no retained message is
// asked for: a resumed session did not subscribe [MQTT-3.3.1-9].
func (r *router) online(s *session.Session) {
	subs := s.Subscriptions()
	r.mu.Lock()
	k, wasKept := r.keptBy[s.ClientID()]
	delete(r.keptBy, s.ClientID())
	r.mu.Unlock()
	for _, sub := range subs {
		r.add(s, sub)
		if r.upstream != nil {
			r.upstream.Subscribe(s, sub, false, nil)
		}
	}
	if wasKept {
		r.dropAll(k, nil)
	}
}

// offline moves the routes of a session that ended: to its kept handle
// when the session is kept for its device, else away.
func (r *router) offline(s *session.Session) {
	subs := s.Subscriptions()
	if s.Kept() {
		k := keptRef{id: s.ClientID(), username: s.Username()}
		r.mu.Lock()
		r.keptBy[k.id] = k
		r.mu.Unlock()
		for _, sub := range subs {
			r.add(k, sub)
			if r.upstream != nil {
				r.upstream.Subscribe(k, sub, false, nil)
			}
		}
	}
	for _, sub := range subs {
		r.unsubscribe(s, sub.Filter)
	}
}

// keptEnded drops the routes of a kept session that ended unresumed
// (session.Store.OnEnd).
func (r *router) keptEnded(clientID string, subs []session.Subscription) {
	r.mu.Lock()
	k, ok := r.keptBy[clientID]
	if ok {
		delete(r.keptBy, clientID)
	}
	r.mu.Unlock()
	if ok {
		r.dropAll(k, subs)
	}
}

// dropAll removes every route of sub; filters, when known, spare a scan.
func (r *router) dropAll(sub any, subs []session.Subscription) {
	if subs == nil {
		r.mu.RLock()
		for f, m := range r.subs {
			if _, ok := m[sub]; ok {
				subs = append(subs, session.Subscription{Filter: f})
			}
		}
		for f, g := range r.groups {
			for _, m := range g.members {
				if m == sub {
					subs = append(subs, session.Subscription{Filter: f})
				}
			}
		}
		r.mu.RUnlock()
	}
	for _, s := range subs {
		r.unsubscribe(sub, s.Filter)
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
			r.origins.add(m.Topic, m.Payload, m.ClientID)
		}
		if r.noLocal.Load() > 0 {
			r.publishers.add(m.Topic, m.Payload, m.ClientID)
		}
		r.upstream.Publish(m, ack)
		return
	}
	r.fanout(session.Delivery{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retained: m.Retain,
		TLSOnly: m.TLS || r.acl.Secure(m.Topic), Publisher: m.ClientID, Props: m.Props, Expires: m.Expires}, "")
	if ack != nil {
		ack(mqttcodec.Success)
	}
}

// fromUpstream fans a broker message out to the local subscribers. A copy
// of what a device published here over TLS, or a secure topic, goes to TLS
// sessions only.
func (r *router) fromUpstream(m bridge.Message) {
	d := session.Delivery{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retained: m.Retained,
		TLSOnly: r.secureFromUpstream(m), Props: m.Props, Expires: m.Expires}
	if r.noLocal.Load() > 0 {
		d.Publisher, _ = r.publishers.publisher(m.Topic, m.Payload)
	}
	r.fanout(d, m.Shared)
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

// target is one subscriber a message goes to, and for which subscription
// when it is a shared one.
type target struct {
	sub    any
	filter string
}

// fanout delivers d to every local subscriber with a matching filter,
// once per subscriber (its session decides which of its subscriptions
// answer, at which QoS), and to one member of each matching shared group.
// shared, when set, is the one shared subscription a broker copy is for.
//
// It runs on the bridge's receive goroutine (or, without an upstream, on
// the publishing device's event loop) and never waits on a subscriber:
// Exec queues each delivery to the subscriber's owner (its event loop, or
// its TLS connection's queue), so a slow device slows nobody else. A kept
// session's queue takes its copy at once, under the store's lock.
func (r *router) fanout(d session.Delivery, shared string) {
	var targets []target
	tb := []byte(d.Topic)
	live := map[string]bool{}
	r.mu.Lock() // the groups' turns move
	if shared != "" {
		if g := r.groups[shared]; g != nil {
			targets = append(targets, target{sub: g.pick(), filter: shared})
		}
	} else {
		seen := map[any]bool{}
		for filter, subs := range r.subs {
			if !mqttcodec.MatchTopic([]byte(filter), tb) {
				continue
			}
			for sub := range subs {
				if !seen[sub] {
					seen[sub] = true
					targets = append(targets, target{sub: sub})
				}
			}
		}
		if r.upstream == nil {
			// Without a broker, the gateway shares the messages itself.
			for f, g := range r.groups {
				if mqttcodec.MatchTopic([]byte(g.filter), tb) {
					targets = append(targets, target{sub: g.pick(), filter: f})
				}
			}
		}
	}
	r.mu.Unlock()
	for _, t := range targets {
		if s, ok := t.sub.(*session.Session); ok && t.filter == "" {
			live[s.ClientID()] = true
		}
	}
	for _, t := range targets {
		dd := d
		dd.Filter = t.filter
		switch sub := t.sub.(type) {
		case *session.Session:
			sub.Exec(func(s *session.Session) { r.deliver(s, &dd) })
		case keptRef:
			if t.filter == "" && live[sub.id] {
				continue // the device is back: its session has the message
			}
			r.toKept(sub, &dd)
		}
	}
}

// pick returns the member whose turn it is; r.mu held.
func (g *sharedGroup) pick() any {
	// Live members first: a kept one gets a share only when none is live.
	n := len(g.members)
	for i := range n {
		m := g.members[(g.next+i)%n]
		if _, ok := m.(*session.Session); ok {
			g.next = (g.next + i + 1) % n
			return m
		}
	}
	m := g.members[g.next%n]
	g.next = (g.next + 1) % n
	return m
}

// deliver writes a routed message to one subscriber, in its owner
// context, if the topic authorization lets it read the topic; what may be
// written to its socket is session.CheckTransport's to decide. A session
// that ended meanwhile and was kept for its device gets the message in its
// queue.
func (r *router) deliver(s *session.Session, d *session.Delivery) {
	if !r.acl.Read(s.ClientID(), s.Username(), d.Topic) {
		r.stats.readWithheld.Add(1)
		return
	}
	err := s.Route(d)
	switch {
	case errors.Is(err, session.ErrInsecureTransport):
		r.stats.secureWithheld.Add(1)
	case errors.Is(err, session.ErrNotConnected) && s.Kept():
		r.toKept(keptRef{id: s.ClientID(), username: s.Username()}, d)
	}
}

// toKept queues a message for a kept session; a session resumed
// meanwhile gets it instead.
func (r *router) toKept(k keptRef, d *session.Delivery) {
	if !r.acl.Read(k.id, k.username, d.Topic) {
		r.stats.readWithheld.Add(1)
		return
	}
	if r.kept.Enqueue(k.id, d) {
		r.stats.queuedOffline.Add(1)
		return
	}
	if s, ok := r.reg.Get(k.id); ok {
		s.Exec(func(s *session.Session) { r.deliver(s, d) })
	}
}

// retainedFromUpstream delivers a retained message to the subscribers
// whose new subscription made the broker send it, with the retain flag set
// [MQTT-3.3.1-8], for that subscription only.
func (r *router) retainedFromUpstream(filter string, subscribers []any, m bridge.Message) {
	r.mu.RLock()
	subs := r.subs[filter]
	var targets []any
	for _, h := range subscribers {
		if _, ok := subs[h]; ok {
			targets = append(targets, h)
		}
	}
	r.mu.RUnlock()
	if len(targets) == 0 {
		return
	}
	d := session.Delivery{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: true, Filter: filter,
		TLSOnly: r.secureFromUpstream(m), Props: m.Props, Expires: m.Expires}
	for _, h := range targets {
		dd := d
		switch sub := h.(type) {
		case *session.Session:
			sub.Exec(func(s *session.Session) { r.deliver(s, &dd) })
		case keptRef:
			r.toKept(sub, &dd)
		}
	}
}
