package tlsmux

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in these tests.
const testTimeout = 20 * time.Second

// greeting is what echoHandoff writes first. Reading it on the client also
// processes a TLS 1.3 NewSessionTicket sent before it.
const greeting = "hi\n"

func newPKI(t *testing.T) *certs.PKI {
	t.Helper()
	pki, err := certs.NewTestPKI()
	if err != nil {
		t.Fatal(err)
	}
	return pki
}

// loopOpts tunes echoHandoff. The zero value echoes in 16 KiB socket reads.
type loopOpts struct {
	// infos receives each ConnInfo, on the handshake worker, when not nil.
	infos chan<- ConnInfo
	// chunk is the most bytes read from the socket at once (default 16 KiB):
	// 1 cuts every record into single bytes.
	chunk int
	// idle, when not nil, runs after each round of reads, before what the
	// round writes (the first round writes greeting): when the connection
	// waits for more, as an event loop's would.
	idle func(c *tls.Conn)
}

// echoHandoff is a Config.Handoff that serves the connections handed over
// the way dualgate's event loops do, with a goroutine per connection
// playing the loop. On the worker it reports the ConnInfo, detaches the
// Transport and clears the socket's read deadline; then the loop, round
// after round, lends the Transport what it read from the socket (nothing
// the first time: the Transport has what the handshake read ahead), reads
// the tls.Conn until ErrWouldBlock, takes the lent bytes back, and writes
// what it got (after greeting, the first time). It closes the socket when the peer
// closes or on an error. The test's cleanup closes the sockets still open
// and waits for their goroutines; call echoHandoff before startServer, so
// that the cleanup runs after the Server's Close (no hand-over after it).
func echoHandoff(t *testing.T, o loopOpts) func(*tls.Conn, *Transport, ConnInfo) {
	t.Helper()
	if o.chunk == 0 {
		o.chunk = 16 << 10
	}
	var (
		mu    sync.Mutex
		socks = make(map[net.Conn]struct{})
		wg    sync.WaitGroup
		ended bool
	)
	t.Cleanup(func() {
		mu.Lock()
		ended = true
		for sock := range socks {
			_ = sock.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return func(c *tls.Conn, tr *Transport, info ConnInfo) {
		if o.infos != nil {
			o.infos <- info
		}
		sock, err := tr.Detach()
		if err != nil {
			t.Errorf("detach: %v", err)
			if sock != nil {
				_ = sock.Close()
			}
			return
		}
		if !tr.Detached() {
			t.Error("Transport not detached after Detach")
		}
		_ = sock.SetReadDeadline(time.Time{}) // Detach left it in the past
		tr.SetWriter(sock)
		mu.Lock()
		if ended {
			mu.Unlock()
			t.Error("connection handed over after the test ended")
			_ = sock.Close()
			return
		}
		socks[sock] = struct{}{}
		wg.Add(1)
		mu.Unlock()
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(socks, sock)
				mu.Unlock()
				_ = sock.Close()
			}()
			serveLikeALoop(t, c, tr, sock, o)
		}()
	}
}

// serveLikeALoop is echoHandoff's loop for one connection. It returns when
// the connection ends.
func serveLikeALoop(t *testing.T, c *tls.Conn, tr *Transport, sock net.Conn, o loopOpts) {
	raw := make([]byte, o.chunk)
	plain := make([]byte, 64<<10)
	var lend []byte
	out := []byte(greeting)
	for {
		// What the Transport holds from Detach comes first, with nothing
		// lent: the loop's first turn.
		tr.Lend(lend)
		for {
			n, err := c.Read(plain)
			out = append(out, plain[:n]...)
			if errors.Is(err, ErrWouldBlock) {
				break
			}
			if err != nil {
				return // the peer's close_notify, or a bad record
			}
		}
		if left := tr.Unlend(); left != 0 {
			t.Errorf("%d lent bytes left unread", left)
			return
		}
		if o.idle != nil {
			o.idle(c)
		}
		if len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return
			}
			out = out[:0]
		}
		n, err := sock.Read(raw)
		if err != nil {
			tr.SetEOF()
			if _, err := c.Read(plain); err == nil {
				t.Error("read after EOF succeeded")
			}
			return
		}
		lend = raw[:n]
	}
}

// serverTLS is a plain server tls.Config with the PKI's server certificate.
func serverTLS(t *testing.T, pki *certs.PKI, opts TLSOptions) *tls.Config {
	t.Helper()
	if opts.Certificates == nil && opts.GetCertificate == nil {
		opts.Certificates = []tls.Certificate{pki.Server}
	}
	cfg, err := ServerTLSConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startServer starts a Server for cfg on 127.0.0.1:0. Cleanup closes it and
// checks that Serve returned ErrServerClosed.
func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	return startServerOn(t, cfg, nil)
}

// startServerOn is startServer with the listener wrapped by wrap (a PROXY
// header reader), when not nil.
func startServerOn(t *testing.T, cfg Config, wrap func(net.Listener) net.Listener) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if wrap != nil {
		ln = wrap(ln)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(testTimeout):
			t.Error("Serve did not return after Close")
		}
	})
	return s, addr
}

// clientTLS is a client config trusting the PKI, for server name localhost.
func clientTLS(pki *certs.PKI) *tls.Config {
	return &tls.Config{RootCAs: pki.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// resumingClientWithCert is clientTLS presenting a client certificate for
// id, with a session cache so that its second handshake resumes.
func resumingClientWithCert(t *testing.T, pki *certs.PKI, id string) *tls.Config {
	t.Helper()
	cert, err := pki.ClientCert(id)
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientTLS(pki)
	cfg.Certificates = []tls.Certificate{cert}
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	return cfg
}

// dialTLS connects, handshakes and reads the greeting.
func dialTLS(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: testTimeout}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	if err := c.Handshake(); err != nil {
		_ = raw.Close()
		return nil, err
	}
	buf := make([]byte, len(greeting))
	if _, err := io.ReadFull(c, buf); err != nil {
		_ = raw.Close()
		return nil, err
	}
	if string(buf) != greeting {
		_ = raw.Close()
		return nil, errors.New("unexpected greeting " + string(buf))
	}
	return c, nil
}

// echo checks that c echoes msg.
func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

// recv waits for a value on ch.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting on channel")
		panic("unreachable")
	}
}

// eventually polls cond every few milliseconds until it holds or the test
// timeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeAtomic replaces name with data through a rename, as a deployment
// tool would.
func writeAtomic(t *testing.T, name string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".new")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

// readEOF reads from c until an error and returns how long that took.
func readEOF(c net.Conn) (time.Duration, error) {
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(testTimeout))
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			return time.Since(start), err
		}
	}
}
