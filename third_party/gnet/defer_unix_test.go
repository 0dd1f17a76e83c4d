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
