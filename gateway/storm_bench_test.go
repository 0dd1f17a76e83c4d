package gateway

import (
	"crypto/tls"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// BenchmarkPingDuringTLSStorm measures what a reconnect storm of TLS
// handshakes does to plain devices: 50 plain devices ping in turn while
// 100 clients at a time hammer the TLS listener with full handshakes, with
// the handshake limiter (2 workers) and without it (one per connection
// attempt, 10,000 workers). It reports the plain ping round trip p50/p99
// and the TLS handshakes completed per second.
//
//	go test -run '^$' -bench PingDuringTLSStorm -benchtime 2000x ./gateway/
func BenchmarkPingDuringTLSStorm(b *testing.B) {
	for _, tc := range []struct {
		name    string
		workers int
	}{{"limiter=2", 2}, {"limiter=off", 10000}} {
		b.Run(tc.name, func(b *testing.B) {
			g := startGateway(b, func(c *Config) {
				c.MaxHandshakes = tc.workers
				c.HandshakeQueue = 2 * time.Second
			})
			var conns []*raw
			for range 50 {
				r := dialRaw(b, g.PlainAddr())
				r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte("pinger-" + itoaB(len(conns)))})
				conns = append(conns, r)
			}
			tlsCfg := clientTLS(b, g)
			stop := make(chan struct{})
			var handshakes atomic.Int64
			var wg sync.WaitGroup
			for range 100 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", g.TLSAddr(), tlsCfg)
						if err == nil {
							handshakes.Add(1)
							_ = c.Close()
						}
					}
				}()
			}
			time.Sleep(200 * time.Millisecond) // let the storm build
			lat := make([]time.Duration, 0, b.N)
			start := time.Now()
			b.ResetTimer()
			for i := range b.N {
				r := conns[i%len(conns)]
				t0 := time.Now()
				r.send(mqttcodec.AppendPingreq(nil))
				if p := r.read(10 * time.Second); p.Type != mqttcodec.PINGRESP {
					b.Fatalf("got %s", p.Type)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			elapsed := time.Since(start)
			close(stop)
			wg.Wait()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ping-p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ping-p99-ms")
			b.ReportMetric(float64(handshakes.Load())/elapsed.Seconds(), "handshakes/s")
		})
	}
}

func itoaB(i int) string {
	if i == 0 {
		return "0"
	}
	var d []byte
	for ; i > 0; i /= 10 {
		d = append([]byte{byte('0' + i%10)}, d...)
	}
	return string(d)
}
