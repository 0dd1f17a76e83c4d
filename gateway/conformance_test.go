package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// The tests of this file hold the gateway to what a device (and a cloud
// application) gets from Mosquitto alone, with a real Mosquitto behind the
// gateway: persistent sessions that keep messages, MQTT 5 properties end to
// end, subscription options, a SUBACK that follows the upstream
// subscription, retained messages to exactly the new subscriber, QoS 2 and
// shared subscriptions. Each runs with the bridge speaking MQTT 5 and, where
// the behaviour does not need MQTT 5 upstream, 3.1.1.

// upstreamProtocols are the bridge's protocols the tests run with.
var upstreamProtocols = []string{"5", "3.1.1"}

func conformanceGateway(t *testing.T, br *testbroker.Broker, protocol string, mod func(*Config)) *Gateway {
	t.Helper()
	g := upstreamGateway(t, br, func(c *Config) {
		c.UpstreamProtocol = protocol
		if mod != nil {
			mod(c)
		}
	})
	waitUpstream(t, g)
	return g
}

// app5 is an MQTT 5 client of the broker itself: the cloud application.
func app5(t *testing.T, br *testbroker.Broker, id string) *v5client {
	t.Helper()
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	vc, err := dialV5(t, conn, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("cloud app connect: %v", err)
	}
	return vc
}

func subscribe5(t *testing.T, c *v5client, sub *paho.Subscribe) *paho.Suback {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Subscribe(ctx, sub)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return ack
}

func pub5(t *testing.T, c *v5client, p *paho.Publish) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, p); err != nil {
		t.Fatalf("publish %s: %v", p.Topic, err)
	}
}

// next5 waits for the next message a v5 client receives.
func next5(t *testing.T, c *v5client, within time.Duration) *paho.Publish {
	t.Helper()
	select {
	case p := <-c.received:
		return p
	case <-time.After(within):
		t.Fatal("no message arrived")
		return nil
	}
}

// quiet5 checks that nothing more arrives: after a marker published after
// everything else on the same connection of the broker comes back, nothing
// else came before it.
func quiet5(t *testing.T, c *v5client, app *v5client, markerTopic string) {
	t.Helper()
	pub5(t, app, &paho.Publish{Topic: markerTopic, QoS: 1, Payload: []byte("marker")})
	p := next5(t, c, 10*time.Second)
	if p.Topic != markerTopic {
		t.Fatalf("got %s %q before the marker", p.Topic, p.Payload)
	}
}

// An MQTT 3.1.1 device with clean session 0 gets, on reconnecting, the
// QoS 1 messages published while it was away, in order, with session
// present.
func TestOfflineMessagesV311(t *testing.T) {
	for _, proto := range upstreamProtocols {
		t.Run("upstream-"+proto, func(t *testing.T) {
			br := testbroker.Start(t)
			g := conformanceGateway(t, br, proto, nil)
			app := cloudApp(t, br, "app-off3", true)
			opts := func(o *mqtt.ClientOptions) { o.SetCleanSession(false) }
			dev := v3(t, "tcp://"+g.PlainAddr(), "meter off 3", nil, opts)
			if tok := dev.Subscribe("fleet/off3/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			dev.Disconnect(100)
			eventually(t, 5*time.Second, "the session kept", func() bool {
				_, ok := g.reg.Get("meter off 3")
				return !ok
			})
			for i := range 10 {
				app.Publish(fmt.Sprintf("fleet/off3/%d", i), 1, false, fmt.Sprint(i)).Wait()
			}
			eventually(t, 10*time.Second, "10 messages queued for the away device", func() bool {
				return g.env.Sessions.Stats().Queued == 10
			})
			got := newCollector()
			back := v3(t, "tcp://"+g.PlainAddr(), "meter off 3", nil, func(o *mqtt.ClientOptions) {
				o.SetCleanSession(false)
				o.SetDefaultPublishHandler(got.handler)
			})
			if !back.IsConnected() {
				t.Fatal("not connected")
			}
			for i := range 10 {
				m := got.next(t, 10*time.Second)
				if string(m.Payload()) != fmt.Sprint(i) || m.Qos() != 1 {
					t.Fatalf("message %d: got %q QoS %d", i, m.Payload(), m.Qos())
				}
			}
		})
	}
}

// An MQTT 5 device with a session expiry gets what was published while it
// was away, properties included, and not what expired meanwhile; a QoS 1
// message it had not acknowledged comes again with DUP and its packet id.
func TestOfflineMessagesV5(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-off5")
	expiry := uint32(300)

	// A raw device, to leave a message unacknowledged.
	r := dialRaw(t, g.PlainAddr())
	cp := &mqttcodec.Connect{ProtocolVersion: 5, ClientID: []byte("car-off5"), KeepAlive: 60}
	cp.Properties.SetSessionExpiry(expiry)
	if ack := r.connect(cp); ack.ReasonCode != mqttcodec.Success {
		t.Fatalf("connack %v", ack.ReasonCode)
	}
	r.send(mqttcodec.AppendSubscribe(nil, 5, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("fleet/off5/#"), QoS: 1}}}))
	if p := r.read(10 * time.Second); p.Type != mqttcodec.SUBACK || p.Suback.ReasonCodes[0] != 1 {
		t.Fatalf("got %s %v, want SUBACK granted 1", p.Type, p.Suback.ReasonCodes)
	}
	pub5(t, app, &paho.Publish{Topic: "fleet/off5/first", QoS: 1, Payload: []byte("unacked")})
	p := r.read(10 * time.Second)
	if p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != "unacked" {
		t.Fatalf("got %s %q", p.Type, p.Publish.Payload)
	}
	pid := p.Publish.PacketID
	_ = r.conn.Close() // no PUBACK
	eventually(t, 5*time.Second, "the session kept", func() bool {
		_, ok := g.reg.Get("car-off5")
		return !ok
	})

	short := uint32(1)
	pf := byte(1)
	pub5(t, app, &paho.Publish{Topic: "fleet/off5/short", QoS: 1, Payload: []byte("gone"),
		Properties: &paho.PublishProperties{MessageExpiry: &short}})
	pub5(t, app, &paho.Publish{Topic: "fleet/off5/second", QoS: 1, Payload: []byte("kept"),
		Properties: &paho.PublishProperties{ContentType: "text/plain", PayloadFormat: &pf,
			User: paho.UserProperties{{Key: "k", Value: "v1"}, {Key: "k", Value: "v2"}}}})
	eventually(t, 10*time.Second, "2 messages handed to the kept session", func() bool { return g.routes.queuedOffline.Load() == 2 })
	// Wall-clock wait in the safe direction: the 1 s message has surely
	// expired after 2 s, however slow the machine.
	time.Sleep(2 * time.Second)

	r2 := dialRaw(t, g.PlainAddr())
	cp2 := &mqttcodec.Connect{ProtocolVersion: 5, ClientID: []byte("car-off5"), KeepAlive: 60}
	cp2.Properties.SetSessionExpiry(expiry)
	if ack := r2.connect(cp2); !ack.SessionPresent {
		t.Fatal("session present not set")
	}
	p = r2.read(10 * time.Second)
	if p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != "unacked" || !p.Publish.Dup || p.Publish.PacketID != pid {
		t.Fatalf("resend: got %s %q dup %v pid %d (want %d)", p.Type, p.Publish.Payload, p.Publish.Dup, p.Publish.PacketID, pid)
	}
	r2.send(mqttcodec.AppendAck(nil, 5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: pid}))
	p = r2.read(10 * time.Second)
	if p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != "kept" {
		t.Fatalf("queued: got %s %q (the expired one must not come)", p.Type, p.Publish.Payload)
	}
	pr := &p.Publish.Properties
	if string(pr.ContentType) != "text/plain" || pr.PayloadFormat != 1 || len(pr.UserProperties) != 2 ||
		string(pr.UserProperties[1].Value) != "v2" {
		t.Fatalf("properties lost while queued: %+v", pr)
	}
	if g.env.Sessions.Stats().QueueExpired == 0 {
		t.Fatal("the expired message is not counted")
	}
}

// Every PUBLISH property travels device -> broker and broker -> device,
// and MQTT 5 request/response works through the gateway.
func TestPropertiesEndToEnd(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-props")
	subscribe5(t, app, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "req/#", QoS: 1}}})
	dev := v5Plain(t, g, &paho.Connect{ClientID: "props-dev", KeepAlive: 30, CleanStart: true})
	subscribe5(t, dev, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "resp/props-dev", QoS: 1}}})

	pf := byte(1)
	exp := uint32(3600)
	pub5(t, dev, &paho.Publish{Topic: "req/props-dev", QoS: 1, Payload: []byte(`{"q":1}`),
		Properties: &paho.PublishProperties{
			ContentType: "application/json", PayloadFormat: &pf, MessageExpiry: &exp,
			ResponseTopic: "resp/props-dev", CorrelationData: []byte{0, 1, 2, 0xff},
			User: paho.UserProperties{{Key: "trace", Value: "abc"}, {Key: "trace", Value: "def"}, {Key: "z", Value: ""}},
		}})
	req := next5(t, app, 10*time.Second)
	rp := req.Properties
	if rp == nil || rp.ContentType != "application/json" || rp.PayloadFormat == nil || *rp.PayloadFormat != 1 ||
		rp.MessageExpiry == nil || *rp.MessageExpiry > exp || *rp.MessageExpiry < exp-60 ||
		rp.ResponseTopic != "resp/props-dev" || !bytes.Equal(rp.CorrelationData, []byte{0, 1, 2, 0xff}) ||
		!slices.Equal(rp.User, paho.UserProperties{{Key: "trace", Value: "abc"}, {Key: "trace", Value: "def"}, {Key: "z", Value: ""}}) {
		t.Fatalf("the broker got properties %+v", rp)
	}
	// The application answers on the response topic with the correlation
	// data, as MQTT 5 request/response does.
	pub5(t, app, &paho.Publish{Topic: rp.ResponseTopic, QoS: 1, Payload: []byte(`{"a":2}`),
		Properties: &paho.PublishProperties{CorrelationData: rp.CorrelationData, ContentType: "application/json",
			User: paho.UserProperties{{Key: "from", Value: "app"}}}})
	resp := next5(t, dev, 10*time.Second)
	if resp.Properties == nil || !bytes.Equal(resp.Properties.CorrelationData, []byte{0, 1, 2, 0xff}) ||
		resp.Properties.ContentType != "application/json" || resp.Properties.User.Get("from") != "app" {
		t.Fatalf("the device got properties %+v", resp.Properties)
	}
}

// A Will's properties reach the broker with it.
func TestWillPropertiesUpstream(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-will")
	subscribe5(t, app, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "wills/#", QoS: 1}}})
	r := dialRaw(t, g.PlainAddr())
	cp := &mqttcodec.Connect{ProtocolVersion: 5, ClientID: []byte("will-dev"), KeepAlive: 60, CleanStart: true,
		WillFlag: true, WillQoS: 1, WillTopic: []byte("wills/will-dev"), WillPayload: []byte("gone")}
	cp.WillProperties.SetContentType([]byte("text/plain"))
	cp.WillProperties.AddUserProperty([]byte("reason"), []byte("crash"))
	r.connect(cp)
	_ = r.conn.Close()
	w := next5(t, app, 10*time.Second)
	if string(w.Payload) != "gone" || w.Properties == nil || w.Properties.ContentType != "text/plain" ||
		w.Properties.User.Get("reason") != "crash" {
		t.Fatalf("will: %q %+v", w.Payload, w.Properties)
	}
}

// No Local: a device does not get back what it published itself; another
// device does.
func TestNoLocal(t *testing.T) {
	for _, proto := range upstreamProtocols {
		t.Run("upstream-"+proto, func(t *testing.T) {
			br := testbroker.Start(t)
			g := conformanceGateway(t, br, proto, nil)
			app := app5(t, br, "app-nl")
			self := v5Plain(t, g, &paho.Connect{ClientID: "nl-self", KeepAlive: 30, CleanStart: true})
			other := v5Plain(t, g, &paho.Connect{ClientID: "nl-other", KeepAlive: 30, CleanStart: true})
			subscribe5(t, self, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
				{Topic: "nl/#", QoS: 1, NoLocal: true}, {Topic: "mark/nl-self", QoS: 1}}})
			subscribe5(t, other, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "nl/#", QoS: 1}}})
			pub5(t, self, &paho.Publish{Topic: "nl/x", QoS: 1, Payload: []byte("mine")})
			if p := next5(t, other, 10*time.Second); string(p.Payload) != "mine" {
				t.Fatalf("other got %q", p.Payload)
			}
			quiet5(t, self, app, "mark/nl-self")
			// A message the application publishes still reaches it.
			pub5(t, app, &paho.Publish{Topic: "nl/y", QoS: 1, Payload: []byte("theirs")})
			if p := next5(t, self, 10*time.Second); string(p.Payload) != "theirs" {
				t.Fatalf("self got %q", p.Payload)
			}
		})
	}
}

// Retain Handling 2 sends no retained message; 1 sends them only for a new
// subscription; 0 at every SUBSCRIBE. Retain As Published keeps the flag
// of a live retained publish; without it the flag is cleared.
func TestRetainOptions(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-ret")
	pub5(t, app, &paho.Publish{Topic: "ro/cfg", QoS: 1, Retain: true, Payload: []byte("v1")})

	d := v5Plain(t, g, &paho.Connect{ClientID: "ro-dev", KeepAlive: 30, CleanStart: true})
	subscribe5(t, d, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "mark/ro-dev", QoS: 1}}})
	subscribe5(t, d, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "ro/#", QoS: 1, RetainHandling: 2}}})
	quiet5(t, d, app, "mark/ro-dev")

	subscribe5(t, d, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "ro/+", QoS: 1, RetainHandling: 1}}})
	if p := next5(t, d, 10*time.Second); string(p.Payload) != "v1" || !p.Retain {
		t.Fatalf("retain handling 1, new: got %q retain %v", p.Payload, p.Retain)
	}
	subscribe5(t, d, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "ro/+", QoS: 1, RetainHandling: 1}}})
	quiet5(t, d, app, "mark/ro-dev")
	subscribe5(t, d, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "ro/+", QoS: 1, RetainHandling: 0}}})
	if p := next5(t, d, 10*time.Second); string(p.Payload) != "v1" || !p.Retain {
		t.Fatalf("retain handling 0, again: got %q retain %v", p.Payload, p.Retain)
	}

	rap := v5Plain(t, g, &paho.Connect{ClientID: "rap-dev", KeepAlive: 30, CleanStart: true})
	subscribe5(t, rap, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "live/#", QoS: 1, RetainAsPublished: true}}})
	plainSub := v5Plain(t, g, &paho.Connect{ClientID: "norap-dev", KeepAlive: 30, CleanStart: true})
	subscribe5(t, plainSub, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "live/#", QoS: 1}}})
	pub5(t, app, &paho.Publish{Topic: "live/x", QoS: 1, Retain: true, Payload: []byte("r")})
	if p := next5(t, rap, 10*time.Second); !p.Retain {
		t.Fatal("retain as published: the flag was cleared")
	}
	if p := next5(t, plainSub, 10*time.Second); p.Retain {
		t.Fatal("without retain as published: a live message kept the retain flag")
	}
}

// One delivery per session carries the identifiers of every matching
// subscription.
func TestSubscriptionIdentifiers(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-sid")
	r := dialRaw(t, g.PlainAddr())
	ack := r.connect(&mqttcodec.Connect{ProtocolVersion: 5, ClientID: []byte("sid-dev"), KeepAlive: 60, CleanStart: true})
	if !ack.Properties.Has(mqttcodec.PropSubIDAvailable) || ack.Properties.SubIDAvailable != 1 {
		if ack.Properties.Has(mqttcodec.PropSubIDAvailable) {
			t.Fatal("CONNACK says subscription identifiers are not available")
		}
	}
	for i, f := range []string{"sid/#", "sid/+/t"} {
		s := &mqttcodec.Subscribe{PacketID: uint16(i + 1), Subscriptions: []mqttcodec.Subscription{{Filter: []byte(f), QoS: 1}}}
		s.Properties.AddSubscriptionID(uint32(7 + i*2))
		r.send(mqttcodec.AppendSubscribe(nil, 5, s))
		if p := r.read(10 * time.Second); p.Type != mqttcodec.SUBACK || p.Suback.ReasonCodes[0] != 1 {
			t.Fatalf("got %s %v", p.Type, p.Suback.ReasonCodes)
		}
	}
	pub5(t, app, &paho.Publish{Topic: "sid/a/t", QoS: 1, Payload: []byte("both")})
	p := r.read(10 * time.Second)
	if p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != "both" {
		t.Fatalf("got %s %q", p.Type, p.Publish.Payload)
	}
	ids := slices.Clone(p.Publish.Properties.SubscriptionIDs)
	slices.Sort(ids)
	if !slices.Equal(ids, []uint32{7, 9}) {
		t.Fatalf("subscription identifiers %v, want [7 9]", ids)
	}
	r.send(mqttcodec.AppendAck(nil, 5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID}))
	pub5(t, app, &paho.Publish{Topic: "sid/b", QoS: 1, Payload: []byte("one")})
	p = r.read(10 * time.Second)
	if string(p.Publish.Payload) != "one" || !slices.Equal(p.Publish.Properties.SubscriptionIDs, []uint32{7}) {
		t.Fatalf("got %q ids %v, want [7]", p.Publish.Payload, p.Publish.Properties.SubscriptionIDs)
	}
	if _, err := r.next(300 * time.Millisecond); err == nil {
		t.Fatal("a second copy arrived")
	}
}

// A retained message goes to the subscriber whose SUBSCRIBE caused it,
// once, and never again to an earlier subscriber with an overlapping
// filter: 20 times.
func TestRetainedAttribution(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-attr")
	for i := range 20 {
		root := fmt.Sprintf("ra%d", i)
		a := v5Plain(t, g, &paho.Connect{ClientID: root + "-a", KeepAlive: 30, CleanStart: true})
		subscribe5(t, a, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: root + "/#", QoS: 1}}})
		pub5(t, app, &paho.Publish{Topic: root + "/x", QoS: 1, Retain: true, Payload: []byte("r")})
		if p := next5(t, a, 10*time.Second); p.Retain || string(p.Payload) != "r" {
			t.Fatalf("run %d: A got the live message %q retain %v", i, p.Payload, p.Retain)
		}
		b := v5Plain(t, g, &paho.Connect{ClientID: root + "-b", KeepAlive: 30, CleanStart: true})
		subscribe5(t, b, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: root + "/+", QoS: 1}}})
		if p := next5(t, b, 10*time.Second); !p.Retain || string(p.Payload) != "r" {
			t.Fatalf("run %d: B got %q retain %v", i, p.Payload, p.Retain)
		}
		// Both see the marker next: nothing else came to either.
		subscribe5(t, a, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "mark/" + root, QoS: 1}}})
		subscribe5(t, b, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "mark/" + root, QoS: 1}}})
		pub5(t, app, &paho.Publish{Topic: "mark/" + root, QoS: 1, Payload: []byte("marker")})
		for who, c := range map[string]*v5client{"A": a, "B": b} {
			if p := next5(t, c, 10*time.Second); p.Topic != "mark/"+root {
				t.Fatalf("run %d: %s got %s %q retain %v before the marker", i, who, p.Topic, p.Payload, p.Retain)
			}
		}
	}
}

// SUBSCRIBE and PUBLISH sent together, without waiting for the SUBACK:
// the message comes back every time, as with Mosquitto alone.
func TestSubscribeThenPublishPipelined(t *testing.T) {
	for _, proto := range upstreamProtocols {
		t.Run("upstream-"+proto, func(t *testing.T) {
			br := testbroker.Start(t)
			g := conformanceGateway(t, br, proto, nil)
			r := dialRaw(t, g.PlainAddr())
			r.connect(&mqttcodec.Connect{ProtocolVersion: 4, ClientID: []byte("pipe-dev"), KeepAlive: 60, CleanStart: true})
			for i := range 50 {
				topic := fmt.Sprintf("pipe/%d", i)
				b := mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: uint16(2*i + 1),
					Subscriptions: []mqttcodec.Subscription{{Filter: []byte(topic), QoS: 1}}})
				b = mqttcodec.AppendPublish(b, 4, &mqttcodec.Publish{Topic: []byte(topic), QoS: 1, PacketID: uint16(2*i + 2), Payload: []byte("echo")})
				r.send(b)
				var suback, puback, echo bool
				for !(suback && puback && echo) {
					p := r.read(10 * time.Second)
					switch p.Type {
					case mqttcodec.SUBACK:
						if p.Suback.ReasonCodes[0] >= 0x80 {
							t.Fatalf("run %d: subscription refused", i)
						}
						suback = true
					case mqttcodec.PUBACK:
						puback = true
					case mqttcodec.PUBLISH:
						if string(p.Publish.Topic) != topic {
							t.Fatalf("run %d: got %s", i, p.Publish.Topic)
						}
						echo = true
						r.send(mqttcodec.AppendAck(nil, 4, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID}))
					default:
						t.Fatalf("run %d: got %s", i, p.Type)
					}
				}
			}
		})
	}
}

// QoS 2 is granted and carried end to end: device -> broker -> device.
func TestQoS2EndToEnd(t *testing.T) {
	for _, proto := range upstreamProtocols {
		t.Run("upstream-"+proto, func(t *testing.T) {
			br := testbroker.Start(t)
			g := conformanceGateway(t, br, proto, nil)
			app := app5(t, br, "app-q2")
			subscribe5(t, app, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q2up/#", QoS: 2}}})
			dev := v5Plain(t, g, &paho.Connect{ClientID: "q2-dev", KeepAlive: 30, CleanStart: true})
			ack := subscribe5(t, dev, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q2down/#", QoS: 2}}})
			if ack.Reasons[0] != 2 {
				t.Fatalf("granted QoS %d, want 2", ack.Reasons[0])
			}
			pub5(t, dev, &paho.Publish{Topic: "q2up/x", QoS: 2, Payload: []byte("once up")})
			if p := next5(t, app, 10*time.Second); p.QoS != 2 || string(p.Payload) != "once up" {
				t.Fatalf("broker side got QoS %d %q", p.QoS, p.Payload)
			}
			pub5(t, app, &paho.Publish{Topic: "q2down/x", QoS: 2, Payload: []byte("once down")})
			if p := next5(t, dev, 10*time.Second); p.QoS != 2 || string(p.Payload) != "once down" {
				t.Fatalf("device got QoS %d %q", p.QoS, p.Payload)
			}
			if proto != "5" {
				// A 3.1.1 broker sends the gateway one copy for
				// overlapping filters at a QoS of its choosing
				// (docs/operations.md, section 6).
				return
			}
			// Overlapping subscriptions: one copy, at the highest QoS.
			subscribe5(t, dev, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q2down/+", QoS: 1}}})
			pub5(t, app, &paho.Publish{Topic: "q2down/y", QoS: 2, Payload: []byte("overlap")})
			if p := next5(t, dev, 10*time.Second); p.QoS != 2 || string(p.Payload) != "overlap" {
				t.Fatalf("overlap: device got QoS %d %q", p.QoS, p.Payload)
			}
			subscribe5(t, dev, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "mark/q2-dev", QoS: 1}}})
			quiet5(t, dev, app, "mark/q2-dev")
		})
	}
}

// Two devices in one shared subscription group share the messages: each
// message reaches exactly one of them, and both get some.
func TestSharedSubscription(t *testing.T) {
	br := testbroker.Start(t)
	g := conformanceGateway(t, br, "5", nil)
	app := app5(t, br, "app-share")
	a := v5Plain(t, g, &paho.Connect{ClientID: "share-a", KeepAlive: 30, CleanStart: true})
	b := v5Plain(t, g, &paho.Connect{ClientID: "share-b", KeepAlive: 30, CleanStart: true})
	for _, c := range []*v5client{a, b} {
		ack := subscribe5(t, c, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/workers/jobs/#", QoS: 1}}})
		if ack.Reasons[0] != 1 {
			t.Fatalf("shared subscription: reason %#x", ack.Reasons[0])
		}
	}
	const n = 40
	for i := range n {
		pub5(t, app, &paho.Publish{Topic: fmt.Sprintf("jobs/%d", i), QoS: 1, Payload: []byte(fmt.Sprint(i))})
	}
	seen := map[string]int{}
	per := map[string]int{}
	for range n {
		select {
		case p := <-a.received:
			seen[string(p.Payload)]++
			per["a"]++
		case p := <-b.received:
			seen[string(p.Payload)]++
			per["b"]++
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d jobs arrived", len(seen), n)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct jobs of %d: %v", len(seen), n, seen)
	}
	if per["a"] == 0 || per["b"] == 0 {
		t.Fatalf("one member got everything: %v", per)
	}
	// Nothing more (no job twice).
	for _, c := range []*v5client{a, b} {
		select {
		case p := <-c.received:
			t.Fatalf("a job arrived twice: %q", p.Payload)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// The same, without an upstream broker: the gateway's own routing.
func TestSharedSubscriptionLocal(t *testing.T) {
	g := startGateway(t, nil)
	pub := v5Plain(t, g, &paho.Connect{ClientID: "share-pub", KeepAlive: 30, CleanStart: true})
	a := v5Plain(t, g, &paho.Connect{ClientID: "lshare-a", KeepAlive: 30, CleanStart: true})
	b := v5Plain(t, g, &paho.Connect{ClientID: "lshare-b", KeepAlive: 30, CleanStart: true})
	for _, c := range []*v5client{a, b} {
		subscribe5(t, c, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/ljobs/+", QoS: 1}}})
	}
	const n = 20
	for i := range n {
		pub5(t, pub, &paho.Publish{Topic: fmt.Sprintf("ljobs/%d", i), QoS: 1, Payload: []byte(fmt.Sprint(i))})
	}
	got := map[string]int{}
	for range n {
		select {
		case p := <-a.received:
			got["a"]++
			_ = p
		case <-b.received:
			got["b"]++
		case <-time.After(10 * time.Second):
			t.Fatalf("jobs missing: %v", got)
		}
	}
	if got["a"] == 0 || got["b"] == 0 || got["a"]+got["b"] != n {
		t.Fatalf("shared locally: %v", got)
	}
}
