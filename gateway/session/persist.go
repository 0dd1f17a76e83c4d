package session

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// Will is a device's will message, published when its connection ends
// without a normal DISCONNECT.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	Delay   time.Duration // MQTT 5 Will Delay Interval
	// Username and TLS are the session's, for the topic authorization
	// and the secure-data rule when the Will is published.
	Username string
	TLS      bool
	// Props are the Will's MQTT 5 properties (nil: none); Expiry its
	// Message Expiry Interval in seconds (0: none), counted from when it
	// is published.
	Props  *MessageProps
	Expiry uint32
}

// Store keeps the state of persistent sessions while their devices are
// away (subscriptions until the session expires) and delayed wills. It is
// shared by all sessions.
//
// CONNECT takes and drops entries under mu, so nothing holds mu for long:
// entries wait in two heaps ordered by when they are due, and Sweep,
// called every second, pops only what is due: a tick costs what expires,
// not what is kept. Kept sessions are bounded in number and bytes
// (StoreLimits): past either bound the session that would expire soonest
// is dropped, and counted.
type Store struct {
	sink Sink
	lim  StoreLimits

	mu       sync.Mutex // guards everything below
	sessions map[string]*keptSession
	wills    map[string]*dueWill
	byExpiry dueHeap // kept sessions, soonest expiry first
	byDue    dueHeap // waiting wills, soonest first
	bytes    int     // keptSession.size summed

	// Counters, safe from any goroutine.
	expired, evicted atomic.Uint64
}

// StoreLimits bound the state kept for disconnected sessions; 0 is no
// bound.
type StoreLimits struct {
	Sessions int // kept sessions
	Bytes    int // their approximate heap bytes (client ids, filters)
}

type keptSession struct {
	due
	subs []Subscription
	msgs []Delivery // routed QoS 1 messages not acknowledged, to send again
	size int
}

type dueWill struct {
	due
	will *Will
	// moved: held because the gateway moved the device (HoldWill).
	moved bool
}

// NewStore returns an empty store that publishes wills to sink.
func NewStore(sink Sink, lim StoreLimits) *Store {
	return &Store{sink: sink, lim: lim, sessions: make(map[string]*keptSession), wills: make(map[string]*dueWill)}
}

// keptSize is roughly what a kept session costs the heap: the map entry
// and struct, the client id, per filter its string and slice slot, per
// message its topic, payload and slot.
func keptSize(clientID string, subs []Subscription, msgs []Delivery) int {
	n := 160 + len(clientID)
	for _, s := range subs {
		n += 40 + len(s.Filter)
	}
	for _, m := range msgs {
		n += 120 + len(m.Topic) + len(m.Payload)
	}
	return n
}

// Keep holds a disconnected session's subscriptions, and the routed
// messages it had not had acknowledged, until expires. Past the store's
// limits, the sessions that expire soonest make room (this one too, if it
// is that one).
func (st *Store) Keep(clientID string, subs []Subscription, msgs []Delivery, expires time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.removeSession(clientID)
	k := &keptSession{due: due{id: clientID, at: expires}, subs: subs, msgs: msgs, size: keptSize(clientID, subs, msgs)}
	st.sessions[clientID] = k
	st.bytes += k.size
	heap.Push(&st.byExpiry, &k.due)
	for len(st.byExpiry) > 0 && ((st.lim.Sessions > 0 && len(st.sessions) > st.lim.Sessions) ||
		(st.lim.Bytes > 0 && st.bytes > st.lim.Bytes)) {
		st.removeSession(st.byExpiry[0].id)
		st.evicted.Add(1)
	}
}

// removeSession forgets a kept session; mu held.
func (st *Store) removeSession(clientID string) (*keptSession, bool) {
	k, ok := st.sessions[clientID]
	if !ok {
		return nil, false
	}
	delete(st.sessions, clientID)
	heap.Remove(&st.byExpiry, k.idx)
	st.bytes -= k.size
	return k, true
}

// removeWill forgets a waiting will; mu held.
func (st *Store) removeWill(clientID string) (*dueWill, bool) {
	w, ok := st.wills[clientID]
	if !ok {
		return nil, false
	}
	delete(st.wills, clientID)
	heap.Remove(&st.byDue, w.idx)
	return w, true
}

// Take returns and removes a kept session for a device resuming it: its
// subscriptions and the messages to send it again. A will still waiting
// for its delay is cancelled [MQTT-3.1.3-9].
func (st *Store) Take(clientID string, now time.Time) (subs []Subscription, msgs []Delivery, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.removeWill(clientID)
	k, ok := st.removeSession(clientID)
	if !ok || !now.Before(k.at) {
		return nil, nil, false
	}
	return k.subs, k.msgs, true
}

// Drop discards a kept session for a device starting clean. Ending the
// session publishes a will still waiting for its delay, unless the will
// was held for a move (HoldWill): the device is back.
func (st *Store) Drop(clientID string, now time.Time) {
	st.mu.Lock()
	st.removeSession(clientID)
	dw, ok := st.removeWill(clientID)
	st.mu.Unlock()
	if ok && !dw.moved {
		st.publish(clientID, dw.will)
	}
}

// HoldWill keeps the will of a device the gateway disconnected to move it
// until due: a new connection with the same client id drops it (Take or
// Drop), Sweep publishes it once due.
func (st *Store) HoldWill(clientID string, w *Will, now, due time.Time) {
	st.setWill(&dueWill{due: dueAt(clientID, due), will: w, moved: true})
}

// ScheduleWill publishes w at due (at once when due is not in the future).
func (st *Store) ScheduleWill(clientID string, w *Will, now, due time.Time) {
	if !due.After(now) {
		st.publish(clientID, w)
		return
	}
	st.setWill(&dueWill{due: dueAt(clientID, due), will: w})
}

func (st *Store) setWill(w *dueWill) {
	st.mu.Lock()
	st.removeWill(w.id)
	st.wills[w.id] = w
	heap.Push(&st.byDue, &w.due)
	st.mu.Unlock()
}

// Sweep expires kept sessions and publishes due wills. It touches only
// what is due.
func (st *Store) Sweep(now time.Time) {
	var due []*dueWill
	st.mu.Lock()
	for len(st.byExpiry) > 0 && !now.Before(st.byExpiry[0].at) {
		st.removeSession(st.byExpiry[0].id)
		st.expired.Add(1)
	}
	for len(st.byDue) > 0 && !now.Before(st.byDue[0].at) {
		w, _ := st.removeWill(st.byDue[0].id)
		due = append(due, w)
	}
	st.mu.Unlock()
	for _, w := range due {
		st.publish(w.id, w.will)
	}
}

// Len reports kept sessions and waiting wills.
func (st *Store) Len() (sessions, wills int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.sessions), len(st.wills)
}

// StoreStats is what the store holds and has let go.
type StoreStats struct {
	Sessions, Wills int
	Bytes           int    // approximate bytes of the kept sessions
	Expired         uint64 // kept sessions that expired
	Evicted         uint64 // kept sessions dropped to stay within StoreLimits
}

// Stats reports what the store holds and has let go.
func (st *Store) Stats() StoreStats {
	st.mu.Lock()
	defer st.mu.Unlock()
	return StoreStats{Sessions: len(st.sessions), Wills: len(st.wills), Bytes: st.bytes,
		Expired: st.expired.Load(), Evicted: st.evicted.Load()}
}

// due is a heap entry: what is due when, and where it sits in its heap.
type due struct {
	id  string
	at  time.Time
	idx int
}

func dueAt(id string, at time.Time) due { return due{id: id, at: at} }

// dueHeap orders entries by time (container/heap).
type dueHeap []*due

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *dueHeap) Push(x any) {
	d := x.(*due)
	d.idx = len(*h)
	*h = append(*h, d)
}
func (h *dueHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	d.idx = -1
	return d
}

func (st *Store) publish(clientID string, w *Will) {
	m := &Message{ClientID: clientID, Username: w.Username, Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain, TLS: w.TLS}
	if m.QoS == 0 {
		st.sink.Publish(m, nil)
		return
	}
	// Nobody waits for a will's acknowledgement.
	st.sink.Publish(m, func(mqttcodec.ReasonCode) {})
}
