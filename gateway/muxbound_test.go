package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// pingRTTs sends n PINGREQs on p, 10 ms apart, and returns the round
// trips, sorted; during calls each time between two pings.
func pingRTTs(t *testing.T, p *raw, n int, during func()) []time.Duration {
	t.Helper()
	var rtts []time.Duration
	for range n {
		start := time.Now()
		p.send(mqttcodec.AppendPingreq(nil))
		if pk := p.read(20 * time.Second); pk.Type != mqttcodec.PINGRESP {
			t.Fatalf("got %s, want PINGRESP", pk.Type)
		}
		rtts = append(rtts, time.Since(start))
		if during != nil {
			during()
		}
		time.Sleep(10 * time.Millisecond) // the pace of the pings, not a synchronisation
	}
	slices.Sort(rtts)
	return rtts
}

// silentFrom opens a TCP connection to addr from the loopback address src
// and sends nothing.
func silentFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	c, _ := dialFrom(t, src, addr, nil, nil)
	return c
}

// closedByPeer reports whether c is closed by the other end within limit.
func closedByPeer(c net.Conn, limit time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(limit))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// Sockets that send nothing on the single-port listener are bounded per
// source and in total, closed after --tls-hello-timeout, and counted; a
// device from another address still connects through the mux while one
// address is at its bound.
func TestMuxFirstByteBounds(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.ListenMux = "127.0.0.1:0"
		c.TLSHelloPerIP = 8
		c.MuxPending = 12
		// Long enough for the steps below on a loaded machine, before
		// the silent sockets time out.
		c.TLSHello = 5 * time.Second
	})
	mux := g.MuxAddr()
	var silent []net.Conn
	for range 8 {
		silent = append(silent, silentFrom(t, "127.0.0.1", mux))
	}
	eventually(t, 5*time.Second, "8 silent sockets waiting", func() bool { return metric(t, g, "dualgate_mux_waiting") == 8 })

	// The 9th from the same address is closed at once.
	if c := silentFrom(t, "127.0.0.1", mux); !closedByPeer(c, 5*time.Second) {
		t.Fatal("a 9th silent socket from one address was kept")
	}
	if n := metric(t, g, `dualgate_mux_refused_total{reason="source"}`); n != 1 {
		t.Fatalf(`dualgate_mux_refused_total{reason="source"} = %v`, n)
	}
	// Another address has room: a device connects through the mux.
	dc := silentFrom(t, "127.0.0.2", mux)
	dev := &raw{t: t, conn: dc, r: bufio.NewReader(dc)}
	dev.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte("mux-dev")})
	// Four more silent sockets from a third address fill the total.
	for range 4 {
		silent = append(silent, silentFrom(t, "127.0.0.3", mux))
	}
	eventually(t, 5*time.Second, "12 silent sockets waiting", func() bool { return metric(t, g, "dualgate_mux_waiting") == 12 })
	if c := silentFrom(t, "127.0.0.4", mux); !closedByPeer(c, 5*time.Second) {
		t.Fatal("a socket past --mux-pending was kept")
	}
	if n := metric(t, g, `dualgate_mux_refused_total{reason="total"}`); n != 1 {
		t.Fatalf(`dualgate_mux_refused_total{reason="total"} = %v`, n)
	}
	// After --tls-hello-timeout, every silent socket is closed.
	for i, c := range silent {
		if !closedByPeer(c, 10*time.Second) {
			t.Fatalf("silent socket %d still open after the first-byte timeout", i)
		}
	}
	eventually(t, 5*time.Second, "the timeouts counted", func() bool {
		return metric(t, g, `dualgate_mux_refused_total{reason="timeout"}`) == 12 && metric(t, g, "dualgate_mux_waiting") == 0
	})
	// The device that spoke is served.
	dev.send(mqttcodec.AppendPingreq(nil))
	if p := dev.read(5 * time.Second); p.Type != mqttcodec.PINGRESP {
		t.Fatalf("got %s, want PINGRESP", p.Type)
	}
}

// 1,000 sockets that send nothing wait on the single-port listener while
// devices keep connecting through it (sniffed, then handed to the event
// loop): a plain device's PINGREQ on that loop is not held up.
func TestMuxSilentSocketsDoNotDelayPing(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.EventLoops = 1
		c.ListenMux = "127.0.0.1:0"
		c.TLSHelloPerIP = -1
		c.MuxPending = 1100
		c.TLSHello = time.Minute
	})
	mux := g.MuxAddr()
	for range 1000 {
		c, err := net.DialTimeout("tcp", mux, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	eventually(t, 10*time.Second, "1,000 silent sockets waiting", func() bool {
		return metric(t, g, "dualgate_mux_waiting") == 1000
	})
	pinger := dialRaw(t, g.PlainAddr())
	pinger.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte("pinger")})
	i := 0
	rtts := pingRTTs(t, pinger, 100, func() {
		i++
		d := dialRaw(t, mux)
		d.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(fmt.Sprintf("mux-%d", i))})
		_ = d.conn.Close()
	})
	p99, worst := rtts[len(rtts)*99/100-1], rtts[len(rtts)-1]
	t.Logf("PINGREQ round trips with 1,000 silent sockets on the mux and a device connecting through it every ping: p50 %v, p99 %v, max %v",
		rtts[len(rtts)/2], p99, worst)
	if worst > 2*time.Second {
		t.Fatalf("a PINGREQ waited %v while the mux held silent sockets", worst)
	}
	if n := metric(t, g, `dualgate_mux_connections_total{mode="plain"}`); n != 100 {
		t.Fatalf("%v devices routed to plain through the mux, want 100", n)
	}
}
