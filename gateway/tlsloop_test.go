package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// TLS connections are served by the event loops once their handshake is
// done (tlsconn.go): these tests feed the loop's TLS reader the ways a
// network can cut bytes.

// heldConn is a client-side net.Conn whose writes, once pass writes have
// gone out, can be held back and then sent in one write, or sent one byte
// per write.
type heldConn struct {
	net.Conn
	mu       sync.Mutex
	pass     int  // writes still sent as they come while hold is set
	hold     bool // keep writes in held
	held     []byte
	bytewise bool // one write per byte
}

func (c *heldConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold && c.pass == 0 {
		c.held = append(c.held, b...)
		return len(b), nil
	}
	if c.pass > 0 {
		c.pass--
	}
	if c.bytewise {
		for i := range b {
			if _, err := c.Conn.Write(b[i : i+1]); err != nil {
				return i, err
			}
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// flush sends what was held in one write and stops holding.
func (c *heldConn) flush() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	b := c.held
	c.held = nil
	return c.Conn.Write(b)
}

func (c *heldConn) set(fn func(c *heldConn)) {
	c.mu.Lock()
	fn(c)
	c.mu.Unlock()
}

// dialHeld connects to the TLS listener over a heldConn; the handshake
// runs on the first read or write, or tls.Conn.Handshake.
func dialHeld(t *testing.T, g *Gateway, cfg *tls.Config) (*heldConn, *tls.Conn, *raw) {
	t.Helper()
	nc, err := net.Dial("tcp", g.TLSAddr())
	if err != nil {
		t.Fatal(err)
	}
	hc := &heldConn{Conn: nc}
	tc := tls.Client(hc, cfg)
	t.Cleanup(func() { _ = tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(60 * time.Second))
	return hc, tc, &raw{t: t, conn: tc, r: bufio.NewReader(tc)}
}

// The device SDK sends its CONNECT in the same segment as its Finished:
// crypto/tls reads it during the handshake, on the worker, and the loop
// must answer it although nothing more arrives.
func TestTLSConnectInSameSegmentAsFinished(t *testing.T) {
	g := startGateway(t, nil)
	cfg := clientTLS(t, g)
	cfg.MinVersion = tls.VersionTLS13 // the client's Handshake returns after its Finished
	hc, tc, r := dialHeld(t, g, cfg)
	// The ClientHello goes out; the client's second flight (its
	// Finished) is held.
	hc.set(func(c *heldConn) { c.hold, c.pass = true, 1 })
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	r.ver = 4
	if _, err := tc.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true,
		ClientID: []byte("same-segment")})); err != nil {
		t.Fatal(err)
	}
	if n, err := hc.flush(); err != nil || n < 60 {
		t.Fatalf("flushed %d bytes (%v): want the Finished and the CONNECT", n, err)
	}
	if p := r.read(10 * time.Second); p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != 0 {
		t.Fatalf("got %s (reason %d), want CONNACK 0", p.Type, p.Connack.ReasonCode)
	}
}

// Records cut into one-byte segments, and many records in one segment, are
// all read: crypto/tls keeps a partial record between two turns of the
// loop, and the loop reads every record a turn brought.
func TestTLSRecordsBytewiseAndBatched(t *testing.T) {
	g := startGateway(t, nil)
	hc, tc, r := dialHeld(t, g, clientTLS(t, g))
	hc.set(func(c *heldConn) { c.bytewise = true }) // the handshake too
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("bytewise")})
	r.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("bytewise/#")}}}))
	if p := r.read(10 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	r.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{Topic: []byte("bytewise/one"), Payload: []byte("byte by byte")}))
	if p := r.read(10 * time.Second); p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != "byte by byte" {
		t.Fatalf("got %s %q, want the PUBLISH back", p.Type, p.Publish.Payload)
	}

	// 50 records, each a PUBLISH of its own, in one write.
	const n = 50
	hc.set(func(c *heldConn) { c.bytewise, c.hold = false, true })
	for i := range n {
		r.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{Topic: []byte("bytewise/many"),
			Payload: fmt.Appendf(nil, "record %d", i)}))
	}
	if _, err := hc.flush(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		p := r.read(10 * time.Second)
		if want := fmt.Sprintf("record %d", i); p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != want {
			t.Fatalf("got %s %q, want PUBLISH %q", p.Type, p.Publish.Payload, want)
		}
	}
}

// A 1 MB PUBLISH crosses the gateway over TLS both ways.
func TestTLSLargePublish(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxPacketSize = 2 << 20 })
	sub := dialTLSRaw(t, g, "large-sub")
	sub.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("large/#"), QoS: 1}}}))
	if p := sub.read(10 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	pub := dialTLSRaw(t, g, "large-pub")
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	payload[len(payload)-1] = 'Z'
	pub.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{QoS: 1, PacketID: 7, Topic: []byte("large/one"), Payload: payload}))
	if p := pub.read(30 * time.Second); p.Type != mqttcodec.PUBACK || p.Ack.PacketID != 7 {
		t.Fatalf("got %s, want PUBACK 7", p.Type)
	}
	p := sub.read(30 * time.Second)
	if p.Type != mqttcodec.PUBLISH || !bytes.Equal(p.Publish.Payload, payload) {
		t.Fatalf("got %s of %d bytes, want the 1 MiB PUBLISH", p.Type, len(p.Publish.Payload))
	}
}

// dialTLSRaw connects a raw MQTT 3.1.1 client over TLS.
func dialTLSRaw(t *testing.T, g *Gateway, id string) *raw {
	t.Helper()
	tc, err := tls.Dial("tcp", g.TLSAddr(), clientTLS(t, g))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	r := &raw{t: t, conn: tc, r: bufio.NewReaderSize(tc, 64<<10)}
	r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte(id)})
	return r
}

// A TLS device that reads nothing is disconnected once --max-outbound-bytes
// wait for it, as a plain one is: the bound is gnet's outbound buffer.
func TestTLSSlowReaderCutAtMaxOutbound(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxOutbound = 256 << 10 })
	stalled := dialTLSRaw(t, g, "tls-stalled")
	stalled.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("cut/#")}}}))
	if p := stalled.read(10 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	pub := dialRaw(t, g.PlainAddr())
	pub.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("cut-pub")})
	payload := make([]byte, 32<<10)
	gone := func() bool { _, ok := g.Registry().Get("tls-stalled"); return !ok }
	// The kernel's buffers take some first; the gateway's bound then cuts.
	for i := 0; i < 2000 && !gone(); i++ {
		pub.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{Topic: []byte("cut/x"), Payload: payload}))
	}
	eventually(t, 30*time.Second, "the stalled TLS subscriber to be disconnected", gone)
	if cut := g.Stats().SlowReaderClosed.Load(); cut == 0 {
		t.Fatalf("no slow-consumer cut counted")
	}
}

// An idle TLS connection holds no goroutine: 200 of them change the
// process's goroutine count by a small constant (the handshake workers and
// gnet's enrolling pool exist either way).
func TestIdleTLSConnectionsHoldNoGoroutine(t *testing.T) {
	g := startGateway(t, nil)
	_ = dialTLSRaw(t, g, "warm-up") // starts the handshake workers
	settle := func() int {
		runtime.GC()
		time.Sleep(100 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	before := settle()
	const n = 200
	conns := make([]*raw, n)
	for i := range conns {
		conns[i] = dialTLSRaw(t, g, fmt.Sprintf("idle-%d", i))
	}
	eventually(t, 30*time.Second, "every session registered", func() bool { return g.Registry().Len() == n+1 })
	// gnet's enrolling workers expire after a while: wait for the count
	// to come within the bound rather than sampling it once.
	var after int
	eventually(t, 30*time.Second, "goroutines to settle", func() bool {
		after = settle()
		return after-before <= 20
	})
	t.Logf("goroutines: %d before, %d with %d idle TLS connections", before, after, n)
	for _, c := range conns {
		c.send(mqttcodec.Append(nil, 4, &mqttcodec.Packet{Type: mqttcodec.PINGREQ}))
		if p := c.read(10 * time.Second); p.Type != mqttcodec.PINGRESP {
			t.Fatalf("got %s, want PINGRESP", p.Type)
		}
	}
}

// The descriptor budget stays exact across the hand-off: a TLS socket is
// counted once while its handshake runs and while it lives on a loop, on
// the TLS listener and on the single-port one, and uncounted when it
// closes, also when the device leaves during the hand-off.
func TestTLSHandoffKeepsDescriptorCountExact(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.ListenMux = "127.0.0.1:0" })
	open := func() int64 { return g.fds.open.Load() }
	var conns []*raw
	for i := range 10 {
		conns = append(conns, dialTLSRaw(t, g, fmt.Sprintf("count-tls-%d", i)))
	}
	for i := range 10 {
		tc, err := tls.Dial("tcp", g.MuxAddr(), clientTLS(t, g))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tc.Close() })
		r := &raw{t: t, conn: tc, r: bufio.NewReader(tc)}
		r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: fmt.Appendf(nil, "count-mux-%d", i)})
		conns = append(conns, r)
	}
	eventually(t, 30*time.Second, "20 device sockets counted", func() bool { return open() == 20 })
	for _, r := range conns {
		_ = r.conn.Close()
	}
	// Devices that leave right after their handshake, some with a CONNECT
	// in flight: gone during or just after the hand-off.
	for i := range 40 {
		addr := g.TLSAddr()
		if i%2 == 1 {
			addr = g.MuxAddr()
		}
		tc, err := tls.Dial("tcp", addr, clientTLS(t, g))
		if err != nil {
			t.Fatal(err)
		}
		if i%4 < 2 {
			_, _ = tc.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true,
				ClientID: fmt.Appendf(nil, "leaving-%d", i)}))
		}
		_ = tc.NetConn().Close()
	}
	eventually(t, 30*time.Second, "every device socket uncounted", func() bool { return open() == 0 })
	eventually(t, 30*time.Second, "every session gone", func() bool { return g.Registry().Len() == 0 })
}
