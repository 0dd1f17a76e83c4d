package gateway

import (
	"bytes"
	"testing"

	"github.com/panjf2000/gnet/v2"
)

// outConn is the part of a gnet connection loopWriter uses: an outbound
// buffer, and a socket that takes at most room bytes more (negative: all
// it is given). Write, as gnet's, writes at once when the buffer is empty
// and adds to the buffer otherwise.
type outConn struct {
	gnet.Conn
	buf, sent      []byte
	room           int
	flushes, wrote int
}

func (c *outConn) Defer(b []byte) (int, error) { c.buf = append(c.buf, b...); return len(b), nil }
func (c *outConn) OutboundBuffered() int       { return len(c.buf) }

func (c *outConn) take(b []byte) int {
	n := len(b)
	if c.room >= 0 {
		n = min(n, c.room)
		c.room -= n
	}
	c.sent = append(c.sent, b[:n]...)
	return n
}

func (c *outConn) Write(b []byte) (int, error) {
	c.wrote++
	if len(c.buf) > 0 {
		return c.Defer(b)
	}
	n := c.take(b)
	c.buf = append(c.buf, b[n:]...)
	return len(b), nil
}

func (c *outConn) Flush() error {
	c.flushes++
	c.buf = c.buf[c.take(c.buf):]
	return nil
}

// While a connection defers its writes, what it defers goes out as soon
// as the next write would take it past deferLimit, so that the outbound
// buffer, which --max-outbound-bytes bounds, holds only what the socket
// did not take; a buffer the socket refused is left to gnet's writable
// event, with no flush attempted per write; without deferring, every
// write goes out.
func TestLoopWriterBoundsDeferred(t *testing.T) {
	chunk := bytes.Repeat([]byte("d"), 20<<10)
	const n = 40 // 800 KiB: 12 times deferLimit

	// the writes that take the buffer to deferLimit
	perRound := (deferLimit + len(chunk) - 1) / len(chunk)

	// A socket that takes everything: the buffer never holds deferLimit;
	// each time it would, the deferred bytes are flushed and the write
	// goes out at once.
	c := &outConn{room: -1}
	pc := &plainConn{c: c, deferring: true}
	for range n {
		if _, err := (*loopWriter)(pc).Write(chunk); err != nil {
			t.Fatal(err)
		}
		if c.OutboundBuffered() >= deferLimit {
			t.Fatalf("%d bytes deferred, want them written past %d", c.OutboundBuffered(), deferLimit)
		}
	}
	if want := n / perRound; c.flushes != want || c.wrote != want {
		t.Fatalf("%d flushes and %d writes for %d writes of %d bytes, want %d of each", c.flushes, c.wrote, n, len(chunk), want)
	}
	if len(c.sent) != n*len(chunk) || c.OutboundBuffered() != 0 {
		t.Fatalf("%d bytes sent, %d buffered; want %d, none", len(c.sent), c.OutboundBuffered(), n*len(chunk))
	}

	// A socket that takes 10 KiB and then nothing: one flush, the write
	// after it waits behind what was refused, and so does every later one.
	c = &outConn{room: 10 << 10}
	pc = &plainConn{c: c, deferring: true}
	for range n {
		if _, err := (*loopWriter)(pc).Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if c.flushes != 1 || c.wrote != 1 || len(c.sent) != 10<<10 || c.OutboundBuffered() != n*len(chunk)-10<<10 {
		t.Fatalf("%d flushes, %d writes, %d sent, %d buffered; want 1, 1, 10 KiB, the rest",
			c.flushes, c.wrote, len(c.sent), c.OutboundBuffered())
	}

	// Not deferring: each write goes to the socket.
	c = &outConn{room: -1}
	pc = &plainConn{c: c}
	for range 3 {
		if _, err := (*loopWriter)(pc).Write(chunk[:10]); err != nil {
			t.Fatal(err)
		}
	}
	if c.wrote != 3 || len(c.sent) != 30 {
		t.Fatalf("%d writes, %d bytes sent; want 3, 30", c.wrote, len(c.sent))
	}
}
