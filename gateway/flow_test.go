package gateway

import (
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// An MQTT 3.1.1 device flushing its offline queue puts 256 QoS 1
// publishes in flight at once, four times the gateway's window, through
// the bridge to Mosquitto (whose acknowledgements come back later): the
// gateway stops reading it and reads on as acknowledgements return; it
// was closed at the 65th ("receive maximum exceeded") and looped. Plain
// and TLS.
func TestV311PublisherBeyondWindowIsServed(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, nil)
	waitUpstream(t, g)
	got := newCounter()
	app := cloudApp(t, br, "flow-app", true)
	if tok := app.Subscribe("flush/#", 1, got.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	const n = 256
	for _, tc := range []struct {
		name, url string
		tls       bool
	}{{"plain", "tcp://" + g.PlainAddr(), false}, {"tls", "ssl://" + g.TLSAddr(), true}} {
		t.Run(tc.name, func(t *testing.T) {
			var lost = make(chan error, 1)
			cfg := clientTLS(t, g)
			if !tc.tls {
				cfg = nil
			}
			dev := v3(t, tc.url, "flusher-"+tc.name, cfg, func(o *mqtt.ClientOptions) {
				o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
			})
			pauses := metric(t, g, "dualgate_read_pauses_total")
			toks := make([]mqtt.Token, n)
			for i := range toks {
				toks[i] = dev.Publish("flush/"+tc.name, 1, false, fmt.Sprintf("%s-%d", tc.name, i))
			}
			for i, tok := range toks {
				if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
					t.Fatalf("publish %d: not acknowledged: %v", i, tok.Error())
				}
			}
			select {
			case err := <-lost:
				t.Fatalf("the device was disconnected: %v", err)
			default:
			}
			if !dev.IsConnectionOpen() {
				t.Fatal("the device was disconnected")
			}
			if metric(t, g, "dualgate_read_pauses_total") <= pauses {
				t.Error("256 publishes in flight, yet the gateway never held the device back")
			}
			eventually(t, 10*time.Second, "every message at the broker", func() bool {
				for i := range n {
					if got.count(fmt.Sprintf("%s-%d", tc.name, i)) == 0 {
						return false
					}
				}
				return true
			})
		})
	}
	if v := metric(t, g, "dualgate_protocol_errors_total"); v != 0 {
		t.Errorf("%v protocol errors, want 0", v)
	}
}

// A device with Receive Maximum 2 subscribed at QoS 1 gets 3 messages:
// what does not fit its window waits and goes out as it acknowledges; the
// third was dropped before.
func TestReceiveMaximumQueuesDeliveries(t *testing.T) {
	g := startGateway(t, nil)
	sub := dialRaw(t, g.PlainAddr())
	c := &mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, ClientID: []byte("small-window"), KeepAlive: 60}
	c.Properties.SetReceiveMaximum(2)
	sub.connect(c)
	sub.send(mqttcodec.AppendSubscribe(nil, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("window/#"), QoS: 1}}}))
	if p := sub.read(5 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}

	pub := v3(t, "tcp://"+g.PlainAddr(), "window-pub", nil, nil)
	for i := range 3 {
		if tok := pub.Publish("window/x", 1, false, fmt.Sprint("m", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	eventually(t, 5*time.Second, "messages waiting for the window", func() bool {
		return metric(t, g, "dualgate_deliveries_queued_total") >= 1
	})
	for i := range 3 {
		p := sub.read(5 * time.Second)
		if p.Type != mqttcodec.PUBLISH {
			t.Fatalf("got %s, want PUBLISH m%d", p.Type, i)
		}
		if got, want := string(p.Publish.Payload), fmt.Sprint("m", i); got != want {
			t.Fatalf("got %q, want %q (in order)", got, want)
		}
		sub.send(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID}))
	}
	if v := metric(t, g, "dualgate_deliveries_dropped_total"); v != 0 {
		t.Errorf("%v messages dropped, want 0", v)
	}
}

// An MQTT 5 device that leaves more QoS 2 publishes unreleased than the
// Receive Maximum the gateway advertised gets DISCONNECT 0x93: a QoS 2
// slot is freed at PUBCOMP, not at PUBREC (before, it never was told,
// and pinned up to 65,535 of them).
func TestV5QoS2BeyondReceiveMaximum(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.ReceiveMaximum = 4 })
	dev := dialRaw(t, g.PlainAddr())
	ack := dev.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, ClientID: []byte("qos2-abuser"), KeepAlive: 60})
	if ack.Properties.ReceiveMaximum != 4 {
		t.Fatalf("CONNACK Receive Maximum %d, want 4", ack.Properties.ReceiveMaximum)
	}
	publish := func(pid uint16) {
		dev.send(mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte("q2/x"), Payload: []byte("p"), QoS: 2, PacketID: pid}))
	}
	// Released exchanges do not count: 8 in a row, each completed.
	for pid := uint16(1); pid <= 8; pid++ {
		publish(pid)
		if p := dev.read(5 * time.Second); p.Type != mqttcodec.PUBREC {
			t.Fatalf("got %s, want PUBREC", p.Type)
		}
		dev.send(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBREL, &mqttcodec.Ack{PacketID: pid}))
		if p := dev.read(5 * time.Second); p.Type != mqttcodec.PUBCOMP {
			t.Fatalf("got %s, want PUBCOMP", p.Type)
		}
	}
	// Four unreleased fill the window; the fifth is one too many.
	for pid := uint16(10); pid < 14; pid++ {
		publish(pid)
		if p := dev.read(5 * time.Second); p.Type != mqttcodec.PUBREC {
			t.Fatalf("got %s, want PUBREC", p.Type)
		}
	}
	publish(14)
	p := dev.read(5 * time.Second)
	if p.Type != mqttcodec.DISCONNECT || p.Disconnect.ReasonCode != mqttcodec.ReceiveMaximumExceeded {
		t.Fatalf("got %s (reason %s), want DISCONNECT 0x93", p.Type, p.Disconnect.ReasonCode)
	}
	if _, closed := dev.closedWithin(5 * time.Second); !closed {
		t.Fatal("the connection stayed open")
	}
	if v := metric(t, g, "dualgate_receive_maximum_exceeded_total"); v != 1 {
		t.Errorf("dualgate_receive_maximum_exceeded_total %v, want 1", v)
	}
}

// An MQTT 3.1.1 device is told no window, but its unreleased QoS 2
// publishes are state only it can free: past --max-qos2-unreleased it is
// closed and counted, so it cannot pin memory.
func TestV311QoS2UnreleasedBound(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.MaxQoS2Unreleased = 8 })
	dev := dialRaw(t, g.PlainAddr())
	dev.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, CleanStart: true, ClientID: []byte("qos2-hoarder"), KeepAlive: 60})
	for pid := uint16(1); pid <= 8; pid++ {
		dev.send(mqttcodec.AppendPublish(nil, mqttcodec.V311, &mqttcodec.Publish{Topic: []byte("q2/x"), Payload: []byte("p"), QoS: 2, PacketID: pid}))
		if p := dev.read(5 * time.Second); p.Type != mqttcodec.PUBREC {
			t.Fatalf("got %s, want PUBREC", p.Type)
		}
	}
	dev.send(mqttcodec.AppendPublish(nil, mqttcodec.V311, &mqttcodec.Publish{Topic: []byte("q2/x"), Payload: []byte("p"), QoS: 2, PacketID: 9}))
	if _, closed := dev.closedWithin(5 * time.Second); !closed {
		t.Fatal("the connection stayed open past --max-qos2-unreleased")
	}
	if v := metric(t, g, "dualgate_qos2_unreleased_closed_total"); v != 1 {
		t.Errorf("dualgate_qos2_unreleased_closed_total %v, want 1", v)
	}
}

// Where at-least-once toward a device holds: the broker's (or a local
// publisher's) message is acknowledged once the gateway has it in the
// subscriber's session; a device whose connection ends before its PUBACK
// gets it again, marked DUP, when it resumes its session, and what waited
// for its window too, in order.
func TestUnackedMessagesKeptWithSession(t *testing.T) {
	g := startGateway(t, nil)
	connect := func() (*raw, *mqttcodec.Connack) {
		sub := dialRaw(t, g.PlainAddr())
		c := &mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, ClientID: []byte("alo-dev"), KeepAlive: 60}
		c.Properties.SetReceiveMaximum(1)
		c.Properties.SetSessionExpiry(3600)
		return sub, sub.connect(c)
	}
	sub, _ := connect()
	sub.send(mqttcodec.AppendSubscribe(nil, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("alo/#"), QoS: 1}}}))
	if p := sub.read(5 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	pub := v3(t, "tcp://"+g.PlainAddr(), "alo-pub", nil, nil)
	for i := range 3 {
		if tok := pub.Publish("alo/x", 1, false, fmt.Sprint("m", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	if p := sub.read(5 * time.Second); p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != "m0" {
		t.Fatalf("got %s %q, want PUBLISH m0", p.Type, p.Publish.Payload)
	}
	eventually(t, 5*time.Second, "two messages waiting for the window", func() bool {
		return metric(t, g, "dualgate_deliveries_queued_total") == 2
	})
	_ = sub.conn.Close() // gone before its PUBACK

	eventually(t, 5*time.Second, "the session kept", func() bool { return metric(t, g, "dualgate_kept_sessions") == 1 })
	sub, ack := connect()
	if !ack.SessionPresent {
		t.Fatal("session not present")
	}
	for i := range 3 {
		p := sub.read(5 * time.Second)
		if p.Type != mqttcodec.PUBLISH || string(p.Publish.Payload) != fmt.Sprint("m", i) {
			t.Fatalf("got %s %q, want PUBLISH m%d", p.Type, p.Publish.Payload, i)
		}
		if p.Publish.Dup != (i == 0) {
			t.Errorf("m%d: DUP %v, want %v", i, p.Publish.Dup, i == 0)
		}
		sub.send(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID}))
	}
}
