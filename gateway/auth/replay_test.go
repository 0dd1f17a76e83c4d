package auth

import (
	"math/rand/v2"
	"runtime"
	"testing"
)

func randomKey(rng *rand.Rand) replayKey {
	var k replayKey
	for i := range k {
		k[i] = byte(rng.Uint32())
	}
	return k
}

func TestReplayCacheGeometry(t *testing.T) {
	tests := []struct {
		window     int64
		capacity   int
		wantGran   int64
		wantRing   int
		wantShards int
		wantPer    int
	}{
		{window: 300, capacity: 1 << 20, wantGran: 38, wantRing: 19, wantShards: 64, wantPer: 1 << 14},
		{window: 1, capacity: 1, wantGran: 1, wantRing: 5, wantShards: 1, wantPer: 1},
		{window: 8, capacity: 3, wantGran: 1, wantRing: 19, wantShards: 2, wantPer: 2},
		{window: 60, capacity: 100, wantGran: 8, wantRing: 18, wantShards: 64, wantPer: 2},
	}
	for _, tt := range tests {
		c := newReplayCache(tt.window, tt.capacity)
		if c.gran != tt.wantGran || len(c.shards[0].buckets) != tt.wantRing || len(c.shards) != tt.wantShards || c.perShard != tt.wantPer {
			t.Errorf("newReplayCache(%d, %d): gran %d, ring %d, %d shards of %d; want %d, %d, %d of %d",
				tt.window, tt.capacity, c.gran, len(c.shards[0].buckets), len(c.shards), c.perShard,
				tt.wantGran, tt.wantRing, tt.wantShards, tt.wantPer)
		}
	}
}

// TestReplayCacheModel drives the cache the way Tokens does, over many
// windows of simulated time, with callers whose clocks lag by up to one
// bucket, and compares every answer with an exact model: a token is a replay
// if and only if it was accepted before and has not expired.
func TestReplayCacheModel(t *testing.T) {
	tests := []struct {
		name   string
		window int64
		steps  int
	}{
		{name: "one second window", window: 1, steps: 20000},
		{name: "short window", window: 10, steps: 20000},
		{name: "default window", window: 300, steps: 20000},
		{name: "uneven buckets", window: 61, steps: 20000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tt.window), 1))
			c := newReplayCache(tt.window, 1<<30)
			type accepted struct {
				key    replayKey
				expiry int64
			}
			model := make(map[replayKey]int64) // key -> expiry
			var history []accepted
			now := int64(1_700_000_000)
			replays := 0
			for step := range tt.steps {
				now += int64(rng.IntN(3)) // time moves on by 0, 1 or 2 seconds
				caller := now - rng.Int64N(c.gran+1)
				var key replayKey
				var expiry int64
				if len(history) > 0 && rng.IntN(3) == 0 {
					h := history[len(history)-1-rng.IntN(min(len(history), 64))]
					key, expiry = h.key, h.expiry
				} else {
					key = randomKey(rng)
					ts := caller - tt.window + rng.Int64N(2*tt.window+1)
					expiry = ts + tt.window
				}
				if expiry < caller {
					continue // the window check refuses it before the cache is asked
				}
				_, seen := model[key]
				want := addAccepted
				if seen {
					want = addReplayed
					replays++
				}
				if got := c.add(key, expiry, caller); got != want {
					t.Fatalf("step %d: add(expiry %d, now %d) = %d, want %d", step, expiry, caller, got, want)
				}
				if !seen {
					model[key] = expiry
					history = append(history, accepted{key: key, expiry: expiry})
				}
			}
			if replays == 0 {
				t.Fatal("the run tried no replays")
			}
			// Memory is given back: well after the last expiry nothing is held.
			if n := c.len(now + 2*tt.window + 2*c.gran + 1); n != 0 {
				t.Fatalf("%d entries held after everything expired", n)
			}
		})
	}
}

func TestReplayCacheFull(t *testing.T) {
	const window = 10
	c := newReplayCache(window, 2) // 2 shards of 1
	rng := rand.New(rand.NewPCG(3, 4))
	now := int64(1_000_000)
	keys := make(map[int]replayKey) // shard -> a key of it
	for len(keys) < 2 {
		k := randomKey(rng)
		keys[int(k[0])%2] = k
	}
	for shard, k := range keys {
		if got := c.add(k, now+window, now); got != addAccepted {
			t.Fatalf("shard %d: first key: %d", shard, got)
		}
		other := randomKey(rng)
		for int(other[0])%2 != shard {
			other = randomKey(rng)
		}
		if got := c.add(other, now+window, now); got != addFull {
			t.Fatalf("shard %d: key beyond the capacity: %d, want full", shard, got)
		}
		// A replay is still recognised when full.
		if got := c.add(k, now+window, now); got != addReplayed {
			t.Fatalf("shard %d: replay when full: %d, want replayed", shard, got)
		}
	}
	// After the remembered keys expire, there is room again.
	later := now + window + 2*c.gran + 1
	if got := c.add(randomKey(rng), later+window, later); got != addAccepted {
		t.Fatalf("after expiry: %d", got)
	}
}

func TestReplayCacheClockStepBack(t *testing.T) {
	const window = 80 // gran 10
	c := newReplayCache(window, 100)
	rng := rand.New(rand.NewPCG(5, 6))
	now := int64(1_000_000)
	if got := c.add(randomKey(rng), now+2*window, now); got != addAccepted {
		t.Fatalf("first key: %d", got)
	}
	// The clock steps back by more than the ring covers: the new token's
	// bucket is held by the earlier, still live, slot.
	back := now - int64(len(c.shards[0].buckets))*c.gran
	for range 200 {
		if got := c.add(randomKey(rng), back+2*window, back); got == addClockStepped {
			return
		}
	}
	t.Fatal("a token whose bucket another live slot holds was filed")
}

// TestReplayCacheMemory measures the heap each remembered token costs; the
// package documentation quotes the figure.
func TestReplayCacheMemory(t *testing.T) {
	const n = 1 << 18
	rng := rand.New(rand.NewPCG(7, 8))
	keys := make([]replayKey, n)
	for i := range keys {
		keys[i] = randomKey(rng)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newReplayCache(300, 2*n) // room for uneven shards
	now := int64(1_000_000)
	for i, k := range keys {
		if got := c.add(k, now+int64(i%600), now); got != addAccepted {
			t.Fatalf("key %d: %d", i, got)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.1f bytes of heap per remembered token (%d tokens)", perEntry, n)
	if perEntry > 64 {
		t.Fatalf("%.1f bytes per remembered token, want at most 64", perEntry)
	}
	runtime.KeepAlive(c)
}
