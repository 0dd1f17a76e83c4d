package bench

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/internal/testutil"
	"github.com/dualgate/dualgate/mqttcodec"
)

// eventually polls cond every 20 ms until it holds or timeout expires.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// runPool connects n clients with cfg and returns the pool; the test closes
// it.
func runPool(t *testing.T, cfg ClientConfig, n int) *Pool {
	t.Helper()
	p, err := NewPool(cfg, zap.NewNop())
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Connect(ctx, 0, n); err != nil {
		_ = p.Close(context.Background())
		t.Fatalf("Connect: %v", err)
	}
	return p
}

func closePool(t *testing.T, p *Pool) PoolStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	return p.Stats()
}

// steadyFDs returns the open descriptors of pid once two readings 100 ms
// apart agree (the server may still hold a probe connection).
func steadyFDs(t *testing.T, pid int) int {
	t.Helper()
	last := -1
	for range 50 {
		n, err := ProcFS{}.CountFDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if n == last {
			return n
		}
		last = n
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("descriptors of pid %d never steady", pid)
	return 0
}

func TestPoolPlainAgainstMosquitto(t *testing.T) {
	addr, srv := startMosquitto(t, nil)
	proc := ProcFS{}
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		t.Run("MQTT "+mqttName(int(version)), func(t *testing.T) {
			fdsBefore := steadyFDs(t, srv.PID())
			const n = 50
			p := runPool(t, ClientConfig{
				Addr:           addr,
				MQTTVersion:    version,
				KeepAlive:      2 * time.Second,
				ClientIDPrefix: "plain-v" + string('0'+version) + "-",
			}, n)
			s := p.Stats()
			if s.Attempted != n || s.Connected != n || s.Live != n || s.Failed != 0 {
				_ = p.Close(context.Background())
				t.Fatalf("after Connect: %+v", s)
			}
			// Mosquitto holds one descriptor per client.
			eventually(t, 5*time.Second, "mosquitto to hold the connections", func() bool {
				fds, err := proc.CountFDs(srv.PID())
				return err == nil && fds >= fdsBefore+n
			})
			// Keepalive 2 s: every connection pings and gets an answer.
			eventually(t, 10*time.Second, "a PINGRESP on every connection", func() bool {
				return p.Stats().Pongs >= n
			})
			_, connack, handshake := p.Histograms()
			if got := connack.Summary(); got.Count != n || got.Max <= 0 || got.P50 > got.Max {
				t.Fatalf("CONNACK latency summary = %+v", got)
			}
			if handshake.Count() != 0 {
				t.Fatalf("plain connections recorded %d TLS handshakes", handshake.Count())
			}
			s = closePool(t, p)
			if s.Live != 0 || s.Dropped != 0 || s.Connected != n {
				t.Fatalf("after Close: %+v", s)
			}
			if s.ConnectRate() <= 0 || s.RampDuration() <= 0 {
				t.Fatalf("rate %v over %v", s.ConnectRate(), s.RampDuration())
			}
			eventually(t, 5*time.Second, "mosquitto to release the connections", func() bool {
				fds, err := proc.CountFDs(srv.PID())
				return err == nil && fds <= fdsBefore
			})
		})
	}
}

func TestPoolTLSAgainstMosquitto(t *testing.T) {
	files := testCerts(t)
	addr, _ := startMosquitto(t, files)
	tests := []struct {
		name       string
		spec       TLSSpec
		wantFailed string // empty: every connection succeeds
		resumes    bool
	}{
		{name: "verified with CA, resumption", spec: TLSSpec{CAFile: files.caFile, Resume: true}, resumes: true},
		{name: "TLS 1.2 insecure", spec: TLSSpec{Insecure: true, Version: "1.2"}},
		{name: "unknown CA", spec: TLSSpec{}, wantFailed: ReasonTLSCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := tt.spec.Config(addr)
			if err != nil {
				t.Fatal(err)
			}
			const n = 10
			p := runPool(t, ClientConfig{
				Addr:      addr,
				KeepAlive: 30 * time.Second,
				TLS:       tc,
				// One at a time: the first connection's ticket is there
				// for the next ones to resume with.
				InFlight: 1,
				Rate:     100,
			}, n)
			s := closePool(t, p)
			_, connack, handshake := p.Histograms()
			if tt.wantFailed != "" {
				if s.Failed != n || s.Failures[tt.wantFailed] != n {
					t.Fatalf("stats = %+v, want %d failures %q", s, n, tt.wantFailed)
				}
				return
			}
			if s.Connected != n || s.Failed != 0 || s.Dropped != 0 {
				t.Fatalf("stats = %+v", s)
			}
			if handshake.Count() != n || connack.Count() != n {
				t.Fatalf("handshakes %d, CONNACKs %d, want %d", handshake.Count(), connack.Count(), n)
			}
			if tt.resumes && s.Resumed == 0 {
				t.Fatalf("no handshake resumed: %+v", s)
			}
			if !tt.resumes && s.Resumed != 0 {
				t.Fatalf("%d handshakes resumed without a session cache", s.Resumed)
			}
		})
	}
}

func TestPoolConnectFailures(t *testing.T) {
	// A port with nothing behind it.
	closedAddr := net.JoinHostPort("127.0.0.1", itoa(testutil.FreePort(t)))
	tests := []struct {
		name    string
		mode    fakeBehaviour
		version byte
		addr    string
		reason  string
	}{
		{name: "3.1.1 refused by CONNACK", mode: fakeRefuse, version: mqttcodec.V311, reason: connackReason(mqttcodec.V311, 5)},
		{name: "5 refused by CONNACK", mode: fakeRefuse, version: mqttcodec.V5, reason: connackReason(mqttcodec.V5, mqttcodec.NotAuthorized)},
		{name: "no CONNACK", mode: fakeSilent, version: mqttcodec.V311, reason: ReasonConnackTime},
		{name: "nothing listening", addr: closedAddr, version: mqttcodec.V311, reason: ReasonRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr
			if addr == "" {
				addr = newFakeServer(t, tt.mode).addr()
			}
			const n = 5
			p := runPool(t, ClientConfig{Addr: addr, MQTTVersion: tt.version, ConnectTimeout: 400 * time.Millisecond}, n)
			s := closePool(t, p)
			if s.Failed != n || s.Connected != 0 || s.Failures[tt.reason] != n {
				t.Fatalf("stats = %+v, want %d failures %q", s, n, tt.reason)
			}
		})
	}
}

func TestPoolServerDisconnectIsADrop(t *testing.T) {
	srv := newFakeServer(t, fakeDisconnect9C)
	const n = 4
	p := runPool(t, ClientConfig{Addr: srv.addr(), MQTTVersion: mqttcodec.V5}, n)
	eventually(t, 5*time.Second, "every connection dropped", func() bool { return p.Stats().Dropped == n })
	s := closePool(t, p)
	want := disconnectReason(mqttcodec.UseAnotherServer)
	if s.Connected != n || s.Live != 0 || s.Drops[want] != n {
		t.Fatalf("stats = %+v, want %d drops %q", s, n, want)
	}
}

func TestPoolAcknowledgesQoS1Publish(t *testing.T) {
	srv := newFakeServer(t, fakePublishQoS1)
	const n = 3
	p := runPool(t, ClientConfig{Addr: srv.addr()}, n)
	eventually(t, 5*time.Second, "a PUBACK per connection", func() bool {
		_, acks, _ := srv.snapshot()
		return acks == n
	})
	s := closePool(t, p)
	if s.Publishes != n || s.Dropped != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestPoolFollowsServerKeepAlive(t *testing.T) {
	srv := newFakeServer(t, fakeServerKeepAlive)
	const n = 3
	// No keepalive of its own: the CONNACK's 1 s makes the client ping.
	p := runPool(t, ClientConfig{Addr: srv.addr(), MQTTVersion: mqttcodec.V5}, n)
	eventually(t, 5*time.Second, "a PINGREQ per connection", func() bool {
		_, _, pings := srv.snapshot()
		return pings >= n
	})
	s := closePool(t, p)
	if s.PingsSent < n || s.Dropped != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestPoolSourceAddresses(t *testing.T) {
	srv := newFakeServer(t, fakeAccept)
	src := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
	const n = 6
	p := runPool(t, ClientConfig{Addr: srv.addr(), SourceAddrs: src}, n)
	s := closePool(t, p)
	if s.Connected != n {
		t.Fatalf("stats = %+v", s)
	}
	peers, _, _ := srv.snapshot()
	count := map[string]int{}
	for _, a := range peers {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		count[host]++
	}
	if count["127.0.0.2"] != n/2 || count["127.0.0.3"] != n/2 {
		t.Fatalf("connections by source address = %v, want %d each on 127.0.0.2 and 127.0.0.3", count, n/2)
	}
}

func TestPoolInterruptedConnect(t *testing.T) {
	srv := newFakeServer(t, fakeAccept)
	p, err := NewPool(ClientConfig{Addr: srv.addr(), Rate: 20}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = p.Connect(ctx, 0, 1000)
	if err == nil {
		t.Fatal("Connect of 1000 at 20/s in 300 ms: want an error")
	}
	s := closePool(t, p)
	if s.Attempted == 0 || s.Attempted >= 1000 || s.Connected+s.Failed != s.Attempted {
		t.Fatalf("stats = %+v", s)
	}
}

func TestClientConfigDefaults(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ClientConfig
		wantErr bool
		check   func(ClientConfig) bool
	}{
		{name: "no address", cfg: ClientConfig{}, wantErr: true},
		{name: "MQTT 3", cfg: ClientConfig{Addr: "a:1", MQTTVersion: 3}, wantErr: true},
		{name: "keepalive too long", cfg: ClientConfig{Addr: "a:1", KeepAlive: 70000 * time.Second}, wantErr: true},
		{
			name: "defaults",
			cfg:  ClientConfig{Addr: "a:1", KeepAlive: 1500 * time.Millisecond},
			check: func(c ClientConfig) bool {
				return c.MQTTVersion == 4 && c.KeepAlive == time.Second && c.ClientIDPrefix == DefaultClientIDPrefix &&
					c.ConnectTimeout == DefaultConnectTimeout && c.InFlight == DefaultInFlight && c.MaxPacket == DefaultMaxPacket
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults()
			if tt.wantErr {
				if err == nil {
					t.Fatal("want error")
				}
				return
			}
			if err != nil || !tt.check(got) {
				t.Fatalf("withDefaults = %+v, %v", got, err)
			}
		})
	}
}

func TestSweepInterval(t *testing.T) {
	tests := []struct {
		ka, timeout, want time.Duration
	}{
		{0, 30 * time.Second, time.Second},
		{60 * time.Second, 30 * time.Second, time.Second},
		{time.Second, 30 * time.Second, 250 * time.Millisecond},
		{0, 400 * time.Millisecond, 100 * time.Millisecond},
		{0, 10 * time.Millisecond, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		p := &Pool{cfg: ClientConfig{KeepAlive: tt.ka, ConnectTimeout: tt.timeout}}
		if got := p.sweepInterval(); got != tt.want {
			t.Errorf("keepalive %v timeout %v: interval %v, want %v", tt.ka, tt.timeout, got, tt.want)
		}
	}
}

// countingConn is a gnet.Conn that only counts AsyncWrite and Close calls.
type countingConn struct {
	gnet.Conn
	writes, closes atomic.Int32
}

func (c *countingConn) AsyncWrite([]byte, gnet.AsyncCallback) error {
	c.writes.Add(1)
	return nil
}

func (c *countingConn) Close() error {
	c.closes.Add(1)
	return nil
}

func TestSweep(t *testing.T) {
	p := &Pool{
		cfg:      ClientConfig{KeepAlive: time.Second, ConnectTimeout: 30 * time.Second},
		log:      zap.NewNop(),
		pingreq:  mqttcodec.AppendPingreq(nil),
		notify:   make(chan struct{}, 1),
		inflight: make(chan struct{}, 8),
		failures: map[string]int64{},
	}
	now := time.Now().UnixNano()
	type conn struct {
		name      string
		state     int32
		tls       bool
		age       time.Duration // since the last PINGREQ, or since the dial
		srvKA     int32         // Server Keep Alive + 1, 0 for none
		wantPing  bool
		wantState int32
	}
	tests := []conn{
		// Sweep every 250 ms: a connection idle for 800 ms would pass the
		// 1 s keepalive before the next sweep, so it pings now.
		{name: "due", state: stateConnected, age: 800 * time.Millisecond, wantPing: true, wantState: stateConnected},
		{name: "not yet due", state: stateConnected, age: 500 * time.Millisecond, wantState: stateConnected},
		{name: "server keepalive 0: never", state: stateConnected, age: time.Hour, srvKA: 1, wantState: stateConnected},
		{name: "server keepalive 2 s: not yet", state: stateConnected, age: 800 * time.Millisecond, srvKA: 3, wantState: stateConnected},
		{name: "server keepalive 2 s: due", state: stateConnected, age: 1900 * time.Millisecond, srvKA: 3, wantPing: true, wantState: stateConnected},
		{name: "plain CONNACK overdue", state: stateConnecting, age: 31 * time.Second, wantState: stateFailed},
		{name: "plain CONNACK pending", state: stateConnecting, age: time.Second, wantState: stateConnecting},
		{name: "TLS enforces its own deadline", state: stateConnecting, tls: true, age: 31 * time.Second, wantState: stateConnecting},
		{name: "failed ones are dropped", state: stateFailed, age: time.Hour, wantState: stateFailed},
	}
	var gcs []*countingConn
	for i, tt := range tests {
		if tt.state == stateConnecting {
			p.inflight <- struct{}{} // taken when it was dialed
		}
		cc := &clientConn{idx: i}
		cc.dialAt.Store(now - int64(tt.age))
		cc.state.Store(tt.state)
		cc.srvKA.Store(tt.srvKA)
		cc.lastPing.Store(now - int64(tt.age))
		gc := &countingConn{}
		l := &link{gc: gc}
		if tt.tls {
			// A TLS link is never written to here: the sweep leaves its
			// deadline to the socket.
			l = &link{tc: tls.Client(nil, &tls.Config{})}
		}
		cc.link.Store(l)
		gcs = append(gcs, gc)
		p.conns = append(p.conns, cc)
	}
	conns := append([]*clientConn(nil), p.conns...)
	p.sweep(now, nil)
	for i, tt := range tests {
		if got := gcs[i].writes.Load() == 1; got != tt.wantPing {
			t.Errorf("%s: pinged %v, want %v", tt.name, got, tt.wantPing)
		}
		if got := conns[i].state.Load(); got != tt.wantState {
			t.Errorf("%s: state %d, want %d", tt.name, got, tt.wantState)
		}
		if closed := gcs[i].closes.Load() == 1; closed != (tt.state != stateFailed && tt.wantState == stateFailed) {
			t.Errorf("%s: closed %v", tt.name, closed)
		}
	}
	if p.pings.Load() != 2 || p.failures[ReasonConnackTime] != 1 {
		t.Errorf("pings %d, failures %v", p.pings.Load(), p.failures)
	}
	if got := len(p.inflight); got != 2 {
		t.Errorf("%d in-flight tokens left, want 2 (the failed connection returned its own)", got)
	}
	if len(p.conns) != len(tests)-1 {
		t.Errorf("%d connections kept, want %d (the failed one dropped)", len(p.conns), len(tests)-1)
	}
}
