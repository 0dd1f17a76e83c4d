package gateway

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// keptClient connects a 3.1.1 client with clean session 0, subscribes to
// filters, and disconnects normally: its session is kept.
func keptClient(t *testing.T, g *Gateway, id string, filters []string) {
	t.Helper()
	dev := dialRaw(t, g.PlainAddr())
	dev.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, ClientID: []byte(id), KeepAlive: 60})
	subs := make([]mqttcodec.Subscription, len(filters))
	for i, f := range filters {
		subs[i] = mqttcodec.Subscription{Filter: []byte(f), QoS: 1}
	}
	dev.send(mqttcodec.AppendSubscribe(nil, mqttcodec.V311, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: subs}))
	p := dev.read(5 * time.Second)
	if p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	for i, rc := range p.Suback.ReasonCodes {
		if rc >= 0x80 {
			t.Fatalf("%s: filter %d refused (%#x)", id, i, byte(rc))
		}
	}
	dev.send(mqttcodec.AppendDisconnect(nil, mqttcodec.V311, &mqttcodec.Disconnect{}))
	if _, closed := dev.closedWithin(5 * time.Second); !closed {
		t.Fatalf("%s: not closed after DISCONNECT", id)
	}
}

// resumed reconnects id with clean session 0 and reports whether its
// session was there.
func resumed(t *testing.T, g *Gateway, id string) bool {
	t.Helper()
	dev := dialRaw(t, g.PlainAddr())
	ack := dev.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, ClientID: []byte(id), KeepAlive: 60})
	dev.send(mqttcodec.AppendDisconnect(nil, mqttcodec.V311, &mqttcodec.Disconnect{}))
	dev.closedWithin(5 * time.Second)
	return ack.SessionPresent
}

func bigFilters(id string, n, size int) []string {
	out := make([]string, n)
	for i := range out {
		prefix := fmt.Sprintf("%s/%d/", id, i)
		out[i] = prefix + strings.Repeat("f", size-len(prefix))
	}
	return out
}

// Kept sessions are bounded in number and bytes: clean-session-0 clients
// with big filters that disconnect one after the other push out the
// sessions that would expire soonest (the oldest), which are counted;
// those left resume with their subscriptions. Before, 20 such clients
// with 64 filters of 65 KB pinned 86 MB for 24 h.
func TestKeptSessionBounds(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		g := startGateway(t, func(c *Config) { c.MaxKeptSessions = 3 })
		for i := range 5 {
			keptClient(t, g, fmt.Sprint("kept-", i), []string{fmt.Sprintf("k/%d/#", i)})
		}
		eventually(t, 5*time.Second, "the sessions kept", func() bool { return metric(t, g, "dualgate_kept_sessions") == 3 })
		if v := metric(t, g, "dualgate_kept_sessions_evicted_total"); v != 2 {
			t.Fatalf("evicted %v, want 2", v)
		}
		// Newest first: a device that resumes is kept again when it leaves.
		for _, i := range []int{4, 3, 2} {
			if !resumed(t, g, fmt.Sprint("kept-", i)) {
				t.Errorf("kept-%d: session gone, want kept", i)
			}
		}
		for _, i := range []int{1, 0} {
			if resumed(t, g, fmt.Sprint("kept-", i)) {
				t.Errorf("kept-%d: session present, want evicted", i)
			}
		}
	})
	t.Run("bytes", func(t *testing.T) {
		// Each client keeps 16 filters of 4,000 bytes (~65 KB); 200 KB hold three.
		g := startGateway(t, func(c *Config) {
			c.MaxTopicLen = 4096
			c.MaxKeptSessionSize = 200 << 10
		})
		for i := range 6 {
			id := fmt.Sprint("big-", i)
			keptClient(t, g, id, bigFilters(id, 16, 4000))
		}
		eventually(t, 5*time.Second, "the sessions kept", func() bool { return metric(t, g, "dualgate_kept_sessions") == 3 })
		if v := metric(t, g, "dualgate_kept_session_bytes"); v > 200<<10 || v < 3*16*4000 {
			t.Fatalf("kept session bytes %v, want between %d and %d", v, 3*16*4000, 200<<10)
		}
		if v := metric(t, g, "dualgate_kept_sessions_evicted_total"); v != 3 {
			t.Fatalf("evicted %v, want 3", v)
		}
		if resumed(t, g, "big-0") || !resumed(t, g, "big-5") {
			t.Fatal("the oldest session should be gone and the newest kept")
		}
	})
}

// A filter or topic past --max-topic-length is refused: the filter in
// its SUBACK, the publish by closing the connection.
func TestTopicLengthBound(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxTopicLen = 64 })
	dev := dialRaw(t, g.PlainAddr())
	dev.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, CleanStart: true, ClientID: []byte("long-topics"), KeepAlive: 60})
	long := "a/" + strings.Repeat("x", 63)
	dev.send(mqttcodec.AppendSubscribe(nil, mqttcodec.V311, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{
		{Filter: []byte("a/short")}, {Filter: []byte(long)},
	}}))
	p := dev.read(5 * time.Second)
	if p.Type != mqttcodec.SUBACK || len(p.Suback.ReasonCodes) != 2 || p.Suback.ReasonCodes[0] != 0 || p.Suback.ReasonCodes[1] != 0x80 {
		t.Fatalf("got %s %v, want SUBACK [0 0x80]", p.Type, p.Suback.ReasonCodes)
	}
	if v := metric(t, g, "dualgate_subscriptions_too_long_total"); v != 1 {
		t.Errorf("dualgate_subscriptions_too_long_total %v, want 1", v)
	}
	dev.send(mqttcodec.AppendPublish(nil, mqttcodec.V311, &mqttcodec.Publish{Topic: []byte(long), Payload: []byte("p")}))
	if _, closed := dev.closedWithin(5 * time.Second); !closed {
		t.Fatal("a publish on a topic past --max-topic-length was taken")
	}
}

// --session-expiry is how long a 3.1.1 clean-session-0 session is kept:
// on the gateway's clock, the session is there before it and gone after.
func TestSessionExpiry(t *testing.T) {
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir(), EventLoops: 1,
		SessionExpiry: time.Hour}
	g, err := New(cfg, Options{Logger: zap.NewNop(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = g.Shutdown(ctx)
	})
	keptClient(t, g, "expiring", []string{"e/#"})
	keptClient(t, g, "staying", []string{"s/#"})
	offset.Store(int64(59 * time.Minute))
	if !resumed(t, g, "staying") {
		t.Fatal("the session was gone before --session-expiry")
	}
	offset.Store(int64(61 * time.Minute))
	eventually(t, 5*time.Second, "the session expired by the sweep", func() bool {
		return metric(t, g, "dualgate_kept_sessions_expired_total") >= 1
	})
	if resumed(t, g, "expiring") {
		t.Fatal("the session outlived --session-expiry")
	}
}

// --max-subscriptions bounds one session's filters: past it, MQTT 5
// devices get 0x97 Quota exceeded for the filter (3.1.1: 0x80); a filter
// already held may be subscribed to again.
func TestSubscriptionsBound(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxSubscriptions = 2 })
	for _, v := range []byte{mqttcodec.V311, mqttcodec.V5} {
		dev := dialRaw(t, g.PlainAddr())
		dev.connect(&mqttcodec.Connect{ProtocolVersion: v, CleanStart: true, ClientID: []byte(fmt.Sprint("many-subs-", v)), KeepAlive: 60})
		dev.send(mqttcodec.AppendSubscribe(nil, v, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{
			{Filter: []byte("a/1")}, {Filter: []byte("a/2")}, {Filter: []byte("a/3")}, {Filter: []byte("a/1"), QoS: 1},
		}}))
		p := dev.read(5 * time.Second)
		want := []mqttcodec.ReasonCode{0, 0, 0x80, 1}
		if v == mqttcodec.V5 {
			want[2] = mqttcodec.QuotaExceeded
		}
		if p.Type != mqttcodec.SUBACK || fmt.Sprint(p.Suback.ReasonCodes) != fmt.Sprint(want) {
			t.Fatalf("v%d: got %s %v, want SUBACK %v", v, p.Type, p.Suback.ReasonCodes, want)
		}
	}
}
