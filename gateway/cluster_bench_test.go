package gateway

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

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
