package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/dualgate/dualgate/mqttcodec"
)

// proxyHeader formats a PROXY protocol header of the given version (1 or
// 2) saying the connection came from src and was made to dst.
func proxyHeader(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	return formatHeader(t, newProxyHeader(t, version, src, dst))
}

// proxyHeaderTLV is a v2 header carrying n bytes of NOOP TLV, as
// balancers that add TLVs (TLS details, unique id, endpoint id) send.
func proxyHeaderTLV(t *testing.T, src, dst string, n int) []byte {
	t.Helper()
	h := newProxyHeader(t, 2, src, dst)
	if err := h.SetTLVs([]proxyproto.TLV{{Type: proxyproto.PP2_TYPE_NOOP, Value: make([]byte, n)}}); err != nil {
		t.Fatal(err)
	}
	return formatHeader(t, h)
}

func newProxyHeader(t *testing.T, version byte, src, dst string) *proxyproto.Header {
	t.Helper()
	s, err := net.ResolveTCPAddr("tcp", src)
	if err != nil {
		t.Fatal(err)
	}
	d, err := net.ResolveTCPAddr("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	return proxyproto.HeaderProxyFromAddrs(version, s, d)
}

func formatHeader(t *testing.T, h *proxyproto.Header) []byte {
	t.Helper()
	b, err := h.Format()
	if err != nil {
		t.Fatalf("PROXY v%d header: %v", h.Version, err)
	}
	return b
}

// dialProxied opens a TCP connection to addr that starts with header (none
// when nil) and, with tlsCfg, goes on with a TLS handshake: what a device
// behind a load balancer looks like to the gateway. The connection is
// closed at the end of the test.
func dialProxied(t *testing.T, addr string, header []byte, tlsCfg *tls.Config) net.Conn {
	t.Helper()
	conn, err := openProxied(addr, header, tlsCfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func openProxied(addr string, header []byte, tlsCfg *tls.Config) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if len(header) > 0 {
		if _, err := conn.Write(header); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	if tlsCfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, tlsCfg)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

// proxiedOpener makes paho.mqtt.golang open its connection with
// openProxied, so a real 3.1.1 client sends a PROXY header first.
func proxiedOpener(header []byte, tlsCfg *tls.Config) mqtt.OpenConnectionFunc {
	return func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		return openProxied(u.Host, header, tlsCfg)
	}
}

// metric reads one series from the gateway's /metrics, e.g.
// `dualgate_tls_handshakes_total{result="failed"}`; 0 when it is absent.
func metric(t *testing.T, g *Gateway, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + g.APIAddr() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %q: %v", series, line, err)
			}
			return v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return 0
}

// connectedClient returns GET /v1/clients/{id} for a device that must be
// connected.
func connectedClient(t *testing.T, g *Gateway, id string) clientView {
	t.Helper()
	var v clientView
	if code := getJSON(t, g, "/v1/clients/"+id, "", &v); code != http.StatusOK {
		t.Fatalf("GET client %s: %d", id, code)
	}
	if !v.Connected {
		t.Fatalf("client %s is not connected: %+v", id, v)
	}
	return v
}

// publish5 publishes at QoS 1 and fails the test unless it is acknowledged.
func publish5(t *testing.T, c *v5client, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("publish %s: %v %+v", topic, err, res)
	}
}

// Behind a load balancer the plain listener takes the device's address
// from the PROXY header (v1 or v2, whole or split over several writes);
// "required" closes and counts a connection without one, and a malformed
// header is closed and counted too.
func TestProxyProtocolPlain(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.ProxyProtocol, c.ProxyTrusted = string(ProxyRequired), "127.0.0.1/32" })
	connect := func(id string) []byte {
		return mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte(id)})
	}

	// v1, with CONNECT in the same segment.
	r := dialRaw(t, g.PlainAddr())
	r.ver = 4
	r.send(append(proxyHeader(t, 1, "203.0.113.7:40001", "192.0.2.1:1883"), connect("pp-v1")...))
	if p := r.read(5 * time.Second); p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != 0 {
		t.Fatalf("v1: got %s %#x, want CONNACK 0", p.Type, p.Connack.ReasonCode)
	}
	if v := connectedClient(t, g, "pp-v1"); v.Remote != "203.0.113.7:40001" || v.Mode != "plain" {
		t.Fatalf("v1: client view %+v, want remote 203.0.113.7:40001", v)
	}

	// v2 with IPv6 addresses, then a real MQTT 5 client on the same socket.
	conn := dialProxied(t, g.PlainAddr(), proxyHeader(t, 2, "[2001:db8::17]:4242", "[2001:db8::1]:1883"), nil)
	c5, err := dialV5(t, conn, &paho.Connect{ClientID: "pp-v2", KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("v2: connect: %v", err)
	}
	publish5(t, c5, "pp/v2", "hello")
	if v := connectedClient(t, g, "pp-v2"); v.Remote != "[2001:db8::17]:4242" || v.Protocol != 5 {
		t.Fatalf("v2: client view %+v, want remote [2001:db8::17]:4242", v)
	}

	// A real 3.1.1 client behind a v2 header.
	v3(t, "tcp://"+g.PlainAddr(), "pp-v2-311", nil, func(o *mqtt.ClientOptions) {
		o.SetCustomOpenConnectionFn(proxiedOpener(proxyHeader(t, 2, "198.51.100.23:61000", "192.0.2.1:1883"), nil))
	})
	if v := connectedClient(t, g, "pp-v2-311"); v.Remote != "198.51.100.23:61000" || v.Protocol != 4 {
		t.Fatalf("3.1.1 behind v2: client view %+v", v)
	}

	// A v2 header with TLVs, longer than the v1 maximum and than one read.
	conn = dialProxied(t, g.PlainAddr(), proxyHeaderTLV(t, "198.51.100.24:61001", "192.0.2.1:1883", 600), nil)
	if _, err := dialV5(t, conn, &paho.Connect{ClientID: "pp-tlv", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("v2 with TLVs: connect: %v", err)
	}
	if v := connectedClient(t, g, "pp-tlv"); v.Remote != "198.51.100.24:61001" {
		t.Fatalf("v2 with TLVs: remote %q", v.Remote)
	}

	// A header that arrives in pieces, the last piece with the start of
	// CONNECT: the gateway waits for the whole header.
	for _, tc := range []struct {
		version byte
		src     string
	}{
		{1, "203.0.113.50:1111"},
		{2, "203.0.113.51:2222"},
	} {
		id := fmt.Sprintf("pp-split-v%d", tc.version)
		r := dialRaw(t, g.PlainAddr())
		r.ver = 4
		b := append(proxyHeader(t, tc.version, tc.src, "192.0.2.1:1883"), connect(id)...)
		h := len(b) - len(connect(id))
		for _, piece := range [][]byte{b[:3], b[3 : h-2], b[h-2 : h+3], b[h+3:]} {
			r.send(piece)
			time.Sleep(30 * time.Millisecond)
		}
		if p := r.read(5 * time.Second); p.Type != mqttcodec.CONNACK {
			t.Fatalf("split v%d: got %s, want CONNACK", tc.version, p.Type)
		}
		if v := connectedClient(t, g, id); v.Remote != tc.src {
			t.Fatalf("split v%d: remote %q, want %s", tc.version, v.Remote, tc.src)
		}
	}

	// A LOCAL command (the balancer's own health check) keeps the socket's
	// address.
	local := formatHeader(t, &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC})
	r = dialRaw(t, g.PlainAddr())
	r.ver = 4
	r.send(append(local, connect("pp-local")...))
	if p := r.read(5 * time.Second); p.Type != mqttcodec.CONNACK {
		t.Fatalf("LOCAL: got %s, want CONNACK", p.Type)
	}
	if v := connectedClient(t, g, "pp-local"); v.Remote != r.conn.LocalAddr().String() {
		t.Fatalf("LOCAL: remote %q, want the socket's %s", v.Remote, r.conn.LocalAddr())
	}

	// Refused: no header at all, a malformed v1 line, a v2 header of an
	// unknown version, a v1 line with no end.
	badV2 := proxyHeader(t, 2, "203.0.113.9:9", "192.0.2.1:1883")
	badV2[12] = 0x31 // version 3, command PROXY
	refused := []struct {
		name string
		b    []byte
	}{
		{"no header", connect("pp-bare")},
		{"malformed v1", append([]byte("PROXY TCP4 300.1.2.3 192.0.2.1 1 1883\r\n"), connect("pp-bad1")...)},
		{"bad v2 version", append(badV2, connect("pp-bad2")...)},
		{"endless v1", []byte("PROXY TCP4 " + strings.Repeat("9", 200))},
	}
	for i, tc := range refused {
		r := dialRaw(t, g.PlainAddr())
		r.ver = 4
		r.send(tc.b)
		if p, err := r.next(3 * time.Second); err == nil {
			t.Fatalf("%s: got %s, want the connection closed", tc.name, p.Type)
		}
		if _, closed := r.closedWithin(3 * time.Second); !closed {
			t.Fatalf("%s: connection stayed open", tc.name)
		}
		if n := metric(t, g, "dualgate_proxy_header_errors_total"); n != float64(i+1) {
			t.Fatalf("%s: dualgate_proxy_header_errors_total = %v, want %d", tc.name, n, i+1)
		}
	}
	for _, id := range []string{"pp-bare", "pp-bad1", "pp-bad2"} {
		if code := getJSON(t, g, "/v1/clients/"+id, "", nil); code != http.StatusNotFound {
			t.Fatalf("%s got in: GET client %d", id, code)
		}
	}
	if g.Stats().Connects.Load() != 7 {
		t.Fatalf("connects = %d, want 7", g.Stats().Connects.Load())
	}
}

// "optional" takes a header when there is one and serves a connection
// without one as it is.
func TestProxyProtocolOptional(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.ProxyProtocol, c.ProxyTrusted = string(ProxyOptional), "127.0.0.1/32" })

	var bare net.Conn
	v3(t, "tcp://"+g.PlainAddr(), "opt-bare", nil, func(o *mqtt.ClientOptions) {
		o.SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			c, err := openProxied(u.Host, nil, nil)
			bare = c
			return c, err
		})
	})
	if v := connectedClient(t, g, "opt-bare"); v.Remote != bare.LocalAddr().String() {
		t.Fatalf("no header: remote %q, want the socket's %s", v.Remote, bare.LocalAddr())
	}

	conn := dialProxied(t, g.PlainAddr(), proxyHeader(t, 1, "203.0.113.77:7777", "192.0.2.1:1883"), nil)
	if _, err := dialV5(t, conn, &paho.Connect{ClientID: "opt-v1", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("v1 header: %v", err)
	}
	if v := connectedClient(t, g, "opt-v1"); v.Remote != "203.0.113.77:7777" {
		t.Fatalf("v1 header: remote %q", v.Remote)
	}

	// Optional is not lenient about a header that starts right and goes wrong.
	r := dialRaw(t, g.PlainAddr())
	r.send([]byte("PROXY TCP4 nonsense\r\n"))
	if _, closed := r.closedWithin(3 * time.Second); !closed {
		t.Fatal("malformed header: connection stayed open")
	}
	if n := metric(t, g, "dualgate_proxy_header_errors_total"); n != 1 {
		t.Fatalf("dualgate_proxy_header_errors_total = %v, want 1", n)
	}
}

// On the TLS listener the header comes before the handshake; the session
// reports the header's source. Without a header ("required") the
// handshake fails and is counted as failed.
func TestProxyProtocolTLS(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.ProxyProtocol, c.ProxyTrusted = string(ProxyRequired), "127.0.0.1/32" })
	tlsCfg := clientTLS(t, g)

	conn := dialProxied(t, g.TLSAddr(), proxyHeader(t, 2, "198.51.100.200:50505", "192.0.2.1:8883"), tlsCfg)
	c5, err := dialV5(t, conn, &paho.Connect{ClientID: "tls-pp-v2", KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("v2 + TLS: %v", err)
	}
	publish5(t, c5, "tls/pp", "over tls")
	if v := connectedClient(t, g, "tls-pp-v2"); v.Remote != "198.51.100.200:50505" || v.Mode != "tls" {
		t.Fatalf("v2 + TLS: client view %+v", v)
	}

	v3(t, "ssl://"+g.TLSAddr(), "tls-pp-v1", nil, func(o *mqtt.ClientOptions) {
		o.SetCustomOpenConnectionFn(proxiedOpener(proxyHeader(t, 1, "203.0.113.8:4000", "192.0.2.1:8883"), tlsCfg))
	})
	if v := connectedClient(t, g, "tls-pp-v1"); v.Remote != "203.0.113.8:4000" || v.Mode != "tls" || v.Protocol != 4 {
		t.Fatalf("v1 + TLS 3.1.1: client view %+v", v)
	}

	conn = dialProxied(t, g.TLSAddr(), proxyHeaderTLV(t, "198.51.100.201:50506", "192.0.2.1:8883", 600), tlsCfg)
	if _, err := dialV5(t, conn, &paho.Connect{ClientID: "tls-pp-tlv", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("v2 with TLVs + TLS: %v", err)
	}
	if v := connectedClient(t, g, "tls-pp-tlv"); v.Remote != "198.51.100.201:50506" {
		t.Fatalf("v2 with TLVs + TLS: remote %q", v.Remote)
	}

	if _, err := openProxied(g.TLSAddr(), nil, tlsCfg); err == nil {
		t.Fatal("a TLS connection without a PROXY header was served")
	}
	eventually(t, 5*time.Second, "the failed handshake counted", func() bool {
		return metric(t, g, `dualgate_tls_handshakes_total{result="failed"}`) == 1
	})
	if full := metric(t, g, `dualgate_tls_handshakes_total{result="full"}`); full != 3 {
		t.Fatalf("full handshakes %v, want 3", full)
	}
}

// One port serves both: the first byte tells TLS from plain MQTT, after a
// PROXY header when one is configured.
func TestListenMux(t *testing.T) {
	for _, tc := range []struct {
		name   string
		proxy  ProxyMode
		header bool
		tlv    int // bytes of TLV in v2 headers
	}{
		{name: "no proxy protocol", proxy: ProxyOff},
		{name: "optional, no header", proxy: ProxyOptional},
		{name: "optional, with header", proxy: ProxyOptional, header: true},
		// Balancers may add TLVs: the header can be longer than one peek.
		{name: "required, v2 header with TLVs", proxy: ProxyRequired, header: true, tlv: 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, func(c *Config) {
				c.ListenMux = "127.0.0.1:0"
				c.ProxyProtocol, c.ProxyTrusted = string(tc.proxy), "127.0.0.1"
			})
			if g.MuxAddr() == "" || g.MuxAddr() == g.PlainAddr() || g.MuxAddr() == g.TLSAddr() {
				t.Fatalf("mux address %q (plain %s, tls %s)", g.MuxAddr(), g.PlainAddr(), g.TLSAddr())
			}
			// The subscriber is on TLS: what the TLS device publishes is
			// never written to a plain socket.
			got := newCollector()
			sub := v3(t, "ssl://"+g.TLSAddr(), "mux-sub", clientTLS(t, g), func(o *mqtt.ClientOptions) {
				if tc.proxy == ProxyRequired {
					o.SetCustomOpenConnectionFn(proxiedOpener(proxyHeader(t, 1, "192.0.2.99:1", "192.0.2.1:8883"), clientTLS(t, g)))
				}
			})
			if tok := sub.Subscribe("mux/#", 1, got.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}

			var plainHdr, tlsHdr []byte
			plainSrc, tlsSrc := "", ""
			if tc.header {
				plainSrc, tlsSrc = "203.0.113.60:6000", "[2001:db8::60]:6001"
				plainHdr = proxyHeader(t, 1, plainSrc, "192.0.2.1:443")
				tlsHdr = proxyHeader(t, 2, tlsSrc, "[2001:db8::1]:443")
			}
			if tc.tlv > 0 {
				plainHdr = proxyHeaderTLV(t, plainSrc, "192.0.2.1:443", tc.tlv)
				tlsHdr = proxyHeaderTLV(t, tlsSrc, "[2001:db8::1]:443", tc.tlv)
			}
			var plainConn net.Conn
			p3 := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + g.MuxAddr()).SetClientID("mux-plain-311").
				SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
				SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
					c, err := openProxied(u.Host, plainHdr, nil)
					plainConn = c
					return c, err
				}))
			if tok := p3.Connect(); !tok.WaitTimeout(6*time.Second) || tok.Error() != nil {
				t.Fatalf("3.1.1 over plain on the shared port, after a %d-byte PROXY header: no CONNACK (%v)", len(plainHdr), tok.Error())
			}
			t.Cleanup(func() { p3.Disconnect(100) })
			if tok := p3.Publish("mux/plain", 1, false, "plain on the shared port"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("3.1.1 publish: %v", tok.Error())
			}
			tlsConn := dialProxied(t, g.MuxAddr(), tlsHdr, clientTLS(t, g))
			c5, err := dialV5(t, tlsConn, &paho.Connect{ClientID: "mux-tls-5", KeepAlive: 30, CleanStart: true})
			if err != nil {
				t.Fatalf("v5 over TLS on the shared port: %v", err)
			}
			publish5(t, c5, "mux/tls", "tls on the shared port")

			want := map[string]string{"mux/plain": "plain on the shared port", "mux/tls": "tls on the shared port"}
			for range 2 {
				m := got.next(t, 5*time.Second)
				if want[m.Topic()] != string(m.Payload()) {
					t.Fatalf("subscriber got %s %q", m.Topic(), m.Payload())
				}
				delete(want, m.Topic())
			}

			if plainSrc == "" {
				plainSrc, tlsSrc = plainConn.LocalAddr().String(), tlsConn.LocalAddr().String()
			}
			if v := connectedClient(t, g, "mux-plain-311"); v.Mode != "plain" || v.Protocol != 4 || v.Remote != plainSrc {
				t.Fatalf("plain device: %+v, want plain 4 from %s", v, plainSrc)
			}
			if v := connectedClient(t, g, "mux-tls-5"); v.Mode != "tls" || v.Protocol != 5 || v.Remote != tlsSrc {
				t.Fatalf("TLS device: %+v, want tls 5 from %s", v, tlsSrc)
			}
			for mode, n := range map[string]float64{"plain": 1, "tls": 1} {
				if got := metric(t, g, `dualgate_mux_connections_total{mode="`+mode+`"}`); got != n {
					t.Fatalf("mux connections %s = %v, want %v", mode, got, n)
				}
			}
		})
	}
}

// Shutdown does not leave behind the goroutine that waits for the first
// bytes of a single-port connection: a device that connected and has
// said nothing yet is closed, and nothing of the gateway keeps running.
func TestListenMuxShutdown(t *testing.T) {
	ignore := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
	}
	g := startGateway(t, func(c *Config) { c.ListenMux = "127.0.0.1:0" })
	silent := dialProxied(t, g.MuxAddr(), nil, nil)
	eventually(t, 5*time.Second, "the silent connection accepted", func() bool {
		err := goleak.Find(ignore...)
		return err != nil && strings.Contains(err.Error(), "routeMux")
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	_ = silent.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the silent connection was not closed by Shutdown: %v", err)
	}
	if err := goleak.Find(ignore...); err != nil {
		t.Fatalf("goroutines still running after Shutdown: %v", err)
	}
}
