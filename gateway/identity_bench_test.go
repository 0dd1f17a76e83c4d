package gateway

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// BenchmarkIdleTLSHeap measures the heap an idle TLS session costs, both
// sides in this process (client and gateway), with and without a device
// certificate, under --secure-identity cert: the gateway keeps what a
// certificate proves, not the certificate. Run it once:
//
//	go test -run x -bench IdleTLSHeap -benchtime 1x ./gateway/
func BenchmarkIdleTLSHeap(b *testing.B) {
	const n = 400
	for _, withCert := range []bool{false, true} {
		b.Run(fmt.Sprintf("certificate=%v", withCert), func(b *testing.B) {
			g := startGateway(b, func(c *Config) { c.TLSCurves, c.MaxHandshakes = "x25519", 8 })
			ca := newGatewayCA(b, g)
			cfgs := make([]*tls.Config, n)
			for i := range cfgs {
				cfgs[i] = clientTLS(b, g)
				cfgs[i].CurvePreferences = []tls.CurveID{tls.X25519}
				if withCert {
					cfgs[i].Certificates = []tls.Certificate{ca.device(b, fmt.Sprintf("heap-%d", i))}
				}
			}
			for range b.N {
				before := settledHeap()
				conns := make([]*tls.Conn, 0, n)
				for i, cfg := range cfgs {
					raw, err := net.Dial("tcp", g.TLSAddr())
					if err != nil {
						b.Fatal(err)
					}
					c := tls.Client(raw, cfg)
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true,
						KeepAlive: 600, ClientID: fmt.Appendf(nil, "heap-%d", i)})); err != nil {
						b.Fatal(err)
					}
					ack := make([]byte, 4)
					if _, err := io.ReadFull(c, ack); err != nil || ack[3] != 0 {
						b.Fatalf("CONNACK % x, %v", ack, err)
					}
					_ = c.SetDeadline(time.Time{})
					conns = append(conns, c)
				}
				after := settledHeap()
				b.ReportMetric(float64(after-before)/n/1024, "KiB/conn")
				for _, c := range conns {
					_ = c.Close()
				}
				eventually(b, 10*time.Second, "sessions gone", func() bool { return g.Registry().Len() == 0 })
			}
		})
	}
}

// settledHeap is the live heap after the collector ran and the sessions'
// short-lived goroutines ended.
func settledHeap() uint64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
		time.Sleep(100 * time.Millisecond)
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
