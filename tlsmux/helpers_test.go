package tlsmux

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
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

// greeting is what echoHandler writes first. Reading it on the client also
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

// echoHandler reports each ConnInfo on infos (when not nil), writes
// greeting, then echoes until the connection ends.
func echoHandler(infos chan<- ConnInfo) func(*tls.Conn, ConnInfo) {
	return func(c *tls.Conn, info ConnInfo) {
		if infos != nil {
			infos <- info
		}
		if _, err := io.WriteString(c, greeting); err != nil {
			return
		}
		_, _ = io.Copy(c, c)
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
	return s, ln.Addr().String()
}

// clientTLS is a client config trusting the PKI, for server name localhost.
func clientTLS(pki *certs.PKI) *tls.Config {
	return &tls.Config{RootCAs: pki.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
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
