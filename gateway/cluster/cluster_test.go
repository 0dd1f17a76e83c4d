package cluster

import (
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testredis"
)

func TestRecordEncoding(t *testing.T) {
	for _, r := range []Record{
		{ClientID: "a", Node: "gw-1", Mode: ModeTLS, Protocol: 5, Since: 1_700_000_000_123, Epoch: math.MaxUint64},
		{ClientID: "b c/ü", Node: "n", Mode: ModePlain, Protocol: 4, Since: 0, Epoch: 1},
	} {
		v := r.encode(r.Node)
		got, err := decodeRecord(r.ClientID, v)
		if err != nil || got != r {
			t.Fatalf("decode(encode(%+v)) = %+v, %v (%q)", r, got, err, v)
		}
		if v[:epochDigits] != epochArg(r.Epoch) {
			t.Fatalf("epoch of %q is not epochArg %q", v, epochArg(r.Epoch))
		}
	}
	for _, bad := range []string{"", "0000000000000000000x gw|p5|1", "00000000000000000001gw-p5|1", "00000000000000000001gw|p5|x"} {
		if _, err := decodeRecord("a", bad); err == nil {
			t.Fatalf("decodeRecord(%q) accepted", bad)
		}
	}
}

// Epochs increase on one node even when the wall clock steps back, and
// exceed every epoch the node has seen.
func TestClockMonotonic(t *testing.T) {
	wall := time.Unix(1_700_000_000, 0)
	c := clock{now: func() time.Time { return wall }}
	a := c.next()
	wall = wall.Add(-time.Second)
	b := c.next()
	if b <= a {
		t.Fatalf("epoch after the clock stepped back: %d <= %d", b, a)
	}
	seen := uint64(wall.Add(30 * time.Second).UnixNano())
	c.observe(seen)
	if e := c.next(); e <= seen {
		t.Fatalf("epoch %d not above the observed %d", e, seen)
	}
	c.observe(1) // lower: no effect
	if e := c.next(); e <= seen+1 {
		t.Fatalf("epoch %d went back", e)
	}
	far := uint64(wall.Add(2 * time.Minute).UnixNano())
	c.observe(far) // too far ahead: not followed
	if e := c.next(); e >= far {
		t.Fatalf("epoch %d followed one %s ahead", e, 2*time.Minute)
	}
}

func TestOptionsChecked(t *testing.T) {
	srv := testredis.New(t) // not started: Join does not connect
	rdb, _ := client(t, srv)
	for _, o := range []Options{{}, {Node: "a:b"}, {Node: "a|b"}, {Node: "ok", Prefix: "{x}"}} {
		if m, err := Join(rdb, o); err == nil {
			_ = m.Close(context.Background())
			t.Fatalf("Join(%+v) accepted", o)
		}
	}
}

// 10,000 CONNECTs in a burst are a handful of round trips, and every
// device is then in the registry.
func TestOnlineBatches(t *testing.T) {
	srv := testredis.Start(t)
	rdb, hook := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	devs := ids(10_000, "dev")
	start := time.Now()
	for i, id := range devs {
		mode := ModePlain
		if i%2 == 1 {
			mode = ModeTLS
		}
		a.Online(rec(id, mode, a.NextEpoch()))
	}
	queued := time.Since(start)
	flush(t, a)
	took := time.Since(start)
	st := a.Stats()
	t.Logf("10,000 Online: queued in %s, in redis after %s, %d round trips (%d scripts); stats %+v",
		queued, took, hook.batches.Load(), hook.evals.Load(), st)
	if n := hook.batches.Load(); n > 60 || n < 10 {
		t.Fatalf("%d round trips for 10,000 writes of batches of %d", n, DefaultBatchSize)
	}
	if st.Flushed != 10_000 || st.Dropped != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v", st)
	}
	if n := srv.Do("ZCARD", indexKey(DefaultPrefix, "a")); n != ":10000" {
		t.Fatalf("index holds %s", n)
	}
	r, ok := mustGet(t, a, "dev000001")
	if !ok || r.Node != "a" || r.Mode != ModeTLS || r.Protocol != 5 {
		t.Fatalf("Get = %+v, %v", r, ok)
	}
}

// A disconnect of an older session never removes the record of a newer
// one: in Redis (an Offline written after the Online) and in the queue
// (an Offline queued after the Online of the next session).
func TestEpochOrdering(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	e1, e2 := a.NextEpoch(), a.NextEpoch()
	a.Online(rec("d", ModePlain, e2))
	flush(t, a)
	a.Offline("d", e1)
	flush(t, a)
	if r, ok := mustGet(t, a, "d"); !ok || r.Epoch != e2 {
		t.Fatalf("after an older Offline: %+v, %v", r, ok)
	}

	// Queued together, the newer wins whatever the order.
	e3 := a.NextEpoch()
	a.Online(rec("d", ModeTLS, e3))
	a.Offline("d", e2)
	flush(t, a)
	if r, ok := mustGet(t, a, "d"); !ok || r.Epoch != e3 || r.Mode != ModeTLS {
		t.Fatalf("after Online e3, Offline e2 queued together: %+v, %v", r, ok)
	}
	if st := a.Stats(); st.Coalesced != 1 {
		t.Fatalf("coalesced %d, want 1", st.Coalesced)
	}

	// The same session's Offline removes it, from the index too.
	a.Offline("d", e3)
	flush(t, a)
	if _, ok := mustGet(t, a, "d"); ok {
		t.Fatal("record still there after its session's Offline")
	}
	if n := srv.Do("ZCARD", indexKey(DefaultPrefix, "a")); n != ":0" {
		t.Fatalf("index holds %s", n)
	}

	// Online and Offline of one session queued together: nothing left.
	e4 := a.NextEpoch()
	a.Online(rec("d", ModePlain, e4))
	a.Offline("d", e4)
	flush(t, a)
	if _, ok := mustGet(t, a, "d"); ok {
		t.Fatal("record there after Online and Offline of one session")
	}
}

// A device that moves from node a to node b: b's Online sends a a
// Takeover in the same script; a's later Offline of its old session
// leaves b's record alone.
func TestTakeoverAcrossNodes(t *testing.T) {
	srv := testredis.Start(t)
	rdbA, _ := client(t, srv)
	rdbB, _ := client(t, srv)
	a := join(t, rdbA, testOptions("a"))
	b := join(t, rdbB, testOptions("b"))
	waitLive(t, b, "a")

	ea := a.NextEpoch()
	a.Online(rec("d", ModePlain, ea))
	flush(t, a)
	eb := b.NextEpoch()
	if eb <= ea {
		// Two nodes on one machine share the clock; far apart they may
		// not: see the package documentation.
		t.Fatalf("b's epoch %d not after a's %d", eb, ea)
	}
	start := time.Now()
	b.Online(rec("d", ModeTLS, eb))
	ev := nextEvent(t, a, 5*time.Second)
	t.Logf("takeover reached node a %s after node b's Online", time.Since(start))
	if ev != (Takeover{ClientID: "d", Epoch: eb}) {
		t.Fatalf("a got %#v", ev)
	}
	flush(t, b)
	if st := b.Stats(); st.Takeovers != 1 {
		t.Fatalf("b's takeovers %d", st.Takeovers)
	}
	a.Offline("d", ea)
	flush(t, a)
	r, ok := mustGet(t, a, "d")
	if !ok || r.Node != "b" || r.Epoch != eb || r.Mode != ModeTLS {
		t.Fatalf("after the move: %+v, %v", r, ok)
	}
	if recs, _, err := a.List(context.Background(), "a", "", "", 10); err != nil || len(recs) != 0 {
		t.Fatalf("List(a) = %v, %v", recs, err)
	}
	if recs, _, err := a.List(context.Background(), "b", "tls", "", 10); err != nil || len(recs) != 1 || recs[0] != r {
		t.Fatalf("List(b) = %v, %v", recs, err)
	}
	// a saw b's epoch: its next epoch is above it.
	if e := a.NextEpoch(); e <= eb {
		t.Fatalf("a's next epoch %d not above the takeover's %d", e, eb)
	}
}

// An Online that loses to a newer session on a live node (the epochs of
// two nodes whose clocks disagree) is refused, and its own node is told to
// close the older session.
func TestOlderOnlineRefused(t *testing.T) {
	srv := testredis.Start(t)
	rdbA, _ := client(t, srv)
	rdbB, _ := client(t, srv)
	a := join(t, rdbA, testOptions("a"))
	b := join(t, rdbB, testOptions("b"))
	waitLive(t, a, "b")
	eb := b.NextEpoch()
	b.Online(rec("d", ModeTLS, eb))
	flush(t, b)
	a.Online(rec("d", ModePlain, eb-1000)) // a's clock behind
	if ev := nextEvent(t, a, 5*time.Second); ev != (Takeover{ClientID: "d", Epoch: eb}) {
		t.Fatalf("a got %#v", ev)
	}
	if r, ok := mustGet(t, a, "d"); !ok || r.Node != "b" {
		t.Fatalf("record %+v, %v", r, ok)
	}
	if st := a.Stats(); st.Refused != 1 {
		t.Fatalf("refused %d", st.Refused)
	}
	select {
	case ev := <-b.Events():
		t.Fatalf("b got %#v", ev)
	default:
	}
}

// Notify and NotifyAsync reach the node's Events.
func TestNotify(t *testing.T) {
	srv := testredis.Start(t)
	rdbA, _ := client(t, srv)
	rdbB, _ := client(t, srv)
	a := join(t, rdbA, testOptions("a"))
	b := join(t, rdbB, testOptions("b"))
	waitReading(t, b)
	if err := a.Notify(context.Background(), "b", CommandWaiting{ClientID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if !a.NotifyAsync("b", Takeover{ClientID: "d2", Epoch: 7}) {
		t.Fatal("NotifyAsync refused")
	}
	if ev := nextEvent(t, b, 5*time.Second); ev != (CommandWaiting{ClientID: "d1"}) {
		t.Fatalf("got %#v", ev)
	}
	if ev := nextEvent(t, b, 5*time.Second); ev != (Takeover{ClientID: "d2", Epoch: 7}) {
		t.Fatalf("got %#v", ev)
	}
	if err := a.Notify(context.Background(), "b", CancelCommand{ClientID: "d3", CommandID: "c9"}); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, b, 5*time.Second); ev != (CancelCommand{ClientID: "d3", CommandID: "c9"}) {
		t.Fatalf("got %#v", ev)
	}
	if a.NotifyAsync("b c", CommandWaiting{ClientID: "x"}) || a.NotifyAsync("b", CommandWaiting{}) ||
		a.NotifyAsync("b", CancelCommand{ClientID: "x"}) {
		t.Fatal("invalid notification queued")
	}
	flush(t, a)
	if st := a.Stats(); st.EventsSent != 3 || st.Dropped != 3 {
		t.Fatalf("a's stats %+v", st)
	}
	if st := b.Stats(); st.EventsRecv != 3 {
		t.Fatalf("b's stats %+v", st)
	}
}

func waitReading(t testing.TB, m *Member) {
	t.Helper()
	select {
	case <-m.reading:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s's inbox reader has no position after 5 s", m.Node())
	}
}

// A node that dies (its heartbeat not renewed) is no longer live once
// its key expires; its devices read as offline at once, and a live node
// sweeps its records.
func TestNodeDeath(t *testing.T) {
	srv := testredis.Start(t)
	srv.Do("CONFIG", "SET", "notify-keyspace-events", "Ex")
	rdbA, _ := client(t, srv)
	rdbB, _ := client(t, srv)
	a := join(t, rdbA, testOptions("a"))
	b := join(t, rdbB, testOptions("b"))
	waitLive(t, b, "a")
	for _, id := range ids(600, "d") {
		a.Online(rec(id, ModePlain, a.NextEpoch()))
	}
	flush(t, a)
	if r, ok := mustGet(t, b, "d000007"); !ok || r.Node != "a" {
		t.Fatalf("before: %+v, %v", r, ok)
	}

	sub := rdbB.Subscribe(context.Background(), "__keyevent@0__:expired")
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	crash(a)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("no expiry of a's heartbeat: %v", err)
		}
		if msg.Payload == aliveKey(DefaultPrefix, "a") {
			break
		}
	}
	t.Logf("a's heartbeat expired %s after it stopped (ttl %s)", time.Since(start), testOptions("a").NodeTTL)
	if _, ok := mustGet(t, b, "d000007"); ok {
		t.Fatal("a device of a dead node reads as online")
	}
	nodes, err := b.LiveNodes(context.Background())
	if err != nil || len(nodes) != 1 || nodes[0].ID != "b" || nodes[0].TLS != "b.example:8883" {
		t.Fatalf("LiveNodes = %+v, %v", nodes, err)
	}
	if recs, next, err := b.List(context.Background(), "a", "", "", 100); err != nil || len(recs) != 0 || next != "" {
		t.Fatalf("List(dead a) = %d records, %q, %v", len(recs), next, err)
	}
	// b's heartbeat (every ttl/3) sweeps a page of 500 at a time.
	deadline := time.Now().Add(10 * time.Second)
	for srv.Do("EXISTS", indexKey(DefaultPrefix, "a")) != ":0" || srv.Do("EXISTS", deviceKey(DefaultPrefix, "d000599")) != ":0" {
		if time.Now().After(deadline) {
			t.Fatalf("a's records not swept after 10 s: stats %+v", b.Stats())
		}
		time.Sleep(20 * time.Millisecond) // the sweep runs on b's heartbeat: polled
	}
	if st := b.Stats(); st.Swept != 600 {
		t.Fatalf("swept %d, want 600", st.Swept)
	}
	if n := srv.Do("ZSCORE", DefaultPrefix+":nodes", "a"); n != "" {
		t.Fatalf("a still in the nodes set: %q", n)
	}
}

// A node that restarts under the same name sweeps the records of its
// previous run, and keeps those of the new one.
func TestRestartSweepsOwnRecords(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	for _, id := range ids(1200, "old") {
		a.Online(rec(id, ModePlain, a.NextEpoch()))
	}
	flush(t, a)
	crash(a)
	a2 := join(t, rdb, testOptions("a"))
	a2.Online(rec("new", ModeTLS, a2.NextEpoch()))
	flush(t, a2)
	deadline := time.Now().Add(10 * time.Second)
	for a2.Stats().Swept < 1200 {
		if time.Now().After(deadline) {
			t.Fatalf("old records not swept: %+v", a2.Stats())
		}
		time.Sleep(20 * time.Millisecond) // the sweep runs on the heartbeat: polled
	}
	if _, ok := mustGet(t, a2, "old000000"); ok {
		t.Fatal("a record of the previous run survived")
	}
	if r, ok := mustGet(t, a2, "new"); !ok || r.Mode != ModeTLS {
		t.Fatalf("the new run's record: %+v, %v", r, ok)
	}
}

// List pages through a node's devices: each exactly once, filtered by
// mode, even with devices leaving and arriving between pages.
func TestListPagination(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	devs := ids(1000, "d")
	epochs := map[string]uint64{}
	for i, id := range devs {
		mode := ModePlain
		if i%3 == 0 {
			mode = ModeTLS
		}
		epochs[id] = a.NextEpoch()
		a.Online(rec(id, mode, epochs[id]))
	}
	flush(t, a)
	waitLive(t, a, "a")
	list := func(mode string, limit int, between func(page int)) []string {
		var got []string
		cursor := ""
		for page := 0; ; page++ {
			recs, next, err := a.List(context.Background(), "a", mode, cursor, limit)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if mode != "" && string(r.Mode) != mode {
					t.Fatalf("mode %s listed for %q", r.Mode, mode)
				}
				got = append(got, r.ClientID)
			}
			if next == "" {
				return got
			}
			if between != nil {
				between(page)
			}
			cursor = next
		}
	}
	for _, c := range []struct {
		mode string
		want int
	}{{"", 1000}, {"tls", 334}, {"plain", 666}} {
		got := list(c.mode, 37, nil)
		if len(got) != c.want || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("List(%q): %d records, want %d once each", c.mode, len(got), c.want)
		}
	}
	// Between pages: the last device leaves, a new one arrives at the end
	// and one arrives at the start (before the cursor: not listed).
	got := list("", 100, func(page int) {
		if page != 0 {
			return
		}
		a.Offline("d000999", epochs["d000999"])
		a.Online(rec("e-late", ModePlain, a.NextEpoch()))
		a.Online(rec("c-early", ModePlain, a.NextEpoch()))
		flush(t, a)
	})
	if len(got) != 1000 || slices.Contains(got, "d000999") || !slices.Contains(got, "e-late") ||
		slices.Contains(got, "c-early") || len(slices.Compact(slices.Clone(got))) != 1000 {
		t.Fatalf("listing with changes between pages: %d records", len(got))
	}
	for _, bad := range []struct {
		node, mode string
		limit      int
	}{{"a", "x", 1}, {"a", "", 0}, {"a", "", MaxListLimit + 1}, {"a:b", "", 1}} {
		if _, _, err := a.List(context.Background(), bad.node, bad.mode, "", bad.limit); err == nil {
			t.Fatalf("List(%+v) accepted", bad)
		}
	}
}

// With Redis gone, Online and Offline only queue (quickly), reads fail
// fast, and once Redis is back the writer writes what was queued.
func TestRedisRestartedMidFlow(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	o := testOptions("a")
	o.Timeout = 300 * time.Millisecond
	a := join(t, rdb, o)
	first := ids(500, "x")
	ep := map[string]uint64{}
	for _, id := range first {
		ep[id] = a.NextEpoch()
		a.Online(rec(id, ModePlain, ep[id]))
	}
	flush(t, a)

	srv.Kill()
	start := time.Now()
	second := ids(500, "y")
	for _, id := range second {
		a.Online(rec(id, ModeTLS, a.NextEpoch()))
	}
	for _, id := range first[:100] {
		a.Offline(id, ep[id])
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("600 writes took %s with redis down", took)
	}
	start = time.Now()
	_, _, err := a.Get(context.Background(), "x000001")
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Fatalf("Get with redis down: %v after %s", err, time.Since(start))
	}
	// Wait for the writer to fail at least once.
	deadline := time.Now().Add(5 * time.Second)
	for a.Stats().Errors == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no write error with redis down: %+v", a.Stats())
		}
		time.Sleep(10 * time.Millisecond) // observing the writer from outside
	}
	srv.Start()
	flush(t, a)
	st := a.Stats()
	t.Logf("after the restart: %+v", st)
	if st.Dropped != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v", st)
	}
	if n := srv.Do("ZCARD", indexKey(DefaultPrefix, "a")); n != ":900" {
		t.Fatalf("index holds %s, want 900", n)
	}
	if _, ok := mustGet(t, a, "x000050"); ok {
		t.Fatal("an Offline queued while redis was down was lost")
	}
	if r, ok := mustGet(t, a, "y000499"); !ok || r.Mode != ModeTLS {
		t.Fatalf("an Online queued while redis was down: %+v, %v", r, ok)
	}
}

// A Redis that hangs: callers of Online do not wait, reads fail within
// the timeout.
func TestRedisHung(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	o := testOptions("a")
	o.Timeout = 300 * time.Millisecond
	a := join(t, rdb, o)
	waitReading(t, a)
	srv.Pause()
	start := time.Now()
	for _, id := range ids(10_000, "h") {
		a.Online(rec(id, ModePlain, a.NextEpoch()))
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("10,000 Online took %s with redis hung", took)
	}
	start = time.Now()
	if _, err := a.LiveNodes(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("LiveNodes with redis hung: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("LiveNodes took %s", took)
	}
	srv.Resume()
	flush(t, a)
	if n := srv.Do("ZCARD", indexKey(DefaultPrefix, "a")); n != ":10000" {
		t.Fatalf("index holds %s", n)
	}
}

// A full queue drops the oldest writes, counted; the newest are written.
func TestQueueBound(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	o := testOptions("a")
	o.MaxPending = 100
	o.Timeout = 300 * time.Millisecond
	a := join(t, rdb, o)
	waitReading(t, a)
	srv.Kill()
	devs := ids(150, "q")
	for _, id := range devs {
		a.Online(rec(id, ModePlain, a.NextEpoch()))
	}
	srv.Start()
	flush(t, a)
	// A batch the writer took before the queue filled is put back after
	// it failed if there is room: at least 50 are dropped, maybe more.
	st := a.Stats()
	if st.Dropped < 50 {
		t.Fatalf("dropped %d, want at least 50: %+v", st.Dropped, st)
	}
	if n := srv.Do("ZCARD", indexKey(DefaultPrefix, "a")); n != ":"+strconv.FormatUint(150-st.Dropped, 10) {
		t.Fatalf("index holds %s with %d dropped", n, st.Dropped)
	}
	// Redis restarted empty: the node reads live again at its next
	// heartbeat, which a loaded machine may not have sent yet.
	waitLive(t, a, "a")
	if _, ok := mustGet(t, a, devs[149]); !ok {
		t.Fatal("the newest write was dropped")
	}
}

// Redis that lost its data (FLUSHALL stands for a restart without an
// append-only file): the heartbeat notices and asks for the devices again.
func TestRejoinAfterDataLoss(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	rejoined := make(chan struct{}, 1)
	o := testOptions("a")
	o.OnRejoin = func() { signal(rejoined) }
	a := join(t, rdb, o)
	waitLive(t, a, "a")
	srv.Do("FLUSHALL")
	select {
	case <-rejoined:
	case <-time.After(5 * time.Second):
		t.Fatalf("no rejoin after the data loss: %+v", a.Stats())
	}
	if a.Stats().Rejoins != 1 {
		t.Fatalf("%+v", a.Stats())
	}
}

// Close writes what is queued, removes the heartbeat at once and closes
// Events; calls after it are refused.
func TestClose(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	b := join(t, rdb, testOptions("b"))
	waitLive(t, b, "a")
	a.Online(rec("d", ModePlain, a.NextEpoch()))
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if srv.Do("EXISTS", deviceKey(DefaultPrefix, "d")) != ":1" {
		t.Fatal("the queued write was not made by Close")
	}
	if _, ok := mustGet(t, b, "d"); ok {
		t.Fatal("a device of a closed node reads as online")
	}
	if _, ok := <-a.Events(); ok {
		t.Fatal("events not closed")
	}
	if _, _, err := a.Get(context.Background(), "d"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	a.Online(rec("e", ModePlain, 1))
	if a.Stats().Dropped != 1 {
		t.Fatalf("%+v", a.Stats())
	}
	if err := a.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// A key of another type where a record should be fails only its own
// write; the rest of the batch is written, and nothing jams the queue.
func TestForeignKeyDropsOneWrite(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	waitReading(t, a)
	srv.Do("HSET", deviceKey(DefaultPrefix, "bad"), "x", "y")
	srv.Do("SET", deviceKey(DefaultPrefix, "damaged"), "nonsense")
	for _, id := range []string{"ok1", "bad", "damaged", "ok2"} {
		a.Online(rec(id, ModePlain, a.NextEpoch()))
	}
	flush(t, a)
	for _, id := range []string{"ok1", "damaged", "ok2"} {
		if _, ok := mustGet(t, a, id); !ok {
			t.Fatalf("%s not written", id)
		}
	}
	if st := a.Stats(); st.Dropped != 1 || st.Flushed != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// Close with Redis hung returns within its context plus about a Redis
// timeout and a read block, dropping (and counting) what is queued.
func TestCloseWithRedisHung(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	o := testOptions("a")
	o.Timeout = 300 * time.Millisecond
	m, err := Join(rdb, o)
	if err != nil {
		t.Fatal(err)
	}
	waitReading(t, m)
	srv.Pause()
	defer srv.Resume()
	m.Online(rec("d", ModePlain, m.NextEpoch()))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := m.Close(ctx); err == nil {
		t.Fatal("Close with redis hung reported no error")
	}
	took := time.Since(start)
	t.Logf("Close with redis hung took %s", took)
	// The writer's call in flight and the removal of the heartbeat each
	// wait for the client's read timeout (1 s).
	if took > 5*time.Second {
		t.Fatalf("Close took %s", took)
	}
	if st := m.Stats(); st.Dropped != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A record of a node that is not live never wins: an Online with an
// older epoch writes over it, and no Takeover goes anywhere.
func TestDeadNodeRecordLoses(t *testing.T) {
	srv := testredis.Start(t)
	rdb, _ := client(t, srv)
	a := join(t, rdb, testOptions("a"))
	waitReading(t, a)
	ghost := Record{ClientID: "d", Mode: ModeTLS, Protocol: 5, Since: 1, Epoch: math.MaxUint64 - 1}
	srv.Do("SET", deviceKey(DefaultPrefix, "d"), ghost.encode("ghost"))
	srv.Do("ZADD", indexKey(DefaultPrefix, "ghost"), "0", "d")
	e := a.NextEpoch()
	a.Online(rec("d", ModePlain, e))
	flush(t, a)
	if r, ok := mustGet(t, a, "d"); !ok || r.Node != "a" || r.Epoch != e {
		t.Fatalf("record %+v, %v", r, ok)
	}
	if n := srv.Do("ZCARD", indexKey(DefaultPrefix, "ghost")); n != ":0" {
		t.Fatalf("the dead node's index holds %s", n)
	}
	if st := a.Stats(); st.Refused != 0 || st.Takeovers != 0 {
		t.Fatalf("stats %+v", st)
	}
	select {
	case ev := <-a.Events():
		t.Fatalf("a got %#v", ev)
	case <-time.After(200 * time.Millisecond):
	}
}
