package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/internal/testredis"
	"github.com/dualgate/dualgate/internal/testutil"
)

// gatewayChildEnv holds, in a child process of the test binary, the JSON
// Config of the gateway it runs (TestMain): a node that can be killed
// with SIGKILL, as a real crash, while the test goes on.
const gatewayChildEnv = "DUALGATE_TEST_GATEWAY_CHILD"

// childAddrs is what a child gateway reports on its stdout once started.
type childAddrs struct {
	Plain, TLS, API string
}

// runGatewayChild runs the gateway of gatewayChildEnv until its stdin
// closes (the test ended) or it is killed.
func runGatewayChild(raw string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "child config:", err)
		return 2
	}
	logger := zap.NewNop()
	if os.Getenv("DUALGATE_TEST_LOG") != "" {
		logger, _ = zap.NewDevelopment()
	}
	g, err := New(cfg, Options{Logger: logger})
	if err == nil {
		err = g.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child gateway:", err)
		return 1
	}
	out, _ := json.Marshal(childAddrs{Plain: g.PlainAddr(), TLS: g.TLSAddr(), API: g.APIAddr()})
	fmt.Println(string(out))
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = g.Shutdown(ctx)
	return 0
}

// gatewayChild is a gateway in a child process.
type gatewayChild struct {
	childAddrs
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// startGatewayChild runs a gateway with cfg in a child process and waits
// until it listens. It is stopped (or reaped, once killed) at the end of
// the test.
func startGatewayChild(t *testing.T, cfg Config) *gatewayChild {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), gatewayChildEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &gatewayChild{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	select {
	case line, ok := <-lines:
		if !ok || json.Unmarshal([]byte(line), &c.childAddrs) != nil {
			t.Fatalf("child gateway did not start: %q", line)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("child gateway did not start within 60 s")
	}
	return c
}

// kill ends the child with SIGKILL and waits for it to be gone.
func (c *gatewayChild) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.done
}

// killCluster is three nodes of one cluster behind HAProxy round robin:
// gw-1 in a child process, to be killed; gw-2 and gw-3 in this one. The
// nodes' heartbeats live ttl.
type killCluster struct {
	srv     *testredis.Server
	child   *gatewayChild
	g2, g3  *Gateway
	lb      *haproxy
	lbPlain string
	lbTLS   string
	ttl     time.Duration
}

func startKillCluster(t *testing.T, ttl time.Duration) *killCluster {
	t.Helper()
	k := &killCluster{srv: testredis.Start(t), lbPlain: testutil.FreeAddr(t), lbTLS: testutil.FreeAddr(t), ttl: ttl}
	base := func(c *Config) {
		c.ProxyProtocol, c.ProxyTrusted = string(ProxyRequired), "127.0.0.1/32"
		c.AdvertisePlain, c.AdvertiseTLS = k.lbPlain, k.lbTLS
		c.ClusterNodeTTL = ttl
	}
	k.g2 = clusterGateway(t, k.srv, "gw-2", base)
	pki := certs.PathsIn(filepath.Dir(k.g2.CAFile()))
	withPKI := func(c *Config) {
		base(c)
		c.TLSCert, c.TLSKey, c.ClientCA = pki.Server, pki.ServerKey, pki.CA
	}
	k.g3 = clusterGateway(t, k.srv, "gw-3", withPKI)
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir(), EventLoops: 2,
		Cluster: k.srv.URL(), NodeID: "gw-1", SecureIdle: time.Minute}
	withPKI(&cfg)
	k.child = startGatewayChild(t, cfg)
	setup := lbSetup{Plain: k.lbPlain, TLS: k.lbTLS, Socket: filepath.Join(t.TempDir(), "admin.sock"), Balance: "roundrobin",
		Servers: []lbBackend{{Name: "gw1", Plain: k.child.Plain, TLS: k.child.TLS, Port: portOf(t, k.child.API)}}}
	for i, g := range []*Gateway{k.g2, k.g3} {
		setup.Servers = append(setup.Servers, lbBackend{Name: fmt.Sprintf("gw%d", i+2),
			Plain: g.PlainAddr(), TLS: g.TLSAddr(), Port: portOf(t, g.APIAddr())})
	}
	k.lb = startHAProxy(t, setup)
	for _, s := range []string{"gw1", "gw2", "gw3"} {
		k.lb.waitServer(t, s, "UP")
	}
	return k
}

// record is the cluster registry's node for id, "" while it has none.
func (k *killCluster) node(t *testing.T, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, ok, err := k.g2.members.m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return ""
	}
	return rec.Node
}

// received is one message a probe device got.
type received struct {
	topic, payload string
	dup            bool
	msg            mqtt.Message
}

// probe is an MQTT 3.1.1 device driven step by step by the test: it
// records what it receives and acknowledges commands only if told to.
type probe struct {
	t    *testing.T
	id   string
	tc   *tls.Config
	msgs chan received
}

func newProbe(t *testing.T, g *Gateway, id string) *probe {
	return &probe{t: t, id: id, tc: deviceTLS(t, g, id), msgs: make(chan received, 100)}
}

// connect connects the device to addr; over TLS with overTLS, with a
// PROXY header first when header is given (straight to a node that
// requires one).
func (p *probe) connect(addr string, overTLS, autoAck bool, header []byte) mqtt.Client {
	p.t.Helper()
	scheme := "tcp://"
	var tc *tls.Config
	if overTLS {
		scheme, tc = "ssl://", p.tc
	}
	return v3(p.t, scheme+addr, p.id, tc, func(o *mqtt.ClientOptions) {
		o.SetCleanSession(true).SetAutoAckDisabled(!autoAck).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				p.msgs <- received{topic: m.Topic(), payload: string(m.Payload()), dup: m.Duplicate(), msg: m}
			})
		if header != nil {
			o.SetCustomOpenConnectionFn(proxiedOpener(header, tc))
		}
	})
}

func (p *probe) next(what string) received {
	p.t.Helper()
	select {
	case m := <-p.msgs:
		return m
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s: nothing arrived", what)
	}
	return received{}
}

// none asserts that nothing more arrives for a while.
func (p *probe) none(what string) {
	p.t.Helper()
	select {
	case m := <-p.msgs:
		p.t.Fatalf("%s: %s %q (dup %v)", what, m.topic, m.payload, m.dup)
	case <-time.After(time.Second):
	}
}

// onPlainAtChild connects the device through the balancer until it lands
// on the child node, and returns its client there.
func (k *killCluster) onPlainAtChild(t *testing.T, p *probe) mqtt.Client {
	t.Helper()
	for range 6 {
		c := p.connect(k.lbPlain, false, true, nil)
		var at string
		eventually(t, 10*time.Second, p.id+" in the registry", func() bool { at = k.node(t, p.id); return at != "" })
		if at == "gw-1" {
			return c
		}
		c.Disconnect(50)
		eventually(t, 10*time.Second, p.id+" out of the registry", func() bool { return k.node(t, p.id) == "" })
	}
	t.Fatal("round robin never sent the device to gw-1")
	return nil
}

// historyNotes is the history of a command, one "status: note" a line.
func historyNotes(v commandView) string {
	var b strings.Builder
	for _, h := range v.History {
		fmt.Fprintf(&b, "%s: %s\n", h.Status, h.Note)
	}
	return b.String()
}

// The node holding a device is killed with SIGKILL after it told the device
// to move to TLS for a secure command posted on another node (the command
// reads upgrading): once the dead node's heartbeat ends its devices read
// offline on the other nodes; the device reconnects over TLS through the
// balancer, lands on a live node and gets the command there exactly once,
// without DUP (it was never written to the device).
func TestClusterNodeKilledMidUpgrade(t *testing.T) {
	k := startKillCluster(t, 3*time.Second)
	p := newProbe(t, k.g2, "kill-car-1")
	k.onPlainAtChild(t, p)
	cid, _ := postCommand(t, k.g2, p.id, `{"topic":"devices/kill-car-1/commands/unlock","payload":"OPEN-1"}`)
	if m := p.next("instruction"); m.topic != control.ControlTopic || !strings.Contains(m.payload, `"tls"`) {
		t.Fatalf("instruction %s %q", m.topic, m.payload)
	}
	v := waitStatus(t, k.g2, cid, "upgrading")
	if !strings.Contains(historyNotes(v), "reconnect instruction sent (node gw-1)") {
		t.Fatalf("the history does not name the node that instructed:\n%s", historyNotes(v))
	}

	k.child.kill(t)
	killed := time.Now()
	eventually(t, 10*k.ttl, "the dead node's device offline", func() bool {
		var view clientView
		return getJSON(t, k.g3, "/v1/clients/"+p.id, "", &view) == http.StatusOK && !view.Connected
	})
	t.Logf("device offline %v after the kill (heartbeat TTL %v)", time.Since(killed).Round(10*time.Millisecond), k.ttl)
	k.lb.waitServer(t, "gw1", "DOWN")

	reconnect := time.Now()
	p.connect(k.lbTLS, true, true, nil)
	m := p.next("the command after the reconnect")
	if m.topic != "devices/kill-car-1/commands/unlock" || m.payload != "OPEN-1" || m.dup {
		t.Fatalf("command %s %q dup %v", m.topic, m.payload, m.dup)
	}
	v = waitStatus(t, k.g2, cid, "delivered")
	t.Logf("delivered %v after the TLS reconnect, %v after the kill", time.Since(reconnect).Round(time.Millisecond), time.Since(killed).Round(10*time.Millisecond))
	if v.Attempts != 1 {
		t.Fatalf("attempts %d, want 1:\n%s", v.Attempts, historyNotes(v))
	}
	p.none("a second copy of the command")
}

// The node holding a device is killed with SIGKILL after it wrote a secure
// command to the device over TLS and before the device's PUBACK (the
// command reads sent, in flight on the dead node). The device reconnects
// through the balancer to a live node at once, while the dead node's
// heartbeat still runs: that node leaves the command to its writer until
// the heartbeat ends, then takes it back and writes it again, with DUP (the
// device may have it: MQTT's at least once), once.
func TestClusterNodeKilledBeforePUBACK(t *testing.T) {
	k := startKillCluster(t, 3*time.Second)
	p := newProbe(t, k.g2, "kill-car-2")
	k.onPlainAtChild(t, p)
	cid, _ := postCommand(t, k.g2, p.id, `{"topic":"devices/kill-car-2/commands/unlock","payload":"OPEN-2"}`)
	if m := p.next("instruction"); m.topic != control.ControlTopic {
		t.Fatalf("instruction %s %q", m.topic, m.payload)
	}
	// On TLS straight to gw-1 (as the balancer would have sent it), not
	// acknowledging what comes.
	p.connect(k.child.TLS, true, false, proxyHeader(t, 2, "198.51.100.7:40000", "192.0.2.1:8883"))
	if m := p.next("the command on gw-1"); m.payload != "OPEN-2" || m.dup {
		t.Fatalf("first write %q dup %v", m.payload, m.dup)
	}
	v := waitStatus(t, k.g2, cid, "sent")
	if !strings.Contains(historyNotes(v), "written to the tls connection (node gw-1)") {
		t.Fatalf("the history does not name the node that wrote it:\n%s", historyNotes(v))
	}

	k.child.kill(t)
	killed := time.Now()
	k.lb.waitServer(t, "gw1", "DOWN")
	p.connect(k.lbTLS, true, true, nil)
	m := p.next("the command again after the reconnect")
	took := time.Since(killed)
	if m.payload != "OPEN-2" || !m.dup {
		t.Fatalf("second write %q dup %v, want the command with DUP", m.payload, m.dup)
	}
	v = waitStatus(t, k.g2, cid, "delivered")
	t.Logf("written again %v after the kill (heartbeat TTL %v)", took.Round(10*time.Millisecond), k.ttl)
	if !strings.Contains(historyNotes(v), "node gw-1 that had it in flight is gone") || v.Attempts != 2 {
		t.Fatalf("attempts %d, history:\n%s", v.Attempts, historyNotes(v))
	}
	p.none("a third copy of the command")
}

// A node that starts takes back only what its own previous run, or a node
// that is gone, left in flight: a command another live node has written
// and awaits the PUBACK of stays sent, and is delivered once when the
// device acknowledges it.
func TestClusterStartLeavesPeersInFlight(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	p := newProbe(t, g1, "inflight-car")
	p.connect(g1.TLSAddr(), true, false, nil)
	cid, _ := postCommand(t, g1, p.id, `{"topic":"devices/inflight-car/commands/a","payload":"A"}`)
	m := p.next("the command")
	waitStatus(t, g1, cid, "sent")

	g2 := clusterGateway(t, srv, "gw-2", nil)
	if v := commandStatus(t, g2, cid); v.Status != store.StatusSent {
		t.Fatalf("a node that started moved a command in flight on a live node: %s\n%s", v.Status, historyNotes(v))
	}
	m.msg.Ack()
	v := waitStatus(t, g2, cid, "delivered")
	if v.Attempts != 1 {
		t.Fatalf("attempts %d:\n%s", v.Attempts, historyNotes(v))
	}
	p.none("a second copy")
}

// Redis stopped (killed, AOF on) for 10 s under three nodes whose
// heartbeats live 3 s: the devices on every node stay connected and their
// telemetry reaches the broker throughout; a POST on every node gets 503
// naming Redis; once Redis is back each node records its devices again
// (another node answers GET /v1/clients/{id} for them), and a secure
// command posted on each node for a device on another is delivered.
func TestClusterRedisStoppedThreeNodes(t *testing.T) {
	srv := testredis.Start(t)
	br := testbroker.Start(t)
	up := newCounter()
	app := cloudApp(t, br, "cloud-app-3", true)
	if tok := app.Subscribe("tele/#", 1, up.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	var gws []*Gateway
	var devs []*device311
	for i := range 3 {
		g := clusterGateway(t, srv, fmt.Sprint("gw-", i+1), func(c *Config) {
			c.Upstream = br.URL()
			c.UpstreamClientID = fmt.Sprint("gw-cluster-", i+1)
			c.ClusterTimeout = 300 * time.Millisecond
			c.ClusterNodeTTL = 3 * time.Second
		})
		waitUpstream(t, g)
		d := newDevice311(t, g, fmt.Sprint("away-car-", i+1))
		d.connect(false, g.PlainAddr())
		gws, devs = append(gws, g), append(devs, d)
	}
	answers := func(at int, d *device311, node string) bool {
		var view clientView
		return getJSON(t, gws[at], "/v1/clients/"+d.id, "", &view) == http.StatusOK && view.Connected && view.Node == node
	}
	for i, d := range devs {
		eventually(t, 10*time.Second, d.id+" seen from another node", func() bool { return answers((i+1)%3, d, gws[i].cluster.id) })
	}
	sent := 0
	publish := func() {
		t.Helper()
		for _, d := range devs {
			if tok := d.client.Publish("tele/"+d.id, 1, false, fmt.Sprint(d.id, "-", sent)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("%s publish: %v", d.id, tok.Error())
			}
			sent++
		}
	}

	srv.Kill()
	stopped := time.Now()
	for time.Since(stopped) < 10*time.Second {
		for i, g := range gws {
			code, out := post(t, g, "/v1/clients/"+devs[(i+1)%3].id+"/commands", `{"topic":"devices/x/commands/x","payload":"p"}`, "")
			if code != http.StatusServiceUnavailable || !strings.Contains(out["error"], "redis unavailable") {
				t.Fatalf("gw-%d with redis stopped: POST answered %d %v, want 503 naming redis", i+1, code, out)
			}
		}
		publish()
		want := sent
		eventually(t, 10*time.Second, "telemetry at the broker while redis is stopped", func() bool { return up.distinct() == want })
		time.Sleep(500 * time.Millisecond)
	}
	for i, g := range gws {
		if !devs[i].client.IsConnectionOpen() || g.reg.Len() != 1 {
			t.Fatalf("gw-%d: its device lost its connection while redis was stopped", i+1)
		}
	}
	srv.Start()

	for i, d := range devs {
		eventually(t, 20*time.Second, d.id+" recorded again, seen from another node", func() bool { return answers((i+2)%3, d, gws[i].cluster.id) })
	}
	for i, g := range gws {
		d := devs[(i+1)%3]
		secret := "BACK-" + d.id
		cid, _ := postCommand(t, g, d.id, `{"topic":"devices/`+d.id+`/commands/unlock","payload":"`+secret+`"}`)
		if c := nextCommand(t, d.cmds); c.payload != secret || !c.tls {
			t.Fatalf("gw-%d: command for %s after redis came back: %+v", i+1, d.id, c)
		}
		waitStatus(t, g, cid, "delivered")
	}
	publish()
	want := sent
	eventually(t, 10*time.Second, "telemetry at the broker after redis came back", func() bool { return up.distinct() == want })
}

// A thousand plain devices spread over three nodes each get one secure
// command, posted on a node picked at random (two times in three not the
// device's): every device is told to move to TLS by its own node, gets
// its command there and acknowledges it, exactly once, and every command
// reads delivered after one attempt on every node.
func TestClusterThousandDevices(t *testing.T) {
	const n = 1000
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	pki := certs.PathsIn(filepath.Dir(g1.CAFile()))
	gws := []*Gateway{g1}
	for _, node := range []string{"gw-2", "gw-3"} {
		gws = append(gws, clusterGateway(t, srv, node, func(c *Config) {
			c.TLSCert, c.TLSKey, c.ClientCA = pki.Server, pki.ServerKey, pki.CA
		}))
	}
	ca := newGatewayCA(t, g1)
	devices := make([]*compactDevice, n)
	ready := make(chan struct{}, n)
	errs := make(chan error, n)
	deadline := time.Now().Add(120 * time.Second)
	var wg sync.WaitGroup
	for i := range devices {
		id := fmt.Sprintf("cfleet-%04d", i)
		tlsCfg := clientTLS(t, g1)
		tlsCfg.Certificates = []tls.Certificate{ca.device(t, id)}
		d := &compactDevice{id: id, plain: gws[i%3].PlainAddr(), tlsCfg: tlsCfg}
		devices[i] = d
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.run(ready, deadline); err != nil {
				errs <- err
			}
		}()
	}
	for range n {
		select {
		case <-ready:
		case err := <-errs:
			t.Fatal(err)
		case <-time.After(60 * time.Second):
			t.Fatal("devices did not all connect")
		}
	}
	// A command posted elsewhere reaches a device's node through the
	// registry: wait until it has every device.
	eventually(t, 30*time.Second, "every device in the cluster registry", func() bool {
		total := 0
		for _, g := range gws {
			recs, _, err := g1.members.m.List(context.Background(), g.cluster.id, "", "", n)
			if err != nil {
				return false
			}
			total += len(recs)
		}
		return total == n
	})

	start := time.Now()
	ids := make([]string, n)
	posted := make([]int, n)
	var pw sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i, d := range devices {
		pw.Add(1)
		sem <- struct{}{}
		posted[i] = rand.IntN(3)
		go func() {
			defer pw.Done()
			defer func() { <-sem }()
			ids[i], _ = postCommand(t, gws[posted[i]], d.id, `{"topic":"devices/`+d.id+`/commands/go","payload":"`+d.id+`"}`)
		}()
	}
	pw.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	took := time.Since(start)
	for _, d := range devices {
		if got := d.commands.Load(); got != 1 {
			t.Fatalf("%s received %d commands, want 1", d.id, got)
		}
		if p, _ := d.payload.Load().(string); p != d.id {
			t.Fatalf("%s received %q", d.id, p)
		}
	}
	elsewhere := 0
	var lat []time.Duration
	for i, id := range ids {
		// Read on a node that neither took the command nor holds the device
		// when there is one.
		at := gws[(posted[i]+1)%3]
		if posted[i] != i%3 {
			at = gws[3-posted[i]-i%3]
			elsewhere++
		}
		v := commandStatus(t, at, id)
		if v.Status != store.StatusDelivered || v.Attempts != 1 {
			t.Fatalf("command %s: %s after %d attempts:\n%s", id, v.Status, v.Attempts, historyNotes(v))
		}
		lat = append(lat, v.DeliveredAt.Sub(v.CreatedAt))
	}
	var upgrades uint64
	for _, g := range gws {
		upgrades += g.dispatcher.Stats().Upgrades.Load()
	}
	if upgrades != n {
		t.Fatalf("upgrades %d, want %d", upgrades, n)
	}
	slices.Sort(lat)
	t.Logf("%d devices on 3 nodes (%d commands posted on another node than the device's) upgraded and acknowledged in %s; POST->PUBACK p50 %s p99 %s max %s",
		n, elsewhere, took.Round(time.Millisecond), lat[n/2].Round(time.Millisecond), lat[n*99/100].Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
}

// A device whose command was written on one node and not yet acknowledged
// reconnects to another node (its address changed, the balancer is not
// sticky): the first node closes its older session and puts the command
// back; the second, which saw it in flight on a live node, looks again
// and writes it, with DUP, once.
func TestClusterTakeoverMidDelivery(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	pki := certs.PathsIn(filepath.Dir(g1.CAFile()))
	g2 := clusterGateway(t, srv, "gw-2", func(c *Config) {
		c.TLSCert, c.TLSKey, c.ClientCA = pki.Server, pki.ServerKey, pki.CA
	})
	p := newProbe(t, g1, "moving-car")
	p.connect(g1.TLSAddr(), true, false, nil)
	eventually(t, 10*time.Second, "moving-car in the cluster registry", func() bool {
		rec, ok, err := g2.members.m.Get(context.Background(), p.id)
		return err == nil && ok && rec.Node == "gw-1"
	})
	cid, _ := postCommand(t, g2, p.id, `{"topic":"devices/moving-car/commands/a","payload":"MOVE"}`)
	if m := p.next("the command on gw-1"); m.payload != "MOVE" || m.dup {
		t.Fatalf("first write %q dup %v", m.payload, m.dup)
	}
	waitStatus(t, g1, cid, "sent")

	p.connect(g2.TLSAddr(), true, true, nil)
	m := p.next("the command on gw-2")
	if m.payload != "MOVE" || !m.dup {
		t.Fatalf("second write %q dup %v, want the command with DUP", m.payload, m.dup)
	}
	v := waitStatus(t, g1, cid, "delivered")
	if v.Attempts != 2 || !strings.Contains(historyNotes(v), "written to the tls connection (node gw-2)") {
		t.Fatalf("attempts %d:\n%s", v.Attempts, historyNotes(v))
	}
	p.none("a third copy")
}
