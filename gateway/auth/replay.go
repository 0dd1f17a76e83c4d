package auth

import (
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
)

// replayKey identifies an accepted token of a client id: the first half of
// its HMAC. Two tokens of one client id share it only if they are the same
// (time, nonce) under the same secret, or by a 2^-128 chance.
type replayKey [16]byte

// replayShards is the number of shards of the cache. A shard is chosen by
// a keyed hash of the client id (the key is random per process), so shards
// only spread lock contention: no bound is kept per shard.
const replayShards = 64

// replayGrace is how long, in seconds, an entry is kept past its expiry,
// for callers whose clock lags the one that would drop it.
const replayGrace = 2

// replayCache remembers, per client id, the unbound tokens it accepted,
// until they expire, in bounded memory.
//
// An entry lives until expiry = token time + window (unix seconds), after
// which the window check refuses the token anyway. A client id holds at
// most perDevice live entries and the cache at most about capacity in all;
// at either bound add refuses the new token instead of forgetting a live
// one (forgetting would let a recorded token be replayed within its
// window). Only tokens whose HMAC verified reach the cache, so a client id
// fills its own entries only, and only with its own secret: one device can
// block itself, never another.
type replayCache struct {
	perDevice int
	capacity  int64
	n         atomic.Int64 // live and not yet dropped entries, all shards
	lastSweep atomic.Int64 // the second of the last sweep add made
	seed      maphash.Seed
	shards    [replayShards]replayShard
}

type replayShard struct {
	mu sync.Mutex
	// devices maps a client id to its entries, oldest first; a client id
	// with none is deleted. Guarded by mu.
	devices map[string][]replayEntry
}

type replayEntry struct {
	expiry int64
	key    replayKey
}

// addResult is the outcome of replayCache.add.
type addResult uint8

const (
	addAccepted   addResult = iota // first sight of the token: recorded
	addReplayed                    // seen before and not yet expired
	addDeviceFull                  // not seen, but the client id holds perDevice tokens
	addFull                        // not seen, but the cache holds capacity tokens
)

// newReplayCache returns a cache holding at most perDevice (>= 1) entries
// per client id and about capacity (>= 1) in all.
func newReplayCache(perDevice, capacity int) *replayCache {
	c := &replayCache{perDevice: perDevice, capacity: int64(capacity), seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].devices = make(map[string][]replayEntry)
	}
	return c
}

func (c *replayCache) shard(id string) *replayShard {
	return &c.shards[maphash.String(c.seed, id)%replayShards]
}

// add records the token key of client id, valid until expiry (unix
// seconds), as seen at now. At the global bound it sweeps the expired
// entries of every client id, at most once a second, before it refuses.
func (c *replayCache) add(id string, key replayKey, expiry, now int64) addResult {
	res := c.addOnce(id, key, expiry, now)
	if res == addFull && c.lastSweep.Swap(now) != now {
		c.sweep(now)
		res = c.addOnce(id, key, expiry, now)
	}
	return res
}

func (c *replayCache) addOnce(id string, key replayKey, expiry, now int64) addResult {
	s := c.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	list, held := s.devices[id]
	list = c.pruneLocked(list, now)
	res := addAccepted
	for _, e := range list {
		if e.key == key {
			res = addReplayed
			break
		}
	}
	switch {
	case res != addAccepted:
	case len(list) >= c.perDevice:
		res = addDeviceFull
	case c.n.Load() >= c.capacity:
		res = addFull
	default:
		list = append(list, replayEntry{expiry: expiry, key: key})
		c.n.Add(1)
	}
	switch {
	case len(list) == 0 && held:
		delete(s.devices, id)
	case len(list) > 0 && held:
		s.devices[id] = list
	case len(list) > 0:
		s.devices[strings.Clone(id)] = list // id may be a view of a read buffer
	}
	return res
}

// pruneLocked drops the entries of list that expired more than replayGrace
// seconds before now, in place. The shard's mu is held.
func (c *replayCache) pruneLocked(list []replayEntry, now int64) []replayEntry {
	kept := list[:0]
	for _, e := range list {
		if e.expiry+replayGrace >= now {
			kept = append(kept, e)
		}
	}
	if dropped := len(list) - len(kept); dropped > 0 {
		c.n.Add(-int64(dropped))
		clear(list[len(kept):])
	}
	return kept
}

// load puts an entry read back from disk, as of now: an expired one or one
// already held is skipped, and no bound applies (the entry was within the
// bounds when it was accepted).
func (c *replayCache) load(id string, key replayKey, expiry, now int64) {
	if expiry+replayGrace < now {
		return
	}
	s := c.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.devices[id]
	for _, e := range list {
		if e.key == key {
			return
		}
	}
	s.devices[id] = append(list, replayEntry{expiry: expiry, key: key})
	c.n.Add(1)
}

// sweep drops the expired entries of every client id as of now and returns
// the number of entries left. Between sweeps, a client id's entries are
// pruned when add next touches it.
func (c *replayCache) sweep(now int64) int {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for id, list := range s.devices {
			if list = c.pruneLocked(list, now); len(list) == 0 {
				delete(s.devices, id)
			} else {
				s.devices[id] = list
			}
		}
		s.mu.Unlock()
	}
	return int(c.n.Load())
}

// each calls f for every entry held, one shard at a time under its lock: f
// must not block.
func (c *replayCache) each(f func(id string, e replayEntry)) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for id, list := range s.devices {
			for _, e := range list {
				f(id, e)
			}
		}
		s.mu.Unlock()
	}
}
