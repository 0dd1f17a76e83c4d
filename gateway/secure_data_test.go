package gateway

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/internal/testutil"
	"github.com/dualgate/dualgate/mqttcodec"
)

// recorder is a hostile plain client: subscribed to a filter at QoS 0, it
// keeps every byte the gateway writes to its socket.
type recorder struct {
	buf  testutil.Buffer
	done chan struct{}
}

func recordPlain(t *testing.T, g *Gateway, id, filter string) *recorder {
	t.Helper()
	r := dialRaw(t, g.PlainAddr())
	r.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(id)})
	r.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte(filter), QoS: 0}}}))
	if p := r.read(5 * time.Second); p.Type != mqttcodec.SUBACK || p.Suback.ReasonCodes[0] != 0 {
		t.Fatalf("recorder subscribe %q: %s %v", filter, p.Type, p.Suback.ReasonCodes)
	}
	_ = r.conn.SetReadDeadline(time.Time{})
	rec := &recorder{done: make(chan struct{})}
	go func() {
		defer close(rec.done)
		_, _ = r.r.WriteTo(&rec.buf)
	}()
	t.Cleanup(func() { _ = r.conn.Close(); <-rec.done })
	return rec
}

func (r *recorder) holds(s string) bool { return strings.Contains(r.buf.String(), s) }

// subscribe3 subscribes a paho 3.1.1 client and collects what it gets.
func subscribe3(t *testing.T, c mqtt.Client, filter string) *collector {
	t.Helper()
	got := newCollector()
	if tok := c.Subscribe(filter, 1, got.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return got
}

// payloads lists what a collector holds.
func (c *collector) payloads() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.msgs {
		out = append(out, string(m.Payload()))
	}
	return out
}

// waitFor waits until the collector holds a message with this payload.
func (c *collector) waitFor(t *testing.T, payload string) {
	t.Helper()
	eventually(t, 10*time.Second, "message "+payload, func() bool {
		for _, p := range c.payloads() {
			if p == payload {
				return true
			}
		}
		return false
	})
}

// Data published over TLS, and data on a --secure-topics topic, never
// reach a plain socket, while a TLS subscriber on the same filter gets
// them: the messages were routed, and CheckTransport kept them off plain.
// A marker published afterwards on plain reaches every subscriber, after
// the secret in each one's queue, so its arrival proves the secret was
// handled (and withheld) first.
func TestSecureDataNeverOnPlain(t *testing.T) {
	for _, upstream := range []bool{false, true} {
		name := "local"
		if upstream {
			name = "upstream"
		}
		t.Run(name, func(t *testing.T) {
			var br *testbroker.Broker
			var g *Gateway
			if upstream {
				br = testbroker.Start(t)
				g = upstreamGateway(t, br, func(c *Config) { c.SecureTopics = "vault/#" })
				waitUpstream(t, g)
			} else {
				g = startGateway(t, func(c *Config) { c.SecureTopics = "vault/#" })
			}
			rec := recordPlain(t, g, "rec-plain", "#")
			plainSub := subscribe3(t, v3(t, "tcp://"+g.PlainAddr(), "sub-plain", nil, nil), "#")
			tlsSub := subscribe3(t, v3(t, "ssl://"+g.TLSAddr(), "sub-tls", clientTLS(t, g), nil), "#")

			pubTLS := v5TLS(t, g, &paho.Connect{ClientID: "pub-tls", KeepAlive: 30, CleanStart: true})
			publish5(t, pubTLS, "demo/reading", "tls-secret-1")
			publish5(t, pubTLS, "vault/key", "vault-secret-2")
			secrets := []string{"tls-secret-1", "vault-secret-2"}
			if upstream {
				// From the cloud side: no origin, but a secure topic.
				app := cloudApp(t, br, "cloud-app", true)
				if tok := app.Publish("vault/cloud", 1, false, "vault-secret-3"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Fatalf("cloud publish: %v", tok.Error())
				}
				secrets = append(secrets, "vault-secret-3")
			}
			for _, s := range secrets {
				tlsSub.waitFor(t, s)
			}
			pubPlain := v3(t, "tcp://"+g.PlainAddr(), "pub-plain", nil, nil)
			if tok := pubPlain.Publish("demo/marker", 1, false, "plain-marker"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("marker: %v", tok.Error())
			}
			tlsSub.waitFor(t, "plain-marker")
			plainSub.waitFor(t, "plain-marker")
			eventually(t, 10*time.Second, "the marker on the recorded plain socket", func() bool { return rec.holds("plain-marker") })
			for _, s := range secrets {
				if rec.holds(s) {
					t.Errorf("%s was written to a plain socket", s)
				}
			}
			if got := plainSub.payloads(); len(got) != 1 {
				t.Errorf("plain subscriber got %q, want the marker only", got)
			}
			// Two plain subscribers missed each secret.
			want := float64(2 * len(secrets))
			if got := metric(t, g, "dualgate_secure_data_withheld_total"); got != want {
				t.Errorf("dualgate_secure_data_withheld_total = %v, want %v", got, want)
			}
			if upstream {
				if got := metric(t, g, "dualgate_secure_echoes_total"); got < 1 {
					t.Errorf("the broker's copy of the TLS publish was not recognised (echoes %v)", got)
				}
			}
		})
	}
}

// A publish on a secure topic over plain is refused: an MQTT 5 device sees
// PUBACK 0x87, a 3.1.1 device is disconnected, QoS 0 is dropped; nothing
// reaches a TLS subscriber.
func TestPlainPublishOnSecureTopicRefused(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.SecureTopics = "vault/#,keys" })
	tlsSub := subscribe3(t, v3(t, "ssl://"+g.TLSAddr(), "sub-tls", clientTLS(t, g), nil), "#")

	p5 := v5Plain(t, g, &paho.Connect{ClientID: "plain-5", KeepAlive: 30, CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	res, _ := p5.Publish(ctx, &paho.Publish{Topic: "vault/k", QoS: 1, Payload: []byte("leak-5")})
	cancel()
	if res == nil || res.ReasonCode != byte(mqttcodec.NotAuthorized) {
		t.Fatalf("MQTT 5 plain publish on a secure topic: %+v, want PUBACK 0x87", res)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := p5.Publish(ctx, &paho.Publish{Topic: "keys", QoS: 0, Payload: []byte("leak-0")}); err != nil {
		t.Fatalf("QoS 0 publish: %v", err)
	}
	cancel()

	lost := make(chan error, 1)
	p3 := v3(t, "tcp://"+g.PlainAddr(), "plain-311", nil, func(o *mqtt.ClientOptions) {
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	})
	p3.Publish("vault/k", 1, false, "leak-311")
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the 3.1.1 connection that published on a secure topic over plain is still open")
	}

	// The same device over TLS is heard.
	t5 := v5TLS(t, g, &paho.Connect{ClientID: "plain-5", KeepAlive: 30, CleanStart: true})
	publish5(t, t5, "vault/k", "over-tls")
	tlsSub.waitFor(t, "over-tls")
	for _, p := range tlsSub.payloads() {
		if strings.HasPrefix(p, "leak") {
			t.Errorf("a refused publish reached a subscriber: %s", p)
		}
	}
	eventually(t, 5*time.Second, "three refusals counted", func() bool {
		return metric(t, g, "dualgate_secure_topic_plain_publishes_refused_total") == 3
	})
}

// dialV5Will tries an MQTT 5 CONNECT with a Will and returns the CONNACK.
func dialV5Will(t *testing.T, addr, id, willTopic string) *paho.Connack {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	vc, err := dialV5(t, conn, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: willTopic, QoS: 1, Payload: []byte("will-" + id)}})
	if err == nil {
		t.Fatalf("CONNECT with the Will on %s accepted", willTopic)
	}
	return vc.connack
}
