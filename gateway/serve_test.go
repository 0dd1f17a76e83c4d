package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Devices on either transport and either protocol version reach a TLS
// subscriber through the gateway (what is published over TLS never reaches
// a plain one: secure_data_test.go), and the API knows where each one is.
func TestPlainAndTLSBothVersions(t *testing.T) {
	g := startGateway(t, nil)
	got := newCollector()
	sub := v3(t, "ssl://"+g.TLSAddr(), "sub-tls-311", clientTLS(t, g), nil)
	if tok := sub.Subscribe("demo/#", 1, got.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	pub311 := v3(t, "ssl://"+g.TLSAddr(), "pub-tls-311", clientTLS(t, g), nil)
	if tok := pub311.Publish("demo/a", 1, false, "from 3.1.1 over tls"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	m := got.next(t, 5*time.Second)
	if m.Topic() != "demo/a" || string(m.Payload()) != "from 3.1.1 over tls" || m.Qos() != 1 {
		t.Fatalf("got %s %q qos %d", m.Topic(), m.Payload(), m.Qos())
	}

	for _, tc := range []struct {
		name string
		dial func(*testing.T, *Gateway, *paho.Connect) *v5client
		mode string
	}{
		{"v5-plain", v5Plain, "plain"},
		{"v5-tls", v5TLS, "tls"},
	} {
		c := tc.dial(t, g, &paho.Connect{ClientID: tc.name, KeepAlive: 30, CleanStart: true})
		if c.connack.ReasonCode != 0 || c.connack.Properties.ReceiveMaximum == nil ||
			c.connack.Properties.MaximumPacketSize == nil {
			t.Fatalf("%s: CONNACK %+v", tc.name, c.connack)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := c.Publish(ctx, &paho.Publish{Topic: "demo/" + tc.name, QoS: 1, Payload: []byte(tc.name)})
		cancel()
		if err != nil || res.ReasonCode != 0 {
			t.Fatalf("%s publish: %v %+v", tc.name, err, res)
		}
		if m := got.next(t, 5*time.Second); m.Topic() != "demo/"+tc.name || string(m.Payload()) != tc.name {
			t.Fatalf("%s: subscriber got %s %q", tc.name, m.Topic(), m.Payload())
		}
		var view clientView
		if code := getJSON(t, g, "/v1/clients/"+tc.name, "", &view); code != http.StatusOK {
			t.Fatalf("GET client %s: %d", tc.name, code)
		}
		if !view.Connected || view.Mode != tc.mode || view.Protocol != 5 || view.Remote == "" || view.Since.IsZero() {
			t.Fatalf("%s: client view %+v", tc.name, view)
		}
	}

	var view clientView
	getJSON(t, g, "/v1/clients/sub-tls-311", "", &view)
	if view.Mode != "tls" || view.Protocol != 4 {
		t.Fatalf("sub-tls-311 view %+v", view)
	}
	var st statsView
	if code := getJSON(t, g, "/v1/stats", "", &st); code != http.StatusOK {
		t.Fatalf("stats: %d", code)
	}
	if st.Connections["plain"] != 1 || st.Connections["tls"] != 3 {
		t.Fatalf("stats connections %v, want 1 plain 3 tls", st.Connections)
	}
	if code := getJSON(t, g, "/v1/clients/nobody", "", nil); code != http.StatusNotFound {
		t.Fatalf("unknown client: %d, want 404", code)
	}
}

// Subscriptions answer one code per filter: QoS 2 and shared
// subscriptions are granted, the gateway's reserved topics refused.
func TestSubscribeCodes(t *testing.T) {
	g := startGateway(t, nil)
	r := dialRaw(t, g.PlainAddr())
	r.connect(&mqttcodec.Connect{ProtocolVersion: 5, CleanStart: true, KeepAlive: 30, ClientID: []byte("subber")})
	r.send(mqttcodec.AppendSubscribe(nil, 5, &mqttcodec.Subscribe{PacketID: 7, Subscriptions: []mqttcodec.Subscription{
		{Filter: []byte("a/+/c"), QoS: 2},
		{Filter: []byte("$share/g/x"), QoS: 1},
		{Filter: []byte("$dualgate/control"), QoS: 1},
		{Filter: []byte("b/#"), QoS: 0},
	}}))
	p := r.read(5 * time.Second)
	if p.Type != mqttcodec.SUBACK || p.Suback.PacketID != 7 {
		t.Fatalf("got %s, want SUBACK 7", p.Type)
	}
	want := []mqttcodec.ReasonCode{2, 1, 0x87, 0}
	if fmt.Sprint(p.Suback.ReasonCodes) != fmt.Sprint(want) {
		t.Fatalf("SUBACK reasons %v, want %v", p.Suback.ReasonCodes, want)
	}
	r.send(mqttcodec.AppendUnsubscribe(nil, 5, &mqttcodec.Unsubscribe{PacketID: 8, Filters: [][]byte{[]byte("a/+/c"), []byte("never")}}))
	p = r.read(5 * time.Second)
	if p.Type != mqttcodec.UNSUBACK || fmt.Sprint(p.Unsuback.ReasonCodes) != fmt.Sprint([]mqttcodec.ReasonCode{0, 0x11}) {
		t.Fatalf("UNSUBACK %s %v", p.Type, p.Unsuback.ReasonCodes)
	}

	// 3.1.1 has one failure code for every refusal.
	r = dialRaw(t, g.PlainAddr())
	r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte("subber311")})
	r.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{
		{Filter: []byte("x/#"), QoS: 1}, {Filter: []byte("$dualgate/control"), QoS: 1},
	}}))
	p = r.read(5 * time.Second)
	if fmt.Sprint(p.Suback.ReasonCodes) != fmt.Sprint([]mqttcodec.ReasonCode{1, 0x80}) {
		t.Fatalf("3.1.1 SUBACK %v", p.Suback.ReasonCodes)
	}
}

// A second connection with the same client id takes the session over: the
// first is closed (MQTT 5: DISCONNECT 0x8E) and exactly one entry is live.
func TestTakeover(t *testing.T) {
	g := startGateway(t, nil)
	first := v5Plain(t, g, &paho.Connect{ClientID: "dev-1", KeepAlive: 30, CleanStart: true})
	second := v5TLS(t, g, &paho.Connect{ClientID: "dev-1", KeepAlive: 30, CleanStart: true})
	select {
	case d := <-first.disconnect:
		if d.ReasonCode != 0x8E {
			t.Fatalf("first got DISCONNECT %#x, want 0x8E", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first connection was not told it was taken over")
	}
	eventually(t, 5*time.Second, "one live entry", func() bool { return g.Registry().Len() == 1 })
	e, ok := g.Registry().Get("dev-1")
	if !ok || e.Mode().String() != "tls" {
		t.Fatalf("registry entry %+v", e)
	}
	_ = second

	// 3.1.1: the old connection is closed.
	lost := make(chan struct{})
	v3(t, "tcp://"+g.PlainAddr(), "dev-2", nil, func(o *mqtt.ClientOptions) {
		o.SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) })
	})
	v3(t, "tcp://"+g.PlainAddr(), "dev-2", nil, nil)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("3.1.1 connection was not closed on takeover")
	}
	if g.Stats().Takeovers.Load() != 2 {
		t.Fatalf("takeovers = %d, want 2", g.Stats().Takeovers.Load())
	}
}

// Many connections racing for one client id leave exactly one live entry.
func TestTakeoverStorm(t *testing.T) {
	g := startGateway(t, nil)
	const n = 20
	done := make(chan struct{}, n)
	for range n {
		go func() {
			defer func() { done <- struct{}{} }()
			conn, err := net.Dial("tcp", g.PlainAddr())
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = conn.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte("same")}))
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 64)
			for {
				if _, err := conn.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	eventually(t, 10*time.Second, "every racer answered", func() bool {
		return g.Stats().Connects.Load() == n
	})
	if g.Registry().Len() != 1 {
		t.Fatalf("registry has %d entries, want 1", g.Registry().Len())
	}
	for range n {
		<-done
	}
	eventually(t, 5*time.Second, "empty registry", func() bool { return g.Registry().Len() == 0 })
}

// A device that stops talking is closed after 1.5x its keepalive; one that
// never sends CONNECT is closed after the CONNECT deadline.
func TestDeadlines(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.ConnectTimeout = 500 * time.Millisecond })

	r := dialRaw(t, g.PlainAddr())
	r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 1, ClientID: []byte("sleepy")})
	took, closed := r.closedWithin(6 * time.Second)
	if !closed {
		t.Fatal("silent device was not closed")
	}
	if took < 1400*time.Millisecond {
		t.Fatalf("closed after %s, before 1.5x keepalive", took)
	}

	// Pings keep a device alive past its keepalive.
	r = dialRaw(t, g.PlainAddr())
	r.connect(&mqttcodec.Connect{ProtocolVersion: 5, CleanStart: true, KeepAlive: 1, ClientID: []byte("pinger")})
	for range 4 {
		time.Sleep(600 * time.Millisecond)
		r.send(mqttcodec.AppendPingreq(nil))
		if p := r.read(2 * time.Second); p.Type != mqttcodec.PINGRESP {
			t.Fatalf("got %s, want PINGRESP", p.Type)
		}
	}

	r = dialRaw(t, g.PlainAddr())
	if _, closed := r.closedWithin(4 * time.Second); !closed {
		t.Fatal("connection without CONNECT was not closed")
	}
	if g.Stats().ConnectTimeouts.Load() == 0 || g.Stats().KeepAliveTimeouts.Load() == 0 {
		t.Fatalf("counters: connect timeouts %d, keepalive timeouts %d",
			g.Stats().ConnectTimeouts.Load(), g.Stats().KeepAliveTimeouts.Load())
	}
}

// An MQTT 5 device with keepalive above the gateway's maximum is told the
// server's keepalive in CONNACK.
func TestServerKeepAlive(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxKeepAlive = 120 })
	c := v5Plain(t, g, &paho.Connect{ClientID: "slow", KeepAlive: 600, CleanStart: true})
	if ka := c.connack.Properties.ServerKeepAlive; ka == nil || *ka != 120 {
		t.Fatalf("Server Keep Alive = %v, want 120", ka)
	}
}

func writeSecrets(t *testing.T, secrets map[string]string) string {
	t.Helper()
	var b strings.Builder
	for id, s := range secrets {
		fmt.Fprintf(&b, "%s %s\n", id, s)
	}
	p := filepath.Join(t.TempDir(), "secrets")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// With token authentication, a valid token connects once; a wrong secret,
// an expired token or a replay is refused with the right code.
func TestTokenAuth(t *testing.T) {
	const secretHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	path := writeSecrets(t, map[string]string{"car-1": secretHex})
	g := startGateway(t, func(c *Config) { c.Auth = "token"; c.Secrets = path })
	secrets, err := auth.LoadSecretsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	good := control.MakeToken(secrets["car-1"], "car-1", time.Now(), "nonce0001")

	c := v3(t, "tcp://"+g.PlainAddr(), "car-1", nil, func(o *mqtt.ClientOptions) {
		o.SetUsername("car-1").SetPassword(good)
	})
	c.Disconnect(100)

	// The same token again is a replay: not authorized (3.1.1 return code 5).
	o := mqtt.NewClientOptions().AddBroker("tcp://" + g.PlainAddr()).SetClientID("car-1").
		SetUsername("car-1").SetPassword(good).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	tok := mqtt.NewClient(o).Connect()
	tok.WaitTimeout(5 * time.Second)
	if tok.Error() == nil || !strings.Contains(tok.Error().Error(), "not Authorized") {
		t.Fatalf("replayed token: %v, want not authorized", tok.Error())
	}

	// MQTT 5: wrong secret and an old token get 0x86.
	wrong := control.MakeToken([]byte("not the secret"), "car-1", time.Now(), "nonce0002")
	old := control.MakeToken(secrets["car-1"], "car-1", time.Now().Add(-time.Hour), "nonce0003")
	for name, pw := range map[string]string{"wrong secret": wrong, "expired": old} {
		conn, err := net.Dial("tcp", g.PlainAddr())
		if err != nil {
			t.Fatal(err)
		}
		vc, err := dialV5(t, conn, &paho.Connect{ClientID: "car-1", CleanStart: true, KeepAlive: 30,
			UsernameFlag: true, Username: "car-1", PasswordFlag: true, Password: []byte(pw)})
		if err == nil || vc.connack == nil || vc.connack.ReasonCode != 0x86 {
			t.Fatalf("%s: err %v connack %+v, want 0x86", name, err, vc.connack)
		}
		conn.Close()
	}
	if n, m := g.Stats().Refused[0x86].Load(), g.Stats().Refused[0x87].Load(); n != 2 || m != 1 {
		t.Fatalf("refused with 0x86: %d (want 2), with 0x87: %d (want 1)", n, m)
	}
}

// Packets over the maximum size end the session with 0x95 (MQTT 5) and
// cost nothing else.
func TestOversizedPacket(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxPacketSize = 1024 })
	r := dialRaw(t, g.PlainAddr())
	ack := r.connect(&mqttcodec.Connect{ProtocolVersion: 5, CleanStart: true, KeepAlive: 30, ClientID: []byte("big")})
	if !ack.Properties.Has(mqttcodec.PropMaximumPacketSize) || ack.Properties.MaximumPacketSize != 1024 {
		t.Fatalf("CONNACK maximum packet size %d", ack.Properties.MaximumPacketSize)
	}
	// Only the header is sent: the gateway refuses before the body arrives.
	pub := mqttcodec.AppendPublish(nil, 5, &mqttcodec.Publish{Topic: []byte("t"), QoS: 1, PacketID: 1, Payload: make([]byte, 4096)})
	r.send(pub[:8])
	p := r.read(5 * time.Second)
	if p.Type != mqttcodec.DISCONNECT || p.Disconnect.ReasonCode != mqttcodec.PacketTooLarge {
		t.Fatalf("got %s %#x, want DISCONNECT 0x95", p.Type, p.Disconnect.ReasonCode)
	}
	if _, closed := r.closedWithin(3 * time.Second); !closed {
		t.Fatal("connection stayed open")
	}

	r = dialRaw(t, g.PlainAddr())
	r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte("big311")})
	r.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{Topic: []byte("t"), Payload: make([]byte, 4096)}))
	if _, closed := r.closedWithin(3 * time.Second); !closed {
		t.Fatal("3.1.1 connection stayed open")
	}
	// The gateway still serves.
	v3(t, "tcp://"+g.PlainAddr(), "after", nil, nil)
}

// Garbage, an HTTP request, a wrong protocol level: each connection is
// closed (with the CONNACK the specification asks for where there is one)
// and the gateway keeps serving.
func TestBadInput(t *testing.T) {
	g := startGateway(t, nil)
	for name, b := range map[string][]byte{
		"http":    []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"zeros":   make([]byte, 64),
		"publish": mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{Topic: []byte("t")}),
		"varint":  {0x10, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		r := dialRaw(t, g.PlainAddr())
		r.send(b)
		if _, closed := r.closedWithin(3 * time.Second); !closed {
			t.Fatalf("%s: connection stayed open", name)
		}
	}

	// Protocol level 3 (MQTT 3.1) gets the 3.1.1 CONNACK 0x01.
	r := dialRaw(t, g.PlainAddr())
	connect := mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("old")})
	connect[8] = 3 // the level byte after 0x10, length, 0x00 0x04 "MQTT"
	r.send(connect)
	r.ver = 4
	p := r.read(3 * time.Second)
	if p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != 1 {
		t.Fatalf("got %s code %d, want CONNACK 1", p.Type, p.Connack.ReasonCode)
	}

	// A client id the gateway cannot use.
	r = dialRaw(t, g.PlainAddr())
	r.ver = 5
	r.send(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 5, CleanStart: true, ClientID: []byte("a/b")}))
	if p := r.read(3 * time.Second); p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != mqttcodec.ClientIdentifierNotValid {
		t.Fatalf("got %s %#x, want CONNACK 0x85", p.Type, p.Connack.ReasonCode)
	}

	if g.Stats().MalformedPackets.Load() == 0 {
		t.Fatal("malformed packets were not counted")
	}
	v3(t, "tcp://"+g.PlainAddr(), "still-here", nil, nil)
}

// QoS 2 from a device completes its four-packet exchange and the message
// is delivered once, at QoS 2 to a subscriber granted QoS 2.
func TestQoS2FromDevice(t *testing.T) {
	g := startGateway(t, nil)
	got := newCollector()
	sub := v3(t, "tcp://"+g.PlainAddr(), "q2-sub", nil, nil)
	sub.Subscribe("q2/#", 2, got.handler).Wait()
	c := v5Plain(t, g, &paho.Connect{ClientID: "q2-pub", KeepAlive: 30, CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Publish(ctx, &paho.Publish{Topic: "q2/x", QoS: 2, Payload: []byte("once")})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("QoS 2 publish: %v %+v", err, res)
	}
	if m := got.next(t, 5*time.Second); string(m.Payload()) != "once" || m.Qos() != 2 {
		t.Fatalf("got %q qos %d", m.Payload(), m.Qos())
	}
	select {
	case m := <-got.ch:
		t.Fatalf("delivered twice: %q", m.Payload())
	case <-time.After(200 * time.Millisecond):
	}
}

// A persistent MQTT 5 session keeps its subscriptions across a reconnect.
func TestPersistentSession(t *testing.T) {
	g := startGateway(t, nil)
	expiry := uint32(60)
	c := v5Plain(t, g, &paho.Connect{ClientID: "keeper", KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "keep/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(&paho.Disconnect{ReasonCode: 0}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "session gone", func() bool { return g.Registry().Len() == 0 })

	again := v5Plain(t, g, &paho.Connect{ClientID: "keeper", KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	if !again.connack.SessionPresent {
		t.Fatal("session not present after reconnect")
	}
	pub := v3(t, "tcp://"+g.PlainAddr(), "keep-pub", nil, nil)
	pub.Publish("keep/1", 1, false, "still subscribed").Wait()
	select {
	case p := <-again.received:
		if string(p.Payload) != "still subscribed" {
			t.Fatalf("got %q", p.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("resumed session did not receive")
	}
}

// The API needs the bearer token when one is set (/metrics too); health
// endpoints do not.
func TestAPIToken(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.APIToken = "s3cret" })
	var e map[string]string
	if code := getJSON(t, g, "/v1/stats", "", &e); code != http.StatusUnauthorized || e["error"] == "" {
		t.Fatalf("no token: %d %v", code, e)
	}
	if code := getJSON(t, g, "/v1/stats", "wrong", &e); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	var st statsView
	if code := getJSON(t, g, "/v1/stats", "s3cret", &st); code != http.StatusOK || st.Memory["rss_bytes"] == 0 {
		t.Fatalf("with token: %d %+v", code, st)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code := getJSON(t, g, p, "", nil); code != http.StatusOK {
			t.Fatalf("%s: %d", p, code)
		}
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+g.APIAddr()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := new(bytes.Buffer)
	_, _ = body.ReadFrom(resp.Body)
	if !strings.Contains(body.String(), `dualgate_connections{mode="plain"}`) {
		t.Fatalf("metrics lack dualgate_connections:\n%.500s", body.String())
	}
}

// Shutdown tells MQTT 5 devices the server is shutting down (0x8B).
func TestShutdownDisconnects(t *testing.T) {
	g := startGateway(t, nil)
	c := v5TLS(t, g, &paho.Connect{ClientID: "leaving", KeepAlive: 30, CleanStart: true})
	p := v5Plain(t, g, &paho.Connect{ClientID: "leaving-plain", KeepAlive: 30, CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, vc := range []*v5client{c, p} {
		select {
		case d := <-vc.disconnect:
			if d.ReasonCode != 0x8B {
				t.Fatalf("DISCONNECT %#x, want 0x8B", d.ReasonCode)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no DISCONNECT on shutdown")
		}
	}
}

// Packets that arrive a few bytes at a time are put together: a partial
// packet waits for the rest.
func TestSplitPackets(t *testing.T) {
	g := startGateway(t, nil)
	r := dialRaw(t, g.PlainAddr())
	r.ver = 4
	b := mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte("trickle")})
	b = mqttcodec.AppendPublish(b, 4, &mqttcodec.Publish{Topic: []byte("t/1"), QoS: 1, PacketID: 3, Payload: []byte("payload")})
	b = mqttcodec.AppendPingreq(b)
	for i := range b {
		r.send(b[i : i+1])
		time.Sleep(2 * time.Millisecond)
	}
	for _, want := range []mqttcodec.Type{mqttcodec.CONNACK, mqttcodec.PUBACK, mqttcodec.PINGRESP} {
		if p := r.read(5 * time.Second); p.Type != want {
			t.Fatalf("got %s, want %s", p.Type, want)
		}
	}
}
