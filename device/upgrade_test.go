package device_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
	"github.com/dualgate/dualgate/internal/control"
)

// A secure command moves the device to TLS, arrives there, and the quiet
// period sends the device back to plain; a second upgrade resumes the TLS
// session; a command that needs no TLS arrives on plain.
func TestUpgradeDeliverDowngrade(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		g := startGateway(t, nil)
		id := fmt.Sprintf("car-%d", version)
		rec := newRecorder()
		var tp tap
		cfg := testConfig(t, g, id, version)
		cfg.Dial = tp.dial
		rec.hook(&cfg)
		d := startDevice(t, cfg)
		if m := d.Mode(); m != device.ModePlain {
			t.Fatalf("Mode after Start = %s, want plain", m)
		}
		if ev := rec.waitEvent(t, device.EventConnected, time.Second); ev.Mode != device.ModePlain || ev.TLS != nil {
			t.Fatalf("first connection: %+v", ev)
		}

		secret := []byte("unlock-code-" + id)
		cid := postCommand(t, g, id, commandTopic(id, "unlock"), string(secret), true)
		if mc := rec.nextMode(t, 10*time.Second); mc != (modeChange{device.ModePlain, device.ModeTLS, control.ReasonSecureCommand}) {
			t.Fatalf("mode change %+v, want plain -> tls for %s", mc, control.ReasonSecureCommand)
		}
		c := rec.nextCommand(t)
		if c.Topic != commandTopic(id, "unlock") || string(c.Payload) != string(secret) || !c.OverTLS || c.QoS != 1 {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g, cid, "delivered")
		first := rec.waitEvent(t, device.EventConnected, 5*time.Second)
		if first.Mode != device.ModeTLS || first.TLS == nil || first.Addr != g.TLSAddr() {
			t.Fatalf("TLS connection event %+v", first)
		}

		if mc := rec.nextMode(t, 10*time.Second); mc != (modeChange{device.ModeTLS, device.ModePlain, control.ReasonSecureIdle}) {
			t.Fatalf("mode change %+v, want tls -> plain for %s", mc, control.ReasonSecureIdle)
		}
		eventually(t, 5*time.Second, func() bool { return d.Mode() == device.ModePlain && clientMode(g, id) == "plain" },
			func() string { return fmt.Sprintf("device %s, gateway %s: want plain", d.Mode(), clientMode(g, id)) })
		if tp.carried(g.PlainAddr(), secret) {
			t.Fatal("the secure command crossed a plain socket")
		}
		if tp.carried(g.TLSAddr(), secret) {
			t.Fatal("the secure command is readable on the TLS socket")
		}

		// A command that needs no TLS comes on plain, without a move.
		cid = postCommand(t, g, id, commandTopic(id, "horn"), "beep", false)
		c = rec.nextCommand(t)
		if c.Topic != commandTopic(id, "horn") || c.OverTLS {
			t.Fatalf("plain command %+v", c)
		}
		waitStatus(t, g, cid, "delivered")
		if d.Mode() != device.ModePlain {
			t.Fatalf("Mode = %s after a plain command", d.Mode())
		}

		// The second upgrade resumes the TLS session.
		postCommand(t, g, id, commandTopic(id, "lock"), "lock", true)
		if c := rec.nextCommand(t); c.Topic != commandTopic(id, "lock") || !c.OverTLS {
			t.Fatalf("second secure command %+v", c)
		}
		var second device.Event
		for second.Mode != device.ModeTLS {
			second = rec.waitEvent(t, device.EventConnected, 5*time.Second)
		}
		if !second.TLS.DidResume {
			t.Error("the second upgrade did not resume the TLS session")
		}
		if rec.count(commandTopic(id, "unlock")) != 1 {
			t.Errorf("unlock arrived %d times", rec.count(commandTopic(id, "unlock")))
		}
	})
}

// watcher is a paho 3.1.1 subscriber outside the SDK: over TLS it sees
// what the gateway routes; over plain it is the attacker's socket.
func watcher(t *testing.T, g *gateway.Gateway, id, filter string, overTLS bool) chan mqtt.Message {
	t.Helper()
	o := mqtt.NewClientOptions().SetClientID(id).SetProtocolVersion(4).SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second)
	if overTLS {
		pem, err := os.ReadFile(g.CAFile())
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		o.AddBroker("ssl://" + g.TLSAddr()).SetTLSConfig(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	} else {
		o.AddBroker("tcp://" + g.PlainAddr())
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	ch := make(chan mqtt.Message, 64)
	if tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { ch <- m }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher %s subscribe: %v", id, tok.Error())
	}
	return ch
}

func nextMessage(t *testing.T, ch chan mqtt.Message) mqtt.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("no message arrived")
		return nil
	}
}

// PublishSensitive moves the device to TLS itself and never writes the
// message to the plain socket. The gateway marks the topic secure: the
// message reaches a TLS subscriber, never a plain one.
func TestPublishSensitive(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		g := startGateway(t, func(c *gateway.Config) { c.SecureTopics = "devices/+/keys" })
		id := fmt.Sprintf("meter-%d", version)
		topic := "devices/" + id + "/keys"

		// Observers subscribed to the device's topics show what arrives
		// where.
		obs := watcher(t, g, id+"-observer", "devices/"+id+"/#", true)
		plainObs := watcher(t, g, id+"-plain-observer", "devices/"+id+"/#", false)

		rec := newRecorder()
		var tp tap
		cfg := testConfig(t, g, id, version)
		cfg.Dial = tp.dial
		rec.hook(&cfg)
		d := startDevice(t, cfg)

		for i, qos := range []byte{1, 0} {
			// The gateway's quiet period has sent the device back to plain
			// before the second round.
			eventually(t, 10*time.Second, func() bool { return d.Mode() == device.ModePlain },
				func() string { return "device not on plain: " + string(d.Mode()) })
			secret := fmt.Appendf(nil, "private-key-%s-%d", id, i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := d.PublishSensitive(ctx, topic, secret, qos)
			cancel()
			if err != nil {
				t.Fatalf("PublishSensitive QoS %d: %v", qos, err)
			}
			if m := d.Mode(); m != device.ModeTLS {
				t.Fatalf("Mode after PublishSensitive = %s, want tls", m)
			}
			if mc := rec.nextMode(t, time.Second); mc != (modeChange{device.ModePlain, device.ModeTLS, device.ReasonSensitivePublish}) {
				t.Fatalf("mode change %+v", mc)
			}
			got := nextMessage(t, obs)
			if got.Topic() != topic || string(got.Payload()) != string(secret) {
				t.Fatalf("observer got %s %q", got.Topic(), got.Payload())
			}
			// A plain message after the secret reaches the plain observer
			// after the secret would have.
			mark := fmt.Sprintf("marker-%d", i)
			publishPlain(t, g, id+"-marker-pub", "devices/"+id+"/marker", mark)
			if m := nextMessage(t, plainObs); string(m.Payload()) != mark {
				t.Fatalf("the plain observer got %s %q, want the marker only", m.Topic(), m.Payload())
			}
			if m := nextMessage(t, obs); string(m.Payload()) != mark {
				t.Fatalf("observer got %s %q, want the marker", m.Topic(), m.Payload())
			}
			if tp.carried(g.PlainAddr(), secret) {
				t.Fatal("the sensitive message crossed the plain socket")
			}
			if tp.carried(g.TLSAddr(), secret) {
				t.Fatal("the sensitive message is readable on the TLS socket")
			}
			if mc := rec.nextMode(t, 10*time.Second); mc.to != device.ModePlain {
				t.Fatalf("mode change %+v, want back to plain", mc)
			}
		}
		// Telemetry goes on whatever is current.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Publish(ctx, "devices/"+id+"/telemetry", []byte("reading 42"), 1); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if got := nextMessage(t, obs); string(got.Payload()) != "reading 42" {
			t.Fatalf("observer got %q", got.Payload())
		}
		if !tp.carried(g.PlainAddr(), []byte("reading 42")) {
			t.Error("plain telemetry did not travel on plain")
		}
	})
}

// publishPlain publishes one QoS 1 message from a fresh plain client.
func publishPlain(t *testing.T, g *gateway.Gateway, id, topic, payload string) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + g.PlainAddr()).SetClientID(id).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// A Config.CurvePreferences of X25519 alone is what the handshake uses;
// the default is Go's, led by the post-quantum hybrid. The bytes of a full
// handshake show the difference.
func TestCurvePreferences(t *testing.T) {
	g := startGateway(t, nil)
	wire := map[tls.CurveID]int{}
	for _, tc := range []struct {
		name   string
		curves []tls.CurveID
		want   tls.CurveID
	}{
		{"default", nil, tls.X25519MLKEM768},
		{"x25519", []tls.CurveID{tls.X25519}, tls.X25519},
	} {
		id := "curve-" + tc.name
		var tp tap
		rec := newRecorder()
		cfg := testConfig(t, g, id, 4)
		cfg.Dial, cfg.CurvePreferences, cfg.DisableResumption = tp.dial, tc.curves, true
		rec.hook(&cfg)
		d := startDevice(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := d.PublishSensitive(ctx, "devices/"+id+"/x", []byte("x"), 1)
		cancel()
		if err != nil {
			t.Fatalf("%s: PublishSensitive: %v", tc.name, err)
		}
		d.Stop()
		var ev device.Event
		for ev.Mode != device.ModeTLS {
			ev = rec.waitEvent(t, device.EventConnected, time.Second)
		}
		if ev.TLS.CurveID != tc.want {
			t.Errorf("%s: key exchange %s, want %s", tc.name, ev.TLS.CurveID, tc.want)
		}
		if n := len(tp.to(g.TLSAddr())); n != 1 {
			t.Fatalf("%s: %d TLS connections", tc.name, n)
		}
		wire[tc.want] = tp.bytesTo(g.TLSAddr())
		t.Logf("%s: %d bytes of TCP payload on the TLS connection (full handshake, CONNECT, query, publish, DISCONNECT)",
			tc.want, wire[tc.want])
	}
	if saved := wire[tls.X25519MLKEM768] - wire[tls.X25519]; saved < 2000 {
		t.Errorf("X25519 alone saves %d bytes per full handshake, want about 2.3 KB", saved)
	}
}
