package gateway

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// The tests of this file act as an attacker who records a device's plain
// traffic and replays its token: over TLS, after a restart, on a second
// gateway; and as a device that floods the gateway with its own tokens.

var (
	victimSecret  = []byte("victim-secret-0123456789abcdef!!")
	flooderSecret = []byte("flooder-secret-0123456789abcdef!")
)

// tokenSecrets writes the secrets file the gateways of these tests share.
func tokenSecrets(t *testing.T) string {
	return writeSecrets(t, map[string]string{
		"victim":  hex.EncodeToString(victimSecret),
		"flooder": hex.EncodeToString(flooderSecret),
	})
}

// startTokenGateway runs a gateway with --auth token on the secrets file
// and data dir given. It marks a TLS session proven exactly when the token
// was bound to it (Result.Proven), as --secure-identity token does, so a
// secure command reaches only a device that proved its id on that
// connection. now is its clock (nil: time.Now).
func startTokenGateway(t *testing.T, secrets, data string, now func() time.Time) *Gateway {
	t.Helper()
	cfg := Config{
		Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0",
		Data: data, EventLoops: 2, Auth: "token", Secrets: secrets,
	}
	logger := zap.NewNop()
	if os.Getenv("DUALGATE_TEST_LOG") != "" {
		logger, _ = zap.NewDevelopment()
	}
	g, err := New(cfg, Options{Logger: logger, Now: now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	g.env.Identity = func(_ *auth.Request, res auth.Result) (bool, auth.Result, bool) {
		return res.Proven, auth.Result{}, true
	}
	if err := g.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { shutdown(t, g) })
	return g
}

func shutdown(t *testing.T, g *Gateway) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// captureToken runs the real device SDK with a secret on plain TCP through
// a recording dialer, and returns the password of its CONNECT as read from
// the wire: what anyone on the path sees.
func captureToken(t *testing.T, g *Gateway, id string, secret []byte, version byte) []byte {
	t.Helper()
	var w wire
	d, err := device.New(device.Config{
		ClientID:  id,
		Secret:    secret,
		PlainAddr: g.PlainAddr(),
		TLSAddr:   g.TLSAddr(),
		CAFile:    g.CAFile(),
		Version:   version,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return w.record(c), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatalf("device %s: %v", id, err)
	}
	d.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.conns) == 0 {
		t.Fatal("nothing recorded")
	}
	c := w.conns[0]
	c.mu.Lock()
	defer c.mu.Unlock()
	var p mqttcodec.Packet
	if _, err := mqttcodec.Decode(c.buf.Bytes(), version, 0, &p); err != nil || p.Type != mqttcodec.CONNECT {
		t.Fatalf("recorded bytes do not start with a CONNECT: %v %v", p.Type, err)
	}
	if !p.Connect.PasswordFlag || len(p.Connect.Password) == 0 {
		t.Fatal("the recorded CONNECT has no password")
	}
	return append([]byte(nil), p.Connect.Password...)
}

// attempt is one hand-made CONNECT on a fresh connection.
type attempt struct {
	tls      bool
	tls12    bool // TLS 1.2 (with the extended master secret, as Go always offers)
	version  byte
	id       string
	password []byte
	// bind, when set, makes the password from the connection's exporter
	// (a device with its secret doing it right over TLS).
	bind func(exporter []byte) []byte
}

// connack sends the CONNECT and returns the CONNACK's code (3.1.1: the
// return code).
func (a attempt) connack(t *testing.T, g *Gateway) mqttcodec.ReasonCode {
	t.Helper()
	var conn net.Conn
	var err error
	password := a.password
	if a.tls {
		var tc *tls.Conn
		cfg := clientTLS(t, g)
		if a.tls12 {
			cfg.MaxVersion = tls.VersionTLS12
		}
		tc, err = tls.Dial("tcp", g.TLSAddr(), cfg)
		if err == nil && a.bind != nil {
			st := tc.ConnectionState()
			exp, xerr := st.ExportKeyingMaterial(control.ExporterLabel, nil, control.ExporterLen)
			if xerr != nil {
				t.Fatal(xerr)
			}
			password = a.bind(exp)
		}
		conn = tc
	} else {
		conn, err = net.Dial("tcp", g.PlainAddr())
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := &raw{t: t, conn: conn, r: bufio.NewReader(conn), ver: a.version}
	r.send(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{
		ProtocolVersion: a.version, CleanStart: true, KeepAlive: 30, ClientID: []byte(a.id),
		UsernameFlag: true, Username: []byte(a.id), PasswordFlag: true, Password: password,
	}))
	p, err := r.next(5 * time.Second)
	if err != nil || p.Type != mqttcodec.CONNACK {
		t.Fatalf("CONNECT of %s: no CONNACK (%v)", a.id, err)
	}
	return p.Connack.ReasonCode
}

// Return codes of a refused 3.1.1 CONNECT, and the MQTT 5 reason codes.
const (
	rc311Unavailable  mqttcodec.ReasonCode = 0x03
	rc311BadPassword  mqttcodec.ReasonCode = 0x04
	rc311NotAuthorize mqttcodec.ReasonCode = 0x05
	rc5BadPassword    mqttcodec.ReasonCode = 0x86
	rc5NotAuthorized  mqttcodec.ReasonCode = 0x87
)

// A token recorded on plain never opens a TLS session, in either protocol
// version, and is a replay on plain; the real device meanwhile gets its
// secure command over TLS, on a session proven by its bound token.
func TestTokenCapturedOnPlainRefusedOverTLS(t *testing.T) {
	g := startTokenGateway(t, tokenSecrets(t), t.TempDir(), nil)
	for _, version := range []byte{4, 5} {
		captured := captureToken(t, g, "victim", victimSecret, version)
		if string(captured[:3]) != control.TokenVersion+"." {
			t.Fatalf("the SDK sent %.3s on plain, want a v1 token", captured)
		}
		for _, a := range []struct {
			name string
			a    attempt
			want mqttcodec.ReasonCode
		}{
			{"3.1.1 over TLS", attempt{tls: true, version: 4, id: "victim", password: captured}, rc311NotAuthorize},
			{"5 over TLS", attempt{tls: true, version: 5, id: "victim", password: captured}, rc5NotAuthorized},
			{"relabelled v2 over TLS", attempt{tls: true, version: 5, id: "victim", password: append([]byte("v2"), captured[2:]...)}, rc5BadPassword},
			{"replayed on plain", attempt{version: 4, id: "victim", password: captured}, rc311NotAuthorize},
			{"relabelled v2 over TLS 1.2", attempt{tls: true, tls12: true, version: 4, id: "victim", password: append([]byte("v2"), captured[2:]...)}, rc311BadPassword},
		} {
			if got := a.a.connack(t, g); got != a.want {
				t.Errorf("version %d, captured token %s: CONNACK 0x%02x, want 0x%02x", version, a.name, got, a.want)
			}
		}
	}

	// The secret's holder binds a token to TLS 1.2 as well as 1.3.
	bound12 := attempt{tls: true, tls12: true, version: 4, id: "victim", bind: func(exp []byte) []byte {
		return []byte(control.MakeBoundToken(victimSecret, "victim", time.Now(), rand.Text(), exp))
	}}
	if got := bound12.connack(t, g); got != 0 {
		t.Fatalf("bound token over TLS 1.2: CONNACK 0x%02x", got)
	}

	// The device itself, with its secret: the upgrade's TLS CONNECT carries
	// a bound token, the session is proven, the secure command arrives.
	for _, version := range []byte{4, 5} {
		cmds := make(chan device.Command, 4)
		d, err := device.New(device.Config{
			ClientID: "victim", Secret: victimSecret, Version: version,
			PlainAddr: g.PlainAddr(), TLSAddr: g.TLSAddr(), CAFile: g.CAFile(),
			OnCommand: func(c device.Command) { cmds <- c },
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		payload := "unlock-" + rand.Text()
		cid, _ := postCommand(t, g, "victim", fmt.Sprintf(`{"topic":"devices/victim/commands/unlock","payload":%q}`, payload))
		select {
		case c := <-cmds:
			if !c.OverTLS || string(c.Payload) != payload {
				t.Fatalf("version %d: command %+v", version, c)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("version %d: the device's secure command never arrived (refused unproven: %d)", version, g.Stats().RefusedUnproven.Load())
		}
		waitStatus(t, g, cid, "delivered")
		d.Stop()
	}
}

// A token recorded before a restart is refused after it, on plain and over
// TLS: the replay cache is read back from the data directory.
func TestTokenCapturedReplayAfterRestart(t *testing.T) {
	secrets, data := tokenSecrets(t), t.TempDir()
	g1 := startTokenGateway(t, secrets, data, nil)
	captured := captureToken(t, g1, "victim", victimSecret, 4)
	shutdown(t, g1)

	g2 := startTokenGateway(t, secrets, data, nil)
	for _, a := range []attempt{
		{version: 4, id: "victim", password: captured},
		{tls: true, version: 4, id: "victim", password: captured},
	} {
		if got := a.connack(t, g2); got != rc311NotAuthorize {
			t.Errorf("captured token after a restart (TLS %v): CONNACK 0x%02x, want 0x%02x", a.tls, got, rc311NotAuthorize)
		}
	}
	// A clean stop leaves no lockout: the device's next token is taken.
	fresh := control.MakeToken(victimSecret, "victim", time.Now(), rand.Text())
	if got := (attempt{version: 4, id: "victim", password: []byte(fresh)}).connack(t, g2); got != 0 {
		t.Fatalf("fresh token after a clean restart: CONNACK 0x%02x", got)
	}
}

// A second gateway sharing the secrets file cannot know what the first
// accepted, but a token recorded on plain opens no TLS session there either;
// the replay opens a plain session only, where the id's secure command is
// never written.
func TestTokenCapturedOnSecondGateway(t *testing.T) {
	secrets := tokenSecrets(t)
	g1 := startTokenGateway(t, secrets, t.TempDir(), nil)
	g2 := startTokenGateway(t, secrets, t.TempDir(), nil)
	captured := captureToken(t, g1, "victim", victimSecret, 4)
	for _, a := range []struct {
		a    attempt
		want mqttcodec.ReasonCode
	}{
		{attempt{tls: true, version: 4, id: "victim", password: captured}, rc311NotAuthorize},
		{attempt{tls: true, version: 5, id: "victim", password: captured}, rc5NotAuthorized},
	} {
		if got := a.a.connack(t, g2); got != a.want {
			t.Errorf("captured token on the second gateway over TLS (v%d): CONNACK 0x%02x, want 0x%02x", a.a.version, got, a.want)
		}
	}

	// On the second gateway's plain listener the replay is let in (its
	// replay cache is its own), and is told to move to TLS for the command,
	// where the same token is refused. The command stays with the gateway.
	imp := newCollector()
	c := v3(t, "tcp://"+g2.PlainAddr(), "victim", nil, func(o *mqtt.ClientOptions) {
		o.SetUsername("victim").SetPassword(string(captured)).SetDefaultPublishHandler(imp.handler)
	})
	cid, _ := postCommand(t, g2, "victim", `{"topic":"devices/victim/commands/unlock","payload":"secret-unlock"}`)
	m := imp.next(t, 10*time.Second)
	if m.Topic() != control.ControlTopic {
		t.Fatalf("the impostor on plain received %s, want only the instruction", m.Topic())
	}
	in, err := control.ParseInstruction(m.Payload())
	if err != nil || in.Mode != control.ModeTLS {
		t.Fatalf("instruction %s: %v", m.Payload(), err)
	}
	c.Disconnect(50)
	if got := (attempt{tls: true, version: 4, id: "victim", password: captured}).connack(t, g2); got != rc311NotAuthorize {
		t.Fatalf("the impostor following the instruction to TLS: CONNACK 0x%02x, want 0x%02x", got, rc311NotAuthorize)
	}
	if st := commandStatus(t, g2, cid).Status; st == "sent" || st == "delivered" {
		t.Fatalf("command %s is %s with only the impostor connected", cid, st)
	}
}

// The window is 60 s either way: a token 61 s in the future or the past is
// refused, on plain and over TLS; one at the edge is taken.
func TestTokenWindow(t *testing.T) {
	base := time.Now().Truncate(time.Second)
	g := startTokenGateway(t, tokenSecrets(t), t.TempDir(), func() time.Time { return base })
	plain := func(ts time.Time) attempt {
		return attempt{version: 4, id: "victim", password: []byte(control.MakeToken(victimSecret, "victim", ts, rand.Text()))}
	}
	bound := func(ts time.Time) attempt {
		return attempt{tls: true, version: 5, id: "victim", bind: func(exp []byte) []byte {
			return []byte(control.MakeBoundToken(victimSecret, "victim", ts, rand.Text(), exp))
		}}
	}
	for _, tc := range []struct {
		name string
		a    attempt
		want mqttcodec.ReasonCode
	}{
		{"plain, 61 s ahead", plain(base.Add(61 * time.Second)), rc311BadPassword},
		{"plain, 61 s behind", plain(base.Add(-61 * time.Second)), rc311BadPassword},
		{"TLS, 61 s ahead", bound(base.Add(61 * time.Second)), rc5BadPassword},
		{"TLS, 61 s behind", bound(base.Add(-61 * time.Second)), rc5BadPassword},
		{"plain, 60 s ahead", plain(base.Add(60 * time.Second)), 0},
		{"plain, 60 s behind", plain(base.Add(-60 * time.Second)), 0},
		{"TLS, 60 s ahead", bound(base.Add(60 * time.Second)), 0},
		{"TLS, 60 s behind", bound(base.Add(-60 * time.Second)), 0},
	} {
		if got := tc.a.connack(t, g); got != tc.want {
			t.Errorf("%s: CONNACK 0x%02x, want 0x%02x", tc.name, got, tc.want)
		}
	}
}

// One device with its own secret makes 20,000 token CONNECTs: it fills its
// own share of the replay cache only, and every other device still
// connects, on plain and over TLS. The bulk goes through the gateway's
// Authenticator as a session would call it; the last part, and the other
// device, through real sockets.
func TestTokenFloodDoesNotBlockOthers(t *testing.T) {
	g := startTokenGateway(t, tokenSecrets(t), t.TempDir(), nil)
	const bulk, onWire = 20000, 300
	now := time.Now()
	accepted := 0
	for i := range bulk - onWire {
		res := g.tokens.Authenticate(&auth.Request{
			ClientID: "flooder", Username: "flooder", Now: now,
			Password: []byte(control.MakeToken(flooderSecret, "flooder", now, fmt.Sprintf("flood%07d", i))),
		})
		switch {
		case res.OK:
			accepted++
		case res.Reason != auth.ReasonServerBusy:
			t.Fatalf("flood token %d: %+v", i, res)
		}
	}
	if accepted != auth.DefaultReplayPerDevice {
		t.Fatalf("%d flood tokens accepted, want the per-device bound %d", accepted, auth.DefaultReplayPerDevice)
	}
	victimOK := func(i int) {
		t.Helper()
		ts := time.Now()
		if got := (attempt{version: 4, id: "victim", password: []byte(control.MakeToken(victimSecret, "victim", ts, rand.Text()))}).connack(t, g); got != 0 {
			t.Fatalf("victim on plain after %d flood CONNECTs: CONNACK 0x%02x", i, got)
		}
		if got := (attempt{tls: true, version: 5, id: "victim", bind: func(exp []byte) []byte {
			return []byte(control.MakeBoundToken(victimSecret, "victim", ts, rand.Text(), exp))
		}}).connack(t, g); got != 0 {
			t.Fatalf("victim over TLS after %d flood CONNECTs: CONNACK 0x%02x", i, got)
		}
	}
	for i := range onWire {
		got := (attempt{version: 4, id: "flooder", password: []byte(control.MakeToken(flooderSecret, "flooder", time.Now(), rand.Text()))}).connack(t, g)
		if got != rc311Unavailable {
			t.Fatalf("flood CONNECT %d on the wire: CONNACK 0x%02x, want 0x%02x (server unavailable)", bulk-onWire+i, got, rc311Unavailable)
		}
		if i%100 == 0 {
			victimOK(bulk - onWire + i)
		}
	}
	victimOK(bulk)
}

// --token-window defaults to 60 s; outside 1 s to 10 min it is refused
// with an error naming the flag.
func TestTokenWindowConfig(t *testing.T) {
	if d := Defaults().TokenWindow; d != time.Minute || auth.DefaultWindow != time.Minute {
		t.Fatalf("default token window %v, want 1m0s (auth.DefaultWindow %v)", d, auth.DefaultWindow)
	}
	for _, tc := range []struct {
		window time.Duration
		ok     bool
	}{
		{0, true}, // the default
		{time.Second, true},
		{10 * time.Minute, true},
		{500 * time.Millisecond, false},
		{11 * time.Minute, false},
		{-time.Minute, false},
	} {
		cfg := Config{Auth: "token", Secrets: "secrets", TokenWindow: tc.window}.withDefaults()
		err := cfg.Validate()
		if tc.ok != (err == nil) || err != nil && !strings.Contains(err.Error(), "--token-window") {
			t.Errorf("--token-window %v: Validate() = %v", tc.window, err)
		}
	}
}
