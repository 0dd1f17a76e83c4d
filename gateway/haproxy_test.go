package gateway

import (
	"bufio"
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/internal/control"

	"github.com/dualgate/dualgate/internal/testutil"
)

// haproxyBin is where Debian installs HAProxy; PATH is searched too.
const haproxyBin = "/usr/sbin/haproxy"

// lbBackend is one gateway behind the balancer.
type lbBackend struct {
	Name             string
	Plain, TLS, Port string // MQTT listeners; Port is the API port the health check asks
}

// lbSetup is what the HAProxy configuration is made from.
type lbSetup struct {
	Plain, TLS string // frontend addresses
	Socket     string // admin socket
	Servers    []lbBackend
	// Balance is HAProxy's balance algorithm (default source).
	Balance string
}

// haproxyConfig is the HAProxy configuration for setup.
func haproxyConfig(setup lbSetup) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# dualgate behind HAProxy in TCP mode, as docs/operations.md describes.
global
    maxconn 4000
    nbthread 1
    stats socket %s mode 600 level admin
    # No "daemon": it runs in the foreground (-db) as a child of the test.

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # A gateway that stopped listening (a drain closes the TLS listener)
    # refuses the connection: try another server.
    retries 3
    option redispatch

frontend mqtt_plain
    bind %s
    default_backend dualgate_plain

frontend mqtt_tls
    bind %s
    default_backend dualgate_tls
`, setup.Socket, setup.Plain, setup.TLS)
	for _, kind := range []string{"plain", "tls"} {
		fmt.Fprintf(&b, `
backend dualgate_%s
    # Without the cluster mode each gateway has its own command store: a
    # device must stay on one gateway, for its plain and its TLS
    # connections alike. balance source hashes the device's address the
    # same way in both backends (same servers, same order, same weights).
    # Gateways of one cluster take roundrobin.
    balance %s
    # A draining gateway answers 503 on /readyz and is taken out.
    option httpchk GET /readyz
    http-check expect status 200
`, kind, cmp.Or(setup.Balance, "source"))
		for _, s := range setup.Servers {
			addr := s.Plain
			if kind == "tls" {
				addr = s.TLS
			}
			fmt.Fprintf(&b, "    server %s %s send-proxy-v2 check port %s inter 200ms fall 1 rise 2\n", s.Name, addr, s.Port)
		}
	}
	return b.String()
}

// haproxy is a running HAProxy.
type haproxy struct {
	setup lbSetup
	cmd   *exec.Cmd
	out   *testutil.Buffer
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// startHAProxy writes the configuration for setup, runs HAProxy in the
// foreground and waits until both frontends and the admin socket accept
// connections. It is
// stopped (SIGTERM, then SIGKILL) when the test ends.
func startHAProxy(t *testing.T, setup lbSetup) *haproxy {
	t.Helper()
	bin, err := exec.LookPath(haproxyBin)
	if err != nil {
		if bin, err = exec.LookPath("haproxy"); err != nil {
			t.Fatalf("HAProxy is needed for this test and was not found at %s or in PATH (Debian: apt-get install haproxy): %v", haproxyBin, err)
		}
	}
	conf := haproxyConfig(setup)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, conf)
	}

	h := &haproxy{setup: setup, cmd: exec.Command(bin, "-f", path, "-db"), out: &testutil.Buffer{}}
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- h.cmd.Wait() }()
	t.Cleanup(func() {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			_ = h.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("haproxy output:\n%s", h.out.String())
		}
	})

	// The admin socket too: HAProxy binds it under a temporary name and
	// renames it, and its frontends may accept before that.
	deadline := time.Now().Add(10 * time.Second)
	for _, addr := range []string{setup.Plain, setup.TLS, setup.Socket} {
		network := "tcp"
		if addr == setup.Socket {
			network = "unix"
		}
		for {
			select {
			case err := <-exited:
				t.Fatalf("haproxy exited: %v\n%s", err, h.out.String())
			default:
			}
			c, err := net.DialTimeout(network, addr, time.Second)
			if err == nil {
				_ = c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("haproxy %s %s does not accept: %v\n%s", network, addr, err, h.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return h
}

// stats asks HAProxy's admin socket for its server statistics ("show
// stat"), keyed "backend/server", each a map from column name (status,
// stot, ...) to value.
func (h *haproxy) stats(t *testing.T) map[string]map[string]string {
	t.Helper()
	c, err := net.DialTimeout("unix", h.setup.Socket, time.Second)
	if err != nil {
		t.Fatalf("haproxy admin socket: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		t.Fatal(err)
	}
	r := csv.NewReader(bufio.NewReader(c))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		t.Fatalf("show stat: %v", err)
	}
	header[0] = strings.TrimPrefix(header[0], "# ")
	out := map[string]map[string]string{}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("show stat: %v", err)
		}
		row := map[string]string{}
		for i, v := range rec {
			if i < len(header) {
				row[header[i]] = v
			}
		}
		if sv := row["svname"]; sv != "FRONTEND" && sv != "BACKEND" {
			out[row["pxname"]+"/"+sv] = row
		}
	}
	return out
}

// waitServer waits until HAProxy reports server in both backends as want.
func (h *haproxy) waitServer(t *testing.T, server, want string) {
	t.Helper()
	eventually(t, 10*time.Second, "haproxy sees "+server+" "+want, func() bool {
		st := h.stats(t)
		return st["dualgate_plain/"+server]["status"] == want && st["dualgate_tls/"+server]["status"] == want
	})
}

// holder returns the index of the gateway that has the device connected.
func holder(t *testing.T, gws []*Gateway, id string) int {
	t.Helper()
	at := -1
	eventually(t, 5*time.Second, id+" registered", func() bool {
		for i, g := range gws {
			if _, ok := g.Registry().Get(id); ok {
				at = i
				return true
			}
		}
		return false
	})
	return at
}

// startBehindHAProxy runs two gateways with the PROXY protocol required,
// instructions and drains pointing at the balancer, and HAProxy in front
// of them; it returns once HAProxy sees both up.
func startBehindHAProxy(t *testing.T) ([]*Gateway, *haproxy) {
	t.Helper()
	lbPlain, lbTLS := testutil.FreeAddr(t), testutil.FreeAddr(t)
	base := func(c *Config) {
		c.ProxyProtocol, c.ProxyTrusted = string(ProxyRequired), "127.0.0.1/32"
		c.AdvertisePlain, c.AdvertiseTLS = lbPlain, lbTLS
		c.DrainTo = "tls://" + lbTLS
		c.DrainRate = 4
		// HAProxy checks /readyz every 200 ms and takes a server out on
		// the first failure: devices move after it has. Ten intervals,
		// for a loaded machine where a check can come late.
		c.DrainDelay = 2 * time.Second
	}
	// The gateways behind one balancer serve the same certificate, the
	// first one's development certificate, and verify device certificates
	// against the same CA.
	g1 := startGateway(t, base)
	dev := certs.PathsIn(filepath.Dir(g1.CAFile()))
	g2 := startGateway(t, func(c *Config) {
		base(c)
		c.TLSCert, c.TLSKey, c.ClientCA = dev.Server, dev.ServerKey, dev.CA
	})
	gws := []*Gateway{g1, g2}
	setup := lbSetup{Plain: lbPlain, TLS: lbTLS, Socket: filepath.Join(t.TempDir(), "admin.sock")}
	for i, g := range gws {
		setup.Servers = append(setup.Servers, lbBackend{Name: fmt.Sprintf("gw%d", i+1),
			Plain: g.PlainAddr(), TLS: g.TLSAddr(), Port: portOf(t, g.APIAddr())})
	}
	lb := startHAProxy(t, setup)
	lb.waitServer(t, "gw1", "UP")
	lb.waitServer(t, "gw2", "UP")
	return gws, lb
}

// Two gateways behind a real HAProxy (TCP mode, PROXY protocol v2, source
// hashing, /readyz health checks): devices are seen at their own address,
// a secure command goes through the upgrade and back through the
// balancer, and a drained gateway's MQTT 5 devices move to the other one.
func TestHAProxy(t *testing.T) {
	gws, lb := startBehindHAProxy(t)
	lbPlain, lbTLS := lb.setup.Plain, lb.setup.TLS
	// Devices trust the development CA of the first gateway, whose
	// certificate both serve.
	tlsCfg := clientTLS(t, gws[0])
	g1 := gws[0]

	t.Run("real address", func(t *testing.T) {
		plain := dialProxied(t, lbPlain, nil, nil)
		if _, err := dialV5(t, plain, &paho.Connect{ClientID: "lb-addr-plain", KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatalf("plain through haproxy: %v", err)
		}
		overTLS := dialProxied(t, lbTLS, nil, tlsCfg)
		if _, err := dialV5(t, overTLS, &paho.Connect{ClientID: "lb-addr-tls", KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatalf("TLS through haproxy: %v", err)
		}
		for id, conn := range map[string]net.Conn{"lb-addr-plain": plain, "lb-addr-tls": overTLS} {
			g := gws[holder(t, gws, id)]
			if v := connectedClient(t, g, id); v.Remote != conn.LocalAddr().String() {
				t.Errorf("%s: remote %q, want the device's own %s", id, v.Remote, conn.LocalAddr())
			}
		}
	})

	t.Run("secure command through the balancer", func(t *testing.T) {
		d := newDevice311(t, g1, "lb-car-311")
		d.connect(false, lbPlain)
		d.query()
		g := gws[holder(t, gws, "lb-car-311")]
		secret := "UNLOCK-behind-haproxy-91c"
		id, status := postCommand(t, g, "lb-car-311", `{"topic":"devices/lb-car-311/commands/unlock","payload":"`+secret+`"}`)
		if status != "pending" {
			t.Fatalf("status %q, want pending (the POST answers once the command is stored)", status)
		}
		select {
		case in := <-d.controls:
			if in.Mode != control.ModeTLS || in.Addr != lbTLS {
				t.Fatalf("instruction %+v, want tls to the balancer %s", in, lbTLS)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no instruction")
		}
		c := nextCommand(t, d.cmds)
		if !c.tls || c.payload != secret {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g, id, "delivered")
		if e, ok := g.Registry().Get("lb-car-311"); !ok || e.Mode().String() != "tls" {
			t.Fatalf("after the upgrade the device is %+v on the gateway that had it", e)
		}
		if d.plain.contains([]byte(secret)) {
			t.Fatal("the secure command crossed the plain socket")
		}
	})

	t.Run("drain moves devices to the other gateway", func(t *testing.T) {
		type moving struct {
			d       *device5
			wantRef string
			mode    string
		}
		var devices []moving
		for i := range 4 {
			id := fmt.Sprintf("lb-move-%d", i)
			d := newDevice5(t, g1, id)
			if i%2 == 0 {
				d.connect(false, lbPlain)
				devices = append(devices, moving{d, "", "plain"})
			} else {
				d.connect(true, lbTLS)
				devices = append(devices, moving{d, "tls://" + lbTLS, "tls"})
			}
		}
		from := holder(t, gws, "lb-move-0")
		for _, m := range devices[1:] {
			if at := holder(t, gws, m.d.id); at != from {
				t.Fatalf("%s is on gw%d, lb-move-0 on gw%d: source hashing should keep one address on one gateway", m.d.id, at+1, from+1)
			}
		}
		drained, other := gws[from], gws[1-from]
		// Cross-gateway delivery needs the cluster mode (a shared store):
		// what is tested here is that the drained gateway keeps the command.
		parked, _ := postCommand(t, drained, "lb-parked", `{"topic":"devices/lb-parked/commands/x","payload":"waits"}`)

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- drained.Drain(ctx) }()
		eventually(t, time.Second, "/readyz 503 on the drained gateway", func() bool {
			return getJSON(t, drained, "/readyz", "", nil) == http.StatusServiceUnavailable
		})
		lb.waitServer(t, fmt.Sprintf("gw%d", from+1), "DOWN")
		if code := getJSON(t, other, "/readyz", "", nil); code != http.StatusOK {
			t.Fatalf("/readyz on the other gateway: %d", code)
		}

		for _, m := range devices {
			if m.wantRef == "" {
				// On plain: DISCONNECT 0x8B (a tcp:// reference over plain
				// would be ignored by the anti-downgrade rule); the device
				// comes back through the balancer, as after any close.
				select {
				case rc := <-m.d.gone:
					if rc != 0x8B {
						t.Errorf("%s: DISCONNECT %#x, want 0x8B", m.d.id, rc)
					}
					m.d.connect(false, lbPlain)
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: no DISCONNECT 0x8B", m.d.id)
				}
				continue
			}
			select {
			case ref := <-m.d.refs:
				if ref != m.wantRef {
					t.Errorf("%s: server reference %q, want %q", m.d.id, ref, m.wantRef)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no DISCONNECT 0x9C", m.d.id)
			}
		}
		if err := <-done; err != nil {
			t.Fatalf("Drain: %v", err)
		}
		// Each device is checked on its own, so a failure names the mode
		// that did not make it.
		arrived := func(m moving) bool {
			e, ok := other.Registry().Get(m.d.id)
			return ok && e.Mode().String() == m.mode
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, m := range devices {
			for !arrived(m) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if !arrived(m) {
				t.Errorf("%s (MQTT 5, %s) did not reconnect to the other gateway through the balancer", m.d.id, m.mode)
			}
			if _, ok := drained.Registry().Get(m.d.id); ok {
				t.Errorf("%s is still on the drained gateway", m.d.id)
			}
		}
		if n := drained.Registry().Len(); n != 0 {
			t.Fatalf("%d sessions left on the drained gateway", n)
		}
		if v := commandStatus(t, drained, parked); v.Status != "pending" {
			t.Fatalf("the parked command is %s on the drained gateway, want pending", v.Status)
		}
	})
}

// A device that reconnects at once after a drain closed it goes through
// the balancer to a gateway that is not draining. The 3.1.1 path: the
// drain closes the connection and the device comes back through HAProxy.
func TestHAProxyDrainReconnectAtOnce(t *testing.T) {
	gws, lb := startBehindHAProxy(t)
	const id = "lb-at-once"
	type outcome struct {
		c   mqtt.Client
		err error
	}
	again := make(chan outcome, 1)
	v3(t, "tcp://"+lb.setup.Plain, id, nil, func(o *mqtt.ClientOptions) {
		o.SetConnectionLostHandler(func(mqtt.Client, error) {
			go func() {
				c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + lb.setup.Plain).SetClientID(id).
					SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second))
				tok := c.Connect()
				err := errors.New("no CONNACK in time")
				if tok.WaitTimeout(6 * time.Second) {
					err = tok.Error()
				}
				again <- outcome{c, err}
			}()
		})
	})
	from := holder(t, gws, id)
	drained, other := gws[from], gws[1-from]

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := drained.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	var out outcome
	select {
	case out = <-again:
	case <-time.After(10 * time.Second):
		t.Fatal("the device was not closed by the drain")
	}
	defer out.c.Disconnect(50)
	if out.err != nil {
		st := lb.stats(t)
		name := fmt.Sprintf("dualgate_plain/gw%d", from+1)
		t.Fatalf("reconnecting at once through the balancer failed: %v; HAProxy sent %s connections to the draining gateway %s (status %s), which accepted and closed the reconnect: the drain moved the device before the balancer's health check saw /readyz fail",
			out.err, st[name]["stot"], name, st[name]["status"])
	}
	if at := holder(t, gws, id); gws[at] != other {
		t.Fatalf("the device is back on the drained gateway")
	}
}
