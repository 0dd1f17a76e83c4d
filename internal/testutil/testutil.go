// Package testutil holds the small helpers the end-to-end tests of several
// packages share.
package testutil

import (
	"bytes"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
)

// FreeAddr returns a loopback address ("127.0.0.1:port") nobody listens on
// now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// FreePort returns a loopback port nobody listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(FreeAddr(t))
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("port %q: %v", port, err)
	}
	return p
}

// Buffer is a bytes.Buffer safe for concurrent use: a child process's
// output or a logger written from several goroutines while the test reads.
type Buffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WriteLog is a net.Conn that records each Write (each would be a segment
// with TCP_NODELAY) and reads nothing: for tests of what a connection
// wrapper gathers into one write.
type WriteLog struct {
	net.Conn
	Writes []string
}

func (w *WriteLog) Write(b []byte) (int, error) {
	w.Writes = append(w.Writes, string(b))
	return len(b), nil
}

func (w *WriteLog) Read([]byte) (int, error) { return 0, io.EOF }

// Want fails t unless the writes so far are exactly writes.
func (w *WriteLog) Want(t testing.TB, writes ...string) {
	t.Helper()
	if !slices.Equal(w.Writes, writes) {
		t.Fatalf("writes %q, want %q", w.Writes, writes)
	}
}
