package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/testbroker"
)

// cloudApp is a paho client on the broker side: the cloud application.
func cloudApp(t *testing.T, br *testbroker.Broker, id string, clean bool) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(br.URL()).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("cloud app connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// counter counts messages by payload.
type counter struct {
	mu   sync.Mutex
	seen map[string]int
}

func newCounter() *counter { return &counter{seen: map[string]int{}} }

func (c *counter) handler(_ mqtt.Client, m mqtt.Message) {
	c.mu.Lock()
	c.seen[string(m.Payload())]++
	c.mu.Unlock()
}

func (c *counter) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *counter) count(p string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[p]
}

func upstreamGateway(t *testing.T, br *testbroker.Broker, mod func(*Config)) *Gateway {
	return startGateway(t, func(c *Config) {
		c.Upstream = br.URL()
		c.UpstreamClientID = "gw-test"
		c.SecureIdle = time.Minute
		if mod != nil {
			mod(c)
		}
	})
}

func waitUpstream(t *testing.T, g *Gateway) {
	t.Helper()
	eventually(t, 10*time.Second, "upstream connected and ready", func() bool {
		return getJSON(t, g, "/readyz", "", nil) == http.StatusOK && g.upstream.Ready()
	})
}

// Device publishes reach a broker-side subscriber at QoS 0 and 1; a broker
// publish reaches two devices with overlapping filters once each; a
// retained message reaches a late subscriber with the retain flag.
func TestUpstreamBothWays(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, nil)
	waitUpstream(t, g)

	up := newCounter()
	app := cloudApp(t, br, "cloud-app", true)
	if tok := app.Subscribe("tele/#", 1, up.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dev := v3(t, "tcp://"+g.PlainAddr(), "sensor-1", nil, nil)
	for i := range 20 {
		if tok := dev.Publish("tele/sensor-1", byte(i%2), false, fmt.Sprintf("m%d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("device publish: %v", tok.Error())
		}
	}
	eventually(t, 10*time.Second, "20 device messages at the broker", func() bool { return up.distinct() == 20 })

	// Two devices, overlapping filters: one copy each.
	a := newCollector()
	da := v3(t, "tcp://"+g.PlainAddr(), "dev-a", nil, nil)
	da.Subscribe("alerts/#", 1, a.handler).Wait()
	// paho calls the handler of every matching filter for one PUBLISH:
	// only the first one records, so a second PUBLISH would show.
	da.Subscribe("alerts/fire/+", 1, func(mqtt.Client, mqtt.Message) {}).Wait()
	db := v5Plain(t, g, &paho.Connect{ClientID: "dev-b", KeepAlive: 30, CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := db.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "alerts/+/east", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "upstream subscriptions", func() bool { return g.upstream.Stats().Subscriptions == 3 })
	app.Publish("alerts/fire/east", 1, false, "evacuate").Wait()
	if m := a.next(t, 5*time.Second); string(m.Payload()) != "evacuate" {
		t.Fatalf("dev-a got %q", m.Payload())
	}
	select {
	case p := <-db.received:
		if string(p.Payload) != "evacuate" {
			t.Fatalf("dev-b got %q", p.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dev-b got nothing")
	}
	time.Sleep(300 * time.Millisecond)
	if len(a.ch) != 0 || len(db.received) != 0 {
		t.Fatalf("duplicates: dev-a %d more, dev-b %d more", len(a.ch), len(db.received))
	}

	// A retained message on the broker reaches a device subscribing later,
	// with the retain flag, and not the devices already subscribed.
	app.Publish("config/site", 1, true, "v42").Wait()
	first := newCollector()
	v3(t, "tcp://"+g.PlainAddr(), "early", nil, nil).Subscribe("config/#", 1, first.handler).Wait()
	if m := first.next(t, 5*time.Second); string(m.Payload()) != "v42" || !m.Retained() {
		t.Fatalf("early subscriber: %q retained %v", m.Payload(), m.Retained())
	}
	late := newCollector()
	v3(t, "tcp://"+g.PlainAddr(), "late", nil, nil).Subscribe("config/#", 1, late.handler).Wait()
	if m := late.next(t, 5*time.Second); string(m.Payload()) != "v42" || !m.Retained() {
		t.Fatalf("late subscriber: %q retained %v", m.Payload(), m.Retained())
	}
	select {
	case m := <-first.ch:
		t.Fatalf("the earlier subscriber got the retained message again: %q", m.Payload())
	case <-time.After(500 * time.Millisecond):
	}
	var st statsView
	getJSON(t, g, "/v1/stats", "", &st)
	if st.Upstream == nil || st.Upstream.Connected == 0 || st.Upstream.ForwardedUp < 20 {
		t.Fatalf("upstream stats %+v", st.Upstream)
	}
}

// A command published on the broker for a plain device causes the upgrade
// and is delivered over TLS; a command on a plain-allowed topic is not.
func TestUpstreamCommand(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, func(c *Config) { c.UpstreamPlain = "devices/+/commands/ping" })
	waitUpstream(t, g)
	eventually(t, 5*time.Second, "command subscription", func() bool { return g.upstream.Stats().CommandsSubscribed })
	d := newDevice311(t, g, "truck-9")
	d.connect(false, g.PlainAddr())
	d.query()

	app := cloudApp(t, br, "ops-console", true)
	app.Publish("devices/truck-9/commands/ping", 1, false, "are-you-there").Wait()
	if c := nextCommand(t, d.cmds); c.tls || c.payload != "are-you-there" {
		t.Fatalf("plain-allowed command: %+v", c)
	}
	app.Publish("devices/truck-9/commands/immobilize", 1, false, "SECRET-IMMOBILIZE").Wait()
	if in := <-d.controls; in.Mode != "tls" {
		t.Fatalf("instruction %+v", in)
	}
	if c := nextCommand(t, d.cmds); !c.tls || c.payload != "SECRET-IMMOBILIZE" {
		t.Fatalf("secure command: %+v", c)
	}
	if d.plain.contains([]byte("SECRET-IMMOBILIZE")) {
		t.Fatal("the secure command crossed the plain socket")
	}
	eventually(t, 5*time.Second, "both delivered", func() bool { return g.dispatcher.Stats().Delivered.Load() == 2 })
}

// The broker stopped and started again mid-stream: no QoS 1 message is
// lost either way.
func TestUpstreamBrokerRestart(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, nil)
	waitUpstream(t, g)

	up := newCounter()
	app := cloudApp(t, br, "restart-app", false)
	app.Subscribe("count/up", 1, up.handler).Wait()
	down := newCollector()
	dev := v3(t, "tcp://"+g.PlainAddr(), "counter-dev", nil, func(o *mqtt.ClientOptions) {
		o.SetWriteTimeout(20 * time.Second)
	})
	dev.Subscribe("count/down", 1, down.handler).Wait()
	eventually(t, 5*time.Second, "device subscription upstream", func() bool { return g.upstream.Stats().Subscriptions == 1 })

	const n = 60
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			tok := dev.Publish("count/up", 1, false, fmt.Sprintf("u%d", i))
			tok.WaitTimeout(30 * time.Second)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(100 * time.Millisecond)
	br.Stop()
	time.Sleep(300 * time.Millisecond)
	br.Start()
	wg.Wait()
	eventually(t, 20*time.Second, "every device message at the broker", func() bool { return up.distinct() == n })
	for i := range n {
		if up.count(fmt.Sprintf("u%d", i)) == 0 {
			t.Fatalf("u%d lost", i)
		}
	}

	waitUpstream(t, g)
	for i := range n {
		app.Publish("count/down", 1, false, fmt.Sprintf("d%d", i))
	}
	got := map[string]bool{}
	for len(got) < n {
		m := down.next(t, 20*time.Second)
		got[string(m.Payload())] = true
	}
}

// A command published while the gateway is down waits in the broker's
// session for the gateway's command connection and reaches the device
// after the gateway restarts on the same data dir.
func TestUpstreamGatewayRestart(t *testing.T) {
	br := testbroker.Start(t)
	data := t.TempDir()
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: data, EventLoops: 2,
		Upstream: br.URL(), UpstreamClientID: "gw-restart", SecureIdle: time.Minute}
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	waitUpstream(t, g)
	eventually(t, 5*time.Second, "command subscription", func() bool { return g.upstream.Stats().CommandsSubscribed })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	app := cloudApp(t, br, "ops-restart", true)
	if tok := app.Publish("devices/van-3/commands/unlock", 1, false, "while-you-were-away"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	g = startGateway(t, func(c *Config) { *c = cfg })
	waitUpstream(t, g)
	eventually(t, 10*time.Second, "the command taken from the broker", func() bool {
		return g.upstream.Stats().Commands == 1
	})
	// The device connects after the command is stored: it is told to move
	// in answer to its query. (Connected before, it would be told at once
	// and its own query would race with its move.)
	d := newDevice311(t, g, "van-3")
	d.connect(false, g.PlainAddr())
	d.query()
	if c := nextCommand(t, d.cmds); !c.tls || c.payload != "while-you-were-away" {
		t.Fatalf("command %+v", c)
	}
}

// A cloud broker that caps packets below the gateway's own limit
// (Mosquitto's max_packet_size, given in its MQTT 5 CONNACK): a device's
// message over it is refused to the device, 0x95 on MQTT 5, a closed
// connection on 3.1.1, and the devices' messages after it still reach
// the broker over the same connection, which the broker never closed.
func TestUpstreamBrokerMaximumPacketSize(t *testing.T) {
	br := testbroker.Start(t, "max_packet_size 2048")
	g := upstreamGateway(t, br, func(c *Config) { c.UpstreamPool = 1 })
	waitUpstream(t, g)
	up := newCounter()
	app := cloudApp(t, br, "cloud-app", true)
	if tok := app.Subscribe("tele/#", 1, up.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	big := strings.Repeat("x", 4000) // under the gateway's 1 MiB, over the broker's 2 KiB

	dev := v5Plain(t, g, &paho.Connect{ClientID: "meter-5", KeepAlive: 30, CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, err := dev.Publish(ctx, &paho.Publish{Topic: "tele/meter-5", QoS: 1, Payload: []byte(big)})
	if pr == nil || pr.ReasonCode != 0x95 {
		t.Fatalf("oversized publish: response %+v, %v; want reason 0x95 (Packet too large)", pr, err)
	}
	if pr, err := dev.Publish(ctx, &paho.Publish{Topic: "tele/meter-5", QoS: 1, Payload: []byte("small")}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("publish after the refused one: %+v, %v", pr, err)
	}

	lost := make(chan error, 1)
	dev3 := v3(t, "tcp://"+g.PlainAddr(), "meter-3", nil, func(o *mqtt.ClientOptions) {
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	})
	dev3.Publish("tele/meter-3", 1, false, big) // no PUBACK can refuse it: the gateway closes
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the 3.1.1 device's oversized publish did not close its connection")
	}
	after := v3(t, "tcp://"+g.PlainAddr(), "meter-3b", nil, nil)
	if tok := after.Publish("tele/meter-3b", 1, false, "small-3"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("3.1.1 publish after the refused one: %v", tok.Error())
	}

	eventually(t, 10*time.Second, "the small messages at the broker", func() bool {
		return up.count("small") == 1 && up.count("small-3") == 1
	})
	if up.count(big) != 0 {
		t.Fatal("the broker got the oversized message")
	}
	var st statsView
	getJSON(t, g, "/v1/stats", "", &st)
	if st.Upstream == nil || st.Upstream.TooLarge != 2 || st.Upstream.Reconnects != 0 || st.Upstream.ConnectionLosses != 0 {
		t.Fatalf("upstream stats %+v: want too_large 2 and no reconnect", st.Upstream)
	}
}
