package gateway

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// movingDevice is an unmodified MQTT 3.1.1 client with a will: it does not
// leave when told, so the gateway closes its connection after the grace;
// it then connects again where the instruction said (what its reconnect
// logic would do), with the same will.
type movingDevice struct {
	t        *testing.T
	g        *Gateway
	id       string
	controls chan control.Instruction
	cmds     chan string
	lost     chan error
}

func (d *movingDevice) connect(in control.Instruction) mqtt.Client {
	broker := "tcp://" + in.Addr
	tc := clientTLS(d.t, d.g)
	if in.Mode == control.ModeTLS {
		broker = "ssl://" + in.Addr
	}
	return v3(d.t, broker, d.id, tc, func(o *mqtt.ClientOptions) {
		o.SetCleanSession(true).
			SetWill("devices/"+d.id+"/status", "offline", 1, false).
			SetConnectionLostHandler(func(_ mqtt.Client, err error) { d.lost <- err }).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				if m.Topic() == control.ControlTopic {
					in, err := control.ParseInstruction(m.Payload())
					if err != nil {
						d.t.Errorf("bad instruction %s", m.Payload())
						return
					}
					d.controls <- in
					return
				}
				d.cmds <- string(m.Payload())
			})
	})
}

// A 3.1.1 device moved to TLS and back by the gateway's forced closes
// fires no will upstream: the gateway holds the will while the device
// moves and drops it when the device is back.
func TestMoveFiresNoWillUpstream(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, func(c *Config) {
		c.ControlGrace = 200 * time.Millisecond
		c.SecureIdle = 500 * time.Millisecond
		c.SecureIdentity = "none" // its paho client presents no certificate
	})
	waitUpstream(t, g)
	up := newCounter()
	app := cloudApp(t, br, "cloud-app", true)
	if tok := app.Subscribe("devices/+/status", 1, up.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	d := &movingDevice{t: t, g: g, id: "car-will", controls: make(chan control.Instruction, 10),
		cmds: make(chan string, 10), lost: make(chan error, 10)}
	d.connect(control.Instruction{Mode: control.ModePlain, Addr: g.PlainAddr()})
	// The will works: a probe device that just drops publishes one.
	probe := &movingDevice{t: t, g: g, id: "probe", controls: make(chan control.Instruction, 10),
		cmds: make(chan string, 10), lost: make(chan error, 10)}
	probe.connect(control.Instruction{Mode: control.ModePlain, Addr: g.PlainAddr()})
	s, ok := g.reg.Get("probe")
	if !ok {
		t.Fatal("probe not registered")
	}
	s.Kick(mqttcodec.UnspecifiedError, "test: an outage, not a move")
	eventually(t, 10*time.Second, "the probe's will upstream", func() bool { return up.count("offline") == 1 })

	postCommand(t, g, d.id, `{"topic":"devices/car-will/commands/unlock","payload":"open"}`)
	in := next(t, d.controls, "TLS instruction")
	if in.Mode != control.ModeTLS {
		t.Fatalf("instruction %+v", in)
	}
	next(t, d.lost, "the gateway closing the plain connection after the grace")
	c := d.connect(in)
	if tok := c.Publish(control.QueryTopic, 1, false, `{"v":1}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if p := next(t, d.cmds, "the command over TLS"); p != "open" {
		t.Fatalf("command %q", p)
	}
	in = next(t, d.controls, "plain instruction after the quiet period")
	if in.Mode != control.ModePlain {
		t.Fatalf("instruction %+v", in)
	}
	next(t, d.lost, "the gateway closing the TLS connection after the grace")
	c = d.connect(in)
	// A marker after both moves: when it is upstream, a will fired at
	// either close would be there before it.
	if tok := c.Publish("devices/car-will/status", 1, false, "back"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	eventually(t, 10*time.Second, "the marker upstream", func() bool { return up.count("back") == 1 })
	if n := up.count("offline"); n != 1 {
		t.Fatalf("%d offline wills upstream, want only the probe's", n)
	}
	if _, wills := g.env.Sessions.Len(); wills != 0 {
		t.Fatalf("%d wills still held after the device came back", wills)
	}
}

func next[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// Session A has a secure command in flight on TLS (not acknowledged); the
// device connects again on TLS (B takes over) and queries at once. Whatever
// order the gateway handles A's end and B's query in, B gets the command
// within 5 s (it used to wait for its TTL when A's end came last).
func TestTakeoverOnTLSDeliversInFlightCommand(t *testing.T) {
	// Its paho clients present no certificate: with the default
	// --secure-identity cert, the command would wait for a proven session.
	g := startGateway(t, func(c *Config) { c.SecureIdentity = "none" })
	tc := clientTLS(t, g)
	got := make(chan string, 10)
	handler := func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }
	v3(t, "ssl://"+g.TLSAddr(), "taken", tc, func(o *mqtt.ClientOptions) {
		o.SetAutoAckDisabled(true).SetDefaultPublishHandler(handler) // A never acknowledges
	})
	id, _ := postCommand(t, g, "taken", `{"topic":"devices/taken/commands/unlock","payload":"in-flight"}`)
	if p := next(t, got, "the command on A"); p != "in-flight" {
		t.Fatalf("A got %q", p)
	}
	waitStatus(t, g, id, "sent")
	b := v3(t, "ssl://"+g.TLSAddr(), "taken", tc, func(o *mqtt.ClientOptions) { o.SetDefaultPublishHandler(handler) })
	if tok := b.Publish(control.QueryTopic, 1, false, `{"v":1}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case p := <-got:
		if p != "in-flight" {
			t.Fatalf("B got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the command in flight on A did not reach B within 5 s")
	}
	waitStatus(t, g, id, "delivered")
}
