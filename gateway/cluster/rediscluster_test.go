package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/testredis"
)

// clusterClient returns a client of a Redis Cluster as the gateway makes
// it, closed at the end of the test, with a hook counting the batches.
func clusterClient(t testing.TB, c *testredis.Cluster) (redis.UniversalClient, *countHook) {
	t.Helper()
	rdb, err := store.NewRedisClient(c.URL(), 0)
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("%s made a %T", c.URL(), rdb)
	}
	h := &countHook{}
	rdb.AddHook(h)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, h
}

// isDeviceStep tells the device scripts of a batch on a Redis Cluster.
func isDeviceStep(cmd redis.Cmder) bool {
	a := cmd.Args()
	if len(a) < 2 {
		return false
	}
	name, _ := a[0].(string)
	sha, _ := a[1].(string)
	return name == "evalsha" && sha == deviceScript.Hash()
}

// deviceSteps counts the pipelines carrying device scripts.
type deviceSteps struct{ countHook }

func (h *deviceSteps) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		n := 0
		for _, c := range cmds {
			if isDeviceStep(c) {
				n++
			}
		}
		if n > 0 {
			h.batches.Add(1)
			h.evals.Add(int64(n))
		}
		return next(ctx, cmds)
	}
}

// 10,000 Online on a 3-primary Redis Cluster: batches of 500, each a
// pipeline of device scripts (one per slot, sent to the three primaries
// in parallel) and one node script; every record and index entry is
// there.
func TestClusterOnlineBatches(t *testing.T) {
	c := testredis.StartCluster(t, 3)
	rdb, _ := clusterClient(t, c)
	h := &deviceSteps{}
	rdb.AddHook(h)
	a := join(t, rdb, testOptions("a"))
	if !a.cluster {
		t.Fatal("member not in cluster mode")
	}
	waitLive(t, a, "a")
	devs := ids(10_000, "dev")
	start := time.Now()
	for i, id := range devs {
		mode := ModePlain
		if i%2 == 1 {
			mode = ModeTLS
		}
		a.Online(rec(id, mode, a.NextEpoch()))
	}
	flush(t, a)
	st := a.Stats()
	t.Logf("10,000 Online on a 3-primary cluster: in redis after %s, %d batches, %d device scripts; stats %+v",
		time.Since(start), h.batches.Load(), h.evals.Load(), st)
	if n := h.batches.Load(); n > 60 || n < 10 {
		t.Fatalf("%d batches for 10,000 writes of batches of %d", n, DefaultBatchSize)
	}
	if st.Flushed != 10_000 || st.Dropped != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v", st)
	}
	if n, err := rdb.ZCard(context.Background(), indexKey(a.np, "a")).Result(); err != nil || n != 10_000 {
		t.Fatalf("index holds %d, %v", n, err)
	}
	r, ok := mustGet(t, a, "dev000001")
	if !ok || r.Node != "a" || r.Mode != ModeTLS || r.Protocol != 5 {
		t.Fatalf("Get = %+v, %v", r, ok)
	}
	// The records are spread over the three primaries.
	for _, s := range c.Nodes {
		if n := s.Do("DBSIZE"); n == ":0" {
			t.Fatalf("primary %s holds no key", s.Addr())
		}
	}
	// Every device leaves: records and index entries go.
	for _, id := range devs {
		a.Offline(id, a.NextEpoch())
	}
	flush(t, a)
	if n, err := rdb.ZCard(context.Background(), indexKey(a.np, "a")).Result(); err != nil || n != 0 {
		t.Fatalf("index holds %d after the Offlines, %v", n, err)
	}
	if _, ok := mustGet(t, a, "dev000001"); ok {
		t.Fatal("record left after its Offline")
	}
}

// A device that moves from node a to node b on a Redis Cluster: b's batch
// sends a a Takeover (the node script, after the device script), a's later
// Offline of the old session leaves b's record; an older Online is
// refused and its own node told.
func TestClusterTakeoverAcrossNodes(t *testing.T) {
	c := testredis.StartCluster(t, 3)
	rdbA, _ := clusterClient(t, c)
	rdbB, _ := clusterClient(t, c)
	a := join(t, rdbA, testOptions("a"))
	b := join(t, rdbB, testOptions("b"))
	waitLive(t, b, "a")
	waitLive(t, a, "b")
	waitReading(t, a)
	waitReading(t, b)

	ea := a.NextEpoch()
	a.Online(rec("d", ModePlain, ea))
	flush(t, a)
	eb := b.NextEpoch()
	b.Online(rec("d", ModeTLS, eb))
	if ev := nextEvent(t, a, 10*time.Second); ev != (Takeover{ClientID: "d", Epoch: eb}) {
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

	// An older Online on a (its clock behind) loses to b's session.
	a.Online(rec("d", ModePlain, eb-1000))
	if ev := nextEvent(t, a, 10*time.Second); ev != (Takeover{ClientID: "d", Epoch: eb}) {
		t.Fatalf("a got %#v after its older Online", ev)
	}
	if st := a.Stats(); st.Refused != 1 {
		t.Fatalf("refused %d", st.Refused)
	}

	// Notify crosses the cluster too.
	if err := a.Notify(context.Background(), "b", CommandWaiting{ClientID: "d"}); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, b, 10*time.Second); ev != (CommandWaiting{ClientID: "d"}) {
		t.Fatalf("b got %#v", ev)
	}
}

// A node of a Redis Cluster that dies: its devices read offline once its
// heartbeat expires, and the live node sweeps its records.
func TestClusterNodeDeath(t *testing.T) {
	c := testredis.StartCluster(t, 3)
	rdbA, _ := clusterClient(t, c)
	rdbB, _ := clusterClient(t, c)
	a := join(t, rdbA, testOptions("a"))
	b := join(t, rdbB, testOptions("b"))
	waitLive(t, b, "a")
	for _, id := range ids(600, "d") {
		a.Online(rec(id, ModePlain, a.NextEpoch()))
	}
	flush(t, a)
	if recs, next, err := b.List(context.Background(), "a", "", "", 1000); err != nil || len(recs) != 600 || next != "" {
		t.Fatalf("List(a) = %d records, %q, %v", len(recs), next, err)
	}
	crash(a)
	deadline := time.Now().Add(20 * time.Second)
	for b.Stats().Swept < 600 {
		if time.Now().After(deadline) {
			t.Fatalf("a's records not swept after 20 s: stats %+v", b.Stats())
		}
		time.Sleep(20 * time.Millisecond) // the sweep runs on b's heartbeat: polled
	}
	if _, ok := mustGet(t, b, "d000007"); ok {
		t.Fatal("a device of a dead node reads as online")
	}
	for _, k := range []string{indexKey(b.np, "a"), deviceKey(DefaultPrefix, "d000599")} {
		if n, err := rdbB.Exists(context.Background(), k).Result(); err != nil || n != 0 {
			t.Fatalf("%s left: %d, %v", k, n, err)
		}
	}
}

// readServers sums readServer over the primaries of a cluster.
func readServers(b *testing.B, c *testredis.Cluster) serverCounters {
	b.Helper()
	sum := serverCounters{perCalls: map[string]int64{}}
	for _, s := range c.Nodes {
		one := readServer(b, s)
		sum.calls += one.calls
		sum.in += one.in
		sum.out += one.out
		sum.memory += one.memory
		for k, v := range one.perCalls {
			sum.perCalls[k] += v
		}
	}
	return sum
}

// BenchmarkClusterConnectCost is BenchmarkConnectCost on a 3-primary Redis
// Cluster: batches (each a pipeline of device scripts, one round trip per
// primary in parallel, then the node script: two round trips one after
// the other), commands and bytes per CONNECT, summed over the primaries.
func BenchmarkClusterConnectCost(b *testing.B) {
	c := testredis.StartCluster(b, 3, "appendfsync everysec")
	rdb, _ := clusterClient(b, c)
	h := &deviceSteps{}
	rdb.AddHook(h)
	a := join(b, rdb, Options{Node: "gw-a-1", AdvertisePlain: "10.0.0.1:1883", AdvertiseTLS: "10.0.0.1:8883"})
	waitReading(b, a)
	for _, s := range c.Nodes {
		s.Do("CONFIG", "RESETSTAT")
	}
	before := readServers(b, c)
	batches0 := h.batches.Load()
	i := 0
	for b.Loop() {
		a.Online(Record{ClientID: deviceID(i), Mode: ModePlain, Protocol: 4, Since: 1_764_700_000_000, Epoch: a.NextEpoch()})
		i++
	}
	flush(b, a)
	b.StopTimer()
	after := readServers(b, c)
	n := float64(i)
	b.ReportMetric(float64(h.batches.Load()-batches0)/n, "batches/connect")
	b.ReportMetric(float64(after.calls-before.calls)/n, "redis-cmds/connect")
	b.ReportMetric(float64(after.in-before.in)/n, "B-in/connect")
	b.ReportMetric(float64(after.out-before.out)/n, "B-out/connect")
	if testing.Verbose() {
		for name, c := range after.perCalls {
			if d := c - before.perCalls[name]; d > 0 {
				b.Logf("%s: %.3f per connect", name, float64(d)/n)
			}
		}
	}
}

// On a Redis Cluster too, a key of another type where a record should be
// fails only its own write.
func TestClusterForeignKeyDropsOneWrite(t *testing.T) {
	c := testredis.StartCluster(t, 3)
	rdb, _ := clusterClient(t, c)
	a := join(t, rdb, testOptions("a"))
	waitReading(t, a)
	ctx := context.Background()
	if err := rdb.HSet(ctx, deviceKey(DefaultPrefix, "bad"), "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, deviceKey(DefaultPrefix, "damaged"), "nonsense", 0).Err(); err != nil {
		t.Fatal(err)
	}
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

// The primary holding the node keys hung while a batch is written: the
// device scripts on the other primaries are applied, the node step is
// kept and sent once it answers; Flush waits for it, and the takeover it
// carries reaches the other node.
func TestClusterNodeStepRetried(t *testing.T) {
	c := testredis.StartCluster(t, 3)
	rdbA, _ := clusterClient(t, c)
	rdbB, _ := clusterClient(t, c)
	// Heartbeats that outlive the pause: Redis expires keys by the wall
	// clock, paused or not.
	oa, ob := testOptions("a"), testOptions("b")
	oa.NodeTTL, ob.NodeTTL = time.Minute, time.Minute
	a := join(t, rdbA, oa)
	b := join(t, rdbB, ob)
	waitLive(t, b, "a")
	waitLive(t, a, "b")
	waitReading(t, a)
	waitReading(t, b)
	// A device whose record is on another primary than the node keys.
	slotOwner := func(key string) int { return int(keySlot(key)) * len(c.Nodes) / 16384 }
	nodes := slotOwner(a.keys.index)
	dev := ""
	for _, id := range ids(100, "m") {
		if slotOwner(deviceKey(DefaultPrefix, id)) != nodes {
			dev = id
			break
		}
	}
	ea := a.NextEpoch()
	a.Online(rec(dev, ModePlain, ea))
	flush(t, a)

	c.Nodes[nodes].Pause()
	eb := b.NextEpoch()
	b.Online(rec(dev, ModeTLS, eb))
	deadline := time.Now().Add(20 * time.Second)
	for b.Stats().Errors == 0 {
		if time.Now().After(deadline) {
			c.Nodes[nodes].Resume()
			t.Fatalf("no failed batch with the node keys' primary hung: %+v", b.Stats())
		}
		time.Sleep(20 * time.Millisecond) // the writer's failure: polled
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if err := b.Flush(ctx); err == nil {
		t.Error("Flush returned with the node step not sent")
	}
	cancel()
	// The record is written (its primary answers); the index is not.
	if v, err := rdbB.Get(context.Background(), deviceKey(DefaultPrefix, dev)).Result(); err != nil || !strings.Contains(v, "b|t") {
		t.Fatalf("record with the node keys' primary hung: %q, %v", v, err)
	}
	c.Nodes[nodes].Resume()
	flush(t, b)
	if ev := nextEvent(t, a, 10*time.Second); ev != (Takeover{ClientID: dev, Epoch: eb}) {
		t.Fatalf("a got %#v", ev)
	}
	if recs, _, err := b.List(context.Background(), "b", "", "", 10); err != nil || len(recs) != 1 || recs[0].ClientID != dev {
		t.Fatalf("List(b) = %v, %v", recs, err)
	}
}
