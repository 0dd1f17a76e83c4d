package gateway

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// A secure command for a 3.1.1 device on plain: instruction, TLS reconnect,
// query, delivery over TLS, status delivered; later the quiet period sends
// the device back to plain over TLS. The command's bytes never cross the
// plain socket.
func TestSecureCommandUpgrade311(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.SecureIdle = time.Second })
	d := newDevice311(t, g, "car-311")
	d.connect(false, g.PlainAddr())
	d.query()

	secret := "UNLOCK-7f3a9c-SECRET"
	id, status := postCommand(t, g, "car-311", `{"topic":"devices/car-311/commands/unlock","payload":"`+secret+`","ttl_seconds":60}`)
	if status != "pending" {
		t.Fatalf("status %q, want pending (the POST answers once the command is stored)", status)
	}
	in := <-d.controls
	if in.Mode != control.ModeTLS || in.Addr != g.TLSAddr() || in.Reason != control.ReasonSecureCommand {
		t.Fatalf("instruction %+v, want tls to %s", in, g.TLSAddr())
	}
	c := nextCommand(t, d.cmds)
	if !c.tls || c.topic != "devices/car-311/commands/unlock" || c.payload != secret {
		t.Fatalf("command %+v", c)
	}
	v := waitStatus(t, g, id, "delivered")
	if v.DeliveredAt == nil || v.DeliveredAt.Before(v.CreatedAt) || !v.Secure || v.ClientID != "car-311" {
		t.Fatalf("command view %+v", v)
	}
	var seen []string
	for _, h := range v.History {
		seen = append(seen, string(h.Status))
	}
	if got := strings.Join(seen, ","); got != "pending,upgrading,sent,delivered" {
		t.Fatalf("history %s", got)
	}

	// Quiet: back to plain, told over TLS.
	select {
	case in := <-d.controls:
		if in.Mode != control.ModePlain || in.Addr != g.PlainAddr() {
			t.Fatalf("downgrade instruction %+v", in)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no downgrade after the quiet period")
	}
	eventually(t, 10*time.Second, "device back on plain", func() bool {
		e, ok := g.Registry().Get("car-311")
		return ok && e.Mode().String() == "plain"
	})
	if d.plain.contains([]byte(secret)) {
		t.Fatal("the secure command crossed the plain socket")
	}
	if d.plain.bytes() == 0 {
		t.Fatal("nothing was recorded on the plain socket")
	}
	var st statsView
	getJSON(t, g, "/v1/stats", "", &st)
	if st.OnDemand["upgrades"] != 1 || st.OnDemand["downgrades"] != 1 || st.OnDemand["delivered"] != 1 {
		t.Fatalf("on-demand stats %v", st.OnDemand)
	}
}

// The same for MQTT 5: DISCONNECT 0x9C with the Server Reference.
func TestSecureCommandUpgrade5(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.SecureIdle = time.Second })
	d := newDevice5(t, g, "car-5")
	d.connect(false, g.PlainAddr())
	d.query()

	secret := "OPEN-TRUNK-5e2b"
	id, status := postCommand(t, g, "car-5", `{"topic":"devices/car-5/commands/trunk","payload":"`+secret+`"}`)
	if status != "pending" {
		t.Fatalf("status %q, want pending (the POST answers once the command is stored)", status)
	}
	if ref := <-d.refs; ref != "tls://"+g.TLSAddr() {
		t.Fatalf("server reference %q", ref)
	}
	c := nextCommand(t, d.cmds)
	if !c.tls || c.payload != secret {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g, id, "delivered")
	select {
	case ref := <-d.refs:
		if ref != "tcp://"+g.PlainAddr() {
			t.Fatalf("downgrade reference %q", ref)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no downgrade")
	}
	if d.plain.contains([]byte(secret)) {
		t.Fatal("the secure command crossed the plain socket")
	}
}

// A device already on TLS gets a secure command at once; a command that
// needs no encryption goes over plain without an upgrade.
func TestDirectDelivery(t *testing.T) {
	g := startGateway(t, nil)
	onTLS := newDevice5(t, g, "tls-dev")
	onTLS.connect(true, g.TLSAddr())
	id, status := postCommand(t, g, "tls-dev", `{"topic":"devices/tls-dev/commands/a","payload":"now"}`)
	if status != "pending" {
		t.Fatalf("status %q, want pending (the POST answers once the command is stored)", status)
	}
	if c := nextCommand(t, onTLS.cmds); !c.tls || c.payload != "now" {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g, id, "delivered")

	onPlain := newDevice311(t, g, "plain-dev")
	onPlain.connect(false, g.PlainAddr())
	id, status = postCommand(t, g, "plain-dev", `{"topic":"devices/plain-dev/commands/led","payload":"blink","secure":false,"qos":1}`)
	if status != "pending" {
		t.Fatalf("status %q, want pending (the POST answers once the command is stored)", status)
	}
	if c := nextCommand(t, onPlain.cmds); c.tls || c.payload != "blink" {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g, id, "delivered")
	if n := g.dispatcher.Stats().Instructions.Load(); n != 0 {
		t.Fatalf("%d instructions, want none", n)
	}
}

// Many secure commands for one plain device cause one instruction, and all
// arrive in order after the upgrade.
func TestManyCommandsOneInstruction(t *testing.T) {
	g := startGateway(t, nil)
	d := newDevice311(t, g, "busy")
	d.connect(false, g.PlainAddr())
	var ids []string
	for i := range 5 {
		id, _ := postCommand(t, g, "busy", `{"topic":"devices/busy/commands/n","payload":"`+string(rune('a'+i))+`"}`)
		ids = append(ids, id)
	}
	for i := range 5 {
		c := nextCommand(t, d.cmds)
		if want := string(rune('a' + i)); c.payload != want || !c.tls {
			t.Fatalf("command %d: %+v, want %s over TLS", i, c, want)
		}
	}
	for _, id := range ids {
		waitStatus(t, g, id, "delivered")
	}
	if n := len(d.controls); n != 1 {
		t.Fatalf("%d instructions reached the device, want 1", n)
	}
	if n := g.dispatcher.Stats().Instructions.Load(); n != 1 {
		t.Fatalf("%d instructions sent, want 1", n)
	}
}

// A command for a device never seen waits; past its TTL it expires and is
// never delivered.
func TestTTLExpiry(t *testing.T) {
	g := startGateway(t, nil)
	id, status := postCommand(t, g, "sleeper", `{"topic":"devices/sleeper/commands/x","payload":"late","ttl_seconds":1}`)
	if status != "pending" {
		t.Fatalf("status %q, want pending", status)
	}
	var view clientView
	if code := getJSON(t, g, "/v1/clients/sleeper", "", &view); code != http.StatusOK || view.Mode != "offline" || view.Pending != 1 {
		t.Fatalf("client view %d %+v", code, view)
	}
	waitStatus(t, g, id, "expired")
	d := newDevice5(t, g, "sleeper")
	d.connect(true, g.TLSAddr())
	d.query()
	select {
	case c := <-d.cmds:
		t.Fatalf("expired command delivered: %+v", c)
	case <-time.After(500 * time.Millisecond):
	}
}

// A device that keeps coming back on plain is told again with backoff, then
// left alone and reported; its command still waits.
func TestLoopProtection(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxInstructions = 3; c.InstructBackoff = 100 * time.Millisecond })
	d := newDevice311(t, g, "stubborn")
	d.obey = false
	d.connect(false, g.PlainAddr())
	id, _ := postCommand(t, g, "stubborn", `{"topic":"devices/stubborn/commands/x","payload":"s"}`)
	eventually(t, 15*time.Second, "loop protection", func() bool {
		var v clientView
		getJSON(t, g, "/v1/clients/stubborn", "", &v)
		return v.LoopProtected
	})
	// Its next query is answered with no instruction: a plain command
	// posted after it goes through the same ordered queue, so once it
	// arrives the query has been handled.
	d.query()
	postCommand(t, g, "stubborn", `{"topic":"devices/stubborn/commands/plain","payload":"p","secure":false}`)
	if c := nextCommand(t, d.cmds); c.payload != "p" || c.tls {
		t.Fatalf("plain command %+v", c)
	}
	if n := len(d.controls); n != 3 {
		t.Fatalf("instructions: %d, want 3 and no more", n)
	}
	if st := commandStatus(t, g, id).Status; st == "delivered" {
		t.Fatal("a secure command was delivered to a device on plain")
	}
	if g.dispatcher.Stats().InstructionRetries.Load() != 2 {
		t.Fatalf("retries %d, want 2", g.dispatcher.Stats().InstructionRetries.Load())
	}
	// It comes on TLS by itself: the command reaches it there.
	d.obey = true
	d.connect(true, g.TLSAddr())
	d.query()
	if c := nextCommand(t, d.cmds); !c.tls || c.payload != "s" {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g, id, "delivered")
}

// Bad API requests are refused with a JSON error naming the field, and
// nothing is stored.
func TestCommandAPIValidation(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.CommandLimit = 2 })
	for _, tc := range []struct {
		path, body, field string
		code              int
	}{
		{"/v1/clients/dev/commands", `{"payload":"x"}`, "topic", 400},
		{"/v1/clients/dev/commands", `{"topic":"a/+/b"}`, "topic", 400},
		{"/v1/clients/dev/commands", `{"topic":"$dualgate/control"}`, "topic", 400},
		{"/v1/clients/dev/commands", `{"topic":"a","qos":2}`, "qos", 400},
		{"/v1/clients/dev/commands", `{"topic":"a","ttl_seconds":0}`, "ttl_seconds", 400},
		{"/v1/clients/dev/commands", `{"topic":"a","payload_b64":"%%%"}`, "payload_b64", 400},
		{"/v1/clients/dev/commands", `{"topic":"a","payload":"x","payload_b64":"eA=="}`, "payload", 400},
		{"/v1/clients/dev/commands", `{"topic":"a","colour":"red"}`, "colour", 400},
		{"/v1/clients/dev/commands", `not json`, "body", 400},
		{"/v1/clients/dev/commands", `{"topic":"a","secure":"yes"}`, "secure", 400},
		{"/v1/clients/a%09b/commands", `{"topic":"a"}`, "client id", 400},
	} {
		code, out := post(t, g, tc.path, tc.body, "")
		if code != tc.code || !strings.Contains(out["error"], tc.field) {
			t.Errorf("POST %s %s: %d %q, want %d naming %q", tc.path, tc.body, code, out["error"], tc.code, tc.field)
		}
	}
	var st statsView
	getJSON(t, g, "/v1/stats", "", &st)
	if st.OnDemand["accepted"] != 0 || st.Commands["pending"] != 0 {
		t.Fatalf("a rejected request stored something: %v %v", st.OnDemand, st.Commands)
	}
	postCommand(t, g, "dev", `{"topic":"a"}`)
	postCommand(t, g, "dev", `{"topic":"a","payload_b64":"AAEC"}`)
	if code, out := post(t, g, "/v1/clients/dev/commands", `{"topic":"a"}`, ""); code != http.StatusTooManyRequests || out["error"] == "" {
		t.Fatalf("over the limit: %d %v", code, out)
	}
	if code := getJSON(t, g, "/v1/commands/nope", "", nil); code != http.StatusNotFound {
		t.Fatalf("unknown command: %d", code)
	}
}

// The advertised addresses replace the derived ones in instructions.
func TestAdvertise(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.AdvertiseTLS = "gw.example.com:8883" })
	d := newDevice311(t, g, "adv")
	d.obey = false
	d.connect(false, g.PlainAddr())
	postCommand(t, g, "adv", `{"topic":"devices/adv/commands/x"}`)
	if in := <-d.controls; in.Addr != "gw.example.com:8883" {
		t.Fatalf("addr %q", in.Addr)
	}
	_, port, _ := net.SplitHostPort(g.TLSAddr())
	if port == "8883" {
		t.Fatal("test needs a non-default port")
	}
}
