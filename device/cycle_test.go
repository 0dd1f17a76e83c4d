package device_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
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
// closes; a close with a reset (devwire.Close, once the gateway has
// closed) reads them first and counts the reset, after which nothing
// comes back.
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
	reset  bool // SetLinger(0): Close sends a reset
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

// SetLinger notes a close with a reset (devwire.Close sets 0 for it).
func (c *meteredConn) SetLinger(sec int) error {
	c.mu.Lock()
	c.reset = sec == 0
	c.mu.Unlock()
	return c.TCPConn.SetLinger(sec)
}

func (c *meteredConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.reset {
		c.final, _ = bench.ReadTCPCounters(c.TCPConn)
		c.final.SegsOut++ // the reset
		return c.TCPConn.Close()
	}
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

// settle waits until no counter of the meter's connections has moved for
// settleCounters (the delayed ACKs are in), at most 5 s: what the kernel
// counts is the event, polled every 25 ms.
func (m *meter) settle(t *testing.T) {
	t.Helper()
	read := func() []bench.TCPCounters {
		var out []bench.TCPCounters
		for _, c := range m.list() {
			out = append(out, c.counters(t))
		}
		return out
	}
	last, since := read(), time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(25 * time.Millisecond)
		now := read()
		if !slices.Equal(now, last) {
			last, since = now, time.Now()
			continue
		}
		if time.Since(since) >= settleCounters {
			return
		}
	}
	t.Fatal("the connections' counters never settled")
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
	for _, version := range []byte{5, 4} {
		for _, kex := range []struct {
			name   string
			curves []tls.CurveID
		}{{"X25519", []tls.CurveID{tls.X25519}}, {"X25519MLKEM768", nil}} {
			t.Run(fmt.Sprintf("mqtt%d-%s", version, kex.name), func(t *testing.T) {
				id := fmt.Sprintf("cycle-%d-%s", version, kex.name)
				measureCycles(t, g, kex.name, device.Config{ClientID: id, Version: version, CurvePreferences: kex.curves})
			})
		}
	}
}

// The same cycle, MQTT 5 and X25519, in the gateway's default
// configuration (--secure-identity cert, the device presenting its
// certificate), with server-side TLS sessions (the default) and with
// stateless tickets, which carry the certificate and its CA both ways on
// every resumption; figures are logged (go test -v -run
// TestUpgradeCycleBytesWithCertificate ./device/).
func TestUpgradeCycleBytesWithCertificate(t *testing.T) {
	for _, sessions := range []string{"server", "tickets"} {
		t.Run(sessions, func(t *testing.T) {
			g := startGateway(t, func(c *gateway.Config) {
				c.SecureIdle = 300 * time.Millisecond
				c.TLSSessions = sessions
			})
			id := "cycle-cert-" + sessions
			certFile, keyFile := deviceCertFiles(t, g, id)
			measureCycles(t, g, "X25519, certificate, "+sessions, device.Config{ClientID: id, Version: 5,
				CurvePreferences: []tls.CurveID{tls.X25519}, CertFile: certFile, KeyFile: keyFile})
		})
	}
}

// measureCycles runs a device (cfg's id, version, curves and certificate)
// through a full and a resumed upgrade cycle and logs their bytes.
func measureCycles(t *testing.T, g *gateway.Gateway, name string, cfg device.Config) {
	t.Helper()
	model := bench.LoopbackWireModel()
	id, version := cfg.ClientID, cfg.Version
	var m meter
	rec := newRecorder()
	cfg.PlainAddr, cfg.TLSAddr, cfg.CAFile = g.PlainAddr(), g.TLSAddr(), g.CAFile()
	cfg.KeepAlive, cfg.ConnectTimeout = 60*time.Second, 5*time.Second
	cfg.Backoff = device.Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}
	cfg.Subscriptions = []device.Subscription{{Filter: "devices/" + id + "/config", QoS: 1}}
	cfg.Dial = m.dial
	rec.hook(&cfg)
	d := startDevice(t, cfg)
	defer d.Stop()
	m.settle(t)
	for cycle, kind := range []string{"full", "resumed"} {
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
		m.settle(t) // the query's PUBACK and the ACKs
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
			version, name, kind, p.Total()+tl.Total()+r.Total(), p.Total(), tl.Total(), r.Total(),
			p.PayloadOut+p.PayloadIn+tl.PayloadOut+tl.PayloadIn+r.PayloadOut+r.PayloadIn,
			tlsConn.counters(t).SegsOut, tlsConn.counters(t).SegsIn)
	}
}
