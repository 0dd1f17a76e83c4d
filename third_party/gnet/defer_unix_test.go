//go:build linux || freebsd || dragonfly || netbsd || openbsd || darwin

package gnet

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// deferServer answers each byte it reads with one reply, deferred, and
// flushes once per OnTraffic (patch 11).
type deferServer struct {
	BuiltinEventEngine

	booted chan Engine
	reply  []byte
	// flushes counts Flush calls; defers the replies deferred.
	flushes, defers int
}

func (s *deferServer) OnBoot(eng Engine) Action {
	s.booted <- eng
	return None
}

func (s *deferServer) OnTraffic(c Conn) Action {
	n := c.InboundBuffered()
	_, _ = c.Discard(n)
	for i := 0; i < n; i++ {
		if _, err := c.Defer(s.reply); err != nil {
			return Close
		}
		s.defers++
	}
	s.flushes++
	if err := c.Flush(); err != nil {
		return Close
	}
	return None
}

// Deferred writes leave with Flush, in order; what the socket does not
// take at once (replies far larger than its buffers) leaves when it is
// writable, in both polling modes, with nothing stuck behind.
func TestDeferFlush(t *testing.T) {
	for _, edge := range []bool{false, true} {
		t.Run(map[bool]string{false: "level", true: "edge"}[edge], func(t *testing.T) {
			for _, size := range []int{5, 1 << 20} {
				testDeferFlush(t, edge, size)
			}
		})
	}
}

func testDeferFlush(t *testing.T, edge bool, size int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	reply := bytes.Repeat([]byte{'r'}, size)
	reply[0], reply[size-1] = '<', '>'
	s := &deferServer{reply: reply, booted: make(chan Engine, 1)}
	done := make(chan error, 1)
	go func() {
		done <- Run(s, "tcp://"+addr, WithEdgeTriggeredIO(edge), WithReuseAddr(true), WithSocketSendBuffer(16<<10))
	}()
	eng := <-s.booted
	var client net.Conn
	require.Eventually(t, func() bool {
		client, err = net.Dial("tcp", addr)
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	defer func() { _ = client.Close() }()

	const asks = 3
	_, err = client.Write(make([]byte, asks)) // one segment: usually one OnTraffic
	require.NoError(t, err)
	require.NoError(t, client.SetReadDeadline(time.Now().Add(30*time.Second)))
	got := make([]byte, asks*size)
	_, err = io.ReadFull(client, got)
	require.NoError(t, err, "the deferred replies did not all arrive")
	require.Equal(t, bytes.Repeat(reply, asks), got)

	require.NoError(t, eng.Stop(context.Background()))
	require.NoError(t, <-done)
	require.Equal(t, asks, s.defers)
	require.LessOrEqual(t, s.flushes, asks)
}

// soonServer defers its replies and leaves them to FlushSoon (patch 12):
// from OnTraffic, one reply per byte read; from tasks the test queues,
// one reply each.
type soonServer struct {
	BuiltinEventEngine

	booted chan Engine
	opened chan Conn
	reply  []byte
	// marked counts, in tasks, how often the connection was found in its
	// loop's list after FlushSoon: more than once would mean more than
	// one flush a round.
	marked []int
}

func (s *soonServer) OnBoot(eng Engine) Action {
	s.booted <- eng
	return None
}

func (s *soonServer) OnOpen(c Conn) ([]byte, Action) {
	s.opened <- c
	return nil, None
}

func (s *soonServer) OnTraffic(c Conn) Action {
	n := c.InboundBuffered()
	_, _ = c.Discard(n)
	for i := 0; i < n; i++ {
		if _, err := c.Defer(s.reply); err != nil {
			return Close
		}
		c.FlushSoon()
	}
	return None
}

// Replies deferred and marked with FlushSoon leave at the end of the
// loop's round, from event handlers and from tasks alike, in order, once
// per round however many marks; replies larger than the socket's buffers
// leave when it is writable, in both polling modes.
func TestFlushSoon(t *testing.T) {
	for _, edge := range []bool{false, true} {
		t.Run(map[bool]string{false: "level", true: "edge"}[edge], func(t *testing.T) {
			for _, size := range []int{5, 1 << 20} {
				testFlushSoon(t, edge, size)
			}
		})
	}
}

func testFlushSoon(t *testing.T, edge bool, size int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	reply := bytes.Repeat([]byte{'r'}, size)
	reply[0], reply[size-1] = '<', '>'
	s := &soonServer{reply: reply, booted: make(chan Engine, 1), opened: make(chan Conn, 1)}
	done := make(chan error, 1)
	go func() {
		done <- Run(s, "tcp://"+addr, WithEdgeTriggeredIO(edge), WithReuseAddr(true), WithSocketSendBuffer(16<<10))
	}()
	eng := <-s.booted
	var client net.Conn
	require.Eventually(t, func() bool {
		client, err = net.Dial("tcp", addr)
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	defer func() { _ = client.Close() }()
	c := <-s.opened
	require.NoError(t, client.SetReadDeadline(time.Now().Add(30*time.Second)))

	// From an event handler: nothing calls Flush.
	const asks = 3
	_, err = client.Write(make([]byte, asks))
	require.NoError(t, err)
	got := make([]byte, asks*size)
	_, err = io.ReadFull(client, got)
	require.NoError(t, err, "the replies marked in OnTraffic did not all arrive")
	require.Equal(t, bytes.Repeat(reply, asks), got)

	// From tasks, each with its own reply, queued at once.
	tasks := 20
	if size > 1<<10 {
		tasks = 3
	}
	var want []byte
	for i := 0; i < tasks; i++ {
		r := append([]byte(nil), reply...)
		r[1%len(r)] = byte('a' + i)
		want = append(want, r...)
		require.NoError(t, c.EventLoop().Execute(context.Background(), RunnableFunc(func(context.Context) error {
			if _, err := c.Defer(r); err != nil {
				return err
			}
			c.FlushSoon()
			c.FlushSoon()
			cc := c.(*conn)
			n := 0
			for _, m := range cc.loop.flushing {
				if m == cc {
					n++
				}
			}
			s.marked = append(s.marked, n)
			return nil
		})))
	}
	got = make([]byte, len(want))
	_, err = io.ReadFull(client, got)
	require.NoError(t, err, "the replies marked in tasks did not all arrive")
	require.Equal(t, want, got)

	require.NoError(t, eng.Stop(context.Background()))
	require.NoError(t, <-done)
	require.Len(t, s.marked, tasks)
	for _, n := range s.marked {
		require.Equal(t, 1, n, "a connection marked twice in a round, or not at all")
	}
}
