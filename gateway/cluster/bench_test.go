package cluster

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/dualgate/dualgate/internal/testredis"
)

// serverCounters are what a Redis server counts: commands run (INFO
// commandstats; an EVALSHA counts once and each command its script runs
// counts too), bytes in and out, memory used.
type serverCounters struct {
	calls    int64
	perCalls map[string]int64
	in, out  int64
	memory   int64
}

// notOurs are commands the benchmarks' own reading and the inbox reader
// and heartbeat send; left out of the counts.
var notOurs = map[string]bool{"info": true, "config|resetstat": true, "config": true, "xread": true, "xrevrange": true}

func readServer(b *testing.B, srv *testredis.Server) serverCounters {
	b.Helper()
	c := serverCounters{perCalls: map[string]int64{}}
	for k, v := range srv.Info("commandstats") {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok || notOurs[name] {
			continue
		}
		for _, f := range strings.Split(v, ",") {
			if n, ok := strings.CutPrefix(f, "calls="); ok {
				calls, _ := strconv.ParseInt(n, 10, 64)
				c.calls += calls
				c.perCalls[name] = calls
			}
		}
	}
	st := srv.Info("stats")
	c.in, _ = strconv.ParseInt(st["total_net_input_bytes"], 10, 64)
	c.out, _ = strconv.ParseInt(st["total_net_output_bytes"], 10, 64)
	c.memory, _ = strconv.ParseInt(srv.Info("memory")["used_memory"], 10, 64)
	return c
}

// deviceID is a client id of a realistic length (17 bytes).
func deviceID(i int) string { return fmt.Sprintf("sensor-%010d", i) }

// BenchmarkConnectCost measures what a CONNECT's registry write costs
// Redis when CONNECTs arrive faster than the writer's FlushDelay: round
// trips, commands (the batch script's EVALSHA and the commands it runs)
// and bytes each way per CONNECT. The first batch loads the script.
func BenchmarkConnectCost(b *testing.B) {
	srv := testredis.Start(b, "appendfsync everysec")
	rdb, hook := client(b, srv)
	a := join(b, rdb, Options{Node: "gw-a-1", AdvertisePlain: "10.0.0.1:1883", AdvertiseTLS: "10.0.0.1:8883"})
	waitReading(b, a)
	srv.Do("CONFIG", "RESETSTAT")
	before := readServer(b, srv)
	trips0 := hook.batches.Load()
	i := 0
	for b.Loop() {
		a.Online(Record{ClientID: deviceID(i), Mode: ModePlain, Protocol: 4, Since: 1_764_700_000_000, Epoch: a.NextEpoch()})
		i++
	}
	flush(b, a)
	b.StopTimer()
	after := readServer(b, srv)
	n := float64(i)
	b.ReportMetric(float64(hook.batches.Load()-trips0)/n, "round-trips/connect")
	b.ReportMetric(float64(after.calls-before.calls)/n, "redis-cmds/connect")
	b.ReportMetric(float64(after.in-before.in)/n, "B-in/connect")
	b.ReportMetric(float64(after.out-before.out)/n, "B-out/connect")
	if testing.Verbose() {
		b.Logf("evalsha: %s", srv.Info("commandstats")["cmdstat_evalsha"])
		for name, c := range after.perCalls {
			if d := c - before.perCalls[name]; d > 0 {
				b.Logf("%s: %.3f per connect", name, float64(d)/n)
			}
		}
	}
}

// BenchmarkTakeoverCost is BenchmarkConnectCost for devices that were on
// another live node: each CONNECT also moves the device between the
// nodes' indexes and adds a Takeover to the other node's inbox. One round
// is 10,000 such CONNECTs; the devices are moved back between rounds,
// outside the measurement.
func BenchmarkTakeoverCost(b *testing.B) {
	srv := testredis.Start(b, "appendfsync everysec")
	rdbA, _ := client(b, srv)
	rdbB, hook := client(b, srv)
	a := join(b, rdbA, Options{Node: "gw-a-1"})
	bn := join(b, rdbB, Options{Node: "gw-b-1"})
	waitReading(b, bn)
	waitLive(b, bn, "gw-a-1")
	const devices = 10_000
	back := func() {
		for j := range devices {
			a.Online(Record{ClientID: deviceID(j), Mode: ModePlain, Protocol: 4, Since: 1, Epoch: a.NextEpoch()})
		}
		flush(b, a)
	}
	back()
	var calls, in, out, trips int64
	n := 0
	for b.Loop() {
		b.StopTimer()
		before := readServer(b, srv)
		trips0 := hook.batches.Load()
		b.StartTimer()
		for j := range devices {
			bn.Online(Record{ClientID: deviceID(j), Mode: ModeTLS, Protocol: 4, Since: 2, Epoch: bn.NextEpoch()})
		}
		flush(b, bn)
		b.StopTimer()
		after := readServer(b, srv)
		calls += after.calls - before.calls
		in += after.in - before.in
		out += after.out - before.out
		trips += hook.batches.Load() - trips0
		n += devices
		back()
		b.StartTimer()
	}
	b.StopTimer()
	f := float64(n)
	b.ReportMetric(float64(trips)/f, "round-trips/connect")
	b.ReportMetric(float64(calls)/f, "redis-cmds/connect")
	b.ReportMetric(float64(in)/f, "B-in/connect")
	b.ReportMetric(float64(out)/f, "B-out/connect")
	if testing.Verbose() {
		b.Logf("evalsha: %s", srv.Info("commandstats")["cmdstat_evalsha"])
	}
	if st := bn.Stats(); st.Takeovers < uint64(n) {
		b.Fatalf("takeovers %d of %d: %+v", st.Takeovers, n, st)
	}
}

// BenchmarkIdleDeviceMemory measures the Redis memory a connected, idle
// device holds: its record and its member of its node's index, for
// 10,000 devices per round (used_memory before and after).
func BenchmarkIdleDeviceMemory(b *testing.B) {
	srv := testredis.Start(b, "appendfsync everysec")
	rdb, _ := client(b, srv)
	a := join(b, rdb, Options{Node: "gw-a-1"})
	waitReading(b, a)
	const perRound = 10_000
	flush(b, a)
	var total int64
	rounds := 0
	for b.Loop() {
		b.StopTimer()
		before := readServer(b, srv).memory
		b.StartTimer()
		for j := range perRound {
			a.Online(Record{ClientID: deviceID(rounds*perRound + j), Mode: ModePlain, Protocol: 4, Since: 1_764_700_000_000, Epoch: a.NextEpoch()})
		}
		flush(b, a)
		b.StopTimer()
		total += readServer(b, srv).memory - before
		b.StartTimer()
		rounds++
	}
	b.ReportMetric(float64(total)/float64(rounds*perRound), "mem-B/device")
}
