//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package gnet

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pauseServer pauses reading as soon as a connection has sent anything,
// leaves what arrived unread, and takes it all when told to resume.
type pauseServer struct {
	BuiltinEventEngine

	eng  Engine
	conn chan Conn
	// traffic reports, per OnTraffic, how many bytes were waiting.
	traffic chan int
	// consume: while set, OnTraffic takes every byte.
	consume bool
}

func (s *pauseServer) OnBoot(eng Engine) Action {
	s.eng = eng
	return None
}

func (s *pauseServer) OnOpen(c Conn) ([]byte, Action) {
	s.conn <- c
	return nil, None
}

func (s *pauseServer) OnTraffic(c Conn) Action {
	n := c.InboundBuffered()
	if s.consume {
		_, _ = c.Discard(n)
	} else {
		_ = c.PauseRead()
	}
	s.traffic <- n
	return None
}

// onLoop runs fn on c's event loop and waits for it.
func onLoop(t *testing.T, c Conn, fn func()) {
	t.Helper()
	done := make(chan struct{})
	require.NoError(t, c.EventLoop().Execute(context.Background(), RunnableFunc(func(context.Context) error {
		fn()
		close(done)
		return nil
	})))
	<-done
}

func TestPauseRead(t *testing.T) {
	for _, edge := range []bool{false, true} {
		t.Run(map[bool]string{false: "level", true: "edge"}[edge], func(t *testing.T) {
			testPauseRead(t, edge)
		})
	}
}

func testPauseRead(t *testing.T, edge bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	s := &pauseServer{conn: make(chan Conn, 1), traffic: make(chan int, 1024)}
	done := make(chan error, 1)
	go func() {
		done <- Run(s, "tcp://"+addr, WithEdgeTriggeredIO(edge), WithReadBufferCap(4096), WithReuseAddr(true))
	}()
	var client net.Conn
	require.Eventually(t, func() bool {
		client, err = net.Dial("tcp", addr)
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	defer func() { _ = client.Close() }()
	tcp := client.(*net.TCPConn)
	_ = tcp.SetWriteBuffer(64 << 10)
	c := <-s.conn

	// The peer sends far more than socket buffers hold: once reads are
	// paused its writes stall, and the server keeps one read's worth.
	const total = 64 << 20
	sent := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(client, io.LimitReader(zeroReader{}, total))
		sent <- n
	}()
	first := <-s.traffic
	assert.Positive(t, first)
	select {
	case n := <-sent:
		t.Fatalf("the peer wrote all %d bytes to a paused connection", n)
	case n := <-s.traffic:
		t.Fatalf("OnTraffic ran again (%d bytes) while reads were paused", n)
	case <-time.After(300 * time.Millisecond):
		// Nothing happened, as it should: a bound on what is checked,
		// not a synchronisation.
	}
	var buffered int
	onLoop(t, c, func() { buffered = c.InboundBuffered() })
	assert.LessOrEqual(t, buffered, 2*4096, "a paused connection keeps at most one more read")

	// Resuming hands over what was kept at once, then reads the rest.
	onLoop(t, c, func() {
		s.consume = true
		require.NoError(t, c.ResumeRead())
	})
	assert.Equal(t, buffered, <-s.traffic, "ResumeRead hands over the bytes already read first")
	got := int64(buffered)
	for got < total {
		got += int64(<-s.traffic)
	}
	assert.Equal(t, int64(total), <-sent)
	assert.Equal(t, int64(total), got)

	require.NoError(t, s.eng.Stop(context.Background()))
	require.NoError(t, <-done)
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0
	}
	return len(p), nil
}
