package device

import (
	"io"
	"net"
	"testing"
)

// writeLog is a net.Conn that records each Write (each would be a
// segment with TCP_NODELAY) and reads nothing.
type writeLog struct {
	net.Conn
	writes []string
}

func (w *writeLog) Write(b []byte) (int, error) {
	w.writes = append(w.writes, string(b))
	return len(b), nil
}

func (w *writeLog) Read([]byte) (int, error) { return 0, io.EOF }

func (w *writeLog) want(t *testing.T, writes ...string) {
	t.Helper()
	if len(w.writes) != len(writes) {
		t.Fatalf("writes %q, want %q", w.writes, writes)
	}
	for i := range writes {
		if w.writes[i] != writes[i] {
			t.Fatalf("writes %q, want %q", w.writes, writes)
		}
	}
}

// paho.golang writes a packet in parts between Lock and Unlock: they leave
// in one write.
func TestPacketConn(t *testing.T) {
	w := &writeLog{}
	c := &packetConn{Conn: w}
	c.Lock()
	_, _ = c.Write([]byte{0x30, 3})
	_, _ = c.Write([]byte{0, 1})
	_, _ = c.Write([]byte{'x'})
	w.want(t)
	c.Unlock()
	c.Lock()
	_, _ = c.Write([]byte{0xe0, 0})
	c.Unlock()
	w.want(t, "\x30\x03\x00\x01x", "\xe0\x00")
}

// The query rides on the first write (the CONNECT) only.
func TestFirstWriteConn(t *testing.T) {
	w := &writeLog{}
	c := &firstWriteConn{Conn: w, extra: []byte("Q")}
	if n, err := c.Write([]byte("CONNECT")); n != len("CONNECT") || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	_, _ = c.Write([]byte("PINGREQ"))
	w.want(t, "CONNECTQ", "PINGREQ")
}
