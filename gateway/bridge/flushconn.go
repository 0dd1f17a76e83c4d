package bridge

import (
	"net"
	"sync"
	"time"
)

// flushConn writes through a goroutine of its own: a Write appends to a
// buffer and returns, and the writer sends what accumulated in one system
// call. paho.golang writes each packet on the caller's goroutine, so the
// lane's sender would otherwise wait for every publish's system call;
// this way it prepares the next publishes meanwhile and they go out
// together. The buffer is bounded: past flushBufferMax, Write waits.
// A failed write closes the connection, which paho's reader sees.
//
// The lane's sender corks the connection while it writes a burst of
// publishes (cork, uncork): the writer is woken once, at uncork, and sends
// the burst in one system call, rather than racing the sender for the
// first publishes. A corked buffer past flushCorkedMax goes out anyway.
type flushConn struct {
	net.Conn

	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	err    error
	closed bool
	corked int
	done   chan struct{}
}

const (
	flushBufferMax = 1 << 20
	flushCorkedMax = 64 << 10
)

// cork holds writes in the buffer until uncork.
func (f *flushConn) cork() {
	f.mu.Lock()
	f.corked++
	f.mu.Unlock()
}

// uncork lets the writer send what the burst wrote.
func (f *flushConn) uncork() {
	f.mu.Lock()
	f.corked--
	f.cond.Broadcast()
	f.mu.Unlock()
}

// ready reports whether the writer has something to send now. f.mu held.
func (f *flushConn) ready() bool {
	return len(f.buf) > 0 && (f.corked == 0 || f.closed || len(f.buf) >= flushCorkedMax)
}

func newFlushConn(c net.Conn) *flushConn {
	f := &flushConn{Conn: c, done: make(chan struct{})}
	f.cond = sync.NewCond(&f.mu)
	go f.run()
	return f
}

func (f *flushConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.buf) >= flushBufferMax && f.err == nil && !f.closed {
		f.cond.Wait()
	}
	if f.err != nil {
		return 0, f.err
	}
	if f.closed {
		return 0, net.ErrClosed
	}
	f.buf = append(f.buf, p...)
	if f.ready() {
		f.cond.Broadcast()
	}
	return len(p), nil
}

func (f *flushConn) run() {
	defer close(f.done)
	var out []byte
	for {
		f.mu.Lock()
		for !f.ready() && !f.closed {
			f.cond.Wait()
		}
		if len(f.buf) == 0 && f.closed {
			f.mu.Unlock()
			return
		}
		out, f.buf = f.buf, out[:0]
		f.cond.Broadcast()
		f.mu.Unlock()
		if _, err := f.Conn.Write(out); err != nil {
			f.mu.Lock()
			f.err = err
			f.buf = f.buf[:0]
			f.closed = true
			f.cond.Broadcast()
			f.mu.Unlock()
			_ = f.Conn.Close()
			return
		}
	}
}

// Close sends what is buffered (a DISCONNECT written just before), for
// at most flushOnClose, then closes the connection.
func (f *flushConn) Close() error {
	f.mu.Lock()
	f.closed = true
	f.cond.Broadcast()
	f.mu.Unlock()
	t := time.NewTimer(flushOnClose)
	defer t.Stop()
	select {
	case <-f.done:
	case <-t.C: // the network is stalled: closing ends the write
	}
	err := f.Conn.Close()
	<-f.done
	return err
}

const flushOnClose = time.Second
