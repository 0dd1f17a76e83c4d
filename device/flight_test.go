package device

import (
	"testing"

	"github.com/dualgate/dualgate/internal/testutil"
)

// paho.golang writes a packet in parts between Lock and Unlock: they leave
// in one write.
func TestPacketConn(t *testing.T) {
	w := &testutil.WriteLog{}
	c := &packetConn{Conn: w}
	c.Lock()
	_, _ = c.Write([]byte{0x30, 3})
	_, _ = c.Write([]byte{0, 1})
	_, _ = c.Write([]byte{'x'})
	w.Want(t)
	c.Unlock()
	c.Lock()
	_, _ = c.Write([]byte{0xe0, 0})
	c.Unlock()
	w.Want(t, "\x30\x03\x00\x01x", "\xe0\x00")
}

// The query rides on the first write (the CONNECT) only.
func TestFirstWriteConn(t *testing.T) {
	w := &testutil.WriteLog{}
	c := &firstWriteConn{Conn: w, extra: []byte("Q")}
	if n, err := c.Write([]byte("CONNECT")); n != len("CONNECT") || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	_, _ = c.Write([]byte("PINGREQ"))
	w.Want(t, "CONNECTQ", "PINGREQ")
}
