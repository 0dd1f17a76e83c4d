package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestFullThenResumedHandshake(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint16
		x25519  bool
	}{
		{name: "TLS 1.3", version: tls.VersionTLS13},
		{name: "TLS 1.3 X25519 only", version: tls.VersionTLS13, x25519: true},
		{name: "TLS 1.2", version: tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			infos := make(chan ConnInfo, 2)
			s, addr := startServer(t, Config{
				TLS:     serverTLS(t, pki, TLSOptions{X25519Only: tc.x25519}),
				Handoff: echoHandoff(t, loopOpts{infos: infos}),
			})
			ccfg := clientTLS(pki)
			ccfg.MaxVersion = tc.version
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

			for i, wantResumed := range []bool{false, true} {
				c, err := dialTLS(t, addr, ccfg)
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				info := recv(t, infos)
				if info.Resumed != wantResumed || c.ConnectionState().DidResume != wantResumed {
					t.Errorf("dial %d: server Resumed %v, client DidResume %v; want %v",
						i, info.Resumed, c.ConnectionState().DidResume, wantResumed)
				}
				if info.Version != tc.version {
					t.Errorf("dial %d: Version %s, want %s", i, tls.VersionName(info.Version), tls.VersionName(tc.version))
				}
				if info.Remote.String() != c.LocalAddr().String() {
					t.Errorf("dial %d: Remote %v, want the client's address %v", i, info.Remote, c.LocalAddr())
				}
				if info.HandshakeDuration <= 0 || info.HandshakeDuration > testTimeout {
					t.Errorf("dial %d: HandshakeDuration %v", i, info.HandshakeDuration)
				}
				if info.PeerIdentity != nil {
					t.Errorf("dial %d: PeerIdentity %q without a client certificate", i, info.PeerIdentity)
				}
				echo(t, c, "ping")
				_ = c.Close()
			}
			// Counted before the hand-over, so before the ConnInfo came.
			st := s.Stats()
			if st.Accepted != 2 || st.HandshakesFull != 1 || st.HandshakesResumed != 1 || st.HandshakesFailed != 0 || st.HandshakesRefused != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// Behind a listener that decodes PROXY headers, ConnInfo.Remote is the
// header's source address, and what the header reader read ahead of the
// handshake's needs (a message written right after the client's Finished)
// is served after the hand-over.
func TestProxyHeaderRemoteAddress(t *testing.T) {
	pki := newPKI(t)
	infos := make(chan ConnInfo, 1)
	_, addr := startServerOn(t, Config{
		TLS:     serverTLS(t, pki, TLSOptions{}),
		Handoff: echoHandoff(t, loopOpts{infos: infos}),
	}, func(ln net.Listener) net.Listener { return &proxyproto.Listener{Listener: ln} })

	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = raw.Close() }()
	if _, err := io.WriteString(raw, "PROXY TCP4 203.0.113.7 127.0.0.1 40001 8883\r\n"); err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, clientTLS(pki))
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "right after"); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, infos).Remote.String(); got != "203.0.113.7:40001" {
		t.Fatalf("Remote %s, want the PROXY header's 203.0.113.7:40001", got)
	}
	buf := make([]byte, len(greeting+"right after"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != greeting+"right after" {
		t.Fatalf("read %q, %v", buf, err)
	}
	echo(t, c, "and later")
}

func TestX25519OnlyKeyExchange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		x25519 bool
		want   tls.CurveID
	}{
		{name: "default is hybrid post-quantum", want: tls.X25519MLKEM768},
		{name: "X25519 only", x25519: true, want: tls.X25519},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			_, addr := startServer(t, Config{
				TLS:     serverTLS(t, pki, TLSOptions{X25519Only: tc.x25519}),
				Handoff: echoHandoff(t, loopOpts{}),
			})
			c, err := dialTLS(t, addr, clientTLS(pki))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			if got := c.ConnectionState().CurveID; got != tc.want {
				t.Fatalf("key exchange %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMutualTLSIdentity(t *testing.T) {
	pki := newPKI(t)
	other := newPKI(t)
	caFile := t.TempDir() + "/clients-ca.pem"
	writeAtomic(t, caFile, pki.CAPEM)

	for _, tc := range []struct {
		name     string
		require  bool
		cert     func() (tls.Certificate, error) // nil: no client certificate
		wantIDs  []string
		wantFail bool
	}{
		{
			name:    "required and given",
			require: true,
			cert:    func() (tls.Certificate, error) { return pki.ClientCert("car-7") },
			wantIDs: []string{"car-7"},
		},
		{
			name:    "optional and given",
			cert:    func() (tls.Certificate, error) { return pki.ClientCert("meter/3") },
			wantIDs: []string{"meter/3"},
		},
		{name: "optional and not given"},
		{name: "required and not given", require: true, wantFail: true},
		{
			name:     "optional, from another CA",
			cert:     func() (tls.Certificate, error) { return other.ClientCert("car-7") },
			wantFail: true,
		},
		{
			name:     "required, from another CA",
			require:  true,
			cert:     func() (tls.Certificate, error) { return other.ClientCert("car-7") },
			wantFail: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			infos := make(chan ConnInfo, 2)
			s, addr := startServer(t, Config{
				TLS:     serverTLS(t, pki, TLSOptions{ClientCAFile: caFile, RequireClientCert: tc.require}),
				Handoff: echoHandoff(t, loopOpts{infos: infos}),
			})
			ccfg := clientTLS(pki)
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			if tc.cert != nil {
				cert, err := tc.cert()
				if err != nil {
					t.Fatal(err)
				}
				// Sent whatever CAs the server names, as a misconfigured
				// or hostile device would.
				ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return &cert, nil
				}
			}
			if tc.wantFail {
				if c, err := dialTLS(t, addr, ccfg); err == nil {
					_ = c.Close()
					t.Fatal("connection accepted")
				}
				eventually(t, "the failure to be counted", func() bool { return s.Stats().HandshakesFailed == 1 })
				if st := s.Stats(); st.HandshakesFull+st.HandshakesResumed != 0 {
					t.Fatalf("stats %+v", st)
				}
				return
			}
			// The identity is there on the full and on the resumed handshake.
			for _, resumed := range []bool{false, true} {
				c, err := dialTLS(t, addr, ccfg)
				if err != nil {
					t.Fatal(err)
				}
				info := recv(t, infos)
				_ = c.Close()
				if info.Resumed != resumed {
					t.Errorf("Resumed %v, want %v", info.Resumed, resumed)
				}
				if strings.Join(info.PeerIdentity, ",") != strings.Join(tc.wantIDs, ",") {
					t.Errorf("PeerIdentity %q, want %q", info.PeerIdentity, tc.wantIDs)
				}
			}
		})
	}
}

func TestHandshakeTimeoutClosesSilentClient(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name        string
		send        []byte
		wantTimeout bool // closed after about timeout, not at once
		hello       bool // closed by HelloTimeout (no worker taken), not HandshakeTimeout
	}{
		{name: "silent", wantTimeout: true, hello: true},
		{name: "half a record header", send: []byte{0x16, 0x03}, wantTimeout: true, hello: true},
		{name: "a ClientHello, then silence", send: clientHello(t), wantTimeout: true},
		{name: "plain MQTT CONNECT", send: []byte{0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			s, addr := startServer(t, Config{
				TLS:              serverTLS(t, pki, TLSOptions{}),
				HandshakeTimeout: timeout,
				HelloTimeout:     timeout,
				Handoff: func(_ *tls.Conn, tr *Transport, _ ConnInfo) {
					t.Error("connection handed over")
					_ = tr.Close()
				},
			})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			took, err := readEOF(c)
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("read error %v", err)
			}
			if tc.wantTimeout && (took < timeout/2 || took > testTimeout/2) {
				t.Fatalf("closed after %v, want about %v", took, timeout)
			}
			if !tc.wantTimeout && took > timeout {
				t.Fatalf("closed after %v, want at once", took)
			}
			if tc.hello {
				eventually(t, "the hello timeout to be counted", func() bool { return s.Stats().HelloTimeouts == 1 })
			} else {
				eventually(t, "the failure to be counted", func() bool { return s.Stats().HandshakesFailed == 1 })
			}
			if st := s.Stats(); st.HandshakesInFlight != 0 || st.HandshakesFull != 0 || st.HandshakesRefused != 0 || st.HelloWaiting != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestQueueTimeoutRefusesOnTime(t *testing.T) {
	const queueTimeout = 150 * time.Millisecond
	pki := newPKI(t)
	s, addr := startServer(t, Config{
		TLS:                   serverTLS(t, pki, TLSOptions{}),
		MaxHandshakes:         1,
		HandshakeTimeout:      testTimeout,
		HandshakeQueueTimeout: queueTimeout,
		Handoff:               echoHandoff(t, loopOpts{}),
	})
	// A client that sends its ClientHello and then nothing holds the
	// only worker.
	holder := dialHello(t, addr)
	defer func() { _ = holder.Close() }()
	eventually(t, "the worker to take the first connection", func() bool { return s.Stats().HandshakesInFlight == 1 })

	waiter := dialHello(t, addr)
	defer func() { _ = waiter.Close() }()
	took, err := readEOF(waiter)
	if err == nil {
		t.Fatal("queued connection not closed")
	}
	// Closed by the reaper, not when the worker frees up (testTimeout).
	if took < queueTimeout/2 || took > testTimeout/4 {
		t.Fatalf("queued connection closed after %v, want about %v", took, queueTimeout)
	}
	st := s.Stats()
	if st.HandshakesRefused != 1 || st.HandshakesInFlight != 1 || st.HandshakesQueued != 0 || st.Accepted != 2 {
		t.Fatalf("stats %+v", st)
	}

	// Once the worker is free, a new client is served.
	_ = holder.Close()
	eventually(t, "the held handshake to fail", func() bool { return s.Stats().HandshakesFailed == 1 })
	c, err := dialTLS(t, addr, clientTLS(pki))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
}

func TestHandshakeLimiterUnderBurst(t *testing.T) {
	const (
		clients = 200
		workers = 2
	)
	for _, tc := range []struct {
		name         string
		queueTimeout time.Duration
		wantRefused  bool // some refused (else: all served)
	}{
		{name: "queue waits long enough", queueTimeout: testTimeout},
		{name: "queue timeout refuses", queueTimeout: 50 * time.Millisecond, wantRefused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			var running, peak atomic.Int32
			handed := make(chan ConnInfo, clients)
			scfg := serverTLS(t, pki, TLSOptions{X25519Only: true})
			// GetConfigForClient runs inside each handshake: it measures
			// how many run at once, and holds each a little.
			scfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
				n := running.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(2 * time.Millisecond)
				running.Add(-1)
				return nil, nil
			}
			s, addr := startServer(t, Config{
				TLS:                   scfg,
				MaxHandshakes:         workers,
				HandshakeQueueTimeout: tc.queueTimeout,
				HandshakeTimeout:      testTimeout,
				MaxHelloPerSource:     -1, // every client shares 127.0.0.1
				Handoff:               echoHandoff(t, loopOpts{infos: handed}),
			})
			var (
				wg             sync.WaitGroup
				served, failed atomic.Int32
				start          = make(chan struct{})
			)
			for range clients {
				wg.Go(func() {
					<-start
					c, err := dialTLS(t, addr, clientTLS(pki))
					if err != nil {
						failed.Add(1)
						return
					}
					served.Add(1)
					_ = c.Close()
				})
			}
			close(start)
			wg.Wait()
			eventually(t, "every connection to be settled", func() bool {
				st := s.Stats()
				return st.Accepted == clients && st.HandshakesQueued == 0 && st.HandshakesInFlight == 0
			})

			st := s.Stats()
			t.Logf("served %d, refused %d, peak concurrent handshakes %d", served.Load(), st.HandshakesRefused, peak.Load())
			if p := peak.Load(); p < 1 || p > workers {
				t.Errorf("peak concurrent handshakes %d, want 1..%d", p, workers)
			}
			if served.Load()+failed.Load() != clients {
				t.Errorf("served %d + failed %d != %d", served.Load(), failed.Load(), clients)
			}
			if got := st.HandshakesFull + st.HandshakesResumed; got != uint64(served.Load()) || got != uint64(len(handed)) {
				t.Errorf("handshakes %d, clients served %d, connections handed over %d", got, served.Load(), len(handed))
			}
			if st.HandshakesRefused != uint64(failed.Load()) || st.HandshakesFailed != 0 {
				t.Errorf("refused %d, failed %d; clients refused %d", st.HandshakesRefused, st.HandshakesFailed, failed.Load())
			}
			if st.Accepted != st.HandshakesFull+st.HandshakesResumed+st.HandshakesFailed+st.HandshakesRefused {
				t.Errorf("inconsistent stats %+v", st)
			}
			if tc.wantRefused && (failed.Load() == 0 || served.Load() == 0) {
				t.Errorf("want some served and some refused: served %d, refused %d", served.Load(), failed.Load())
			}
			if !tc.wantRefused && failed.Load() != 0 {
				t.Errorf("%d refused, want all served", failed.Load())
			}
			// The workers end with the burst.
			eventually(t, "the handshake workers to end", func() bool { return s.Stats().HandshakeWorkers == 0 })
		})
	}
}

// TestWorkersEndWhenIdle: a worker runs only while connections are queued,
// so a server at rest keeps no stack grown by handshakes, and a new
// connection starts one again.
func TestWorkersEndWhenIdle(t *testing.T) {
	pki := newPKI(t)
	s, addr := startServer(t, Config{
		TLS:              serverTLS(t, pki, TLSOptions{}),
		MaxHandshakes:    4,
		HandshakeTimeout: testTimeout,
		Handoff:          echoHandoff(t, loopOpts{}),
	})
	if w := s.Stats().HandshakeWorkers; w != 0 {
		t.Fatalf("%d workers before any connection, want 0", w)
	}
	var conns []*tls.Conn
	for i := range 3 {
		c, err := dialTLS(t, addr, clientTLS(pki))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns = append(conns, c)
		eventually(t, "the handshake workers to end", func() bool { return s.Stats().HandshakeWorkers == 0 })
	}
	for i, c := range conns {
		echo(t, c, "still served "+strconv.Itoa(i))
	}
	st := s.Stats()
	if st.HandshakesFull != 3 || st.HandshakesInFlight != 0 {
		t.Errorf("stats %+v, want 3 full handshakes and none in flight", st)
	}
}

// Shutdown waits for a Handoff still running on its worker, up to its
// context, and leaves the connections handed over to their owner: they are
// served after Shutdown and Close.
func TestShutdownWaitsForHandoff(t *testing.T) {
	pki := newPKI(t)
	var (
		release     = make(chan struct{})
		releaseOnce sync.Once
		started     = make(chan struct{}, 1)
	)
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	serve := echoHandoff(t, loopOpts{})
	s, addr := startServer(t, Config{
		TLS: serverTLS(t, pki, TLSOptions{}),
		Handoff: func(c *tls.Conn, tr *Transport, info ConnInfo) {
			started <- struct{}{}
			<-release
			serve(c, tr, info)
		},
	})
	t.Cleanup(unblock) // before the Server's Close, which waits for Handoff
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, clientTLS(pki))
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	recv(t, started)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a Handoff running = %v, want DeadlineExceeded", err)
	}
	// No new connections once shutting down.
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
	// The connection being handed over is handed over all the same.
	unblock()
	buf := make([]byte, len(greeting))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != greeting {
		t.Fatalf("read after Shutdown: %q, %v", buf, err)
	}
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		err := s.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Shutdown after Handoff returned: %v", err)
		}
	}
	echo(t, c, "served after Shutdown")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	echo(t, c, "served after Close")
	if st := s.Stats(); st.HandshakesFull != 1 || st.HandshakeWorkers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Close closes the connections that are the Server's: waiting for their
// first record, queued, in a handshake; not those handed over.
func TestCloseClosesWhatIsTheServers(t *testing.T) {
	pki := newPKI(t)
	s, err := New(Config{
		TLS:                   serverTLS(t, pki, TLSOptions{}),
		MaxHandshakes:         1,
		HandshakeTimeout:      testTimeout,
		HandshakeQueueTimeout: testTimeout,
		Handoff:               echoHandoff(t, loopOpts{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	active, err := dialTLS(t, addr, clientTLS(pki))
	if err != nil {
		t.Fatal(err)
	}
	inHandshake := dialHello(t, addr)
	eventually(t, "the stalled client to hold the worker", func() bool { return s.Stats().HandshakesInFlight == 1 })
	queued := dialHello(t, addr)
	eventually(t, "a connection to be queued", func() bool { return s.Stats().HandshakesQueued == 1 })
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a connection to wait for its first record", func() bool { return s.Stats().HelloWaiting == 1 })

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := recv(t, served); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v, want ErrServerClosed", err)
	}
	for name, c := range map[string]net.Conn{"in handshake": inHandshake, "queued": queued, "silent": silent} {
		if _, err := readEOF(c); err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s connection: read error %v, want closed", name, err)
		}
		_ = c.Close()
	}
	echo(t, active, "handed over, so not closed by Close")
	_ = active.Close()
	st := s.Stats()
	if st.HandshakesInFlight != 0 || st.HandshakesQueued != 0 ||
		st.HandshakesFull != 1 || st.HandshakesFailed != 1 || st.HandshakesRefused != 2 || st.Accepted != 4 || st.HelloWaiting != 0 {
		t.Fatalf("stats %+v", st)
	}
	for i := range 2 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+2, err)
		}
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown after Close: %v", err)
	}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln2); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close = %v", err)
	}
	if _, err := ln2.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve after Close left its listener open (Accept err %v)", err)
	}
}

func TestCloseWithoutServe(t *testing.T) {
	pki := newPKI(t)
	s, err := New(Config{TLS: serverTLS(t, pki, TLSOptions{}), Handoff: echoHandoff(t, loopOpts{})})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestServeReturnsWhenListenerClosedElsewhere(t *testing.T) {
	pki := newPKI(t)
	s, err := New(Config{TLS: serverTLS(t, pki, TLSOptions{}), Handoff: echoHandoff(t, loopOpts{})})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	eventually(t, "Serve to register its listener", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.listeners) == 1
	})
	_ = ln.Close()
	if err := recv(t, served); !errors.Is(err, net.ErrClosed) || errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v, want net.ErrClosed", err)
	}
}

// flakyListener fails its first n Accept calls.
type flakyListener struct {
	net.Listener
	n atomic.Int32
}

type acceptError struct{}

func (acceptError) Error() string   { return "accept: too many open files" }
func (acceptError) Timeout() bool   { return false }
func (acceptError) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, acceptError{}
	}
	return l.Listener.Accept()
}

func TestAcceptErrorsAreRetried(t *testing.T) {
	pki := newPKI(t)
	core, logs := observer.New(zap.WarnLevel)
	s, err := New(Config{TLS: serverTLS(t, pki, TLSOptions{}), Handoff: echoHandoff(t, loopOpts{}), Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner}
	ln.n.Store(4)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	c, err := dialTLS(t, inner.Addr().String(), clientTLS(pki))
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, "after errors")
	_ = c.Close()
	if st := s.Stats(); st.AcceptErrors != 4 || st.HandshakesFull != 1 {
		t.Fatalf("stats %+v", st)
	}
	entries := logs.FilterMessage("tlsmux: accept failed, retrying").All()
	if len(entries) != 4 {
		t.Fatalf("%d accept warnings, want 4", len(entries))
	}
	var last time.Duration
	for i, e := range entries {
		d, ok := e.ContextMap()["backoff"].(time.Duration)
		if !ok || d < last || d < acceptBackoffMin || d > acceptBackoffMax {
			t.Fatalf("warning %d: backoff %v after %v", i, e.ContextMap()["backoff"], last)
		}
		last = d
	}
	if last != 8*acceptBackoffMin {
		t.Fatalf("fourth backoff %v, want %v", last, 8*acceptBackoffMin)
	}

	// Close wakes an accept loop sleeping in backoff.
	ln.n.Store(1 << 20)
	pending, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pending.Close() }()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, served); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v, want ErrServerClosed", err)
	}
}

// A panic in Handoff, before or after it detached the Transport, is
// recovered, logged and counted, and closes that connection only.
func TestHandoffPanicIsContained(t *testing.T) {
	for _, detach := range []bool{false, true} {
		t.Run(fmt.Sprintf("detached %v", detach), func(t *testing.T) {
			pki := newPKI(t)
			core, logs := observer.New(zap.ErrorLevel)
			var calls atomic.Int32
			serve := echoHandoff(t, loopOpts{})
			s, addr := startServer(t, Config{
				TLS:    serverTLS(t, pki, TLSOptions{}),
				Logger: zap.New(core),
				Handoff: func(c *tls.Conn, tr *Transport, info ConnInfo) {
					if calls.Add(1) > 1 {
						serve(c, tr, info)
						return
					}
					if detach {
						if _, err := tr.Detach(); err != nil {
							t.Errorf("detach: %v", err)
						}
					}
					panic("session bug")
				},
			})
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c := tls.Client(raw, clientTLS(pki))
			if _, err := readEOF(c); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection of the panicking Handoff: read error %v, want closed", err)
			}
			_ = c.Close()
			eventually(t, "the panic to be counted", func() bool { return s.Stats().HandoffPanics == 1 })

			c2, err := dialTLS(t, addr, clientTLS(pki))
			if err != nil {
				t.Fatalf("server no longer serves after a panic: %v", err)
			}
			echo(t, c2, "still here")
			_ = c2.Close()
			if n := logs.FilterMessage("tlsmux: handoff panic; connection closed").Len(); n != 1 {
				t.Fatalf("%d panic log entries, want 1", n)
			}
		})
	}
}

func TestNewChecksConfig(t *testing.T) {
	pki := newPKI(t)
	good := serverTLS(t, pki, TLSOptions{})
	h := echoHandoff(t, loopOpts{})
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no TLS", cfg: Config{Handoff: h}, wantErr: "TLS is required"},
		{name: "no certificate", cfg: Config{TLS: &tls.Config{}, Handoff: h}, wantErr: "no certificate"},
		{name: "no Handoff", cfg: Config{TLS: good}, wantErr: "Handoff is required"},
		{name: "negative handshake timeout", cfg: Config{TLS: good, Handoff: h, HandshakeTimeout: -1}, wantErr: "HandshakeTimeout"},
		{name: "negative queue timeout", cfg: Config{TLS: good, Handoff: h, HandshakeQueueTimeout: -1}, wantErr: "HandshakeQueueTimeout"},
		{name: "negative workers", cfg: Config{TLS: good, Handoff: h, MaxHandshakes: -1}, wantErr: "MaxHandshakes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New err = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}

	cfg := Config{TLS: good, Handoff: h}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if cfg.HandshakeTimeout != 0 || cfg.Logger != nil {
		t.Fatal("New changed the caller's Config")
	}
	if s.cfg.HandshakeTimeout != DefaultHandshakeTimeout || s.cfg.HandshakeQueueTimeout != DefaultHandshakeQueueTimeout ||
		s.cfg.MaxHandshakes < 4 || s.cfg.Logger == nil || s.cfg.TLS != good {
		t.Fatalf("defaults not filled in: %+v", s.cfg)
	}
}
