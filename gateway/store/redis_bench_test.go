package store

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testredis"
)

// redisCounters are the server-side figures of a Redis: commands run (by
// INFO commandstats, EVALSHA counted once however many commands its script
// runs), bytes in and out, and memory used.
type redisCounters struct {
	calls    int64 // with the commands scripts run
	in, out  int64
	memory   int64
	perCalls map[string]int64
}

// readCounters sums the figures of servers (the primaries of a cluster).
func readCounters(b *testing.B, servers ...*testredis.Server) redisCounters {
	b.Helper()
	c := redisCounters{perCalls: map[string]int64{}}
	for _, srv := range servers {
		c.add(readServer(b, srv))
	}
	return c
}

func (c *redisCounters) add(o redisCounters) {
	c.calls += o.calls
	c.in += o.in
	c.out += o.out
	c.memory += o.memory
	for k, v := range o.perCalls {
		c.perCalls[k] += v
	}
}

func readServer(b *testing.B, srv *testredis.Server) redisCounters {
	b.Helper()
	c := redisCounters{perCalls: map[string]int64{}}
	for k, v := range srv.Info("commandstats") {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok || name == "info" {
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
	stats := srv.Info("stats")
	c.in, _ = strconv.ParseInt(stats["total_net_input_bytes"], 10, 64)
	c.out, _ = strconv.ParseInt(stats["total_net_output_bytes"], 10, 64)
	c.memory, _ = strconv.ParseInt(srv.Info("memory")["used_memory"], 10, 64)
	return c
}

// BenchmarkRedisCommandCost measures what one command costs Redis over its
// life through the store, as the dispatcher drives it for a device that is
// offline when the command arrives and then takes it on TLS: Put, Pending
// (the device's query), Transition to sent, Transition to delivered. It
// reports Redis commands and bytes each way per command, and the memory a
// pending command (256-byte payload) holds until it is delivered. The INFO
// calls that read the counters are left out of the counts, not out of the
// bytes (a few KiB per run, spread over b.N commands).
func BenchmarkRedisCommandCost(b *testing.B) {
	b.Run("primary", func(b *testing.B) {
		srv := testredis.Start(b)
		benchCommandCost(b, openRedis(b, srv, Options{}, RedisOptions{}), srv)
	})
	b.Run("cluster", func(b *testing.B) {
		c := testredis.StartCluster(b, 3)
		benchCommandCost(b, openRedisURL(b, c.URL(), Options{}, RedisOptions{}), c.Nodes...)
	})
}

func benchCommandCost(b *testing.B, s *Redis, srv ...*testredis.Server) {
	mustPut(b, s, benchCmd("warm", "warm"))
	before := readCounters(b, srv...)
	var puts, cmdsOut redisCounters
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id, client := fmt.Sprint("id", i), fmt.Sprint("dev", i)
		if err := s.Put(benchCmd(id, client)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	puts = readCounters(b, srv...)
	b.StartTimer()
	for j := range i {
		id, client := fmt.Sprint("id", j), fmt.Sprint("dev", j)
		if _, err := s.Pending(client); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Transition(id, StatusSent, at(time.Second), "written to the tls connection"); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Transition(id, StatusDelivered, at(time.Second), "PUBACK"); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cmdsOut = readCounters(b, srv...)
	n := float64(i)
	b.ReportMetric(float64(puts.calls-before.calls)/n, "redis-cmds/put")
	b.ReportMetric(float64(cmdsOut.calls-before.calls)/n, "redis-cmds/life")
	b.ReportMetric(float64(puts.in-before.in)/n, "B-in/put")
	b.ReportMetric(float64(puts.out-before.out)/n, "B-out/put")
	b.ReportMetric(float64(cmdsOut.in-before.in)/n, "B-in/life")
	b.ReportMetric(float64(cmdsOut.out-before.out)/n, "B-out/life")
	b.ReportMetric(float64(puts.memory-before.memory)/n, "mem-B/pending")
	b.ReportMetric(float64(cmdsOut.memory-before.memory)/n, "mem-B/final")
	if testing.Verbose() {
		for name, c := range cmdsOut.perCalls {
			if d := c - before.perCalls[name]; d > 0 {
				b.Logf("%s: %.2f per command", name, float64(d)/n)
			}
		}
	}
}
