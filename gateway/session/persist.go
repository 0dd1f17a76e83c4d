package session

import (
	"container/heap"
	"slices"
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
// away (subscriptions and messages until the session expires) and delayed
// wills. It is shared by all sessions.
//
// A kept session holds the routed messages its connection had not had
// acknowledged (with their packet identifiers, to be sent again with
// them) and the QoS 1/2 messages routed to it since (Enqueue), in order,
// for the device's return. Expired messages are dropped when the device
// comes back (Take).
//
// CONNECT takes and drops entries under mu, so nothing holds mu for long:
// entries wait in two heaps ordered by when they are due, and Sweep,
// called every second, pops only what is due: a tick costs what expires,
// not what is kept. Kept sessions are bounded in number and bytes
// (StoreLimits): past either bound the session that would expire soonest
// is dropped, and counted. Messages queued for a kept session are
// bounded per session (StoreLimits.Messages) and count in the bytes;
// past either bound the overflow policy (StoreLimits.Overflow) applies
// to that session's queue: a queued message never evicts a session.
type Store struct {
	sink Sink
	lim  StoreLimits

	mu       sync.Mutex // guards everything below
	sessions map[string]*keptSession
	wills    map[string]*dueWill
	byExpiry dueHeap // kept sessions, soonest expiry first
	byDue    dueHeap // waiting wills, soonest first
	bytes    int     // keptSession.size summed
	msgs     int     // len(keptSession.msgs) summed
	onEnd    func(clientID string, subs []Subscription)

	// Counters, safe from any goroutine.
	expired, evicted           atomic.Uint64
	queueDropped, queueExpired atomic.Uint64
}

// StoreLimits bound the state kept for disconnected sessions. For
// Sessions and Bytes, 0 is no bound.
type StoreLimits struct {
	Sessions int // kept sessions
	// Bytes bounds their approximate heap bytes (client ids, filters,
	// messages).
	Bytes int
	// Messages bounds the messages queued for one kept session (0:
	// DefaultMaxQueued). The messages its connection left
	// unacknowledged count toward it but are always kept.
	Messages int
	// Overflow is what a message that finds its session's queue full
	// (Messages, or Bytes for the whole store) does; the zero value
	// is OverflowDropNew.
	Overflow Overflow
}

// Overflow is what happens to a message routed to a kept session whose
// queue is full.
type Overflow uint8

// Overflow policies.
const (
	// OverflowDropNew refuses the newest message: the device gets what
	// was queued first.
	OverflowDropNew Overflow = iota
	// OverflowDropOldest drops the oldest queued message to make room
	// (never one the device's connection had sent and not had
	// acknowledged): the device gets the latest.
	OverflowDropOldest
)

type keptSession struct {
	due
	subs []Subscription
	// msgs are the routed messages to send when the device resumes the
	// session: those its connection had not had acknowledged (sent, with
	// their packet identifier, first), then those queued since.
	msgs []Delivery
	// received are the packet identifiers of QoS 2 messages the device
	// sent, acknowledged with PUBREC, whose PUBREL had not come.
	received []uint16
	size     int
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
// message msgSize.
func keptSize(clientID string, subs []Subscription, msgs []Delivery) int {
	n := 160 + len(clientID)
	for _, s := range subs {
		n += 40 + len(s.Filter)
	}
	for i := range msgs {
		n += msgSize(&msgs[i])
	}
	return n
}

// msgSize is roughly what a kept message costs: its slot, topic, payload,
// properties and subscription identifiers.
func msgSize(d *Delivery) int {
	return 200 + deliverySize(d) + 4*len(d.SubIDs)
}

// OnEnd sets fn to be called, outside the store's lock, when a kept
// session ends without the device resuming it: expired (Sweep, or found
// expired by Take), evicted to stay within StoreLimits, or dropped for a
// Clean Start (Drop). Not when the device resumes it (Take), nor when Keep
// replaces it with the same client id's newer state. subs are its
// subscriptions, so the gateway can drop its routes. Set it before
// sessions are kept.
func (st *Store) OnEnd(fn func(clientID string, subs []Subscription)) {
	st.mu.Lock()
	st.onEnd = fn
	st.mu.Unlock()
}

// ended is a kept session that ended, for OnEnd.
type ended struct {
	id   string
	subs []Subscription
}

// tellEnded calls OnEnd for each of ends; mu not held.
func (st *Store) tellEnded(ends []ended) {
	if len(ends) == 0 {
		return
	}
	st.mu.Lock()
	fn := st.onEnd
	st.mu.Unlock()
	if fn == nil {
		return
	}
	for _, e := range ends {
		fn(e.id, e.subs)
	}
}

// Keep holds a disconnected session's subscriptions, and the routed
// messages it had not had acknowledged, until expires. Past the store's
// limits, the sessions that expire soonest make room (this one too, if it
// is that one), each reported to OnEnd.
func (st *Store) Keep(clientID string, subs []Subscription, msgs []Delivery, expires time.Time) {
	st.keep(clientID, subs, msgs, nil, expires)
}

// keep is Keep, with the packet identifiers of the QoS 2 messages the
// device sent that wait for their PUBREL (received: not to be delivered
// again if the device sends them again).
func (st *Store) keep(clientID string, subs []Subscription, msgs []Delivery, received []uint16, expires time.Time) {
	var ends []ended
	st.mu.Lock()
	st.removeSession(clientID)
	k := &keptSession{due: due{id: clientID, at: expires}, subs: subs, msgs: msgs, received: received,
		size: keptSize(clientID, subs, msgs) + 2*len(received)}
	st.sessions[clientID] = k
	st.bytes += k.size
	st.msgs += len(msgs)
	heap.Push(&st.byExpiry, &k.due)
	for len(st.byExpiry) > 0 && ((st.lim.Sessions > 0 && len(st.sessions) > st.lim.Sessions) ||
		(st.lim.Bytes > 0 && st.bytes > st.lim.Bytes)) {
		e, _ := st.removeSession(st.byExpiry[0].id)
		st.evicted.Add(1)
		ends = append(ends, ended{e.id, e.subs})
	}
	st.mu.Unlock()
	st.tellEnded(ends)
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
	st.msgs -= len(k.msgs)
	return k, true
}

// Enqueue keeps a routed message for the kept session of clientID, to be
// delivered when the device resumes it, after the messages its
// connection left unacknowledged, in order. It reports false when no
// session is kept for clientID (the caller may look for a live one).
//
// The message is matched against the kept subscriptions as a live
// session would (MatchDelivery): none takes it, or it comes out at QoS 0
// (not kept for an absent device), and nothing is queued, true. Past the
// session's bound (StoreLimits.Messages), or when its bytes would pass
// StoreLimits.Bytes, the overflow policy applies to this session's queue
// rather than evicting sessions: OverflowDropNew refuses d,
// OverflowDropOldest drops the session's oldest queued messages until d
// fits (d is refused if dropping all of them would not make room). Each
// message dropped is counted (StoreStats.QueueDropped). Safe from any
// goroutine.
func (st *Store) Enqueue(clientID string, d *Delivery) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	k, ok := st.sessions[clientID]
	if !ok {
		return false
	}
	m, ok := MatchDelivery(k.subs, clientID, d)
	if !ok || m.QoS == 0 {
		return true
	}
	m.Dup, m.PacketID, m.released = false, 0, false
	size := msgSize(&m)
	limit := st.lim.Messages
	if limit <= 0 {
		limit = DefaultMaxQueued
	}
	full := func() bool {
		return len(k.msgs) >= limit || (st.lim.Bytes > 0 && st.bytes+size > st.lim.Bytes)
	}
	if full() {
		if st.lim.Overflow != OverflowDropOldest || !st.roomFor(k, size, limit) {
			st.queueDropped.Add(1)
			return true
		}
		for full() && st.dropOldest(k) {
		}
	}
	k.msgs = append(k.msgs, m)
	k.size += size
	st.bytes += size
	st.msgs++
	return true
}

// queuedOnly reports whether a kept message was queued for the absent
// device (not sent on its connection): only those may be dropped to
// make room.
func queuedOnly(d *Delivery) bool { return d.PacketID == 0 && !d.released }

// roomFor reports whether dropping k's queued messages could make room for
// one more of size bytes; mu held.
func (st *Store) roomFor(k *keptSession, size, limit int) bool {
	n, bytes := len(k.msgs), st.bytes
	for i := range k.msgs {
		if queuedOnly(&k.msgs[i]) {
			n--
			bytes -= msgSize(&k.msgs[i])
		}
	}
	return n < limit && (st.lim.Bytes <= 0 || bytes+size <= st.lim.Bytes)
}

// dropOldest drops k's oldest queued message, and counts it; mu held. The
// messages before it (sent on the device's connection) move up one slot.
func (st *Store) dropOldest(k *keptSession) bool {
	i := slices.IndexFunc(k.msgs, func(d Delivery) bool { return queuedOnly(&d) })
	if i < 0 {
		return false
	}
	size := msgSize(&k.msgs[i])
	copy(k.msgs[1:i+1], k.msgs[:i])
	k.msgs[0] = Delivery{}
	k.msgs = k.msgs[1:]
	k.size -= size
	st.bytes -= size
	st.msgs--
	st.queueDropped.Add(1)
	return true
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
// subscriptions and the messages to send it, in order. Messages whose
// expiry has passed are dropped and counted (StoreStats.QueueExpired),
// except a QoS 2 message already sent, to which expiry no longer applies
// [MQTT-4.3.3-7]. A will still waiting for its delay is cancelled
// [MQTT-3.1.3-9]. A session found expired ends (OnEnd).
func (st *Store) Take(clientID string, now time.Time) (subs []Subscription, msgs []Delivery, ok bool) {
	subs, msgs, _, ok = st.take(clientID, now)
	return subs, msgs, ok
}

// take is Take, with the identifiers of the device's QoS 2 messages
// waiting for their PUBREL (keep).
func (st *Store) take(clientID string, now time.Time) (subs []Subscription, msgs []Delivery, received []uint16, ok bool) {
	st.mu.Lock()
	st.removeWill(clientID)
	k, ok := st.removeSession(clientID)
	if ok && !now.Before(k.at) {
		st.expired.Add(1)
		st.mu.Unlock()
		st.tellEnded([]ended{{k.id, k.subs}})
		return nil, nil, nil, false
	}
	st.mu.Unlock()
	if !ok {
		return nil, nil, nil, false
	}
	msgs = k.msgs[:0]
	for i := range k.msgs {
		if m := &k.msgs[i]; expired(m.Expires, now) && !sentBefore(m) {
			st.queueExpired.Add(1)
			continue
		}
		msgs = append(msgs, k.msgs[i])
	}
	clear(k.msgs[len(msgs):])
	if len(msgs) == 0 {
		msgs = nil
	}
	return k.subs, msgs, k.received, true
}

// Drop discards a kept session for a device starting clean (OnEnd is
// told). Ending the session publishes a will still waiting for its
// delay, unless the will was held for a move (HoldWill): the device is
// back.
func (st *Store) Drop(clientID string, now time.Time) {
	st.mu.Lock()
	k, kept := st.removeSession(clientID)
	dw, ok := st.removeWill(clientID)
	st.mu.Unlock()
	if kept {
		st.tellEnded([]ended{{k.id, k.subs}})
	}
	if ok && !dw.moved {
		st.publish(clientID, dw.will, now)
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
		st.publish(clientID, w, now)
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
	var ends []ended
	st.mu.Lock()
	for len(st.byExpiry) > 0 && !now.Before(st.byExpiry[0].at) {
		k, _ := st.removeSession(st.byExpiry[0].id)
		st.expired.Add(1)
		ends = append(ends, ended{k.id, k.subs})
	}
	for len(st.byDue) > 0 && !now.Before(st.byDue[0].at) {
		w, _ := st.removeWill(st.byDue[0].id)
		due = append(due, w)
	}
	st.mu.Unlock()
	st.tellEnded(ends)
	for _, w := range due {
		st.publish(w.id, w.will, now)
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
	// Queued is how many messages the kept sessions hold for their
	// devices (left unacknowledged, and queued since).
	Queued int
	// QueueDropped counts messages for kept sessions dropped by the
	// overflow policy (StoreLimits.Messages, StoreLimits.Bytes).
	QueueDropped uint64
	// QueueExpired counts kept messages that expired before the device
	// came back for them.
	QueueExpired uint64
}

// Stats reports what the store holds and has let go.
func (st *Store) Stats() StoreStats {
	st.mu.Lock()
	defer st.mu.Unlock()
	return StoreStats{Sessions: len(st.sessions), Wills: len(st.wills), Bytes: st.bytes,
		Expired: st.expired.Load(), Evicted: st.evicted.Load(),
		Queued: st.msgs, QueueDropped: st.queueDropped.Load(), QueueExpired: st.queueExpired.Load()}
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

// publish hands a Will to the sink, published at now: its Message Expiry
// Interval counts from then.
func (st *Store) publish(clientID string, w *Will, now time.Time) {
	m := &Message{ClientID: clientID, Username: w.Username, Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain, TLS: w.TLS,
		Props: w.Props}
	if w.Expiry > 0 {
		m.Expires = now.Add(time.Duration(w.Expiry) * time.Second)
	}
	if m.QoS == 0 {
		st.sink.Publish(m, nil)
		return
	}
	// Nobody waits for a will's acknowledgement.
	st.sink.Publish(m, func(mqttcodec.ReasonCode) {})
}
