package tlsmux

import (
	"errors"
	"io"
	"net"
	"os"
	"time"

	"go.uber.org/zap"
)

// Defaults of the admission stage.
const (
	DefaultHelloTimeout      = 3 * time.Second
	DefaultMaxHelloPerSource = 64
)

// maxRecord is the largest TLS record a ClientHello may arrive in:
// 2^14 bytes of plaintext plus the 2048 bytes RFC 5246 allows a
// compressed or protected record to grow by.
const maxRecord = 1<<14 + 2048

// recordHandshake is the TLS record content type of a ClientHello.
const recordHandshake = 0x16

// admit starts the admission stage of an accepted connection: on its own
// goroutine, without a handshake worker, it waits up to HelloTimeout for
// the client's first TLS record, and only then queues the connection for a
// worker with that record ready to read. A socket that sends nothing costs
// a parked goroutine and never holds a worker, so idle sockets cannot keep
// real devices from their handshakes; sockets waiting at once are bounded
// per source address.
func (s *Server) admit(c net.Conn) {
	s.accepted.Add(1)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.refused.Add(1)
		_ = c.Close()
		return
	}
	s.hello[c] = struct{}{}
	s.running++
	s.mu.Unlock()
	go s.awaitHello(c)
}

func (s *Server) awaitHello(c net.Conn) {
	defer s.done()
	deadline := time.Now().Add(s.cfg.HelloTimeout)
	_ = c.SetReadDeadline(deadline)
	// The source is known only now: behind a PROXY header, reading it
	// takes a read, which must not happen on the accept loop.
	src := sourceOf(c.RemoteAddr())
	if !s.takeSource(src) {
		s.forget(c)
		s.helloRefused.Add(1)
		_ = c.Close()
		s.log.Debug("tlsmux: too many connections waiting for their first record from one source",
			zap.String("source", src), zap.Int("limit", s.cfg.MaxHelloPerSource))
		return
	}
	rec, err := readRecord(c)
	s.releaseSource(src)
	if !s.forget(c) {
		return // closed by Shutdown or Close, and counted there
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.helloTimeouts.Add(1)
		} else {
			s.failed.Add(1)
		}
		_ = c.Close()
		if s.log.Core().Enabled(zap.DebugLevel) {
			s.log.Debug("tlsmux: no TLS record in time", zap.String("source", src), zap.Error(err))
		}
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	s.enqueue(&prefixConn{Conn: c, buf: rec})
}

// forget removes c from the connections waiting for a first record, and
// reports whether it was still there (Shutdown and Close take and close
// what they find).
func (s *Server) forget(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.hello[c]; !ok {
		return false
	}
	delete(s.hello, c)
	return true
}

func (s *Server) takeSource(src string) bool {
	if s.cfg.MaxHelloPerSource < 0 {
		return true
	}
	s.srcMu.Lock()
	defer s.srcMu.Unlock()
	if s.sources[src] >= s.cfg.MaxHelloPerSource {
		return false
	}
	s.sources[src]++
	return true
}

func (s *Server) releaseSource(src string) {
	if s.cfg.MaxHelloPerSource < 0 {
		return
	}
	s.srcMu.Lock()
	if s.sources[src]--; s.sources[src] <= 0 {
		delete(s.sources, src)
	}
	s.srcMu.Unlock()
}

// sourceOf is the host part of a remote address.
func sourceOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

var errNotTLS = errors.New("tlsmux: first record is not a TLS handshake record")

// readRecord reads one whole TLS handshake record, header included.
func readRecord(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(hdr[3])<<8 | int(hdr[4])
	if hdr[0] != recordHandshake || hdr[1] != 3 || n == 0 || n > maxRecord {
		return nil, errNotTLS
	}
	rec := make([]byte, len(hdr)+n)
	copy(rec, hdr[:])
	if _, err := io.ReadFull(r, rec[len(hdr):]); err != nil {
		return nil, err
	}
	return rec, nil
}

// prefixConn gives back the bytes read during admission before reading
// from the connection again; the buffer is dropped once consumed, so a
// long-lived TLS connection keeps nothing of it.
type prefixConn struct {
	net.Conn
	buf []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(b, c.buf)
		if c.buf = c.buf[n:]; len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}
