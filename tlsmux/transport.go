package tlsmux

import (
	"errors"
	"io"
	"net"
	"time"
)

// ErrWouldBlock is what a detached Transport's Read returns when it has no
// byte left: a net.Error whose Temporary and Timeout are true. crypto/tls
// passes such an error up without recording it, and keeps a partial record
// for the next Read, so a tls.Conn over a detached Transport can be read
// until ErrWouldBlock, fed more bytes, and read again (see Transport).
var ErrWouldBlock net.Error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "tlsmux: no input (would block)" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// errDetached is returned by writes on a detached Transport that has no
// writer.
var errDetached = errors.New("tlsmux: transport detached and not attached to a writer")

// Transport is the net.Conn under every tls.Conn a Server makes. Until
// Detach it is the accepted connection itself: the handshake reads and
// writes it on its worker, blocking. After Detach (Config.Handoff) it
// owns no socket: Read returns the bytes read ahead by the accepted
// connection's wrappers (Detach collects them), then those lent with
// Lend, then ErrWouldBlock; Write goes to the writer given with SetWriter.
// The owner of a detached Transport calls its methods and the tls.Conn's
// from one goroutine at a time (an event loop): it lends the bytes that
// arrived, reads the tls.Conn until ErrWouldBlock, and takes back what was
// not read (Unlend). crypto/tls keeps a record that is not whole in its own
// buffer, so nothing is lost between two rounds.
type Transport struct {
	net.Conn // the accepted connection; nil once detached

	pre []byte    // read ahead by the accepted connection's wrappers
	in  []byte    // lent by the owner for one round of reads
	eof bool      // the peer closed: Read returns io.EOF once in is read
	w   io.Writer // after Detach: where records go
}

// Detach ends the Transport's use of the accepted connection: it collects
// the bytes a wrapper of that connection (a PROXY header reader) has read
// ahead and not delivered yet (tlsmux's own admission reader included),
// without reading the socket, and returns the accepted connection as the
// listener gave it, which the caller now owns (it hands the socket
// elsewhere and closes it). The connection's read deadline is left in the
// past: a caller that reads the connection itself clears it first. The
// bytes read ahead are read before anything lent. On an error the
// accepted connection is returned too, for the caller to close.
func (t *Transport) Detach() (net.Conn, error) {
	c := t.Conn
	if c == nil {
		return nil, errors.New("tlsmux: transport detached twice")
	}
	// A deadline in the past fails the socket's read before it reads
	// anything (Go's poller checks it first), while a wrapper's buffer
	// answers from memory: what comes back is exactly what was read ahead.
	if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return c, err
	}
	var buf [512]byte
	for {
		n, err := c.Read(buf[:])
		t.pre = append(t.pre, buf[:n]...)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return c, err
			}
			break
		}
	}
	t.Conn = nil
	if pc, ok := c.(*prefixConn); ok {
		c = pc.Conn // its bytes were read above
	}
	return c, nil
}

// SetWriter directs a detached Transport's writes to w.
func (t *Transport) SetWriter(w io.Writer) { t.w = w }

// Lend gives a detached Transport bytes to read; they must stay valid
// until Unlend.
func (t *Transport) Lend(b []byte) { t.in = b }

// Unlend takes back the lent bytes and says how many were not read.
func (t *Transport) Unlend() int {
	n := len(t.in)
	t.in = nil
	return n
}

// SetEOF makes Read return io.EOF once nothing is left.
func (t *Transport) SetEOF() { t.eof = true }

// Detached reports whether Detach was called.
func (t *Transport) Detached() bool { return t.Conn == nil }

func (t *Transport) Read(b []byte) (int, error) {
	if t.Conn != nil {
		return t.Conn.Read(b)
	}
	if len(t.pre) > 0 {
		n := copy(b, t.pre)
		if t.pre = t.pre[n:]; len(t.pre) == 0 {
			t.pre = nil
		}
		return n, nil
	}
	if len(t.in) > 0 {
		n := copy(b, t.in)
		t.in = t.in[n:]
		return n, nil
	}
	if t.eof {
		return 0, io.EOF
	}
	return 0, ErrWouldBlock
}

func (t *Transport) Write(b []byte) (int, error) {
	if t.Conn != nil {
		return t.Conn.Write(b)
	}
	if t.w == nil {
		return 0, errDetached
	}
	return t.w.Write(b)
}

// Close closes the accepted connection; once detached, the owner closes
// the socket, and Close does nothing.
func (t *Transport) Close() error {
	if t.Conn != nil {
		return t.Conn.Close()
	}
	return nil
}

func (t *Transport) LocalAddr() net.Addr {
	if t.Conn != nil {
		return t.Conn.LocalAddr()
	}
	return nil
}

func (t *Transport) RemoteAddr() net.Addr {
	if t.Conn != nil {
		return t.Conn.RemoteAddr()
	}
	return nil
}

// Deadlines apply to the accepted connection only; a detached Transport
// never blocks.
func (t *Transport) SetDeadline(d time.Time) error {
	if t.Conn != nil {
		return t.Conn.SetDeadline(d)
	}
	return nil
}

func (t *Transport) SetReadDeadline(d time.Time) error {
	if t.Conn != nil {
		return t.Conn.SetReadDeadline(d)
	}
	return nil
}

func (t *Transport) SetWriteDeadline(d time.Time) error {
	if t.Conn != nil {
		return t.Conn.SetWriteDeadline(d)
	}
	return nil
}
