package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/internal/testredis"
)

// BenchmarkCommandPost measures POST /v1/clients/{id}/commands end to end
// (HTTP on loopback, parsing, the durable store write, the dispatcher's
// look at the device), for an offline device, with the commands in the
// bbolt file and in Redis (appendfsync always, the setting that loses
// nothing; and everysec). Each POST goes to its own device so the limit
// stays out of the way. It reports the median and the 99th percentile:
//
//	go test -run x -bench CommandPost -benchtime 2000x ./gateway/
func BenchmarkCommandPost(b *testing.B) {
	cases := []struct {
		name  string
		setup func(b *testing.B, c *Config)
	}{
		{name: "bolt", setup: func(*testing.B, *Config) {}},
		{name: "redis-fsync-always", setup: func(b *testing.B, c *Config) { c.Cluster = testredis.Start(b).URL() }},
		{name: "redis-fsync-everysec", setup: func(b *testing.B, c *Config) {
			c.Cluster = testredis.Start(b, "appendfsync everysec").URL()
		}},
		{name: "redis-cluster-3-fsync-always", setup: func(b *testing.B, c *Config) { c.Cluster = testredis.StartCluster(b, 3).URL() }},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			g := startGateway(b, func(c *Config) {
				c.NodeID = "bench"
				tc.setup(b, c)
				if c.Cluster == "" {
					c.NodeID = ""
				}
			})
			client := &http.Client{}
			url := "http://" + g.APIAddr() + "/v1/clients/%s/commands"
			body := `{"topic":"devices/d/commands/unlock","payload":"` + strings.Repeat("x", 256) + `","secure":true}`
			var lat []time.Duration
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				resp, err := client.Post(fmt.Sprintf(url, fmt.Sprint("dev-", i)), "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Fatalf("POST: %d", resp.StatusCode)
				}
				lat = append(lat, time.Since(start))
				i++
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkCommandLatency measures a secure command from the start of its
// POST to its arrival at a device already on TLS (which acknowledges it
// at once): on one node (bbolt, and Redis), and across nodes, posted on
// gw-1 for a device held by gw-2 (the store write, the registry read, the
// message through gw-2's inbox stream, gw-2's read of the store). One
// command at a time; it reports the median and the 99th percentile:
//
//	go test -run x -bench CommandLatency -benchtime 2000x ./gateway/
func BenchmarkCommandLatency(b *testing.B) {
	for _, name := range []string{"one-node-bolt", "one-node-redis", "cross-node-redis"} {
		b.Run(name, func(b *testing.B) {
			var post, held *Gateway
			var srv *testredis.Server
			switch name {
			case "one-node-bolt":
				post = startGateway(b, func(c *Config) { c.SecureIdle = time.Hour })
				held = post
			default:
				srv = testredis.Start(b)
				post = startGateway(b, func(c *Config) { c.Cluster, c.NodeID, c.SecureIdle = srv.URL(), "gw-1", time.Hour })
				held = post
				if name == "cross-node-redis" {
					pki := certs.PathsIn(filepath.Dir(post.CAFile()))
					held = startGateway(b, func(c *Config) {
						c.Cluster, c.NodeID, c.SecureIdle = srv.URL(), "gw-2", time.Hour
						c.TLSCert, c.TLSKey, c.ClientCA = pki.Server, pki.ServerKey, pki.CA
					})
				}
			}
			got := make(chan time.Time, 16)
			tc := clientTLS(b, post)
			tc.Certificates = []tls.Certificate{deviceCert(b, post, "bench-car")}
			o := mqtt.NewClientOptions().AddBroker("ssl://" + held.TLSAddr()).SetClientID("bench-car").
				SetProtocolVersion(4).SetAutoReconnect(false).SetTLSConfig(tc).
				SetDefaultPublishHandler(func(_ mqtt.Client, _ mqtt.Message) { got <- time.Now() })
			dev := mqtt.NewClient(o)
			if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			defer dev.Disconnect(50)
			if post != held {
				deadline := time.Now().Add(10 * time.Second)
				for {
					rec, ok, err := post.members.m.Get(context.Background(), "bench-car")
					if err == nil && ok && rec.Node == "gw-2" {
						break
					}
					if time.Now().After(deadline) {
						b.Fatal("the device is not in the registry")
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			client := &http.Client{}
			url := "http://" + post.APIAddr() + "/v1/clients/bench-car/commands"
			body := `{"topic":"devices/bench-car/commands/unlock","payload":"` + strings.Repeat("x", 256) + `"}`
			var lat []time.Duration
			var before redisCounts
			if srv != nil {
				before = countRedis(srv)
			}
			for b.Loop() {
				start := time.Now()
				resp, err := client.Post(url, "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Fatalf("POST: %d", resp.StatusCode)
				}
				select {
				case at := <-got:
					lat = append(lat, at.Sub(start))
				case <-time.After(10 * time.Second):
					b.Fatal("the command did not arrive")
				}
			}
			if srv != nil {
				// The delivery's status writes follow the arrival: let the
				// last ones land before counting.
				time.Sleep(200 * time.Millisecond)
				countRedis(srv).report(b, before, len(lat))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// redisCounts are Redis' counters of commands run (each command inside a
// script counted too) and bytes in and out.
type redisCounts struct {
	calls   map[string]int
	in, out int
}

func countRedis(srv *testredis.Server) redisCounts {
	c := redisCounts{calls: map[string]int{}}
	for k, v := range srv.Info("commandstats") {
		if name, ok := strings.CutPrefix(k, "cmdstat_"); ok {
			calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
			n, _ := strconv.Atoi(calls)
			c.calls[name] = n
		}
	}
	st := srv.Info("stats")
	c.in, _ = strconv.Atoi(st["total_net_input_bytes"])
	c.out, _ = strconv.Atoi(st["total_net_output_bytes"])
	return c
}

// report logs, per command, what Redis ran and the bytes it moved since
// before (the INFO calls themselves included, and the nodes' heartbeats).
func (c redisCounts) report(b *testing.B, before redisCounts, n int) {
	total := 0
	var each []string
	for name, calls := range c.calls {
		if d := calls - before.calls[name]; d > 0 && name != "info" {
			total += d
			each = append(each, fmt.Sprintf("%s %.2f", name, float64(d)/float64(n)))
		}
	}
	slices.Sort(each)
	b.ReportMetric(float64(total)/float64(n), "redis-cmds/op")
	b.ReportMetric(float64(c.in-before.in)/float64(n), "redis-B-in/op")
	b.ReportMetric(float64(c.out-before.out)/float64(n), "redis-B-out/op")
	b.Logf("redis commands per command: %s", strings.Join(each, ", "))
}
