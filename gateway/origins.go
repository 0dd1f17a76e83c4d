package gateway

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the origin set: how many TLS publishes it remembers, and for
// how long. A broker copy that comes back later than originTTL, or after
// originMax newer TLS publishes, is no longer recognised (docs/operations.md,
// "Secure topics": list such topics in --secure-topics).
const (
	originMax = 1 << 16
	originTTL = time.Minute
)

// originSet remembers, for a short while, a hash of the topic and payload
// of each message a device published here over TLS, so that the broker's
// copy, which comes back without its origin, still goes to TLS sessions
// only. The hash is keyed per process, so that nobody can make a message
// of theirs collide with another on purpose (a collision would only keep a
// message off plain sockets anyway). Safe for concurrent use; nil is an
// empty set.
type originSet struct {
	seed maphash.Seed
	ttl  time.Duration
	now  func() time.Time

	mu    sync.Mutex            // guards the fields below
	m     map[uint64]originSeen // hash -> its latest add
	ring  []originEntry         // adds, oldest at head; grows up to max
	head  int
	count int
	max   int

	evicted atomic.Uint64 // entries dropped unexpired because the set was full
}

type originEntry struct {
	hash    uint64
	expires int64
}

// originSeen is a message's latest add: when it is forgotten, and by whom
// it was published.
type originSeen struct {
	expires int64
	client  string
}

func newOriginSet(max int, ttl time.Duration, now func() time.Time) *originSet {
	return &originSet{seed: maphash.MakeSeed(), ttl: ttl, now: now, max: max, m: make(map[uint64]originSeen)}
}

func (o *originSet) hash(topic string, payload []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(o.seed)
	h.WriteString(topic)
	h.WriteByte(0)
	h.Write(payload)
	return h.Sum64()
}

// add remembers a message and the client that published it.
func (o *originSet) add(topic string, payload []byte, client string) {
	if o == nil {
		return
	}
	h := o.hash(topic, payload)
	now := o.now().UnixNano()
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.count > 0 && o.ring[o.head].expires <= now {
		o.pop()
	}
	if o.count == len(o.ring) {
		if len(o.ring) < o.max {
			o.grow()
		} else {
			o.pop()
			o.evicted.Add(1)
		}
	}
	exp := now + int64(o.ttl)
	o.ring[(o.head+o.count)%len(o.ring)] = originEntry{hash: h, expires: exp}
	o.count++
	o.m[h] = originSeen{expires: exp, client: client}
}

// grow doubles the ring, up to max, oldest entry first. o.mu is held.
func (o *originSet) grow() {
	ring := make([]originEntry, min(max(2*len(o.ring), 64), o.max))
	for i := range o.count {
		ring[i] = o.ring[(o.head+i)%len(o.ring)]
	}
	o.ring, o.head = ring, 0
}

// pop drops the oldest entry. o.mu is held.
func (o *originSet) pop() {
	e := o.ring[o.head]
	if o.m[e.hash].expires == e.expires {
		delete(o.m, e.hash)
	}
	o.head = (o.head + 1) % len(o.ring)
	o.count--
}

// seen reports whether a message with this topic and payload was added
// within the bounds.
func (o *originSet) seen(topic string, payload []byte) bool {
	_, ok := o.publisher(topic, payload)
	return ok
}

// publisher returns the client that last published a message with this
// topic and payload within the bounds.
func (o *originSet) publisher(topic string, payload []byte) (string, bool) {
	if o == nil {
		return "", false
	}
	h := o.hash(topic, payload)
	now := o.now().UnixNano()
	o.mu.Lock()
	e, ok := o.m[h]
	o.mu.Unlock()
	if !ok || e.expires <= now {
		return "", false
	}
	return e.client, true
}
