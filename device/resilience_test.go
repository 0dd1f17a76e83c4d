package device_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
)

// settle is how long a test waits for a duplicate that must not come.
const settle = 300 * time.Millisecond

// A dropped connection is replaced in the same mode, after the backoff;
// commands sent around the drops arrive once each.
func TestNetworkDrop(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		// A long quiet period: the device stays on TLS while the test
		// drops its connection there.
		g := startGateway(t, func(c *gateway.Config) { c.SecureIdle = time.Minute })
		id := fmt.Sprintf("van-%d", version)
		rec := newRecorder()
		var tp tap
		cfg := testConfig(t, g, id, version)
		cfg.Dial = tp.dial
		rec.hook(&cfg)
		d := startDevice(t, cfg)
		rec.waitEvent(t, device.EventConnected, time.Second)

		// Drop on plain, with a secure command sent right behind the drop:
		// it waits for the device, which comes back on plain, is told to
		// use TLS, and gets it there.
		tp.last(t, g.PlainAddr()).drop()
		cid := postCommand(t, g, id, commandTopic(id, "unlock"), "u1", true)
		if ev := rec.waitEvent(t, device.EventConnectionLost, 5*time.Second); ev.Mode != device.ModePlain || ev.Err == nil {
			t.Fatalf("lost event %+v", ev)
		}
		if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Mode != device.ModePlain {
			t.Fatalf("reconnected in %s, want plain", ev.Mode)
		}
		if c := rec.nextCommand(t); c.Topic != commandTopic(id, "unlock") || !c.OverTLS {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g, cid, "delivered")
		if m := d.Mode(); m != device.ModeTLS {
			t.Fatalf("Mode = %s", m)
		}
		if rec.nextMode(t, time.Second).to != device.ModeTLS {
			t.Fatal("no mode change to TLS")
		}
		for len(rec.events) > 0 {
			<-rec.events
		}

		// Drop on TLS: the device comes back on TLS, without a plain
		// connection in between.
		plainDials := len(tp.to(g.PlainAddr()))
		tp.last(t, g.TLSAddr()).drop()
		if ev := rec.waitEvent(t, device.EventConnectionLost, 5*time.Second); ev.Mode != device.ModeTLS {
			t.Fatalf("lost event %+v", ev)
		}
		if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Mode != device.ModeTLS {
			t.Fatalf("reconnected in %s, want tls", ev.Mode)
		}
		if n := len(tp.to(g.PlainAddr())); n != plainDials {
			t.Fatalf("%d plain dials after the TLS drop", n-plainDials)
		}
		eventually(t, 5*time.Second, func() bool { return clientMode(g, id) == "tls" },
			func() string { return "gateway sees the device " + clientMode(g, id) })
		cid = postCommand(t, g, id, commandTopic(id, "lock"), "l1", true)
		if c := rec.nextCommand(t); c.Topic != commandTopic(id, "lock") || !c.OverTLS {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g, cid, "delivered")
		select {
		case mc := <-rec.modes:
			t.Fatalf("mode change %+v across a TLS drop", mc)
		default:
		}

		// Telemetry published across a drop is sent on the next connection.
		tp.last(t, g.TLSAddr()).drop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Publish(ctx, "devices/"+id+"/state", []byte("parked"), 1); err != nil {
			t.Fatalf("Publish across a drop: %v", err)
		}

		time.Sleep(settle)
		for _, name := range []string{"unlock", "lock"} {
			if n := rec.count(commandTopic(id, name)); n != 1 {
				t.Errorf("%s arrived %d times", name, n)
			}
		}
	})
}

// The gateway restarts (same ports, same data dir) while the device is
// moving to TLS: the device keeps trying TLS with backoff, reaches the new
// gateway, and the command stored by the old one arrives once.
func TestGatewayRestartMidUpgrade(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		cfg1 := gateway.Config{
			Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0",
			Data: t.TempDir(), SecureIdle: time.Minute, EventLoops: 2,
		}
		g1 := runGateway(t, cfg1)
		id := fmt.Sprintf("truck-%d", version)
		rec := newRecorder()

		// The first TLS dial waits until the test lets it go.
		dialing, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		tp := tap{hold: func(addr string) {
			if addr != g1.TLSAddr() {
				return
			}
			held := false
			once.Do(func() { held = true })
			if held {
				close(dialing)
				<-release
			}
		}}
		cfg := testConfig(t, g1, id, version)
		cfg.Dial = tp.dial
		rec.hook(&cfg)
		d := startDevice(t, cfg)

		cid := postCommand(t, g1, id, commandTopic(id, "unlock"), "u1", true)
		select {
		case <-dialing:
		case <-time.After(10 * time.Second):
			t.Fatal("the device did not move to TLS")
		}
		stopGateway(t, g1)
		close(release) // the held dial meets a closed port
		if ev := rec.waitEvent(t, device.EventConnectFailed, 5*time.Second); ev.Mode != device.ModeTLS {
			t.Fatalf("failed attempt %+v", ev)
		}

		cfg2 := cfg1
		cfg2.Plain, cfg2.TLS = g1.PlainAddr(), g1.TLSAddr()
		g2 := runGateway(t, cfg2)
		if c := rec.nextCommand(t); c.Topic != commandTopic(id, "unlock") || !c.OverTLS || string(c.Payload) != "u1" {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g2, cid, "delivered")
		if m := d.Mode(); m != device.ModeTLS {
			t.Fatalf("Mode = %s", m)
		}
		time.Sleep(settle)
		if n := rec.count(commandTopic(id, "unlock")); n != 1 {
			t.Errorf("unlock arrived %d times", n)
		}
		if len(tp.to(g1.PlainAddr())) != 1 {
			t.Errorf("%d plain connections: the device fell back to plain", len(tp.to(g1.PlainAddr())))
		}
	})
}
