package cluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/internal/testredis"
)

// claimNow claims and waits for the answer.
func claimNow(t *testing.T, r *Replay, id string, key byte, expiry, now int64) auth.ReplayClaim {
	t.Helper()
	ch := make(chan auth.ReplayClaim, 1)
	r.Claim(id, [16]byte{key}, expiry, now, func(a auth.ReplayClaim) { ch <- a })
	select {
	case a := <-ch:
		return a
	case <-time.After(20 * time.Second):
		t.Fatal("no answer")
	}
	return 0
}

func newReplay(t *testing.T, rdb redis.UniversalClient, opts ReplayOptions) *Replay {
	t.Helper()
	r, err := NewReplay(rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// A token claimed through one node is a replay through another, and
// through the first; the per-device bound holds across nodes and frees as
// tokens expire; the key is the client id's, in its slot, and expires.
func TestReplayClaims(t *testing.T) {
	srv := testredis.Start(t)
	rdbA, _ := client(t, srv)
	rdbB, _ := client(t, srv)
	a := newReplay(t, rdbA, ReplayOptions{Timeout: 10 * time.Second, PerDevice: 3, Grace: 2 * time.Second})
	b := newReplay(t, rdbB, ReplayOptions{Timeout: 10 * time.Second, PerDevice: 3, Grace: 2 * time.Second})
	const now = 1_700_000_000
	exp := int64(now + 60)
	for i, c := range []struct {
		r    *Replay
		id   string
		key  byte
		now  int64
		want auth.ReplayClaim
	}{
		{a, "dev{1}", 1, now, auth.ClaimNew},
		{b, "dev{1}", 1, now, auth.ClaimReplayed},
		{a, "dev{1}", 1, now + 30, auth.ClaimReplayed},
		{b, "dev{1}", 2, now, auth.ClaimNew},
		{a, "other", 1, now, auth.ClaimNew}, // the same key of another client id
		{b, "dev{1}", 3, now, auth.ClaimNew},
		{a, "dev{1}", 4, now, auth.ClaimDeviceFull},
		{b, "dev{1}", 1, exp + 2, auth.ClaimReplayed}, // within the grace
		{b, "dev{1}", 4, exp + 3, auth.ClaimNew},      // the first three expired
		{a, "dev{1}", 1, exp + 3, auth.ClaimNew},      // expired: forgotten (the window refuses it first)
	} {
		e := exp
		if c.now > now+30 {
			e = c.now + 60
		}
		if got := claimNow(t, c.r, c.id, c.key, e, c.now); got != c.want {
			t.Fatalf("claim %d (%s key %d at %d): %d, want %d", i, c.id, c.key, c.now, got, c.want)
		}
	}
	key := replayKey(DefaultPrefix, "dev{1}")
	if key != "dg:6:{dev{1}}:replay" {
		t.Fatalf("key %q", key)
	}
	if ttl, _ := strconv.Atoi(strings.TrimPrefix(srv.Do("TTL", key), ":")); ttl <= 0 || ttl > 60+2 {
		t.Fatalf("TTL of %s: %d", key, ttl)
	}
	if n := srv.Do("ZCARD", key); n != ":2" {
		t.Fatalf("%s holds %s tokens, want 2", key, n)
	}
	if st := a.Stats(); st.Replayed != 1 || st.Full != 1 || st.TimedOut != 0 {
		t.Fatalf("stats of a: %+v", st)
	}
}

// gateHook holds the first pipeline until open is closed.
type gateHook struct {
	once sync.Once
	open chan struct{}
}

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		first := false
		h.once.Do(func() { first = true })
		if first {
			<-h.open
		}
		return next(ctx, cmds)
	}
}

// A storm of claims is a few round trips: those queued while one is in
// flight go in pipelines of BatchSize. Past MaxPending waiting, a claim
// is answered busy at once.
func TestReplayBatches(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	gate := &gateHook{open: make(chan struct{})}
	rdb.AddHook(gate)
	const n, batch = 2000, 256
	r := newReplay(t, rdb, ReplayOptions{Timeout: 20 * time.Second, BatchSize: batch, MaxPending: n})
	var wg sync.WaitGroup
	var mu sync.Mutex
	answers := map[auth.ReplayClaim]int{}
	claim := func(i int) {
		wg.Add(1)
		r.Claim(fmt.Sprint("dev-", i), [16]byte{1}, 1_700_000_060, 1_700_000_000, func(a auth.ReplayClaim) {
			mu.Lock()
			answers[a]++
			mu.Unlock()
			wg.Done()
		})
	}
	claim(0)
	// The first claim is in flight (held by the gate) once the queue is
	// empty again.
	deadline := time.Now().Add(20 * time.Second)
	for {
		r.mu.Lock()
		empty := len(r.queue) == 0
		r.mu.Unlock()
		if empty {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer did not take the first claim")
		}
		time.Sleep(time.Millisecond)
	}
	for i := 1; i <= n+1; i++ {
		claim(i) // the last finds the queue full
	}
	close(gate.open)
	wg.Wait()
	if answers[auth.ClaimNew] != n+1 || answers[auth.ClaimBusy] != 1 {
		t.Fatalf("answers %v, want %d new and 1 busy", answers, n+1)
	}
	// One for the first claim, one more when Redis did not have the
	// script yet (NOSCRIPT, then loaded), then full batches.
	if trips, most := r.Stats().RoundTrips, uint64(2+(n+batch-1)/batch); trips > most {
		t.Fatalf("%d claims took %d round trips, want at most %d", n+1, trips, most)
	}
}

// With Redis hung, a claim is answered unavailable within Timeout
// whatever the client's socket timeouts; the memory answers again once
// Redis is back; Close answers what waits.
func TestReplayRedisHung(t *testing.T) {
	srv := testredis.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 30 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	r := newReplay(t, rdb, ReplayOptions{Timeout: 300 * time.Millisecond})
	if got := claimNow(t, r, "dev", 1, 1_700_000_060, 1_700_000_000); got != auth.ClaimNew {
		t.Fatalf("before: %d", got)
	}
	srv.Pause()
	start := time.Now()
	if got := claimNow(t, r, "dev", 2, 1_700_000_060, 1_700_000_000); got != auth.ClaimUnavailable {
		t.Fatalf("redis hung: %d, want unavailable", got)
	}
	t.Logf("answered unavailable after %v (timeout 300ms, socket read timeout 30s)", time.Since(start))
	srv.Resume()
	var got auth.ReplayClaim
	for range 100 { // the writer may still be in the hung round trip
		if got = claimNow(t, r, "dev", 3, 1_700_000_060, 1_700_000_000); got != auth.ClaimUnavailable {
			break
		}
	}
	if got != auth.ClaimNew {
		t.Fatalf("redis back: %d", got)
	}
	r.Close()
	if got := claimNow(t, r, "dev", 4, 1_700_000_060, 1_700_000_000); got != auth.ClaimUnavailable {
		t.Fatalf("after Close: %d", got)
	}
}

// BenchmarkReplayClaimCost measures what a token claim costs Redis when
// claims arrive together (a reconnect storm of token devices, 17-byte
// client ids, each one token): round trips, commands (the EVALSHA and the
// commands its script runs), bytes each way, and the memory a client id's
// key holds, per claim:
//
//	go test -run x -bench ReplayClaimCost -benchtime 10000x ./gateway/cluster/
func BenchmarkReplayClaimCost(b *testing.B) {
	srv := testredis.Start(b, "appendfsync everysec")
	rdb, _ := client(b, srv)
	r, err := NewReplay(rdb, ReplayOptions{Timeout: 30 * time.Second, MaxPending: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	warm := make(chan auth.ReplayClaim, 1)
	r.Claim("warm-up", [16]byte{}, 1_700_000_060, 1_700_000_000, func(a auth.ReplayClaim) { warm <- a }) // loads the script
	<-warm
	srv.Do("CONFIG", "RESETSTAT")
	before := readServer(b, srv)
	trips0 := r.Stats().RoundTrips
	i := 0
	for b.Loop() {
		wg.Add(1)
		r.Claim(deviceID(i), [16]byte{byte(i), byte(i >> 8), byte(i >> 16)}, 1_700_000_060, 1_700_000_000, func(a auth.ReplayClaim) {
			if a != auth.ClaimNew {
				b.Errorf("claim answered %d", a)
			}
			wg.Done()
		})
		i++
	}
	wg.Wait()
	b.StopTimer()
	after := readServer(b, srv)
	n := float64(i)
	b.ReportMetric(float64(r.Stats().RoundTrips-trips0)/n, "round-trips/claim")
	b.ReportMetric(float64(after.calls-before.calls)/n, "redis-cmds/claim")
	b.ReportMetric(float64(after.in-before.in)/n, "B-in/claim")
	b.ReportMetric(float64(after.out-before.out)/n, "B-out/claim")
	b.ReportMetric(float64(after.memory-before.memory)/n, "B-memory/claim")
}
