package gateway

import (
	"bufio"
	"crypto/tls"
	"net"
	"testing"
	"time"

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
