package bridge

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// broker is a Mosquitto run by the test.
type broker = testbroker.Broker

// startBroker returns a running broker.
func startBroker(t testing.TB, extra ...string) *broker { return testbroker.Start(t, extra...) }

// peer is a paho client on the broker side: a cloud application.
func peer(t testing.TB, url, id string, clean bool, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectTimeout(2 * time.Second).SetOrderMatters(true).SetKeepAlive(5 * time.Second).
		SetStore(mqtt.NewOrderedMemoryStore())
	if onMsg != nil {
		o.SetDefaultPublishHandler(onMsg)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("peer %s: connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// mustToken waits for a paho token.
func mustToken(t testing.TB, tok mqtt.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// inbox collects the messages a peer receives.
type inbox struct {
	mu   sync.Mutex
	msgs []mqtt.Message
	ch   chan struct{}
}

func newInbox() *inbox { return &inbox{ch: make(chan struct{}, 1)} }

func (in *inbox) handler(_ mqtt.Client, m mqtt.Message) {
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
	select {
	case in.ch <- struct{}{}:
	default:
	}
}

func (in *inbox) snapshot() []mqtt.Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]mqtt.Message(nil), in.msgs...)
}

// waitN waits until at least n messages arrived.
func (in *inbox) waitN(t testing.TB, n int, d time.Duration) []mqtt.Message {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if ms := in.snapshot(); len(ms) >= n {
			return ms
		}
		select {
		case <-in.ch:
		case <-deadline.C:
			t.Fatalf("%d messages after %v, want %d", len(in.snapshot()), d, n)
		}
	}
}

// bothProtocols runs fn as two subtests, "v5" and "v3.1.1": testConfig
// gives a bridge made in the second Protocol311.
func bothProtocols(t *testing.T, fn func(t *testing.T)) {
	t.Run("v5", fn)
	t.Run("v3.1.1", fn)
}

// protocolOf is the protocol a test's bridges speak (see bothProtocols).
func protocolOf(t testing.TB) string {
	if strings.Contains(t.Name(), "/v3.1.1") {
		return Protocol311
	}
	return Protocol5
}

// testConfig is a configuration for a bridge to url with short timers.
func testConfig(t testing.TB, url string) Config {
	return Config{
		URL:            url,
		Protocol:       protocolOf(t),
		ClientIDPrefix: "gw-" + strings.NewReplacer("/", "-", " ", "-", "#", "-", "+", "-").Replace(t.Name()),
		Logger:         zap.NewNop(),
		ReconnectMax:   200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second,
		KeepAlive:      5 * time.Second,
	}
}

// startBridge builds and starts a bridge, stopped at the end of the test.
func startBridge(t testing.TB, cfg Config) *Bridge {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { stopBridge(t, b) })
	return b
}

func stopBridge(t testing.TB, b *Bridge) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitReady(t testing.TB, b *Bridge) {
	t.Helper()
	waitFor(t, 10*time.Second, "the bridge to be connected", b.Ready)
}

// acks records the answers Publish gives, by message number.
type acks struct {
	mu  sync.Mutex
	got map[int]mqttcodec.ReasonCode
	ch  chan struct{}
}

func newAcks() *acks {
	return &acks{got: make(map[int]mqttcodec.ReasonCode), ch: make(chan struct{}, 1)}
}

// fn returns the ack callback of message i; a second call fails the test.
func (a *acks) fn(t testing.TB, i int) func(mqttcodec.ReasonCode) {
	return func(rc mqttcodec.ReasonCode) {
		a.mu.Lock()
		_, dup := a.got[i]
		a.got[i] = rc
		a.mu.Unlock()
		if dup {
			t.Errorf("message %d acknowledged twice", i)
		}
		select {
		case a.ch <- struct{}{}:
		default:
		}
	}
}

func (a *acks) get(i int) (mqttcodec.ReasonCode, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rc, ok := a.got[i]
	return rc, ok
}

func (a *acks) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.got)
}

// waitN waits until n acks arrived.
func (a *acks) waitN(t testing.TB, n int, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for a.count() < n {
		select {
		case <-a.ch:
		case <-deadline.C:
			t.Fatalf("%d acks after %v, want %d", a.count(), d, n)
		}
	}
}

// publish sends one device message through the bridge.
func publish(b *Bridge, client, topic, payload string, qos byte, ack func(mqttcodec.ReasonCode)) {
	b.Publish(&session.Message{ClientID: client, Topic: topic, Payload: []byte(payload), QoS: qos}, ack)
}

// deliveries records what the bridge hands to the gateway.
type deliveries struct {
	mu       sync.Mutex
	msgs     []Message
	retained []retainedCall
	ch       chan struct{}
}

type retainedCall struct {
	filter string
	subs   []any
	msg    Message
}

func newDeliveries() *deliveries { return &deliveries{ch: make(chan struct{}, 1)} }

func (d *deliveries) deliver(m Message) {
	d.mu.Lock()
	d.msgs = append(d.msgs, m)
	d.mu.Unlock()
	d.poke()
}

func (d *deliveries) deliverRetained(filter string, subs []any, m Message) {
	d.mu.Lock()
	d.retained = append(d.retained, retainedCall{filter: filter, subs: subs, msg: m})
	d.mu.Unlock()
	d.poke()
}

func (d *deliveries) poke() {
	select {
	case d.ch <- struct{}{}:
	default:
	}
}

func (d *deliveries) snapshot() ([]Message, []retainedCall) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Message(nil), d.msgs...), append([]retainedCall(nil), d.retained...)
}

// waitFor waits until cond holds on the deliveries so far.
func (d *deliveries) waitFor(t testing.TB, dur time.Duration, what string, cond func(msgs []Message, ret []retainedCall) bool) ([]Message, []retainedCall) {
	t.Helper()
	deadline := time.NewTimer(dur)
	defer deadline.Stop()
	for {
		msgs, ret := d.snapshot()
		if cond(msgs, ret) {
			return msgs, ret
		}
		select {
		case <-d.ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; have %d messages, %d retained", dur, what, len(msgs), len(ret))
		}
	}
}

// hasTopic reports whether msgs hold one on topic.
func hasTopic(msgs []Message, topic string) bool {
	for _, m := range msgs {
		if m.Topic == topic {
			return true
		}
	}
	return false
}

// countTopic counts the messages on topic.
func countTopic(msgs []Message, topic string) int {
	n := 0
	for _, m := range msgs {
		if m.Topic == topic {
			n++
		}
	}
	return n
}
