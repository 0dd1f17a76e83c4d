//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package gnet

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/panjf2000/gnet/v2/pkg/socket"
)

func TestConnStructSize(t *testing.T) {
	// Keep conn within the 128-byte size class of the Go allocator,
	// it's allocated once per connection (dualgate patches 14 and 16: the
	// bytes of the latest read live on the loop, and only the gc_opt
	// matrix keeps a GFD, 16 bytes more: size class 144 there).
	size := unsafe.Sizeof(conn{})
	t.Logf("unsafe.Sizeof(conn{}) = %d", size)
	limit := uintptr(128)
	if unsafe.Sizeof(connGFD{}) > 0 {
		limit = 144
	}
	assert.LessOrEqual(t, size, limit)
}

type remoteAddrServer struct {
	BuiltinEventEngine

	t      *testing.T
	eng    Engine
	booted chan string // listener address

	mu      sync.Mutex
	opened  []string // RemoteAddr().String() in OnOpen
	local   []string // LocalAddr().String() in OnOpen
	traffic []string // RemoteAddr().String() in OnTraffic
	closing []string // RemoteAddr().String() in OnClose
	closed  []Conn   // connections that have been closed
}

func (s *remoteAddrServer) OnBoot(eng Engine) Action {
	s.eng = eng
	fd, err := eng.Dup()
	require.NoError(s.t, err)
	sa, err := unix.Getsockname(fd)
	require.NoError(s.t, err)
	_ = unix.Close(fd)
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		s.booted <- (&net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}).String()
	case *unix.SockaddrUnix:
		s.booted <- sa.Name
	}
	return None
}

func (s *remoteAddrServer) remoteAddrString(c Conn) string {
	addr := c.RemoteAddr()
	if addr == nil {
		return "<nil>"
	}
	switch addr.(type) {
	case *net.TCPAddr:
		assert.Equal(s.t, "tcp", addr.Network())
	case *net.UnixAddr:
		assert.Equal(s.t, "unix", addr.Network())
	default:
		s.t.Errorf("unexpected type of remote address: %T", addr)
	}
	return addr.String()
}

func (s *remoteAddrServer) OnOpen(c Conn) ([]byte, Action) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opened = append(s.opened, s.remoteAddrString(c))
	if la := c.LocalAddr(); la != nil {
		s.local = append(s.local, la.String())
	} else {
		s.local = append(s.local, "<nil>")
	}
	return nil, None
}

func (s *remoteAddrServer) OnTraffic(c Conn) Action {
	_, _ = c.Discard(-1)
	s.mu.Lock()
	s.traffic = append(s.traffic, s.remoteAddrString(c))
	reply := "ok\n"
	// Connections closed earlier must no longer report a remote address,
	// even if their file descriptors have been reused by now.
	for _, cc := range s.closed {
		if cc.RemoteAddr() != nil || cc.LocalAddr() != nil {
			reply = "stale\n"
		}
	}
	s.mu.Unlock()
	_, _ = c.Write([]byte(reply))
	return None
}

func (s *remoteAddrServer) OnClose(c Conn, _ error) Action {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = append(s.closing, s.remoteAddrString(c))
	s.closed = append(s.closed, c)
	return None
}

func TestConnRemoteAddr(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		testConnRemoteAddr(t, "tcp", WithNumEventLoop(1))
	})
	t.Run("tcp-reuseport", func(t *testing.T) {
		testConnRemoteAddr(t, "tcp", WithNumEventLoop(1), WithReusePort(true))
	})
	t.Run("tcp-source-addr-hash", func(t *testing.T) {
		testConnRemoteAddr(t, "tcp", WithNumEventLoop(1), WithLoadBalancing(SourceAddrHash))
	})
	t.Run("tcp-edge-triggered", func(t *testing.T) {
		testConnRemoteAddr(t, "tcp", WithNumEventLoop(1), WithEdgeTriggeredIO(true))
	})
	t.Run("unix", func(t *testing.T) {
		testConnRemoteAddr(t, "unix", WithNumEventLoop(1))
	})
}

func testConnRemoteAddr(t *testing.T, network string, opts ...Option) {
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "gnet-remote-addr.sock")
	}
	s := &remoteAddrServer{t: t, booted: make(chan string, 1)}
	errCh := make(chan error, 1)
	go func() {
		errCh <- Run(s, network+"://"+addr, opts...)
	}()
	var lnAddr string
	select {
	case lnAddr = <-s.booted:
	case err := <-errCh:
		t.Fatalf("engine exited early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the engine to boot")
	}

	const numConns = 3
	var clientAddrs []string
	for i := 0; i < numConns; i++ {
		nc, err := net.DialTimeout(network, lnAddr, 5*time.Second)
		require.NoError(t, err)
		require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
		clientAddrs = append(clientAddrs, nc.LocalAddr().String())
		_, err = nc.Write([]byte("ping"))
		require.NoError(t, err)
		reply, err := bufio.NewReader(nc).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "ok\n", reply, "closed connection reported a remote address")
		require.NoError(t, nc.Close())
		// Wait for the server to see the connection being closed.
		require.Eventually(t, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.closed) == i+1
		}, 10*time.Second, 10*time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.eng.Stop(ctx))
	select {
	case err := <-errCh:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the engine to stop")
	}

	assert.Equal(t, clientAddrs, s.opened, "RemoteAddr() in OnOpen")
	assert.Equal(t, clientAddrs, s.traffic, "RemoteAddr() in OnTraffic")
	assert.Equal(t, clientAddrs, s.closing, "RemoteAddr() in OnClose")
	for i, la := range s.local {
		assert.Equal(t, lnAddr, la, "LocalAddr() in OnOpen of connection %d", i)
	}
	for _, c := range s.closed {
		assert.Nil(t, c.RemoteAddr(), "RemoteAddr() after close")
		assert.Nil(t, c.LocalAddr(), "LocalAddr() after close")
	}
}

// A TCP connection handed to the engine with Register keeps no addresses
// either: they are read from the socket when asked.
func TestEnrolledConnAddrs(t *testing.T) {
	s := &remoteAddrServer{t: t, booted: make(chan string, 1)}
	errCh := make(chan error, 1)
	go func() {
		errCh <- Run(s, "tcp://127.0.0.1:0", WithNumEventLoop(1))
	}()
	var engAddr string
	select {
	case engAddr = <-s.booted:
	case err := <-errCh:
		t.Fatalf("engine exited early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the engine to boot")
	}
	// OnBoot runs before the loops start: Register only once a loop has
	// opened a connection.
	first, err := net.DialTimeout("tcp", engAddr, 5*time.Second)
	require.NoError(t, err)
	defer first.Close() //nolint:errcheck
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.opened) == 1
	}, 10*time.Second, 10*time.Millisecond)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close() //nolint:errcheck
	client, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer client.Close() //nolint:errcheck
	accepted, err := ln.Accept()
	require.NoError(t, err)

	resCh, err := s.eng.Register(NewNetConnContext(context.Background(), accepted))
	require.NoError(t, err)
	var res RegisteredResult
	select {
	case res = <-resCh:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the connection to be registered")
	}
	require.NoError(t, res.Err)
	gc, ok := res.Conn.(*conn)
	require.True(t, ok)
	assert.Nil(t, gc.addrs, "an enrolled TCP connection keeps its addresses")

	require.NoError(t, client.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = client.Write([]byte("ping"))
	require.NoError(t, err)
	reply, err := bufio.NewReader(client).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "ok\n", reply)
	require.NoError(t, client.Close())
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.closed) == 1
	}, 10*time.Second, 10*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.eng.Stop(ctx))
	select {
	case err := <-errCh:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the engine to stop")
	}

	want := client.LocalAddr().String()
	assert.Equal(t, []string{first.LocalAddr().String(), want}, s.opened, "RemoteAddr() in OnOpen")
	assert.Equal(t, []string{engAddr, ln.Addr().String()}, s.local, "LocalAddr() in OnOpen")
	assert.Equal(t, []string{want}, s.traffic, "RemoteAddr() in OnTraffic")
	require.NotEmpty(t, s.closing)
	assert.Equal(t, want, s.closing[0], "RemoteAddr() in OnClose")
	assert.Nil(t, gc.RemoteAddr(), "RemoteAddr() after close")
	assert.Nil(t, gc.LocalAddr(), "LocalAddr() after close")
}

type enrollFDClient struct {
	BuiltinEventEngine

	mu     sync.Mutex
	got    []byte
	closed chan error
}

func (c *enrollFDClient) OnOpen(Conn) ([]byte, Action) { return []byte("hello"), None }

func (c *enrollFDClient) OnTraffic(conn Conn) Action {
	b, _ := conn.Next(-1)
	c.mu.Lock()
	c.got = append(c.got, b...)
	done := len(c.got) >= len("hello")
	c.mu.Unlock()
	if done {
		return Close
	}
	return None
}

func (c *enrollFDClient) OnClose(_ Conn, err error) Action {
	c.closed <- err
	return None
}

// nonblockingConnect starts a TCP connect to addr and returns the socket.
func nonblockingConnect(t *testing.T, addr *net.TCPAddr) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	sa := &unix.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		_ = unix.Close(fd)
		require.NoError(t, err)
	}
	return fd
}

// A descriptor enrolled with its connect under way: what OnOpen returns
// goes out once the connect is done, and a refused connect closes the
// connection with ECONNREFUSED (patch 10).
func TestEnrollFD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close() //nolint:errcheck
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close() //nolint:errcheck
		buf := make([]byte, 5)
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write(buf)
		}
	}()

	h := &enrollFDClient{closed: make(chan error, 2)}
	cli, err := NewClient(h, WithTCPNoDelay(TCPNoDelay))
	require.NoError(t, err)
	require.NoError(t, cli.Start())
	defer cli.Stop() //nolint:errcheck

	require.NoError(t, cli.EnrollFD(nonblockingConnect(t, ln.Addr().(*net.TCPAddr)), nil))
	select {
	case err := <-h.closed:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("no echo")
	}
	h.mu.Lock()
	assert.Equal(t, "hello", string(h.got))
	h.mu.Unlock()

	// A port no one listens on: the listener above, closed.
	refused := ln.Addr().(*net.TCPAddr)
	require.NoError(t, ln.Close())
	require.NoError(t, cli.EnrollFD(nonblockingConnect(t, refused), nil))
	select {
	case err := <-h.closed:
		assert.ErrorIs(t, err, unix.ECONNREFUSED)
	case <-time.After(30 * time.Second):
		t.Fatal("a refused connect did not close the connection")
	}
}

type enrollFDServer struct {
	BuiltinEventEngine

	eng     Engine
	running chan struct{} // closed on the first tick: the loops are registered
	once    sync.Once
	opened  chan any // the contexts OnOpen saw
}

// OnBoot runs before the loops are registered; the first tick after.
func (s *enrollFDServer) OnBoot(eng Engine) Action {
	s.eng = eng
	return None
}

func (s *enrollFDServer) OnTick() (time.Duration, Action) {
	s.once.Do(func() { close(s.running) })
	return time.Second, None
}

func (s *enrollFDServer) OnOpen(c Conn) ([]byte, Action) {
	s.opened <- c.Context()
	return nil, None
}

func (s *enrollFDServer) OnTraffic(c Conn) Action {
	b, _ := c.Next(-1)
	_, _ = c.Write(b)
	return None
}

// A server takes a connected socket by its descriptor: OnOpen runs on a
// loop with the context given, and the connection serves; a descriptor the
// poller refuses is closed and reported to the caller's failed, with no
// OnOpen (patch 13).
func TestEngineEnrollFD(t *testing.T) {
	s := &enrollFDServer{running: make(chan struct{}), opened: make(chan any, 2)}
	ran := make(chan error, 1)
	go func() {
		ran <- Run(s, "tcp://127.0.0.1:0", WithMulticore(true), WithLoadBalancing(LeastConnections), WithTicker(true))
	}()
	select {
	case <-s.running:
	case err := <-ran:
		t.Fatalf("engine: %v", err)
	}
	defer func() {
		require.NoError(t, s.eng.Stop(context.Background()))
		<-ran
	}()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close() //nolint:errcheck
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close() //nolint:errcheck
	accepted, err := ln.Accept()
	require.NoError(t, err)
	rc, err := accepted.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var fd int
	var dupErr error
	require.NoError(t, rc.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }))
	require.NoError(t, dupErr)
	require.NoError(t, accepted.Close())

	require.NoError(t, s.eng.EnrollFD(fd, "handed over", func(err error) { t.Errorf("failed: %v", err) }))
	select {
	case ctx := <-s.opened:
		assert.Equal(t, "handed over", ctx)
	case <-time.After(30 * time.Second):
		t.Fatal("OnOpen did not run")
	}
	_ = client.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = client.Write([]byte("hello"))
	require.NoError(t, err)
	echo := make([]byte, 5)
	_, err = io.ReadFull(client, echo)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(echo))

	// The poller refuses a descriptor that is not open (EBADF).
	failed := make(chan error, 1)
	require.NoError(t, s.eng.EnrollFD(-1, "refused", func(err error) { failed <- err }))
	select {
	case err := <-failed:
		assert.ErrorIs(t, err, unix.EBADF)
	case <-time.After(30 * time.Second):
		t.Fatal("a refused descriptor was not reported")
	}
	select {
	case ctx := <-s.opened:
		t.Fatalf("OnOpen ran for %v", ctx)
	default:
	}
}

// lineServer echoes whole lines and leaves a partial line unread, so that
// it waits in the connection's inbound buffer; each OnTraffic is reported.
type lineServer struct {
	BuiltinEventEngine

	running chan struct{}
	once    sync.Once
	eng     Engine
	traffic chan struct{}
}

func (s *lineServer) OnBoot(eng Engine) Action {
	s.eng = eng
	return None
}

func (s *lineServer) OnTick() (time.Duration, Action) {
	s.once.Do(func() { close(s.running) })
	return time.Second, None
}

func (s *lineServer) OnTraffic(c Conn) Action {
	defer func() { s.traffic <- struct{}{} }()
	for {
		buf, err := c.Peek(-1)
		if err != nil {
			return Close
		}
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return None // the rest of the line comes later
		}
		_, _ = c.Write(append([]byte("<"), buf[:i+1]...))
		_, _ = c.Discard(i + 1)
	}
}

// The unread part of a read belongs to its connection (patch 14): what one
// connection leaves unread survives another's traffic on the same loop, and
// the copy Peek makes of one connection's bytes is not pooled by another's
// Discard.
func TestLatestReadStaysWithItsConnection(t *testing.T) {
	s := &lineServer{running: make(chan struct{}), traffic: make(chan struct{}, 16)}
	ran := make(chan error, 1)
	go func() {
		ran <- Run(s, "tcp://127.0.0.1:0", WithNumEventLoop(1), WithTicker(true))
	}()
	select {
	case <-s.running:
	case err := <-ran:
		t.Fatalf("engine: %v", err)
	}
	defer func() {
		require.NoError(t, s.eng.Stop(context.Background()))
		<-ran
	}()
	var addr string
	for fd := range s.eng.eng.listeners {
		sa, err := unix.Getsockname(fd)
		require.NoError(t, err)
		addr = socket.SockaddrToTCPOrUnixAddr(sa).String()
	}
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, bufio.NewReader(c)
	}
	a, ra := dial()
	defer a.Close() //nolint:errcheck
	b, rb := dial()
	defer b.Close() //nolint:errcheck
	send := func(c net.Conn, p string) {
		_, err := c.Write([]byte(p))
		require.NoError(t, err)
		select {
		case <-s.traffic:
		case <-time.After(30 * time.Second):
			t.Fatal("no OnTraffic")
		}
	}
	expect := func(r *bufio.Reader, want string) {
		line, err := r.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, want, line)
	}

	send(a, "ab")  // left unread: a's inbound buffer
	send(a, "c")   // Peek copies "ab"+"c" for a, no Discard
	send(b, "x")   // b's own partial line
	send(b, "y\n") // b's Peek copy replaces a's; b's Discard pools b's
	expect(rb, "<xy\n")
	send(a, "d\ne") // a's line whole again; "e" left unread
	expect(ra, "<abcd\n")
	send(b, "z\n")
	expect(rb, "<z\n")
	send(a, "f\n")
	expect(ra, "<ef\n")
}
