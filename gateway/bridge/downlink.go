package bridge

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Message is a message from the broker for the gateway's devices.
type Message struct {
	// Topic is the topic as devices see it (TopicPrefix removed).
	Topic   string
	Payload []byte
	// QoS is the QoS the broker sent it at.
	QoS byte
	// Retain is set on retained messages handed to DeliverRetained.
	Retain bool
	// Retained reports that a live message was published with the retain
	// flag (known from an MQTT 5 broker: Retain As Published upstream).
	Retained bool
	// Props are its MQTT 5 properties (nil: none); Expires when it
	// expires (zero: never).
	Props   *session.MessageProps
	Expires time.Time
	// Shared, when set, is the shared subscription ("$share/group/filter",
	// as devices sent it) this copy was sent for: it goes to one member
	// of that group, and not to other subscribers (the broker sends them
	// their own copy).
	Shared string
}

// subChunk bounds the filters of one SUBSCRIBE or UNSUBSCRIBE.
const subChunk = 128

// Subscription identifiers (MQTT 5): the command subscription has its
// own; device filters and retained fetches take theirs from a counter.
const (
	cmdSubID   = 1
	firstSubID = 2
	maxSubID   = 268_435_455
)

// subscribeParallel bounds the SUBSCRIBEs in flight at once when each
// filter needs its own (one Subscription Identifier per SUBSCRIBE).
const subscribeParallel = 32

// Subscribe records that subscriber (an opaque, comparable handle: the
// gateway passes its *session.Session) subscribed with sub, whose filter
// is as the device sent it. The first subscriber of a filter makes the
// bridge subscribe upstream; with retained set, the broker's retained
// messages for the filter are fetched for this subscriber and go to
// DeliverRetained for the new subscriber(s) only (retained false: the
// caller wants none, Retain Handling decided by the device). It does not
// block: the SUBSCRIBE is sent by the bridge's own goroutine.
//
// done, when not nil, is called exactly once, from any goroutine: with the
// granted QoS (the lower of sub.QoS and the broker's grant) once the
// broker's SUBACK for the filter arrived, or at once when the filter is
// already held, acknowledged, and granted at least that QoS; with the
// broker's reason code when it refused the filter; with 0x80
// (UnspecifiedError) when no SUBACK came within Config.SubscribeTimeout,
// the broker unreachable included; with 0x9E
// (SharedSubscriptionsNotSupported) for a "$share/group/filter" when the
// bridge speaks MQTT 3.1.1 or the broker does not offer them. Filters
// starting with '$' other than "$share/..." are not forwarded (they are
// the gateway's own business) and done gets sub.QoS at once.
//
// A shared subscription is held upstream as "$share/group/" + TopicPrefix
// + filter; the messages the broker sends for it reach Deliver with
// Message.Shared set to sub.Filter.
func (b *Bridge) Subscribe(subscriber any, sub session.Subscription, retained bool, done func(mqttcodec.ReasonCode)) {
	filter, qos := sub.Filter, min(sub.QoS, 2)
	answer := func(rc mqttcodec.ReasonCode) {
		if done != nil {
			done(rc)
		}
	}
	up, shared, err := b.upstreamFilter(filter)
	if err != nil {
		b.hot.Info("subscription not forwarded upstream", zap.String("filter", filter), zap.Error(err))
		answer(mqttcodec.ReasonCode(qos))
		return
	}
	if shared && (b.cfg.Protocol == Protocol311 || b.fellBack.Load() ||
		(b.Protocol() == Protocol5 && b.subLane.c().open() && !b.subLane.c().sharedOK())) {
		answer(mqttcodec.SharedSubscriptionsNotSupported)
		return
	}
	if b.closing.Load() {
		answer(mqttcodec.UnspecifiedError)
		return
	}
	var dw *doneWait
	if done != nil {
		dw = &doneWait{fn: done, qos: qos, sub: subscriber, parts: 1}
		dw.mu.Lock()
		dw.timer = time.AfterFunc(b.cfg.SubscribeTimeout, func() { dw.finish(mqttcodec.UnspecifiedError) })
		dw.mu.Unlock()
	}
	l := b.subLane
	if now := l.subs.add(subscriber, filter, up, qos, retained && !shared, shared, b.exact(), dw); now {
		return
	}
	signal(l.ctl)
}

// upstreamFilter checks a device filter and returns it as the broker sees
// it; err is set for filters not forwarded.
func (b *Bridge) upstreamFilter(filter string) (up string, shared bool, err error) {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		group, f, ok := strings.Cut(rest, "/")
		if !ok || group == "" || strings.ContainsAny(group, "+#") {
			return "", false, errors.New("malformed shared subscription")
		}
		if err := mqttcodec.ValidTopicFilter([]byte(f)); err != nil || strings.HasPrefix(f, "$") {
			return "", false, errors.New("malformed shared subscription filter")
		}
		return "$share/" + group + "/" + b.cfg.TopicPrefix + f, true, nil
	}
	if err := mqttcodec.ValidTopicFilter([]byte(filter)); err != nil {
		return "", false, err
	}
	if strings.HasPrefix(filter, "$") {
		// '$' topics ($SYS) are the broker's business, not the devices'.
		return "", false, errors.New("'$' filter")
	}
	return b.cfg.TopicPrefix + filter, false, nil
}

// exact reports whether retained messages are attributed by Subscription
// Identifier (MQTT 5 with identifiers, and a connection other than the
// devices' one to fetch them on) rather than by the heuristic.
func (b *Bridge) exact() bool {
	return b.Protocol() == Protocol5 && len(b.lanes) >= 2 && b.subLane.c().subIDsOK() && b.lanes[0].c().subIDsOK()
}

// fetchLane is the connection retained messages are fetched on.
func (b *Bridge) fetchLane() *lane { return b.lanes[0] }

// Unsubscribe records that subscriber left filter; the last one out
// (unsubscribe or disconnect: the gateway calls Unsubscribe for each of a
// departing session's filters) removes the upstream subscription.
func (b *Bridge) Unsubscribe(subscriber any, filter string) {
	l := b.subLane
	if l.subs.remove(subscriber, filter) {
		signal(l.ctl)
	}
}

// doneWait is one Subscribe's done, waiting for the SUBACK and, when the
// Subscribe fetches retained messages exactly, for the fetch's SUBACK too:
// a message retained after the device's SUBACK must not come to it as one
// that answers its SUBSCRIBE.
type doneWait struct {
	fn    func(mqttcodec.ReasonCode)
	qos   byte
	sub   any
	once  sync.Once
	mu    sync.Mutex // guards the fields below
	timer *time.Timer
	parts int // answers still awaited: the SUBACK, and the fetch's
	rc    mqttcodec.ReasonCode
	have  bool // rc is the SUBACK's answer
}

// call gives the subscription's answer; a refusal answers at once.
func (d *doneWait) call(rc mqttcodec.ReasonCode) {
	d.mu.Lock()
	d.rc, d.have = rc, true
	d.parts--
	fire := d.parts <= 0 || rc >= 0x80
	d.mu.Unlock()
	if fire {
		d.finish(rc)
	}
}

// fetched says the retained fetch was answered (or given up).
func (d *doneWait) fetched() {
	d.mu.Lock()
	d.parts--
	fire, rc := d.parts <= 0 && d.have, d.rc
	d.mu.Unlock()
	if fire {
		d.finish(rc)
	}
}

func (d *doneWait) finish(rc mqttcodec.ReasonCode) {
	d.once.Do(func() {
		d.mu.Lock()
		if d.timer != nil {
			d.timer.Stop()
		}
		d.mu.Unlock()
		d.fn(rc)
	})
}

// subTable is the devices' subscriptions held upstream, by filter (device
// side, without TopicPrefix), with what must be sent to the broker and the
// subscribers waiting for retained messages.
type subTable struct {
	mu      sync.Mutex // guards the fields below
	held    map[string]*filterState
	toSub   map[string]struct{}
	toUnsub map[string]string // device filter -> broker filter
	// waits are the new subscribers of a filter waiting for the retained
	// messages of their SUBSCRIBE, oldest first.
	waits map[string][]*retainedWait
	// wild holds the keys of waits that hold wildcards.
	wild map[string]struct{}

	nextID int
	byID   map[int]string        // Subscription Identifier -> filter
	fetch  map[int]*retainedWait // Subscription Identifier -> retained fetch
	// fetchUnsub are the broker filters of fetches whose UNSUBSCRIBE was
	// not answered, to send again on the fetch connection.
	fetchUnsub map[string]struct{}
	// overlaps holds, for each non-shared filter, the other non-shared
	// filters some topic matches together with it: a broker that sends
	// one copy per matching subscription (Mosquitto 2 in MQTT 5) sends
	// one per filter, and only one is delivered.
	overlaps map[string]map[string]struct{}
}

type filterState struct {
	subs    map[any]byte // subscriber -> requested QoS
	qos     byte         // the QoS asked for upstream: the highest requested
	up      string       // as the broker sees it
	shared  bool
	id      int  // MQTT 5 Subscription Identifier
	sent    bool // a SUBSCRIBE went (on this connection or an earlier one)
	acked   bool // the broker granted it on the current connection
	granted byte
	dones   []*doneWait
}

// retainedWait is one SUBSCRIBE sent (or about to be) for new subscribers
// of filter. Each retained message the broker sends in answer goes to them;
// seen keeps a topic from going twice to the same wait when the broker
// sends copies for other subscriptions too (heuristic attribution only).
type retainedWait struct {
	filter      string
	up          string
	qos         byte
	subscribers []any
	sent        bool
	expires     time.Time
	seen        map[string]struct{}
	id          int // the fetch's Subscription Identifier (exact attribution)
	// dones are the Subscribes answered once the fetch is.
	dones []*doneWait
}

func newSubTable() *subTable {
	return &subTable{
		held:       make(map[string]*filterState),
		toSub:      make(map[string]struct{}),
		toUnsub:    make(map[string]string),
		waits:      make(map[string][]*retainedWait),
		wild:       make(map[string]struct{}),
		nextID:     firstSubID,
		byID:       make(map[int]string),
		fetch:      make(map[int]*retainedWait),
		fetchUnsub: make(map[string]struct{}),
		overlaps:   make(map[string]map[string]struct{}),
	}
}

func (t *subTable) allocID() int {
	for {
		id := t.nextID
		t.nextID++
		if t.nextID > maxSubID {
			t.nextID = firstSubID
		}
		if _, used := t.byID[id]; used {
			continue
		}
		if _, used := t.fetch[id]; used {
			continue
		}
		return id
	}
}

// add records a subscription. It reports true when done was answered at
// once (nothing to send for it).
func (t *subTable) add(sub any, f, up string, qos byte, retained, shared, exact bool, dw *doneWait) bool {
	t.mu.Lock()
	st := t.held[f]
	if st == nil {
		st = &filterState{subs: make(map[any]byte, 1), up: up, shared: shared, id: t.allocID()}
		t.held[f] = st
		t.byID[st.id] = f
		if !shared {
			t.addOverlaps(f)
		}
	}
	st.subs[sub] = qos
	need := !st.acked || st.granted < qos || st.qos < qos
	st.qos = max(st.qos, qos)
	if r, ok := t.toUnsub[f]; ok && r == up {
		delete(t.toUnsub, f)
	}
	if retained {
		w := t.addWait(sub, f, up)
		if exact && dw != nil {
			dw.mu.Lock()
			dw.parts++
			dw.mu.Unlock()
			w.dones = append(w.dones, dw)
		}
		if !exact {
			need = true // the heuristic asks the broker again on the filter itself
		}
	}
	if need {
		t.toSub[f] = struct{}{}
		if dw != nil {
			st.dones = append(st.dones, dw)
		}
		t.mu.Unlock()
		return false
	}
	granted := min(qos, st.granted)
	t.mu.Unlock()
	if dw != nil {
		dw.call(mqttcodec.ReasonCode(granted))
	}
	return !retained
}

func (t *subTable) addWait(sub any, f, up string) *retainedWait {
	ws := t.waits[f]
	if n := len(ws); n > 0 && !ws[n-1].sent {
		if !slices.Contains(ws[n-1].subscribers, sub) {
			ws[n-1].subscribers = append(ws[n-1].subscribers, sub)
		}
		return ws[n-1]
	}
	w := &retainedWait{filter: f, up: up, subscribers: []any{sub}}
	t.waits[f] = append(ws, w)
	if strings.ContainsAny(f, "+#") {
		t.wild[f] = struct{}{}
	}
	return w
}

// answered tells the Subscribes waiting for this fetch that it was
// answered (or given up).
func (t *subTable) answered(w *retainedWait) {
	t.mu.Lock()
	dones := w.dones
	w.dones = nil
	t.mu.Unlock()
	for _, d := range dones {
		d.fetched()
	}
}

// addOverlaps records which held non-shared filters overlap f.
func (t *subTable) addOverlaps(f string) {
	for g, st := range t.held {
		if g == f || st.shared || !filtersOverlap(f, g) {
			continue
		}
		if t.overlaps[f] == nil {
			t.overlaps[f] = make(map[string]struct{})
		}
		if t.overlaps[g] == nil {
			t.overlaps[g] = make(map[string]struct{})
		}
		t.overlaps[f][g] = struct{}{}
		t.overlaps[g][f] = struct{}{}
	}
}

func (t *subTable) dropOverlaps(f string) {
	for g := range t.overlaps[f] {
		delete(t.overlaps[g], f)
		if len(t.overlaps[g]) == 0 {
			delete(t.overlaps, g)
		}
	}
	delete(t.overlaps, f)
}

// filtersOverlap reports whether some topic matches both filters.
func filtersOverlap(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; ; i++ {
		switch {
		case i < len(as) && as[i] == "#", i < len(bs) && bs[i] == "#":
			return true
		case i == len(as) || i == len(bs):
			return len(as) == len(bs)
		case as[i] != bs[i] && as[i] != "+" && bs[i] != "+":
			return false
		}
	}
}

// remove reports whether something changed.
func (t *subTable) remove(sub any, f string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.held[f]
	if st == nil {
		return false
	}
	if _, ok := st.subs[sub]; !ok {
		return false
	}
	delete(st.subs, sub)
	if len(st.subs) > 0 {
		for _, w := range t.waits[f] {
			w.subscribers = slices.DeleteFunc(w.subscribers, func(x any) bool { return x == sub })
		}
		return true
	}
	t.drop(f, st)
	return true
}

// drop forgets filter f; the caller holds mu.
func (t *subTable) drop(f string, st *filterState) {
	delete(t.held, f)
	delete(t.byID, st.id)
	delete(t.toSub, f)
	for _, w := range t.waits[f] {
		w.subscribers = nil // a fetch under way ends on its own
	}
	delete(t.waits, f)
	delete(t.wild, f)
	if !st.shared {
		t.dropOverlaps(f)
	}
	t.toUnsub[f] = st.up
}

func (t *subTable) size() int {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.held)
}

// resubscribeAll marks every filter to be sent again (a new connection).
func (t *subTable) resubscribeAll() {
	t.mu.Lock()
	for f, st := range t.held {
		// sent stays: the broker may send what it queued in the session
		// for the filter before the SUBSCRIBE goes again.
		st.acked = false
		t.toSub[f] = struct{}{}
	}
	t.mu.Unlock()
}

// subReq is one filter to subscribe upstream.
type subReq struct {
	filter string
	up     string
	qos    byte
	id     int
	shared bool
}

// work takes what must be sent: filters to subscribe and to unsubscribe,
// and, with exact attribution, the retained fetches. In the heuristic, the
// waits of the filters subscribed count as sent.
func (t *subTable) work(now time.Time, window time.Duration, exact bool) ([]subReq, []subReq, []*retainedWait) {
	t.mu.Lock()
	defer t.mu.Unlock()
	subs := make([]subReq, 0, len(t.toSub))
	for f := range t.toSub {
		st := t.held[f]
		if st == nil {
			continue
		}
		st.sent = true
		subs = append(subs, subReq{filter: f, up: st.up, qos: st.qos, id: st.id, shared: st.shared})
		if exact {
			continue
		}
		for _, w := range t.waits[f] {
			if !w.sent {
				w.sent, w.expires = true, now.Add(window)
			}
		}
	}
	clear(t.toSub)
	slices.SortFunc(subs, func(a, b subReq) int { return strings.Compare(a.filter, b.filter) })
	unsubs := make([]subReq, 0, len(t.toUnsub))
	for f, up := range t.toUnsub {
		unsubs = append(unsubs, subReq{filter: f, up: up})
	}
	clear(t.toUnsub)
	var fetches []*retainedWait
	if exact {
		for f, ws := range t.waits {
			for _, w := range ws {
				if w.sent || len(w.subscribers) == 0 {
					continue
				}
				w.sent, w.expires = true, now.Add(window)
				w.id = t.allocID()
				w.qos = t.held[f].qos
				t.fetch[w.id] = w
				fetches = append(fetches, w)
			}
		}
	}
	return subs, unsubs, fetches
}

// subscribed is told the broker's answer to the SUBSCRIBE of filter f: a
// granted QoS or a refusal. It answers the Subscribe calls waiting.
func (t *subTable) subscribed(f string, rc byte, expires time.Time) (refused bool) {
	t.mu.Lock()
	st := t.held[f]
	if st == nil {
		t.mu.Unlock()
		return false
	}
	dones := st.dones
	st.dones = nil
	if rc < 0x80 {
		st.acked, st.granted = true, rc
		for _, w := range t.waits[f] {
			if w.sent && w.id == 0 && w.expires.Before(expires) {
				w.expires = expires
			}
		}
	} else {
		refused = true
		st.acked = false
		for _, d := range dones {
			delete(st.subs, d.sub)
		}
		if len(st.subs) == 0 {
			t.drop(f, st)
			delete(t.toUnsub, f) // refused: nothing to undo upstream
		}
	}
	t.mu.Unlock()
	for _, d := range dones {
		if rc < 0x80 {
			d.call(mqttcodec.ReasonCode(min(d.qos, rc)))
		} else {
			d.call(mqttcodec.ReasonCode(rc))
		}
	}
	return refused
}

// refuseShared answers the waiting Subscribe calls of the shared filters
// with 0x9E and forgets them: the connection cannot hold them.
func (t *subTable) refuseShared(fs []string) {
	t.mu.Lock()
	var dones []*doneWait
	for _, f := range fs {
		if st := t.held[f]; st != nil {
			dones = append(dones, st.dones...)
			t.drop(f, st)
			delete(t.toUnsub, f)
		}
	}
	t.mu.Unlock()
	for _, d := range dones {
		d.call(mqttcodec.SharedSubscriptionsNotSupported)
	}
}

// retry marks filters whose SUBSCRIBE or UNSUBSCRIBE was not answered.
func (t *subTable) retry(subs, unsubs []subReq) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range subs {
		if t.held[r.filter] != nil {
			t.toSub[r.filter] = struct{}{}
		}
	}
	for _, r := range unsubs {
		if t.held[r.filter] == nil {
			t.toUnsub[r.filter] = r.up
		}
	}
}

// pending reports whether something is left to send.
func (t *subTable) pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.toSub) > 0 || len(t.toUnsub) > 0
}

// prune drops the waits and fetches whose time is over.
func (t *subTable) prune(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for f, ws := range t.waits {
		ws = slices.DeleteFunc(ws, func(w *retainedWait) bool { return w.sent && now.After(w.expires) })
		if len(ws) == 0 {
			delete(t.waits, f)
			delete(t.wild, f)
			continue
		}
		t.waits[f] = ws
	}
	for id, w := range t.fetch {
		if now.After(w.expires) {
			delete(t.fetch, id)
		}
	}
}

// unsubscribeFetchLater keeps a fetch filter whose UNSUBSCRIBE was not
// answered, to send again.
func (t *subTable) unsubscribeFetchLater(up string) {
	t.mu.Lock()
	t.fetchUnsub[up] = struct{}{}
	t.mu.Unlock()
}

// fetchDone forgets a fetch the broker refused or did not answer.
func (t *subTable) fetchDone(w *retainedWait) {
	t.mu.Lock()
	delete(t.fetch, w.id)
	w.subscribers = nil
	t.mu.Unlock()
}

// fetchUnsubs takes the fetch filters to unsubscribe.
func (t *subTable) fetchUnsubs() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.fetchUnsub))
	for up := range t.fetchUnsub {
		out = append(out, up)
	}
	clear(t.fetchUnsub)
	return out
}

// fetched returns the fetch a retained message with Subscription
// Identifier id answers.
func (t *subTable) fetched(id int, now time.Time) (string, []any, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.fetch[id]
	if w == nil || now.After(w.expires) || len(w.subscribers) == 0 {
		return "", nil, false
	}
	return w.filter, slices.Clone(w.subscribers), true
}

// isFetch reports whether id is a live retained fetch's.
func (t *subTable) isFetch(id int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.fetch[id]
	return ok
}

// Kinds of copies route tells apart.
const (
	routeNone   = iota // no subscription of the table
	routeNormal        // deliver once
	routeCopy          // another copy of a message delivered for an overlapping filter
	routeShared        // deliver for that shared subscription
)

// route tells what a broker copy sent for Subscription Identifier id on
// topic (device side) is. Of the copies a broker sends for overlapping
// filters, the one of the filter with the lowest identifier among those
// subscribed that match is delivered (identifiers grow: an older filter
// keeps the role while a newer one is being subscribed).
func (t *subTable) route(id int, topic string) (int, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, ok := t.byID[id]
	if !ok {
		return routeNone, ""
	}
	st := t.held[f]
	if st.shared {
		return routeShared, f
	}
	tb := []byte(topic)
	for g := range t.overlaps[f] {
		o := t.held[g]
		if o != nil && o.sent && o.id < id && mqttcodec.MatchTopic([]byte(g), tb) {
			return routeCopy, f
		}
	}
	return routeNormal, f
}

// claim finds who a retained message on topic is for: the oldest live
// wait of a matching filter that has not had this topic yet.
func (t *subTable) claim(topic string, now time.Time) (string, []any, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pick := func(ws []*retainedWait) *retainedWait {
		for _, w := range ws {
			if !w.sent || now.After(w.expires) || len(w.subscribers) == 0 {
				continue
			}
			if _, dup := w.seen[topic]; !dup {
				return w
			}
		}
		return nil
	}
	w := pick(t.waits[topic])
	if w == nil {
		tb := []byte(topic)
		for f := range t.wild {
			if mqttcodec.MatchTopic([]byte(f), tb) {
				if w = pick(t.waits[f]); w != nil {
					break
				}
			}
		}
	}
	if w == nil {
		return "", nil, false
	}
	if w.seen == nil {
		w.seen = make(map[string]struct{})
	}
	w.seen[topic] = struct{}{}
	return w.filter, slices.Clone(w.subscribers), true
}

// control sends SUBSCRIBE and UNSUBSCRIBE for the lane's subscriptions.
func (l *lane) control() {
	defer l.b.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-l.ctl:
		case <-tick.C:
			if l.subs != nil {
				l.subs.prune(time.Now())
			}
		case <-l.b.stop:
			return
		}
		if !l.c().open() {
			continue // connected signals ctl
		}
		if l.commands {
			l.syncCommands()
		}
		if l.subs != nil {
			l.syncSubscriptions()
		}
	}
}

// syncCommands holds the command subscription.
func (l *lane) syncCommands() {
	l.mu.Lock()
	need := l.needCmdSub
	l.needCmdSub = false
	l.mu.Unlock()
	if !need {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.b.cfg.ConnectTimeout)
	codes, err := l.c().subscribe(ctx, []upSub{{filter: l.b.cmdSub, qos: 1}}, cmdSubID)
	cancel()
	if err != nil {
		l.b.hot.Warn("command subscription not answered; retrying", zap.String("filter", l.b.cmdSub), zap.Error(err))
		l.mu.Lock()
		l.needCmdSub = true
		l.mu.Unlock()
		return
	}
	for _, code := range codes {
		if code >= 0x80 {
			l.b.stats.subscribeFailures.Add(1)
			l.b.log.Error("the broker refused the command subscription; no command will arrive from it until the next connection",
				zap.String("filter", l.b.cmdSub), zap.Uint8("reason", code))
			return
		}
	}
	l.cmdHeld.Store(true)
	l.b.log.Info("command subscription held", zap.String("filter", l.b.cmdSub))
}

// syncSubscriptions sends what the subscription table asks for.
func (l *lane) syncSubscriptions() {
	b := l.b
	c := l.c()
	v5 := c.protocol() == Protocol5
	exact := b.exact()
	ids := v5 && c.subIDsOK()
	subs, unsubs, fetches := l.subs.work(time.Now(), b.cfg.RetainedWindow, exact)
	ctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), b.cfg.ConnectTimeout)
	}
	for chunk := range slices.Chunk(unsubs, subChunk) {
		up := make([]string, len(chunk))
		for i, r := range chunk {
			up[i] = r.up
		}
		cx, cancel := ctx()
		err := c.unsubscribe(cx, up)
		cancel()
		if err != nil {
			b.hot.Warn("UNSUBSCRIBE not answered; retrying", zap.Int("filters", len(chunk)), zap.Error(err))
			l.subs.retry(nil, chunk)
		}
	}
	var refuse []string
	subs = slices.DeleteFunc(subs, func(r subReq) bool {
		if r.shared && (!v5 || !c.sharedOK()) {
			refuse = append(refuse, r.filter)
			return true
		}
		return false
	})
	if len(refuse) > 0 {
		l.subs.refuseShared(refuse)
	}
	opts := func(r subReq) upSub {
		u := upSub{filter: r.up, qos: r.qos}
		if v5 && !r.shared {
			if exact {
				// Retained messages come through the fetches; a live
				// message keeps its retain flag, for Message.Retained.
				u.retainHandling, u.retainAsPub = 2, true
			} else {
				u.retainHandling = 0
			}
		}
		return u
	}
	send := func(chunk []subReq, id int) {
		us := make([]upSub, len(chunk))
		for i, r := range chunk {
			us[i] = opts(r)
		}
		cx, cancel := ctx()
		codes, err := c.subscribe(cx, us, id)
		cancel()
		if err != nil {
			b.hot.Warn("SUBSCRIBE not answered; retrying", zap.Int("filters", len(chunk)), zap.Error(err))
			l.subs.retry(chunk, nil)
			return
		}
		expires := time.Now().Add(b.cfg.RetainedWindow)
		for i, r := range chunk {
			if l.subs.subscribed(r.filter, codes[i], expires) {
				b.stats.subscribeFailures.Add(1)
				b.hot.Warn("the broker refused a subscription", zap.String("filter", r.up), zap.Uint8("reason", codes[i]))
			}
		}
	}
	if ids {
		// One SUBSCRIBE per filter: the identifier is the SUBSCRIBE's.
		var wg sync.WaitGroup
		sem := make(chan struct{}, subscribeParallel)
		for _, r := range subs {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				send([]subReq{r}, r.id)
			}()
		}
		wg.Wait()
	} else {
		for chunk := range slices.Chunk(subs, subChunk) {
			send(chunk, 0)
		}
	}
	if exact {
		l.syncFetches(fetches)
	}
	if l.subs.pending() {
		signal(l.ctl)
	}
}

// syncFetches subscribes the retained fetches on the fetch connection
// (Retain Handling 0: send the retained messages; each fetch has its own
// identifier), and unsubscribes each once answered.
func (l *lane) syncFetches(fetches []*retainedWait) {
	b := l.b
	fc := b.fetchLane().c()
	if ups := l.subs.fetchUnsubs(); len(ups) > 0 {
		cx, cancel := context.WithTimeout(context.Background(), b.cfg.ConnectTimeout)
		if err := fc.unsubscribe(cx, ups); err != nil {
			b.hot.Warn("UNSUBSCRIBE of retained fetches not answered", zap.Int("filters", len(ups)), zap.Error(err))
		}
		cancel()
	}
	for _, w := range fetches {
		cx, cancel := context.WithTimeout(context.Background(), b.cfg.ConnectTimeout)
		codes, err := fc.subscribe(cx, []upSub{{filter: w.up, qos: w.qos}}, w.id)
		cancel()
		l.subs.answered(w)
		if err != nil || codes[0] >= 0x80 {
			b.hot.Warn("retained messages could not be fetched", zap.String("filter", w.up), zap.Error(err))
			l.subs.fetchDone(w)
			if err == nil {
				continue
			}
		}
		// The broker has sent, or queued for this connection, the
		// retained messages when it answers the SUBSCRIBE: unsubscribing
		// now ends the copies of live messages the fetch would also get.
		// The fetch's identifier keeps attributing what is still on its
		// way until RetainedWindow is over.
		cx, cancel = context.WithTimeout(context.Background(), b.cfg.ConnectTimeout)
		if err := fc.unsubscribe(cx, []string{w.up}); err != nil {
			l.subs.unsubscribeFetchLater(w.up)
		}
		cancel()
	}
}

func (l *lane) receive() {
	defer l.b.wg.Done()
	for {
		select {
		case m := <-l.in:
			l.b.handle(l, m)
		case <-l.b.stop:
			return
		}
	}
}

// handle routes one broker message: a command, a message for subscribers,
// or a retained message for new subscribers.
func (b *Bridge) handle(l *lane, m inMsg) {
	topic, ok := strings.CutPrefix(m.topic, b.cfg.TopicPrefix)
	if ok && topic != "" && l.commands && b.cmd != nil && mqttcodec.MatchTopic([]byte(b.cmd.filter), []byte(topic)) &&
		(len(m.subIDs) == 0 || slices.Contains(m.subIDs, cmdSubID)) {
		b.command(l, m, topic) // acknowledges once the command is stored
		return
	}
	b.route(l, m, topic, ok)
	m.ack()
}

// route hands a message that is not a command to the gateway.
func (b *Bridge) route(l *lane, m inMsg, topic string, ok bool) {
	if !ok || topic == "" {
		b.stats.unrouted.Add(1)
		return
	}
	subs := b.subLane.subs
	if len(m.subIDs) > 0 && !m.retain && !slices.ContainsFunc(m.subIDs, func(id int) bool { return !subs.isFetch(id) }) {
		return // a live message on a retained fetch: the devices' subscription brings it
	}
	if b.cmd != nil && mqttcodec.MatchTopic([]byte(b.cmd.filter), []byte(topic)) {
		// A device's subscription covers the command space: commands
		// reach devices through the dispatcher only, never as a plain
		// subscription delivery.
		b.stats.commandCopies.Add(1)
		return
	}
	msg := Message{Topic: topic, Payload: m.payload, QoS: m.qos, Props: m.props, Expires: m.expires}
	if len(m.subIDs) > 0 {
		b.routeByID(l, m, msg, subs)
		return
	}
	if l.subs == nil {
		b.stats.unrouted.Add(1)
		return
	}
	if m.retain {
		// A broker sets retain only on messages sent because of a
		// SUBSCRIBE [MQTT-3.3.1-8, MQTT-3.3.1-9] (Retain As Published is
		// not asked for on this path).
		b.retained(l, msg)
		return
	}
	b.deliver(msg)
}

// routeByID routes an MQTT 5 message by its Subscription Identifiers.
func (b *Bridge) routeByID(l *lane, m inMsg, msg Message, subs *subTable) {
	now := time.Now()
	delivered := false
	for _, id := range m.subIDs {
		if subs.isFetch(id) {
			if !m.retain {
				continue // a live message on a fetch: the devices' subscription brings it
			}
			filter, who, ok := subs.fetched(id, now)
			if !ok || b.cfg.DeliverRetained == nil {
				b.stats.retainedSkipped.Add(1)
				continue
			}
			msg := msg
			msg.Retain = true
			if b.safely("DeliverRetained", msg.Topic, func() { b.cfg.DeliverRetained(filter, who, msg) }) {
				b.stats.retainedDelivered.Add(1)
				b.stats.forwardedDown.Add(1)
			}
			delivered = true
			continue
		}
		if l != b.subLane {
			continue
		}
		kind, f := subs.route(id, msg.Topic)
		switch kind {
		case routeNormal:
			msg := msg
			msg.Retained = m.retain
			b.deliver(msg)
			delivered = true
		case routeShared:
			msg := msg
			msg.Retained, msg.Shared = m.retain, f
			b.deliver(msg)
			delivered = true
		case routeCopy:
			delivered = true
		}
	}
	if !delivered {
		b.stats.unrouted.Add(1)
	}
}

func (b *Bridge) deliver(msg Message) {
	if b.cfg.Deliver == nil {
		b.stats.unrouted.Add(1)
		return
	}
	if b.safely("Deliver", msg.Topic, func() { b.cfg.Deliver(msg) }) {
		b.stats.forwardedDown.Add(1)
	}
}

// retained hands a retained message to the subscribers whose SUBSCRIBE
// it answers (heuristic attribution).
func (b *Bridge) retained(l *lane, msg Message) {
	msg.Retain = true
	filter, subs, ok := l.subs.claim(msg.Topic, time.Now())
	if !ok || b.cfg.DeliverRetained == nil {
		b.stats.retainedSkipped.Add(1)
		return
	}
	if b.safely("DeliverRetained", msg.Topic, func() { b.cfg.DeliverRetained(filter, subs, msg) }) {
		b.stats.retainedDelivered.Add(1)
		b.stats.forwardedDown.Add(1)
	}
}

// safely runs a gateway callback; a panic in it is logged and reported as
// false, and the message is acknowledged anyway: sent again, it would
// panic again.
func (b *Bridge) safely(what, topic string, fn func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			b.hot.Error("panic in a bridge callback", zap.String("callback", what), zap.String("topic", topic),
				zap.String("panic", fmt.Sprint(r)), zap.ByteString("stack", debug.Stack()))
			ok = false
		}
	}()
	fn()
	return true
}
