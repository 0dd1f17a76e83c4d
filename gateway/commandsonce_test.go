package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/testbroker"
)

// A command left retained on the broker is executed once: published while
// the gateway holds the command subscription, it reaches the lock; the
// copies the broker sends at every later SUBSCRIBE (three gateway restarts
// on the same data dir) are dropped and counted. The lock counts what it
// receives; a marker command after each restart shows that anything sent
// before it has arrived.
func TestRetainedCommandOnceAcrossRestarts(t *testing.T) {
	br := testbroker.Start(t)
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir(), EventLoops: 2,
		Upstream: br.URL(), UpstreamClientID: "gw-once", SecureIdle: time.Minute,
		// The lock's commands travel on plain here: this test is about
		// how often they arrive, not how.
		UpstreamPlain: "devices/+/commands/#"}
	run := func() *Gateway {
		t.Helper()
		g, err := New(cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		waitUpstream(t, g)
		eventually(t, 10*time.Second, "command subscription", func() bool { return g.upstream.Stats().CommandsSubscribed })
		return g
	}
	stop := func(g *Gateway) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	receipts := newCounter()
	lock := func(g *Gateway) mqtt.Client {
		return v3(t, "tcp://"+g.PlainAddr(), "lock-7", nil, func(o *mqtt.ClientOptions) {
			o.SetDefaultPublishHandler(receipts.handler)
		})
	}

	g := run()
	dev := lock(g)
	app := cloudApp(t, br, "ops-once", true)
	if tok := app.Publish("devices/lock-7/commands/unlock", 1, true, "open"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	eventually(t, 10*time.Second, "the unlock at the lock", func() bool { return receipts.count("open") == 1 })

	for restart := 1; restart <= 3; restart++ {
		dev.Disconnect(100)
		stop(g)
		g = run()
		eventually(t, 10*time.Second, "the retained copy dropped", func() bool { return g.upstream.Stats().CommandsRetained == 1 })
		dev = lock(g)
		marker := fmt.Sprintf("marker-%d", restart)
		if tok := app.Publish("devices/lock-7/commands/marker", 1, false, marker); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		eventually(t, 10*time.Second, marker+" at the lock", func() bool { return receipts.count(marker) == 1 })
		if n := receipts.count("open"); n != 1 {
			t.Fatalf("restart %d: the lock received the unlock %d times, want once", restart, n)
		}
		// The marker may reach the lock before the bridge counts it.
		eventually(t, 10*time.Second, "the marker counted", func() bool { return g.upstream.Stats().Commands >= 1 })
		if n := g.upstream.Stats().Commands; n != 1 {
			t.Fatalf("restart %d: %d commands taken from the broker, want 1 (the marker)", restart, n)
		}
		if n := metric(t, g, "dualgate_upstream_commands_retained_total"); n != 1 {
			t.Fatalf("restart %d: dualgate_upstream_commands_retained_total = %v, want 1", restart, n)
		}
	}
	dev.Disconnect(100)
	stop(g)
}
