package device

import (
	"net"
	"sync"

	"github.com/dualgate/dualgate/internal/devwire"
)

// Every TCP segment costs a device 52 bytes of headers on top of what it
// carries (IPv4 + TCP with timestamps), and its peer's acknowledgement
// another 52: on a metered link a flight sent in one segment instead of
// three saves more than most MQTT packets weigh. The wrappers here, with
// those of internal/devwire (shared with dualbench), make the SDK send
// what belongs together in one write (docs/benchmarks.md §8).

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

// Close closes the connection as a device does (devwire.Close: with a
// reset once the gateway has closed its side).
func (c *firstWriteConn) Close() error { return devwire.Close(c.Conn) }

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
