package auth

import "sync"

// replayKey identifies an accepted token: the first half of its HMAC. Two
// tokens share it only if they are the same (client id, time, nonce) under
// the same secret, or by a 2^-128 chance; it is uniformly distributed, so
// its first byte also picks the shard.
type replayKey [16]byte

// maxReplayShards is the number of shards of a cache with room enough.
const maxReplayShards = 64

// bucketsPerWindow is how many buckets one window spans; more buckets free
// memory closer to the moment entries expire, fewer cost less per call.
const bucketsPerWindow = 8

// replayCache remembers accepted tokens until they expire, in bounded memory.
//
// An entry lives until expiry = token time + window (in unix seconds), after
// which the window check refuses the token anyway. Each shard files its
// entries into a ring of buckets by expiry: bucket slot = expiry / gran. A
// token's expiry follows from the token, so a lookup reads one bucket; a
// bucket whose slot lies wholly in the past is dropped as a whole, so expiry
// costs O(buckets) per call, never a scan of the entries.
//
// When a shard holds its share of the capacity, add refuses new tokens
// instead of forgetting live ones: forgetting would let a recorded token be
// replayed within its window.
type replayCache struct {
	gran     int64 // seconds of expiry per bucket, >= 1
	perShard int   // capacity of one shard
	shards   []replayShard
}

type replayShard struct {
	mu      sync.Mutex
	n       int            // entries in buckets; guarded by mu
	buckets []replayBucket // ring indexed by slot mod len; guarded by mu
}

type replayBucket struct {
	slot int64
	m    map[replayKey]struct{} // nil when empty
}

// addResult is the outcome of replayCache.add.
type addResult uint8

const (
	addAccepted     addResult = iota // first sight of the token: recorded
	addReplayed                      // seen before and not yet expired
	addFull                          // not seen, but the shard is full
	addClockStepped                  // not seen, but its bucket is held by another slot
)

// newReplayCache returns a cache for tokens of a window of window seconds
// (>= 1) holding at most about capacity (>= 1) entries.
func newReplayCache(window int64, capacity int) *replayCache {
	shards := maxReplayShards
	for shards > 1 && shards > capacity {
		shards /= 2
	}
	gran := (window + bucketsPerWindow - 1) / bucketsPerWindow
	// A bucket is kept one slot past its own (see expireLocked), and new
	// expiries reach now+2*window. With callers' clocks at most gran apart,
	// the slots held span floor((now+gran+2*window)/gran) - floor(now/gran)
	// + 2 <= ceil(2*window/gran) + 3 values: a ring that long never maps two
	// held slots to one bucket.
	ring := int((2*window+gran-1)/gran) + 3
	c := &replayCache{
		gran:     gran,
		perShard: (capacity + shards - 1) / shards,
		shards:   make([]replayShard, shards),
	}
	for i := range c.shards {
		c.shards[i].buckets = make([]replayBucket, ring)
	}
	return c
}

// add records the token key, valid until expiry (unix seconds, >= now), as
// seen at now.
func (c *replayCache) add(key replayKey, expiry, now int64) addResult {
	s := &c.shards[int(key[0])%len(c.shards)]
	slot := expiry / c.gran
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now / c.gran)
	b := &s.buckets[slot%int64(len(s.buckets))]
	if b.m != nil {
		if b.slot != slot {
			// A held bucket of another slot: the clock stepped back by more
			// than gran seconds since that bucket was filed. Filing the key
			// there would drop it at the wrong time; refuse until that
			// bucket expires.
			return addClockStepped
		}
		if _, seen := b.m[key]; seen {
			return addReplayed
		}
	}
	if s.n >= c.perShard {
		return addFull
	}
	if b.m == nil {
		b.slot = slot
		b.m = make(map[replayKey]struct{})
	}
	b.m[key] = struct{}{}
	s.n++
	return addAccepted
}

// expireLocked drops every bucket whose slot ended a whole slot (at least
// gran seconds) before the slot of now. Its tokens expired at least gran
// seconds ago, so a caller whose clock lags by up to gran seconds, and would
// still take such a token as fresh, finds it here.
func (s *replayShard) expireLocked(nowSlot int64) {
	for i := range s.buckets {
		b := &s.buckets[i]
		if b.m != nil && b.slot+1 < nowSlot {
			s.n -= len(b.m)
			b.m = nil
		}
	}
}

// len drops the expired buckets of every shard as of now and returns the
// number of entries left. Between calls, a shard drops its expired buckets
// when add next touches it.
func (c *replayCache) len(now int64) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.expireLocked(now / c.gran)
		n += s.n
		s.mu.Unlock()
	}
	return n
}
