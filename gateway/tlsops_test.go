package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/mqttcodec"
	"github.com/dualgate/dualgate/tlsmux"
)

// writePair writes a certificate and key where the gateway reads them, the
// way an operator or a certificate agent replaces them: each through a
// temporary file renamed into place.
func writePair(t *testing.T, certFile, keyFile string, certPEM, keyPEM []byte) {
	t.Helper()
	for name, data := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		tmp := name + ".new"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, name); err != nil {
			t.Fatal(err)
		}
	}
}

// servedSerial is the serial number of the leaf certificate a TLS
// connection was served.
func servedSerial(t *testing.T, conn net.Conn) *big.Int {
	t.Helper()
	tc, ok := conn.(*tls.Conn)
	if !ok {
		t.Fatalf("%T is not a TLS connection", conn)
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		t.Fatal("no server certificate")
	}
	return st.PeerCertificates[0].SerialNumber
}

// A new certificate is taken by new handshakes while the connections made
// with the old one keep working; files that do not load leave the current
// certificate in place.
func TestCertReloadLive(t *testing.T) {
	pki, err := certs.NewTestPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	writePair(t, certFile, keyFile, pki.ServerPEM, pki.ServerKeyPEM)
	// About the server certificate only: no device identity.
	g := startGateway(t, func(c *Config) { c.TLSCert, c.TLSKey, c.SecureIdentity = certFile, keyFile, "none" })
	if g.CAFile() != "" {
		t.Fatalf("a development CA was made although a certificate was given: %s", g.CAFile())
	}
	tlsCfg := &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}

	oldConn := dialProxied(t, g.TLSAddr(), nil, tlsCfg)
	if got, want := servedSerial(t, oldConn), pki.Server.Leaf.SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("served serial %x, want the configured certificate's %x", got, want)
	}
	live, err := dialV5(t, oldConn, &paho.Connect{ClientID: "reload-live", KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	publish5(t, live, "reload/before", "1")

	certPEM, keyPEM, err := pki.IssueServer()
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, certFile, keyFile, certPEM, keyPEM)
	if err := g.ReloadCertificates(); err != nil {
		t.Fatalf("ReloadCertificates: %v", err)
	}

	publish5(t, live, "reload/after", "2")
	if v := connectedClient(t, g, "reload-live"); v.Mode != "tls" {
		t.Fatalf("live device after the reload: %+v", v)
	}
	newConn := dialProxied(t, g.TLSAddr(), nil, tlsCfg)
	newSerial := servedSerial(t, newConn)
	if newSerial.Cmp(pki.Server.Leaf.SerialNumber) == 0 {
		t.Fatal("a new connection still gets the old certificate")
	}
	fresh, err := dialV5(t, newConn, &paho.Connect{ClientID: "reload-new", KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	publish5(t, fresh, "reload/new", "3")
	publish5(t, live, "reload/still", "4")

	// A key that does not match: the reload fails, the new certificate stays.
	other, err := certs.NewTestPKI()
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, certFile, keyFile, certPEM, other.ServerKeyPEM)
	if err := g.ReloadCertificates(); err == nil {
		t.Fatal("a certificate with the wrong key was accepted")
	}
	third := dialProxied(t, g.TLSAddr(), nil, tlsCfg)
	if got := servedSerial(t, third); got.Cmp(newSerial) != 0 {
		t.Fatalf("after a failed reload the gateway serves %x, want %x", got, newSerial)
	}
	publish5(t, live, "reload/last", "5")
}

// dialResumable makes a TLS connection with a shared client session cache,
// speaks MQTT 5 on it (so the ticket the server sends after the handshake
// is read and kept), and returns whether the handshake resumed a session.
func dialResumable(t *testing.T, addr string, tlsCfg *tls.Config, id string) bool {
	t.Helper()
	conn := dialProxied(t, addr, nil, tlsCfg)
	c, err := dialV5(t, conn, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("%s: connect: %v", id, err)
	}
	publish5(t, c, "tickets/"+id, "x")
	resumed := conn.(*tls.Conn).ConnectionState().DidResume
	if err := c.Disconnect(&paho.Disconnect{ReasonCode: 0}); err != nil {
		t.Fatalf("%s: disconnect: %v", id, err)
	}
	return resumed
}

// A session ticket file shared by gateways, or kept across a restart, lets
// a device resume its TLS session instead of a full handshake.
func TestTicketResumption(t *testing.T) {
	t.Run("across a restart", func(t *testing.T) {
		data := t.TempDir()
		tickets := filepath.Join(t.TempDir(), "ticket-keys")
		cache := tls.NewLRUClientSessionCache(8)
		stop := func(g *Gateway) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := g.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		}

		first := startGateway(t, func(c *Config) { c.Data, c.TicketKeys = data, tickets })
		if _, err := os.Stat(tickets); err != nil {
			t.Fatalf("ticket key file not created: %v", err)
		}
		tlsCfg := clientTLS(t, first)
		tlsCfg.ClientSessionCache = cache
		if dialResumable(t, first.TLSAddr(), tlsCfg, "ticket-1") {
			t.Fatal("the first connection resumed a session")
		}
		stop(first)

		second := startGateway(t, func(c *Config) { c.Data, c.TicketKeys = data, tickets })
		if !dialResumable(t, second.TLSAddr(), tlsCfg, "ticket-2") {
			t.Fatal("no resumption after a restart with the same ticket key file")
		}
		if v := metric(t, second, `dualgate_tls_handshakes_total{result="resumed"}`); v != 1 {
			t.Fatalf("resumed handshakes %v, want 1", v)
		}
		stop(second)

		// Without the file, the keys are the process's own: no resumption.
		third := startGateway(t, func(c *Config) { c.Data = data })
		if dialResumable(t, third.TLSAddr(), tlsCfg, "ticket-3") {
			t.Fatal("a session resumed on a gateway without the ticket key file")
		}
	})

	t.Run("two gateways sharing the file", func(t *testing.T) {
		pki, err := certs.NewTestPKI()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
		writePair(t, certFile, keyFile, pki.ServerPEM, pki.ServerKeyPEM)
		tickets := filepath.Join(dir, "ticket-keys")
		// About tickets only: no device identity.
		shared := func(c *Config) {
			c.TLSCert, c.TLSKey, c.TicketKeys, c.SecureIdentity = certFile, keyFile, tickets, "none"
		}
		a, b := startGateway(t, shared), startGateway(t, shared)
		tlsCfg := &tls.Config{RootCAs: pki.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12,
			ClientSessionCache: tls.NewLRUClientSessionCache(8)}

		if dialResumable(t, a.TLSAddr(), tlsCfg, "shared-1") {
			t.Fatal("the first connection resumed a session")
		}
		if !dialResumable(t, b.TLSAddr(), tlsCfg, "shared-2") {
			t.Fatal("a ticket from gateway A did not resume on gateway B")
		}
		if !dialResumable(t, a.TLSAddr(), tlsCfg, "shared-3") {
			t.Fatal("a ticket from gateway B did not resume on gateway A")
		}
		for g, want := range map[*Gateway]float64{a: 1, b: 1} {
			if v := metric(t, g, `dualgate_tls_handshakes_total{result="resumed"}`); v != want {
				t.Fatalf("gateway %s: resumed handshakes %v, want %v", g.TLSAddr(), v, want)
			}
		}
	})
}

// Server-side sessions (the default) resume on the gateway that made
// them, once per session id, with a 16-byte ticket; a restart forgets
// them, so each device makes one full handshake, which works, and resumes
// after it again. TLS 1.2 resumes the same way.
func TestServerSessionsAcrossRestart(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			data := t.TempDir()
			first := startGateway(t, func(c *Config) { c.Data = data })
			tlsCfg := clientTLS(t, first)
			tlsCfg.MaxVersion = version
			cache := &oneSessionCache{}
			tlsCfg.ClientSessionCache = cache
			for i, want := range []bool{false, true, true} {
				if got := dialResumable(t, first.TLSAddr(), tlsCfg, "restart"); got != want {
					t.Fatalf("handshake %d: resumed %v, want %v", i, got, want)
				}
			}
			if n := len(cache.ticket()); n != tlsmux.SessionIDLen {
				t.Fatalf("ticket of %d bytes, want %d", n, tlsmux.SessionIDLen)
			}
			if v := metric(t, first, `dualgate_tls_sessions_lookups_total{result="hit"}`); v != 2 {
				t.Fatalf("session hits %v, want 2", v)
			}
			eventually(t, 5*time.Second, "one session held", func() bool { return metric(t, first, "dualgate_tls_sessions") == 1 })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := first.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}

			second := startGateway(t, func(c *Config) { c.Data = data })
			if dialResumable(t, second.TLSAddr(), tlsCfg, "restart") {
				t.Fatal("a session resumed after a restart")
			}
			if !dialResumable(t, second.TLSAddr(), tlsCfg, "restart") {
				t.Fatal("no resumption after the full handshake that followed the restart")
			}
			if v := metric(t, second, `dualgate_tls_sessions_lookups_total{result="miss"}`); v != 1 {
				t.Fatalf("session misses %v, want 1", v)
			}
		})
	}
}

// oneSessionCache is a client session cache for one server that holds one
// session and tells its ticket: the last one given, or with keepFirst the
// first, later ones ignored (a device presenting the same ticket again,
// or someone who copied it).
type oneSessionCache struct {
	keepFirst bool
	mu        sync.Mutex
	cs        *tls.ClientSessionState
}

func (k *oneSessionCache) Get(string) (*tls.ClientSessionState, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cs, k.cs != nil
}

func (k *oneSessionCache) Put(_ string, cs *tls.ClientSessionState) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.keepFirst || (k.cs == nil && cs != nil) {
		k.cs = cs
	}
}

// ticket is the held session's ticket, as the device sends it.
func (k *oneSessionCache) ticket() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cs == nil {
		return nil
	}
	ticket, _, _ := k.cs.ResumptionState()
	return ticket
}

// pinger is a plain device that keeps its session alive with PINGREQ and
// counts the answers it misses.
type pinger struct {
	r        *raw
	pings    atomic.Int32
	missed   atomic.Int32
	lastFail atomic.Value
}

func (p *pinger) run(stop <-chan struct{}, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		p.pings.Add(1)
		if _, err := p.r.conn.Write(mqttcodec.AppendPingreq(nil)); err != nil {
			p.missed.Add(1)
			p.lastFail.Store(err.Error())
			return
		}
		pkt, err := p.r.next(2 * time.Second)
		if err != nil || pkt.Type != mqttcodec.PINGRESP {
			p.missed.Add(1)
			p.lastFail.Store(fmt.Sprintf("packet %v, error %v", pkt, err))
			return
		}
	}
}

// A burst of TLS connections far beyond the handshake limit waits in the
// queue, is served two at a time and refused past the queue timeout,
// without disturbing the plain devices; every connection that reached the
// gateway is counted under exactly one outcome. Two connections that never
// send a ClientHello hold both slots for the handshake timeout first, so
// the queue overflows however fast the machine is.
func TestHandshakeLimiter(t *testing.T) {
	const (
		devices    = 50
		attempts   = 2000
		concurrent = 200
		slots      = 2
	)
	g := startGateway(t, func(c *Config) {
		c.MaxHandshakes = slots
		c.HandshakeQueue = 300 * time.Millisecond
		c.HandshakeTimeout = time.Second
	})

	pingers := make([]*pinger, devices)
	for i := range pingers {
		r := dialRaw(t, g.PlainAddr())
		r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 2, ClientID: []byte(fmt.Sprintf("idle-%02d", i))})
		pingers[i] = &pinger{r: r}
	}
	stop := make(chan struct{})
	var pw sync.WaitGroup
	for _, p := range pingers {
		pw.Add(1)
		go func() { defer pw.Done(); p.run(stop, time.Second) }()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		pw.Wait()
	}()

	var reached, served, failed atomic.Int64
	for range slots {
		dialProxied(t, g.TLSAddr(), clientHelloRecord(t), nil) // a ClientHello, then nothing
		reached.Add(1)
	}
	eventually(t, 5*time.Second, "both handshake slots held", func() bool {
		return g.tlsSrv.Stats().HandshakesInFlight == slots
	})

	// The limit holds all through the burst.
	var maxInFlight, maxQueued int
	sampled := make(chan struct{})
	burstDone := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			st := g.tlsSrv.Stats()
			maxInFlight, maxQueued = max(maxInFlight, st.HandshakesInFlight), max(maxQueued, st.HandshakesQueued)
			select {
			case <-burstDone:
				return
			case <-tick.C:
			}
		}
	}()

	tlsCfg := clientTLS(t, g)
	tlsCfg.CurvePreferences = []tls.CurveID{tls.X25519} // the cheapest full handshake for both sides
	sem := make(chan struct{}, concurrent)
	var bw sync.WaitGroup
	start := time.Now()
	for range attempts {
		sem <- struct{}{}
		bw.Add(1)
		go func() {
			defer bw.Done()
			defer func() { <-sem }()
			conn, err := net.DialTimeout("tcp", g.TLSAddr(), 3*time.Second)
			if err != nil {
				return
			}
			defer conn.Close()
			reached.Add(1)
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if err := tls.Client(conn, tlsCfg).Handshake(); err != nil {
				failed.Add(1)
				return
			}
			served.Add(1)
		}()
	}
	bw.Wait()
	burst := time.Since(start)
	close(burstDone)
	<-sampled
	// Keep pinging a little after the burst: nobody fell behind.
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	pw.Wait()

	var pings int32
	for i, p := range pingers {
		pings += p.pings.Load()
		if p.missed.Load() > 0 {
			t.Errorf("idle-%02d missed a PINGRESP: %v", i, p.lastFail.Load())
		}
	}
	if plain, _ := g.Registry().CountByMode(); plain != devices {
		t.Errorf("%d plain devices connected after the burst, want %d", plain, devices)
	}
	if n := g.Stats().KeepAliveTimeouts.Load(); n != 0 {
		t.Errorf("%d keepalive timeouts", n)
	}

	outcome := func(result string) float64 {
		return metric(t, g, `dualgate_tls_handshakes_total{result="`+result+`"}`)
	}
	var full, resumed, hsFailed, refused, helloTimeout, helloRefused float64
	eventually(t, 10*time.Second, "every TLS connection counted", func() bool {
		full, resumed, hsFailed, refused = outcome("full"), outcome("resumed"), outcome("failed"), outcome("refused")
		helloTimeout, helloRefused = outcome("hello_timeout"), outcome("hello_refused")
		return full+resumed+hsFailed+refused+helloTimeout+helloRefused == float64(reached.Load())
	})
	// Connections from one source past --tls-hello-per-source are refused
	// before they could queue: for this burst, both are overflow.
	refused += helloRefused
	t.Logf("%d TLS connects in %s, %d reached the gateway (2 of them stalled): full %v, resumed %v, failed %v, refused %v (%v per source), hello timeouts %v; client side: %d served, %d failed; at most %d in handshake, %d queued; %d pings answered",
		attempts, burst.Round(time.Millisecond), reached.Load(), full, resumed, hsFailed, refused, helloRefused, helloTimeout, served.Load(), failed.Load(), maxInFlight, maxQueued, pings)
	if reached.Load() != attempts+slots {
		t.Errorf("%d of %d connects reached the gateway", reached.Load()-slots, attempts)
	}
	if full+resumed != float64(served.Load()) {
		t.Errorf("server completed %v handshakes, clients %d", full+resumed, served.Load())
	}
	if hsFailed < slots {
		t.Errorf("failed handshakes %v: the silent connections were not timed out", hsFailed)
	}
	if refused == 0 || full == 0 {
		t.Errorf("full %v, refused %v: the burst should both be served and overflow the queue", full, refused)
	}
	if maxInFlight > slots || maxQueued == 0 {
		t.Errorf("at most %d handshakes ran at once (limit %d), at most %d waited", maxInFlight, slots, maxQueued)
	}
	if v := metric(t, g, "dualgate_tls_handshakes_in_flight"); v != 0 {
		t.Errorf("%v handshakes still in flight", v)
	}
	if v := metric(t, g, "dualgate_tls_handoff_panics_total"); v != 0 {
		t.Errorf("%v hand-overs to the event loops panicked", v)
	}
	if v := metric(t, g, "dualgate_tls_buffers_releasable"); v != 1 {
		t.Errorf("dualgate_tls_buffers_releasable %v on the Go that built this test, want 1", v)
	}
}

// --tls-sessions: server by default, tickets when asked for or when a
// ticket key file or rotation is given; server sessions with ticket keys,
// an unknown mode and a bound out of range are refused.
func TestTLSSessionsConfig(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		server bool
		want   string // in the error; empty: valid
	}{
		{args: nil, server: true},
		{args: []string{"--tls-sessions", "server", "--tls-session-cache-mb", "1"}, server: true},
		{args: []string{"--tls-sessions", "tickets"}},
		{args: []string{"--tls-ticket-keys", "/k"}},
		{args: []string{"--tls-ticket-rotate", "1h"}},
		{args: []string{"--tls-sessions", "tickets", "--tls-ticket-keys", "/k"}},
		{args: []string{"--tls-sessions", "server", "--tls-ticket-keys", "/k"}, want: "--tls-sessions tickets"},
		{args: []string{"--tls-sessions", "server", "--tls-ticket-rotate", "1h"}, want: "--tls-sessions tickets"},
		{args: []string{"--tls-sessions", "id"}, want: "--tls-sessions"},
		{args: []string{"--tls-session-cache-mb", "-1"}, want: "--tls-session-cache-mb"},
		{args: []string{"--tls-session-cache-mb", "100000"}, want: "--tls-session-cache-mb"},
	} {
		cfg, err := LoadConfig(tc.args, func(string) string { return "" })
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		case err == nil && cfg.serverSessions() != tc.server:
			t.Errorf("%q: server sessions %v, want %v", tc.args, cfg.serverSessions(), tc.server)
		}
	}
}
