package gateway

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/dualgate/dualgate/mqttcodec"
)

// The attacker in these tests dials from 127.0.0.2, outside
// --proxy-trusted 127.0.0.1/32; the balancer dials from 127.0.0.1.
const attackerIP = "127.0.0.2"

// dialFrom opens a TCP connection from the local address ip, writes
// header first (none when nil) and, with tlsCfg, goes on with a TLS
// handshake, whose error it returns.
func dialFrom(t *testing.T, ip, addr string, header []byte, tlsCfg *tls.Config) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if len(header) > 0 {
		if _, err := conn.Write(header); err != nil {
			return nil, err
		}
	}
	if tlsCfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, tlsCfg)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

// connectRaw sends a 3.1.1 CONNECT for id on conn and reports whether a
// CONNACK 0 came back before the connection closed.
func connectRaw(t *testing.T, conn net.Conn, id string) bool {
	t.Helper()
	r := &raw{t: t, conn: conn, r: bufio.NewReader(conn), ver: 4}
	// The gateway may have closed the connection already: a failed write
	// is a refusal too.
	if _, err := conn.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte(id)})); err != nil {
		return false
	}
	p, err := r.next(5 * time.Second)
	return err == nil && p.Type == mqttcodec.CONNACK && p.Connack.ReasonCode == 0
}

// With --proxy-protocol optional, a client that is not a trusted balancer
// and sends a PROXY header is refused on the plain, TLS and single-port
// listeners; its forged address never reaches the API. Without a header it
// is served with its own address. The trusted balancer's headers still
// count.
func TestProxyUntrustedOptional(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.ProxyProtocol, c.ProxyTrusted = string(ProxyOptional), "127.0.0.1/32"
		c.ListenMux = "127.0.0.1:0"
	})
	tlsCfg := clientTLS(t, g)
	const forged = "198.51.100.66:4444"
	hdr := func(v byte) []byte { return proxyHeader(t, v, forged, "192.0.2.1:1883") }

	refused := 0
	expectRefused := func(what string) {
		t.Helper()
		refused++
		eventually(t, 5*time.Second, what+" counted", func() bool {
			return metric(t, g, "dualgate_proxy_untrusted_total") == float64(refused)
		})
	}

	// Plain: v1 and v2 headers, then CONNECT.
	for _, v := range []byte{1, 2} {
		conn, err := dialFrom(t, attackerIP, g.PlainAddr(), hdr(v), nil)
		if err == nil && connectRaw(t, conn, "forger-plain") {
			t.Fatalf("plain, v%d header from an untrusted source: CONNECT accepted", v)
		}
		expectRefused(fmt.Sprintf("plain v%d", v))
	}
	// TLS: the header comes before the handshake, which must fail.
	if _, err := dialFrom(t, attackerIP, g.TLSAddr(), hdr(2), tlsCfg); err == nil {
		t.Fatal("TLS, header from an untrusted source: handshake succeeded")
	}
	expectRefused("tls")
	// The single port, both ways.
	if conn, err := dialFrom(t, attackerIP, g.MuxAddr(), hdr(1), nil); err == nil && connectRaw(t, conn, "forger-mux") {
		t.Fatal("mux plain, header from an untrusted source: CONNECT accepted")
	}
	expectRefused("mux plain")
	if _, err := dialFrom(t, attackerIP, g.MuxAddr(), hdr(2), tlsCfg); err == nil {
		t.Fatal("mux TLS, header from an untrusted source: handshake succeeded")
	}
	expectRefused("mux tls")
	for _, id := range []string{"forger-plain", "forger-mux"} {
		if code := getJSON(t, g, "/v1/clients/"+id, "", nil); code != http.StatusNotFound {
			t.Fatalf("%s got in: GET client %d", id, code)
		}
	}

	// Untrusted without a header: served with its own address, on each
	// listener.
	for _, tc := range []struct {
		id, addr string
		tls      bool
	}{
		{"own-plain", g.PlainAddr(), false},
		{"own-tls", g.TLSAddr(), true},
		{"own-mux-plain", g.MuxAddr(), false},
		{"own-mux-tls", g.MuxAddr(), true},
	} {
		var tc5 *tls.Config
		if tc.tls {
			tc5 = tlsCfg
		}
		conn, err := dialFrom(t, attackerIP, tc.addr, nil, tc5)
		if err != nil {
			t.Fatalf("%s: %v", tc.id, err)
		}
		if _, err := dialV5(t, conn, &paho.Connect{ClientID: tc.id, KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatalf("%s: connect: %v", tc.id, err)
		}
		v := connectedClient(t, g, tc.id)
		if !strings.HasPrefix(v.Remote, attackerIP+":") {
			t.Fatalf("%s: remote %q, want its own address %s:port", tc.id, v.Remote, attackerIP)
		}
	}

	// The trusted balancer's header is still taken, on plain and TLS.
	conn := dialProxied(t, g.PlainAddr(), proxyHeader(t, 2, "203.0.113.5:5555", "192.0.2.1:1883"), nil)
	if _, err := dialV5(t, conn, &paho.Connect{ClientID: "via-lb", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("trusted header: %v", err)
	}
	if v := connectedClient(t, g, "via-lb"); v.Remote != "203.0.113.5:5555" {
		t.Fatalf("trusted header: remote %q", v.Remote)
	}
	conn = dialProxied(t, g.TLSAddr(), proxyHeader(t, 1, "203.0.113.6:6666", "192.0.2.1:8883"), tlsCfg)
	if _, err := dialV5(t, conn, &paho.Connect{ClientID: "via-lb-tls", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("trusted header over TLS: %v", err)
	}
	if v := connectedClient(t, g, "via-lb-tls"); v.Remote != "203.0.113.6:6666" {
		t.Fatalf("trusted header over TLS: remote %q", v.Remote)
	}
	if n := metric(t, g, "dualgate_proxy_untrusted_total"); n != float64(refused) {
		t.Fatalf("dualgate_proxy_untrusted_total = %v, want %d", n, refused)
	}
}

// With --proxy-protocol required, a source outside --proxy-trusted is
// refused whether or not it sends a header, on every listener.
func TestProxyUntrustedRequired(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.ProxyProtocol, c.ProxyTrusted = string(ProxyRequired), "127.0.0.1"
		c.ListenMux = "127.0.0.1:0"
	})
	tlsCfg := clientTLS(t, g)
	hdr := proxyHeader(t, 2, "198.51.100.67:4444", "192.0.2.1:1883")
	refused := 0
	for _, tc := range []struct {
		name, addr string
		header     []byte
		tls        bool
	}{
		{"plain, no header", g.PlainAddr(), nil, false},
		{"plain, header", g.PlainAddr(), hdr, false},
		{"tls, no header", g.TLSAddr(), nil, true},
		{"tls, header", g.TLSAddr(), hdr, true},
		{"mux, no header", g.MuxAddr(), nil, false},
		{"mux, header", g.MuxAddr(), hdr, true},
	} {
		var tc5 *tls.Config
		if tc.tls {
			tc5 = tlsCfg
		}
		conn, err := dialFrom(t, attackerIP, tc.addr, tc.header, tc5)
		if err == nil && !tc.tls && connectRaw(t, conn, "req-forger") {
			t.Fatalf("%s: CONNECT accepted from an untrusted source", tc.name)
		}
		if err == nil && tc.tls {
			t.Fatalf("%s: TLS handshake succeeded from an untrusted source", tc.name)
		}
		refused++
		eventually(t, 5*time.Second, tc.name+" counted", func() bool {
			return metric(t, g, "dualgate_proxy_untrusted_total") == float64(refused)
		})
	}
	if code := getJSON(t, g, "/v1/clients/req-forger", "", nil); code != http.StatusNotFound {
		t.Fatalf("the forger got in: GET client %d", code)
	}
}

// --proxy-protocol without --proxy-trusted, or with a bad entry, does not
// start.
func TestProxyTrustedRequired(t *testing.T) {
	for _, tc := range []struct {
		mode, trusted, want string
	}{
		{"optional", "", "needs --proxy-trusted"},
		{"required", "", "needs --proxy-trusted"},
		{"required", "10.0.0.0/33", "neither an IP address nor a CIDR"},
		{"optional", "lb.example.com", "neither an IP address nor a CIDR"},
	} {
		cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir(),
			ProxyProtocol: tc.mode, ProxyTrusted: tc.trusted}
		_, err := New(cfg, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("--proxy-protocol %s --proxy-trusted %q: error %v, want %q", tc.mode, tc.trusted, err, tc.want)
		}
	}
	cfg := Config{ProxyProtocol: "optional", ProxyTrusted: "10.0.0.0/8, 192.0.2.7,2001:db8::/32"}.withDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid --proxy-trusted refused: %v", err)
	}
}

// The attack --proxy-trusted stops: a client rotating forged PROXY
// addresses to walk around --per-ip-connect-rate, or spending a victim
// address's budget. Its headers are refused, so its CONNECTs all count
// against its own address, and the victim's budget is untouched.
func TestProxyForgedAddressesDoNotDodgeRateLimit(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.ProxyProtocol, c.ProxyTrusted = string(ProxyOptional), "127.0.0.1/32"
		c.PerIPRate, c.PerIPBurst = 0.001, 1 // one CONNECT per address, no refill during the test
	})
	const victim = "198.51.100.9"
	for i := range 5 {
		forged := fmt.Sprintf("203.0.113.%d:1000", i+1)
		if i == 4 {
			forged = victim + ":1000"
		}
		conn, err := dialFrom(t, attackerIP, g.PlainAddr(), proxyHeader(t, 1, forged, "192.0.2.1:1883"), nil)
		if err == nil && connectRaw(t, conn, fmt.Sprintf("rotor-%d", i)) {
			t.Fatalf("CONNECT behind forged address %s accepted", forged)
		}
	}
	eventually(t, 5*time.Second, "5 refusals counted", func() bool {
		return metric(t, g, "dualgate_proxy_untrusted_total") == 5
	})
	// Without a header the attacker has its own address's one CONNECT...
	conn, err := dialFrom(t, attackerIP, g.PlainAddr(), nil, nil)
	if err != nil || !connectRaw(t, conn, "rotor-own") {
		t.Fatalf("first CONNECT from the attacker's own address refused: %v", err)
	}
	// ...and no second.
	conn, err = dialFrom(t, attackerIP, g.PlainAddr(), nil, nil)
	if err == nil && connectRaw(t, conn, "rotor-again") {
		t.Fatal("second CONNECT from the same address accepted: the rate limit saw another address")
	}
	// The victim, behind the trusted balancer, still has its budget.
	lb := dialProxied(t, g.PlainAddr(), proxyHeader(t, 2, victim+":2000", "192.0.2.1:1883"), nil)
	if !connectRaw(t, lb, "victim") {
		t.Fatal("the victim's address was spent by the forger")
	}
	if v := connectedClient(t, g, "victim"); v.Remote != victim+":2000" {
		t.Fatalf("victim remote %q", v.Remote)
	}
}
