package auth

import (
	"fmt"
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

// TestReplayCachePerDevice fills one client id to its bound: its next
// token is refused, another client id's are not, and the first has room
// again once its oldest tokens expire.
func TestReplayCachePerDevice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const perDevice = 4
	c := newReplayCache(perDevice, 1000)
	now := int64(1_000_000)
	var first replayKey
	for i := range perDevice {
		k := randomKey(rng)
		if i == 0 {
			first = k
		}
		// Expiries spread over the window: now+10, now+20, ...
		if got := c.add("flood", k, now+int64(10*(i+1)), now); got != addAccepted {
			t.Fatalf("token %d of flood: %d, want accepted", i, got)
		}
	}
	steps := []struct {
		name   string
		id     string
		key    replayKey
		expiry int64
		now    int64
		want   addResult
	}{
		{name: "a replay at the bound is still a replay", id: "flood", key: first, expiry: now + 10, now: now, want: addReplayed},
		{name: "flood's next token is refused", id: "flood", key: randomKey(rng), expiry: now + 60, now: now, want: addDeviceFull},
		{name: "another device is not affected", id: "victim", key: randomKey(rng), expiry: now + 60, now: now, want: addAccepted},
		{name: "the same key under another id is another token", id: "victim", key: first, expiry: now + 10, now: now, want: addAccepted},
		{name: "within the grace the oldest still counts", id: "flood", key: randomKey(rng), expiry: now + 70, now: now + 10 + replayGrace, want: addDeviceFull},
		{name: "past it, there is room for one", id: "flood", key: randomKey(rng), expiry: now + 70, now: now + 11 + replayGrace, want: addAccepted},
		{name: "an expired key is forgotten (the window check refuses its token first)", id: "flood", key: first, expiry: now + 10, now: now + 21 + replayGrace, want: addAccepted},
	}
	for _, s := range steps {
		if got := c.add(s.id, s.key, s.expiry, s.now); got != s.want {
			t.Fatalf("%s: add = %d, want %d", s.name, got, s.want)
		}
	}
	// Everything expires: the client ids themselves are forgotten.
	if n := c.sweep(now + 1000); n != 0 {
		t.Fatalf("sweep after every expiry left %d entries", n)
	}
	for i := range c.shards {
		if len(c.shards[i].devices) != 0 {
			t.Fatalf("shard %d still holds %d client ids", i, len(c.shards[i].devices))
		}
	}
}

// TestReplayCacheCapacity: at the global bound a new token is refused, not
// let in by forgetting another.
func TestReplayCacheCapacity(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	c := newReplayCache(8, 3)
	now := int64(1_000_000)
	for i := range 3 {
		if got := c.add(fmt.Sprintf("dev-%d", i), randomKey(rng), now+60, now); got != addAccepted {
			t.Fatalf("dev-%d: %d", i, got)
		}
	}
	if got := c.add("dev-9", randomKey(rng), now+60, now); got != addFull {
		t.Fatalf("token beyond the capacity: %d, want full", got)
	}
	if got := c.add("dev-9", randomKey(rng), now+200, now+100); got != addAccepted {
		t.Fatalf("token after the others expired: %d, want accepted", got)
	}
}

// TestReplayCacheMemory measures the heap a remembered token costs with
// many devices of a few tokens each; the package documentation quotes the
// figure.
func TestReplayCacheMemory(t *testing.T) {
	const devices, perDevice = 1 << 15, 4
	rng := rand.New(rand.NewPCG(7, 8))
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("meter-%08d", i)
	}
	keys := make([]replayKey, devices*perDevice)
	for i := range keys {
		keys[i] = randomKey(rng)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newReplayCache(DefaultReplayPerDevice, DefaultReplayCapacity)
	now := int64(1_000_000)
	for i, k := range keys {
		if got := c.add(ids[i%devices], k, now+int64(i%60), now); got != addAccepted {
			t.Fatalf("key %d: %d", i, got)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perDev := float64(after.HeapAlloc-before.HeapAlloc) / devices
	t.Logf("%.0f bytes of heap per device with %d remembered tokens (%d devices)", perDev, perDevice, devices)
	if perDev > 256 {
		t.Fatalf("%.0f bytes per device with %d tokens, want at most 256", perDev, perDevice)
	}
	runtime.KeepAlive(c)
	runtime.KeepAlive(ids)
	runtime.KeepAlive(keys)
}
