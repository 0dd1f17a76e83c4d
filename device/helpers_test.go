package device_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
)

// startGateway runs a gateway on free loopback ports with a fresh data dir
// and a 1 s quiet period.
func startGateway(t *testing.T, mod func(*gateway.Config)) *gateway.Gateway {
	t.Helper()
	cfg := gateway.Config{
		Plain:      "127.0.0.1:0",
		TLS:        "127.0.0.1:0",
		API:        "127.0.0.1:0",
		Data:       t.TempDir(),
		SecureIdle: time.Second,
		EventLoops: 2,
	}
	if mod != nil {
		mod(&cfg)
	}
	return runGateway(t, cfg)
}

// runGateway starts a gateway on cfg and shuts it down at the end of the
// test (again harmlessly when the test did).
func runGateway(t *testing.T, cfg gateway.Config) *gateway.Gateway {
	t.Helper()
	g, err := gateway.New(cfg, gateway.Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	if err := g.Start(); err != nil {
		t.Fatalf("gateway Start: %v", err)
	}
	t.Cleanup(func() { stopGateway(t, g) })
	return g
}

func stopGateway(t *testing.T, g *gateway.Gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Errorf("gateway Shutdown: %v", err)
	}
}

// recorder is what a test device's callbacks saw.
type recorder struct {
	cmds    chan device.Command
	modes   chan modeChange
	events  chan device.Event
	mu      sync.Mutex
	counts  map[string]int // commands by topic
	dropped int            // events that did not fit the channel
}

type modeChange struct {
	from, to device.Mode
	reason   string
}

func newRecorder() *recorder {
	return &recorder{
		cmds:   make(chan device.Command, 64),
		modes:  make(chan modeChange, 64),
		events: make(chan device.Event, 256),
		counts: make(map[string]int),
	}
}

// hook installs the recorder's callbacks into cfg.
func (r *recorder) hook(cfg *device.Config) {
	cfg.OnCommand = func(c device.Command) {
		r.mu.Lock()
		r.counts[c.Topic]++
		r.mu.Unlock()
		r.cmds <- c
	}
	cfg.OnModeChange = func(from, to device.Mode, reason string) {
		r.modes <- modeChange{from: from, to: to, reason: reason}
	}
	cfg.OnEvent = func(ev device.Event) {
		select {
		case r.events <- ev:
		default:
			r.mu.Lock()
			r.dropped++
			r.mu.Unlock()
		}
	}
}

func (r *recorder) count(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[topic]
}

func (r *recorder) nextCommand(t *testing.T) device.Command {
	t.Helper()
	select {
	case c := <-r.cmds:
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("no command arrived")
		return device.Command{}
	}
}

func (r *recorder) nextMode(t *testing.T, within time.Duration) modeChange {
	t.Helper()
	select {
	case m := <-r.modes:
		return m
	case <-time.After(within):
		t.Fatal("no mode change")
		return modeChange{}
	}
}

// waitEvent returns the next event of kind, skipping others.
func (r *recorder) waitEvent(t *testing.T, kind device.EventKind, within time.Duration) device.Event {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev := <-r.events:
			if ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event within %s", kind, within)
			return device.Event{}
		}
	}
}

// testConfig is a device configuration for gateway g with quick backoff.
// The device presents a certificate for id issued from the gateway's
// development CA, as `dualgate certs client` issues it, so that its secure
// commands are delivered under the default --secure-identity cert.
func testConfig(t *testing.T, g *gateway.Gateway, id string, version byte) device.Config {
	t.Helper()
	certFile, keyFile := deviceCertFiles(t, g, id)
	return device.Config{
		ClientID:       id,
		PlainAddr:      g.PlainAddr(),
		TLSAddr:        g.TLSAddr(),
		CAFile:         g.CAFile(),
		CertFile:       certFile,
		KeyFile:        keyFile,
		Version:        version,
		KeepAlive:      30 * time.Second,
		ConnectTimeout: 5 * time.Second,
		Backoff:        device.Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond},
	}
}

// deviceCertFiles issues a certificate for id from the gateway's
// development CA into its certificate directory and returns the files.
func deviceCertFiles(t *testing.T, g *gateway.Gateway, id string) (certFile, keyFile string) {
	t.Helper()
	dir := filepath.Dir(g.CAFile())
	if _, err := certs.IssueClients(dir, []string{id}, certs.WithOverwrite()); err != nil {
		t.Fatalf("device certificate for %s: %v", id, err)
	}
	return certs.ClientFiles(dir, id)
}

// startDevice builds and starts a device, stopped at the end of the test.
func startDevice(t *testing.T, cfg device.Config) *device.Device {
	t.Helper()
	d, err := device.New(cfg)
	if err != nil {
		t.Fatalf("device.New: %v", err)
	}
	t.Cleanup(d.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return d
}

// versions runs f for MQTT 3.1.1 and MQTT 5.
func versions(t *testing.T, f func(t *testing.T, version byte)) {
	for _, v := range []struct {
		name    string
		version byte
	}{{"mqtt311", 4}, {"mqtt5", 5}} {
		t.Run(v.name, func(t *testing.T) { f(t, v.version) })
	}
}

// apiCommand is the gateway API's view of a command.
type apiCommand struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// postCommand sends a command through the HTTP API and returns its id.
func postCommand(t *testing.T, g *gateway.Gateway, client, topic, payload string, secure bool) string {
	t.Helper()
	body, err := json.Marshal(map[string]any{"topic": topic, "payload": payload, "secure": secure})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post("http://"+g.APIAddr()+"/v1/clients/"+client+"/commands", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST command: %v", err)
	}
	defer resp.Body.Close()
	var out apiCommand
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST command: bad JSON: %v", err)
	}
	if resp.StatusCode != http.StatusAccepted || out.ID == "" {
		t.Fatalf("POST command: %d %+v", resp.StatusCode, out)
	}
	return out.ID
}

func commandStatus(g *gateway.Gateway, id string) (string, error) {
	resp, err := http.Get("http://" + g.APIAddr() + "/v1/commands/" + id)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out apiCommand
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("GET command %s: %d: %w", id, resp.StatusCode, err)
	}
	return out.Status, nil
}

// waitStatus polls the API until command id has status want.
func waitStatus(t *testing.T, g *gateway.Gateway, id, want string) {
	t.Helper()
	var got string
	eventually(t, 15*time.Second, func() bool {
		s, err := commandStatus(g, id)
		got = s
		return err == nil && s == want
	}, func() string { return fmt.Sprintf("command %s is %q, want %q", id, got, want) })
}

// eventually polls cond until it holds or the time is up.
func eventually(t *testing.T, within time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tap is a dialer that keeps every TCP connection it opens, with the bytes
// that crossed it, by the address dialed.
type tap struct {
	mu    sync.Mutex
	conns []*tappedConn
	// hold, when set, is called before dialing; the dial waits for it.
	hold func(addr string)
}

type tappedConn struct {
	net.Conn
	addr    string
	mu      sync.Mutex
	wire    bytes.Buffer
	dropped bool
}

func (c *tappedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.wire.Write(p[:n])
	if c.dropped {
		err = errReset
	}
	c.mu.Unlock()
	return n, err
}

// errReset is what a dropped connection's reader sees.
var errReset = fmt.Errorf("tap: %w", syscall.ECONNRESET)

// drop cuts the connection under the device, as a reset from the network
// would: the reader fails with ECONNRESET. (A plain Close would show as
// "use of closed network connection", which paho.mqtt.golang takes for
// its own close and ignores.)
func (c *tappedConn) drop() {
	c.mu.Lock()
	c.dropped = true
	c.mu.Unlock()
	_ = c.Conn.Close()
}

func (c *tappedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.wire.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (tp *tap) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	tp.mu.Lock()
	hold := tp.hold
	tp.mu.Unlock()
	if hold != nil {
		hold(addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &tappedConn{Conn: c, addr: addr}
	tp.mu.Lock()
	tp.conns = append(tp.conns, tc)
	tp.mu.Unlock()
	return tc, nil
}

// to lists the connections dialed to addr, oldest first.
func (tp *tap) to(addr string) []*tappedConn {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var out []*tappedConn
	for _, c := range tp.conns {
		if c.addr == addr {
			out = append(out, c)
		}
	}
	return out
}

// carried reports whether secret crossed any connection to addr.
func (tp *tap) carried(addr string, secret []byte) bool {
	for _, c := range tp.to(addr) {
		c.mu.Lock()
		found := bytes.Contains(c.wire.Bytes(), secret)
		c.mu.Unlock()
		if found {
			return true
		}
	}
	return false
}

// bytesTo counts the bytes that crossed connections to addr.
func (tp *tap) bytesTo(addr string) int {
	n := 0
	for _, c := range tp.to(addr) {
		c.mu.Lock()
		n += c.wire.Len()
		c.mu.Unlock()
	}
	return n
}

// last is the newest connection to addr.
func (tp *tap) last(t *testing.T, addr string) *tappedConn {
	t.Helper()
	cs := tp.to(addr)
	if len(cs) == 0 {
		t.Fatalf("no connection to %s", addr)
	}
	return cs[len(cs)-1]
}

func commandTopic(id, name string) string {
	return "devices/" + id + "/commands/" + name
}

// clientMode asks the gateway API how it sees a device.
func clientMode(g *gateway.Gateway, id string) string {
	resp, err := http.Get("http://" + g.APIAddr() + "/v1/clients/" + id)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var out struct {
		Mode string `json:"mode"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return err.Error()
	}
	return strings.ToLower(out.Mode)
}
