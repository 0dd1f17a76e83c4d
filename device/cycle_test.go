package device_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/bench"
	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
	"github.com/dualgate/dualgate/internal/devwire"
)

// settleCounters is how long the kernel's counters are left to take in the
// last (delayed) acknowledgements before they are read, as dualbench
// traffic's --settle: a measurement's wait, not a synchronisation.
const settleCounters = 250 * time.Millisecond

// meter dials TCP connections whose kernel counters (bytes and segments,
// both directions) stay readable after the device closes them: Close
// half-closes, lets the FINs and ACKs pass, reads the counters, then
// closes.
type meter struct {
	mu    sync.Mutex
	conns []*meteredConn
}

type meteredConn struct {
	*net.TCPConn
	addr   string
	mu     sync.Mutex
	final  bench.TCPCounters
	closed bool
}

func (m *meter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: devwire.DelayAcksControl} // as the SDK's own Dial
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	mc := &meteredConn{TCPConn: c.(*net.TCPConn), addr: addr}
	m.mu.Lock()
	m.conns = append(m.conns, mc)
	m.mu.Unlock()
	return mc, nil
}

func (c *meteredConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	_ = c.CloseWrite()
	time.Sleep(settleCounters)
	c.final, _ = bench.ReadTCPCounters(c.TCPConn)
	return c.TCPConn.Close()
}

// counters are the connection's counters now, or at its close.
func (c *meteredConn) counters(t *testing.T) bench.TCPCounters {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.final
	}
	n, err := bench.ReadTCPCounters(c.TCPConn)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (m *meter) list() []*meteredConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*meteredConn(nil), m.conns...)
}

// What one upgrade cycle costs the SDK's device on the wire: the
// instruction on plain and that connection's close, the TLS connection
// (handshake, CONNECT, the command and its PUBACK, the instruction back,
// close) and the new plain connection up to its query's PUBACK; the
// second cycle resumes the TLS session. Measured as dualbench traffic
// measures its own device (docs/benchmarks.md §8), against a gateway with
// --secure-identity none; figures are logged (go test -v -run
// TestUpgradeCycleBytes ./device/).
func TestUpgradeCycleBytes(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.SecureIdentity = "none"
		c.SecureIdle = 300 * time.Millisecond
	})
	model := bench.LoopbackWireModel()
	for _, version := range []byte{5, 4} {
		for _, kex := range []struct {
			name   string
			curves []tls.CurveID
		}{{"X25519", []tls.CurveID{tls.X25519}}, {"X25519MLKEM768", nil}} {
			t.Run(fmt.Sprintf("mqtt%d-%s", version, kex.name), func(t *testing.T) {
				id := fmt.Sprintf("cycle-%d-%s", version, kex.name)
				var m meter
				rec := newRecorder()
				cfg := device.Config{
					ClientID: id, PlainAddr: g.PlainAddr(), TLSAddr: g.TLSAddr(), CAFile: g.CAFile(),
					Version: version, KeepAlive: 60 * time.Second, ConnectTimeout: 5 * time.Second,
					Backoff:          device.Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond},
					Subscriptions:    []device.Subscription{{Filter: "devices/" + id + "/config", QoS: 1}},
					CurvePreferences: kex.curves,
					Dial:             m.dial,
				}
				rec.hook(&cfg)
				d := startDevice(t, cfg)
				defer d.Stop()
				time.Sleep(settleCounters)
				for cycle, name := range []string{"full", "resumed"} {
					conns := m.list()
					plain := conns[len(conns)-1]
					before := plain.counters(t)
					cid := postCommand(t, g, id, commandTopic(id, "go"), strings.Repeat("x", 100), true)
					if c := rec.nextCommand(t); !c.OverTLS {
						t.Fatalf("cycle %d: command not over TLS", cycle)
					}
					waitStatus(t, g, cid, "delivered")
					for {
						mc := rec.nextMode(t, 10*time.Second)
						if mc.to == device.ModePlain {
							break
						}
					}
					time.Sleep(settleCounters) // the query's PUBACK and the ACKs
					conns = m.list()
					if len(conns) < 3 {
						t.Fatalf("%d connections", len(conns))
					}
					tlsConn, back := conns[len(conns)-2], conns[len(conns)-1]
					if tlsConn.addr != g.TLSAddr() || back.addr != g.PlainAddr() {
						t.Fatalf("connections to %s then %s", tlsConn.addr, back.addr)
					}
					p := model.Bytes(plain.counters(t).Sub(before), false)
					tl := model.Bytes(tlsConn.counters(t), true)
					r := model.Bytes(back.counters(t), true)
					t.Logf("MQTT %d, %s, %s: %d B (plain %d + TLS %d + back %d); payload %d B; segments TLS %d/%d",
						version, kex.name, name, p.Total()+tl.Total()+r.Total(), p.Total(), tl.Total(), r.Total(),
						p.PayloadOut+p.PayloadIn+tl.PayloadOut+tl.PayloadIn+r.PayloadOut+r.PayloadIn,
						tlsConn.counters(t).SegsOut, tlsConn.counters(t).SegsIn)
				}
			})
		}
	}
}
