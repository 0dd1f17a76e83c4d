package device

import (
	"net"
	"sync"

	"github.com/dualgate/dualgate/internal/control"
)

// Every TCP segment costs a device 52 bytes of headers on top of what it
// carries (IPv4 + TCP with timestamps), and its peer's acknowledgement
// another 52: on a metered link a flight sent in one segment instead of
// three saves more than most MQTT packets weigh. The two wrappers here make
// the SDK send what belongs together in one write (docs/benchmarks.md §8).

// flightConn is the raw connection under a TLS client. While holding, it
// keeps what the TLS handshake writes until the handshake reads (its peer
// must answer: the flight goes out) or, after the handshake, until the
// first write of the MQTT CONNECT: the client's last handshake flight
// (Finished) and the CONNECT then leave in one segment instead of two.
// A HelloRetryRequest or TLS 1.2 works as well: every flight the handshake
// waits an answer for is sent by the read that waits.
type flightConn struct {
	net.Conn
	mu   sync.Mutex // guards hold and held
	hold bool
	held []byte
}

func newFlightConn(c net.Conn) *flightConn { return &flightConn{Conn: c, hold: true} }

func (c *flightConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.hold {
		c.held = append(c.held, b...)
		c.mu.Unlock()
		return len(b), nil
	}
	held := c.held
	c.held = nil
	c.mu.Unlock()
	if held == nil {
		return c.Conn.Write(b)
	}
	if _, err := c.Conn.Write(append(held, b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c *flightConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

// release ends holding: what is held goes out with the next write.
func (c *flightConn) release() {
	c.mu.Lock()
	c.hold = false
	c.mu.Unlock()
}

// flush sends what is held now.
func (c *flightConn) flush() error {
	c.mu.Lock()
	held := c.held
	c.held = nil
	c.mu.Unlock()
	if len(held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(held)
	return err
}

// packetConn makes each MQTT packet paho.golang writes one write on the
// connection below, so one TLS record and one segment: paho writes a
// packet as its fixed header and then each part of its body, one Write
// each (net.Buffers on a conn that is no *net.TCPConn), between Lock and
// Unlock when the conn is a sync.Locker (packets.ControlPacket.WriteTo).
// Writes between Lock and Unlock are gathered and sent at Unlock; a write
// that fails there closes the connection, so the reader reports the loss.
type packetConn struct {
	net.Conn
	mu      sync.Mutex // held by the writer between Lock and Unlock
	pending []byte     // the packet being gathered; mu's holder only
}

// Lock starts a packet.
func (c *packetConn) Lock() { c.mu.Lock() }

// Unlock sends the packet gathered since Lock.
func (c *packetConn) Unlock() {
	if len(c.pending) > 0 {
		if _, err := c.Conn.Write(c.pending); err != nil {
			_ = c.Conn.Close()
		}
		if cap(c.pending) > 4096 {
			c.pending = nil // keep no large buffer while idle
		} else {
			c.pending = c.pending[:0]
		}
	}
	c.mu.Unlock()
}

// Write gathers b into the packet; paho.golang writes only between Lock
// and Unlock.
func (c *packetConn) Write(b []byte) (int, error) {
	c.pending = append(c.pending, b...)
	return len(b), nil
}

// firstWriteConn adds extra to the first write on the connection: the
// MQTT CONNECT. The device's query rides in the CONNECT's segment (MQTT
// lets a client send packets right after CONNECT, before the CONNACK), as
// QoS 0: no PUBACK comes back for it.
type firstWriteConn struct {
	net.Conn
	mu    sync.Mutex // guards extra
	extra []byte
}

func (c *firstWriteConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	extra := c.extra
	c.extra = nil
	c.mu.Unlock()
	if extra == nil {
		return c.Conn.Write(b)
	}
	if _, err := c.Conn.Write(append(append(make([]byte, 0, len(b)+len(extra)), b...), extra...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// queryPacket is the query as a QoS 0 PUBLISH on control.QueryTopic with
// an empty payload (the gateway ignores it), for MQTT version v.
func queryPacket(v byte) []byte {
	body := []byte{byte(len(control.QueryTopic) >> 8), byte(len(control.QueryTopic))}
	body = append(body, control.QueryTopic...)
	if v == 5 {
		body = append(body, 0) // no properties
	}
	// The body is far below 128 bytes: a one-byte remaining length.
	return append([]byte{0x30, byte(len(body))}, body...)
}

// closeRaw closes the TCP connection under a TLS one without TLS's
// close_notify: MQTT ends a session with its own DISCONNECT (or the
// gateway's), and the alert would cost a record and, after the gateway
// has closed, a reset.
type closeRaw struct {
	net.Conn          // the TLS connection
	raw      net.Conn // the connection under it
}

func (c *closeRaw) Close() error { return c.raw.Close() }
