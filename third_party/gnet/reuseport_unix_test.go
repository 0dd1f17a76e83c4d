//go:build linux

package gnet

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type reusePortServer struct {
	BuiltinEventEngine

	t      *testing.T
	eng    Engine
	booted chan string

	mu    sync.Mutex
	loops map[EventLoop]int // connections opened per loop
}

func (s *reusePortServer) OnBoot(eng Engine) Action {
	s.eng = eng
	fd, err := eng.Dup()
	require.NoError(s.t, err)
	sa, err := unix.Getsockname(fd)
	require.NoError(s.t, err)
	_ = unix.Close(fd)
	in4, ok := sa.(*unix.SockaddrInet4)
	require.True(s.t, ok)
	s.booted <- net.JoinHostPort("127.0.0.1", strconv.Itoa(in4.Port))
	return None
}

func (s *reusePortServer) OnOpen(c Conn) ([]byte, Action) {
	s.mu.Lock()
	s.loops[c.EventLoop()]++
	s.mu.Unlock()
	return nil, None
}

func (s *reusePortServer) OnTraffic(c Conn) Action {
	buf, _ := c.Next(-1)
	_, _ = c.Write(buf)
	return None
}

// With SO_REUSEPORT, every event loop has a listener of its own. Asked for
// port 0, they must all share the port the first one got (patch 8), or the
// other loops would listen on ports no one knows and never get a
// connection. Each loop accepts without the peer's address.
func TestReusePortSharesPortZero(t *testing.T) {
	s := &reusePortServer{t: t, booted: make(chan string, 1), loops: make(map[EventLoop]int)}
	done := make(chan error, 1)
	go func() {
		done <- Run(s, "tcp://127.0.0.1:0", WithMulticore(true), WithNumEventLoop(2), WithReusePort(true))
	}()
	var addr string
	select {
	case addr = <-s.booted:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("engine did not boot")
	}
	// The kernel spreads connections over the loops' listeners by a hash
	// of their addresses: 64 connections all on one loop of two has a
	// chance of 2^-63.
	const n = 64
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		require.NoError(t, err)
		msg := []byte("ping " + strconv.Itoa(i))
		_, err = c.Write(msg)
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(30*time.Second)))
		got := make([]byte, len(msg))
		_, err = c.Read(got)
		require.NoError(t, err)
		assert.Equal(t, msg, got)
		_ = c.Close()
	}
	s.mu.Lock()
	loops, total := len(s.loops), 0
	for _, k := range s.loops {
		total += k
	}
	s.mu.Unlock()
	assert.Equal(t, n, total)
	assert.Equal(t, 2, loops, "connections reached %d of 2 loops", loops)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, s.eng.Stop(ctx))
	require.NoError(t, <-done)
}
