package gateway

import (
	"bufio"
	"crypto/tls"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dualgate/dualgate/bench"
	"github.com/dualgate/dualgate/mqttcodec"
)

// The gateway's last packet, the reconnect instruction (MQTT 5 DISCONNECT
// 0x9C), leaves in the same segment as the FIN, on plain and on TLS: the
// device's kernel counts one segment in from the instruction to the end.
func TestInstructionLeavesWithFIN(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.SecureIdentity, c.SecureIdle = "none", 300*time.Millisecond })
	connect := &mqttcodec.Connect{ProtocolVersion: 5, CleanStart: true, KeepAlive: 60}
	for _, overTLS := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "tls"}[overTLS]
		t.Run(name, func(t *testing.T) {
			connect.ClientID = []byte("last-" + name)
			tcp, err := net.Dial("tcp", map[bool]string{false: g.PlainAddr(), true: g.TLSAddr()}[overTLS])
			if err != nil {
				t.Fatal(err)
			}
			defer tcp.Close()
			r := &raw{t: t, conn: tcp}
			if overTLS {
				r.conn = tls.Client(tcp, clientTLS(t, g))
			}
			r.r = bufio.NewReader(r.conn)
			r.connect(connect)
			before, err := bench.ReadTCPCounters(tcp.(*net.TCPConn))
			if err != nil {
				t.Fatal(err)
			}
			if !overTLS {
				// A secure command: the plain device is told to use TLS.
				postCommand(t, g, string(connect.ClientID), `{"topic":"devices/last-plain/commands/x","payload":"y"}`)
			} // On TLS the instruction back to plain follows --secure-idle.
			p := r.read(10 * time.Second)
			if p.Type != mqttcodec.DISCONNECT || p.Disconnect.ReasonCode != mqttcodec.UseAnotherServer {
				t.Fatalf("got %s %v, want DISCONNECT 0x9C", p.Type, p.Disconnect.ReasonCode)
			}
			if _, closed := r.closedWithin(10 * time.Second); !closed {
				t.Fatal("the gateway did not close after its instruction")
			}
			after, err := bench.ReadTCPCounters(tcp.(*net.TCPConn))
			if err != nil {
				t.Fatal(err)
			}
			if in := after.Sub(before).SegsIn; in != 1 {
				t.Fatalf("%d segments from the instruction to the FIN, want 1 (both together)", in)
			}
		})
	}
}

// A device's QoS 1 publishes that arrive in one segment are acknowledged in
// one segment, on plain and on TLS: the session's answers to one read wait
// in gnet's outbound buffer (for TLS, as the records crypto/tls makes of
// them) and leave in one write.
func TestAnswersToOneReadLeaveTogether(t *testing.T) {
	g := startGateway(t, nil)
	const n = 20
	for _, overTLS := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "tls"}[overTLS]
		t.Run(name, func(t *testing.T) {
			addr := map[bool]string{false: g.PlainAddr(), true: g.TLSAddr()}[overTLS]
			tcp, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer tcp.Close()
			held := &heldConn{Conn: tcp}
			r := &raw{t: t, conn: held}
			if overTLS {
				r.conn = tls.Client(held, clientTLS(t, g))
			}
			r.r = bufio.NewReader(r.conn)
			r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("together-" + name)})
			held.set(func(c *heldConn) { c.hold = true })
			for i := range n {
				r.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{QoS: 1, PacketID: uint16(i + 1),
					Topic: []byte("together/" + name), Payload: []byte("x")}))
			}
			before, err := bench.ReadTCPCounters(tcp.(*net.TCPConn))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := held.flush(); err != nil { // the n publishes in one write
				t.Fatal(err)
			}
			for i := range n {
				if p := r.read(10 * time.Second); p.Type != mqttcodec.PUBACK || p.Ack.PacketID != uint16(i+1) {
					t.Fatalf("got %s %d, want PUBACK %d", p.Type, p.Ack.PacketID, i+1)
				}
			}
			after, err := bench.ReadTCPCounters(tcp.(*net.TCPConn))
			if err != nil {
				t.Fatal(err)
			}
			// Data segments: a pure ACK of the publishes that the
			// gateway's kernel sends before the answers is not theirs.
			if d := after.Sub(before); !d.HasDataSegs || d.DataSegsIn != 1 {
				t.Fatalf("%d PUBACKs came in %d segments with data (counted: %v), want 1", n, d.DataSegsIn, d.HasDataSegs)
			}
		})
	}
}

// A device told to move to TLS gets its CONNACK there in one segment with
// the command that waited for it: the TLS session holds what it writes
// until the dispatcher has delivered at its CONNECT (Dispatcher.Online).
// A TLS device that nothing waits for is not held: its socket is uncorked
// before the CONNACK leaves.
func TestCommandLeavesWithCONNACK(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.SecureIdentity = "none" })
	dialTLS := func(id string) (*raw, *net.TCPConn) {
		tcp, err := net.Dial("tcp", g.TLSAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tcp.Close() })
		tc := tls.Client(tcp, clientTLS(t, g))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		r := &raw{t: t, conn: tc}
		r.r = bufio.NewReader(tc)
		return r, tcp.(*net.TCPConn)
	}
	connect := func(id string) *mqttcodec.Connect {
		return &mqttcodec.Connect{ProtocolVersion: 5, CleanStart: true, KeepAlive: 60, ClientID: []byte(id)}
	}

	t.Run("instructed", func(t *testing.T) {
		const id = "with-connack"
		tcp, err := net.Dial("tcp", g.PlainAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer tcp.Close()
		plain := &raw{t: t, conn: tcp, r: bufio.NewReader(tcp)}
		plain.connect(connect(id))
		cid, _ := postCommand(t, g, id, `{"topic":"devices/`+id+`/commands/open","payload":"now"}`)
		if p := plain.read(10 * time.Second); p.Type != mqttcodec.DISCONNECT || p.Disconnect.ReasonCode != mqttcodec.UseAnotherServer {
			t.Fatalf("got %s, want DISCONNECT 0x9C", p.Type)
		}
		// The instruction's status write is done: the device's worker
		// does not wait on the disk before it delivers, and the hold
		// does not run into the kernel's 200 ms (which would send the
		// CONNACK alone, as it should when the store is that slow).
		waitStatus(t, g, cid, "upgrading")
		r, sock := dialTLS(id)
		before, err := bench.ReadTCPCounters(sock)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r.connect(connect(id))
		p := r.read(10 * time.Second)
		took := time.Since(start)
		if p.Type != mqttcodec.PUBLISH || string(p.Publish.Topic) != "devices/"+id+"/commands/open" {
			t.Fatalf("got %s %q, want the command", p.Type, p.Publish.Topic)
		}
		after, err := bench.ReadTCPCounters(sock)
		if err != nil {
			t.Fatal(err)
		}
		switch d := after.Sub(before); {
		case !d.HasDataSegs:
			t.Fatal("this kernel does not count data segments")
		case d.DataSegsIn != 1 && took >= 180*time.Millisecond:
			// The kernel sends what a cork holds after 200 ms: on a
			// machine this slow the CONNACK may rightly go alone.
			t.Logf("CONNACK and command in %d segments, %s after the CONNECT: past the cork's limit", d.DataSegsIn, took)
		case d.DataSegsIn != 1:
			t.Fatalf("CONNACK and command came in %d segments with data, %s after the CONNECT, want 1", d.DataSegsIn, took)
		}
		r.send(mqttcodec.AppendAck(nil, 5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID}))
		waitStatus(t, g, cid, "delivered")
		if corked(t, sock) {
			t.Fatal("the session is still held after the dispatcher delivered")
		}
	})

	t.Run("nothing waits", func(t *testing.T) {
		r, sock := dialTLS("nothing-waits")
		r.connect(connect("nothing-waits"))
		if corked(t, sock) {
			t.Fatal("a TLS session nothing waits for was held past its CONNACK")
		}
	})
}

// corked reports whether the gateway's end of the client's connection c
// has TCP_CORK set. The gateway runs in the test's process, so its socket
// is one of the process's descriptors: the one whose peer is c's address.
func corked(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	want := c.LocalAddr().(*net.TCPAddr)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			continue
		}
		var port int
		var ip net.IP
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			port, ip = a.Port, a.Addr[:]
		case *unix.SockaddrInet6:
			port, ip = a.Port, a.Addr[:]
		default:
			continue
		}
		if port != want.Port || !ip.Equal(want.IP) {
			continue
		}
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK)
		if err != nil {
			t.Fatal(err)
		}
		return v != 0
	}
	t.Fatalf("no socket of the gateway's has %s as its peer", want)
	return false
}
