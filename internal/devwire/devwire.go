// Package devwire holds the transport helpers with which a dualgate device
// spends few bytes on the wire (docs/protocol.md §4.1), shared by the device
// SDK (package device) and dualbench's devices (package bench), so that the
// bench measures what the SDK sends.
//
// Every TCP segment costs a device 52 bytes of headers on top of what it
// carries (IPv4 + TCP with timestamps), and its peer's acknowledgement
// another 52: on a metered link a flight sent in one segment instead of
// three saves more than most MQTT packets weigh (docs/benchmarks.md §8).
package devwire

import (
	"net"
	"sync"
	"syscall"

	"github.com/dualgate/dualgate/internal/control"
)

// FlightConn is the raw connection under a TLS client. While holding, it
// keeps what the TLS handshake writes until the handshake reads (its peer
// must answer: the flight goes out) or, after Release, until the next
// write, the MQTT CONNECT: the client's last handshake flight (Finished)
// and the CONNECT then leave in one segment instead of two. A
// HelloRetryRequest or TLS 1.2 works as well: every flight the handshake
// waits an answer for is sent by the read that waits.
type FlightConn struct {
	net.Conn
	mu   sync.Mutex // guards hold and held
	hold bool
	held []byte
}

// NewFlightConn returns c holding its writes.
func NewFlightConn(c net.Conn) *FlightConn { return &FlightConn{Conn: c, hold: true} }

// Write holds b while holding; otherwise it sends what is held and b in
// one write.
func (c *FlightConn) Write(b []byte) (int, error) {
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

// Read sends what is held, then reads.
func (c *FlightConn) Read(b []byte) (int, error) {
	if err := c.Flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

// Release ends holding: what is held goes out with the next write.
func (c *FlightConn) Release() {
	c.mu.Lock()
	c.hold = false
	c.mu.Unlock()
}

// Flush sends what is held now.
func (c *FlightConn) Flush() error {
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

// QueryPacket is the query a device sends in the same write as its plain
// CONNECT (MQTT lets a client send packets right after CONNECT, before the
// CONNACK): a QoS 0 PUBLISH on control.QueryTopic with an empty payload
// (the gateway ignores it), for MQTT version v. QoS 0: no PUBACK comes
// back for it.
func QueryPacket(v byte) []byte {
	body := []byte{byte(len(control.QueryTopic) >> 8), byte(len(control.QueryTopic))}
	body = append(body, control.QueryTopic...)
	if v == 5 {
		body = append(body, 0) // no properties
	}
	// The body is far below 128 bytes: a one-byte remaining length.
	return append([]byte{0x30, byte(len(body))}, body...)
}

// CloseRaw closes the TCP connection under a TLS one without TLS's
// close_notify: MQTT ends a session with its own DISCONNECT (or the
// gateway's), and the alert would cost a record and, after the gateway
// has closed, a reset.
type CloseRaw struct {
	net.Conn          // the TLS connection
	Raw      net.Conn // the connection under it
}

// Close closes the raw connection (Close).
func (c *CloseRaw) Close() error { return Close(c.Raw) }

// Close closes a device's TCP connection. Once the peer has closed its
// side and acknowledged everything the device sent (PeerDone), as the
// gateway does after its DISCONNECT, which ends the session (MQTT-3.14.4-2),
// nothing is left to deliver either way: the connection then ends with a
// reset instead of the device's FIN, and the peer's acknowledgement of that
// FIN (a segment, 52 bytes) is not sent, nor does the peer keep the
// connection in TIME_WAIT. Otherwise, and where PeerDone cannot tell, it
// closes with a FIN. c is the TCP connection, or a wrapper that passes
// SyscallConn and SetLinger on.
func Close(c net.Conn) error {
	if tc, ok := c.(abortable); ok && PeerDone(tc) {
		_ = tc.SetLinger(0) // close sends a reset
	}
	return c.Close()
}

// abortable is a TCP connection that can be closed with a reset.
type abortable interface {
	syscall.Conn
	SetLinger(sec int) error
}
