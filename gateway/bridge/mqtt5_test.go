package bridge

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// app5 is an MQTT 5 application on the broker side (paho.golang); what it
// receives goes to got.
type app5 struct {
	cli *paho.Client
	mu  sync.Mutex
	got []*paho.Publish
	ch  chan struct{}
}

func newApp5(t *testing.T, addr, id string) *app5 {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("app5 dial: %v", err)
	}
	a := &app5{ch: make(chan struct{}, 1)}
	a.cli = paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(nc),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			a.mu.Lock()
			a.got = append(a.got, pr.Packet)
			a.mu.Unlock()
			select {
			case a.ch <- struct{}{}:
			default:
			}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.cli.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatalf("app5 connect: %v", err)
	}
	t.Cleanup(func() { _ = a.cli.Disconnect(&paho.Disconnect{}) })
	return a
}

func (a *app5) subscribe(t *testing.T, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}}); err != nil {
		t.Fatalf("app5 subscribe: %v", err)
	}
}

func (a *app5) publish(t *testing.T, p *paho.Publish) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.cli.Publish(ctx, p); err != nil {
		t.Fatalf("app5 publish: %v", err)
	}
}

func (a *app5) waitN(t *testing.T, n int) []*paho.Publish {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		got := slices.Clone(a.got)
		a.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-a.ch:
		case <-deadline.C:
			t.Fatalf("%d messages at the application, want %d", len(got), n)
		}
	}
}

var testProps = &session.MessageProps{PayloadFormat: 1, HasPayloadFormat: true, ContentType: "application/json",
	ResponseTopic: "replies/car1", CorrelationData: []byte{0, 1, 2},
	User: []session.UserProp{{Key: "k", Value: "1"}, {Key: "a", Value: "x"}, {Key: "k", Value: "2"}}}

func checkProps(t *testing.T, what string, got *session.MessageProps) {
	t.Helper()
	if got == nil || got.PayloadFormat != 1 || !got.HasPayloadFormat || got.ContentType != testProps.ContentType ||
		got.ResponseTopic != testProps.ResponseTopic || string(got.CorrelationData) != string(testProps.CorrelationData) ||
		!slices.Equal(got.User, testProps.User) {
		t.Fatalf("%s: properties %+v, want %+v", what, got, testProps)
	}
}

// Properties, expiry and QoS 2 go through the bridge both ways on MQTT 5.
func TestMQTT5PropertiesBothWays(t *testing.T) {
	br := startBroker(t)
	app := newApp5(t, br.Addr(), "app5")
	app.subscribe(t, "devices/#", 2)
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver = d.deliver
	b := startBridge(t, cfg)
	waitReady(t, b)
	if b.Protocol() != Protocol5 || b.Stats().Protocol != Protocol5 || !b.SharedSubscriptions() {
		t.Fatalf("protocol %q, shared %v: want MQTT 5 with shared subscriptions", b.Protocol(), b.SharedSubscriptions())
	}

	// Uplink: QoS 2 with properties and 60 s left to live.
	a := newAcks()
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/up", Payload: []byte("p"), QoS: 2,
		Props: testProps, Expires: time.Now().Add(60 * time.Second)}, a.fn(t, 0))
	a.waitN(t, 1, 10*time.Second)
	if rc, _ := a.get(0); rc != mqttcodec.Success {
		t.Fatalf("QoS 2 ack %v", rc)
	}
	got := app.waitN(t, 1)[0]
	if got.QoS != 2 || got.Properties == nil || got.Properties.MessageExpiry == nil ||
		*got.Properties.MessageExpiry > 60 || *got.Properties.MessageExpiry < 50 {
		t.Fatalf("at the application: %+v %+v, want QoS 2 and about 60 s to live", got, got.Properties)
	}
	mp, _ := messageProps(got.Properties)
	checkProps(t, "uplink", mp)

	// An expired message is not sent, and taken.
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/up", Payload: []byte("old"), QoS: 1,
		Expires: time.Now().Add(-time.Second)}, a.fn(t, 1))
	a.waitN(t, 2, 10*time.Second)
	if rc, _ := a.get(1); rc != mqttcodec.Success || b.Stats().Expired != 1 {
		t.Fatalf("expired message: ack %v, stats %+v", rc, b.Stats())
	}

	// Downlink: QoS 2 with properties.
	done := make(chan mqttcodec.ReasonCode, 1)
	b.Subscribe(&handle{"car1"}, session.Subscription{Filter: "cloud/#", QoS: 2}, false, func(rc mqttcodec.ReasonCode) { done <- rc })
	if rc := <-done; rc != 2 {
		t.Fatalf("subscribe granted %v, want 2", rc)
	}
	fmt5, exp := byte(1), uint32(30)
	pp := publishProps(testProps, time.Time{})
	pp.PayloadFormat, pp.MessageExpiry = &fmt5, &exp
	app.publish(t, &paho.Publish{Topic: "cloud/x", QoS: 2, Payload: []byte("down"), Properties: pp})
	msgs, _ := d.waitFor(t, 10*time.Second, "the downlink message", func(msgs []Message, _ []retainedCall) bool { return len(msgs) > 0 })
	m := msgs[0]
	if m.Topic != "cloud/x" || m.QoS != 2 || m.Retained || m.Shared != "" || time.Until(m.Expires) > 31*time.Second || time.Until(m.Expires) < 20*time.Second {
		t.Fatalf("delivered %+v, want cloud/x at QoS 2 with about 30 s to live", m)
	}
	checkProps(t, "downlink", m.Props)
	// The expired message never reached the broker: a later one comes
	// right after the first.
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/up", Payload: []byte("later"), QoS: 1}, a.fn(t, 2))
	for _, p := range app.waitN(t, 2) {
		if string(p.Payload) == "old" {
			t.Fatal("the expired message reached the broker")
		}
	}
}

// QoS 2 goes upstream at QoS 2, and comes down at QoS 2, on both protocols.
func TestQoS2BothWays(t *testing.T) { bothProtocols(t, testQoS2BothWays) }

func testQoS2BothWays(t *testing.T) {
	br := startBroker(t)
	up := newInbox()
	app := peer(t, br.URL(), "app", true, up.handler)
	mustToken(t, app.Subscribe("devices/#", 2, nil), "subscribe")
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver = d.deliver
	b := startBridge(t, cfg)
	waitReady(t, b)
	a := newAcks()
	for i := range 20 {
		publish(b, "car"+strconv.Itoa(i%3), "devices/car/up", strconv.Itoa(i), 2, a.fn(t, i))
	}
	a.waitN(t, 20, 10*time.Second)
	for i := range 20 {
		if rc, _ := a.get(i); rc != mqttcodec.Success {
			t.Fatalf("message %d: ack %v", i, rc)
		}
	}
	for _, m := range up.waitN(t, 20, 10*time.Second) {
		if m.Qos() != 2 {
			t.Fatalf("message %s at the application at QoS %d, want 2", m.Payload(), m.Qos())
		}
	}
	done := make(chan mqttcodec.ReasonCode, 1)
	b.Subscribe(&handle{"car"}, session.Subscription{Filter: "cloud/#", QoS: 2}, false, func(rc mqttcodec.ReasonCode) { done <- rc })
	if rc := <-done; rc != 2 {
		t.Fatalf("granted %v, want 2", rc)
	}
	mustToken(t, app.Publish("cloud/q2", 2, false, "x"), "publish")
	msgs, _ := d.waitFor(t, 10*time.Second, "the QoS 2 message", func(msgs []Message, _ []retainedCall) bool { return len(msgs) > 0 })
	if msgs[0].QoS != 2 {
		t.Fatalf("delivered at QoS %d, want 2", msgs[0].QoS)
	}
}

// Retained messages go, on MQTT 5, to exactly the subscribers whose
// SUBSCRIBE asked for them: a second subscriber of an overlapping filter
// gets the retained message once, the first never again.
func TestRetainedAttributionExact(t *testing.T) {
	br := startBroker(t)
	app := peer(t, br.URL(), "app", true, nil)
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver, cfg.DeliverRetained = d.deliver, d.deliverRetained
	b := startBridge(t, cfg)
	waitReady(t, b)
	mark := &handle{"marker"}
	b.Subscribe(mark, session.Subscription{Filter: "mark/#", QoS: 1}, false, nil)
	syncDelivery(t, app, d, "mark/sync")
	for i := range 20 {
		root := "T" + strconv.Itoa(i)
		mustToken(t, app.Publish(root+"/x", 1, true, "r"+strconv.Itoa(i)), "retain")
		a, bh := &handle{"A" + strconv.Itoa(i)}, &handle{"B" + strconv.Itoa(i)}
		doneA, doneB := make(chan mqttcodec.ReasonCode, 1), make(chan mqttcodec.ReasonCode, 1)
		b.Subscribe(a, session.Subscription{Filter: root + "/#", QoS: 1}, true, func(rc mqttcodec.ReasonCode) { doneA <- rc })
		b.Subscribe(bh, session.Subscription{Filter: root + "/+", QoS: 1}, true, func(rc mqttcodec.ReasonCode) { doneB <- rc })
		if rc := <-doneA; rc != 1 {
			t.Fatalf("A granted %v", rc)
		}
		if rc := <-doneB; rc != 1 {
			t.Fatalf("B granted %v", rc)
		}
		d.waitFor(t, 10*time.Second, "the retained messages", func(_ []Message, ret []retainedCall) bool {
			n := 0
			for _, c := range ret {
				if c.msg.Topic == root+"/x" {
					n++
				}
			}
			return n >= 2
		})
		// A third, overlapping subscriber later: only it gets it again.
		c := &handle{"C" + strconv.Itoa(i)}
		b.Subscribe(c, session.Subscription{Filter: root + "/x", QoS: 1}, true, nil)
		d.waitFor(t, 10*time.Second, "the third retained message", func(_ []Message, ret []retainedCall) bool {
			n := 0
			for _, c := range ret {
				if c.msg.Topic == root+"/x" {
					n++
				}
			}
			return n >= 3
		})
		// A live message published with retain is a live message for
		// everybody, once, with Retained set.
		mustToken(t, app.Publish(root+"/x", 1, true, "live"+strconv.Itoa(i)), "live retain")
		syncDelivery(t, app, d, "mark/sync")
		msgs, ret := d.snapshot()
		per := map[any]int{}
		for _, rc := range ret {
			if rc.msg.Topic != root+"/x" {
				continue
			}
			if len(rc.subs) != 1 || !rc.msg.Retain || string(rc.msg.Payload) != "r"+strconv.Itoa(i) {
				t.Fatalf("round %d: retained call %+v", i, rc)
			}
			per[rc.subs[0]]++
		}
		if per[a] != 1 || per[bh] != 1 || per[c] != 1 || len(per) != 3 {
			t.Fatalf("round %d: retained deliveries per subscriber %v, want one each for A, B, C", i, per)
		}
		live := 0
		for _, m := range msgs {
			if m.Topic == root+"/x" {
				live++
				if !m.Retained || m.Retain || string(m.Payload) != "live"+strconv.Itoa(i) {
					t.Fatalf("round %d: live message %+v, want Retained", i, m)
				}
			}
		}
		if live != 1 {
			t.Fatalf("round %d: the live message reached Deliver %d times, want 1", i, live)
		}
	}
}

// Subscribe's done comes after the SUBACK: a message published once it is
// called reaches Deliver. A filter already held is answered at once; a
// broker that does not answer gets 0x80 after SubscribeTimeout.
func TestSubscribeDone(t *testing.T) { bothProtocols(t, testSubscribeDone) }

func testSubscribeDone(t *testing.T) {
	br := startBroker(t)
	app := peer(t, br.URL(), "app", true, nil)
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver = d.deliver
	b := startBridge(t, cfg)
	waitReady(t, b)
	for i := range 10 {
		done := make(chan mqttcodec.ReasonCode, 1)
		f := "sd/" + strconv.Itoa(i)
		b.Subscribe(&handle{f}, session.Subscription{Filter: f, QoS: 1}, false, func(rc mqttcodec.ReasonCode) { done <- rc })
		if rc := <-done; rc != 1 {
			t.Fatalf("granted %v", rc)
		}
		mustToken(t, app.Publish(f, 1, false, "x"), "publish")
		d.waitFor(t, 10*time.Second, f, func(msgs []Message, _ []retainedCall) bool { return hasTopic(msgs, f) })
	}
	// Held already, at a QoS that covers it: at once, on this goroutine.
	called := false
	b.Subscribe(&handle{"again"}, session.Subscription{Filter: "sd/0", QoS: 0}, false, func(rc mqttcodec.ReasonCode) {
		called = rc == 0
	})
	if !called {
		t.Fatal("done not called at once for a held filter")
	}
	called = false
	b.Subscribe(&handle{"sys"}, session.Subscription{Filter: "$SYS/#", QoS: 1}, false, func(rc mqttcodec.ReasonCode) { called = rc == 1 })
	if !called {
		t.Fatal("done not called at once for a local filter")
	}
	shared := make(chan mqttcodec.ReasonCode, 1)
	b.Subscribe(&handle{"sh"}, session.Subscription{Filter: "$share/g/sd/x", QoS: 1}, false, func(rc mqttcodec.ReasonCode) { shared <- rc })
	want := mqttcodec.ReasonCode(1)
	if protocolOf(t) == Protocol311 {
		want = mqttcodec.SharedSubscriptionsNotSupported
	}
	if rc := <-shared; rc != want {
		t.Fatalf("shared subscription answered %v, want %v", rc, want)
	}

	// No broker: 0x80 after SubscribeTimeout.
	gone := testConfig(t, "tcp://127.0.0.1:1")
	gone.SubscribeTimeout = 300 * time.Millisecond
	b = startBridge(t, gone)
	done := make(chan mqttcodec.ReasonCode, 1)
	start := time.Now()
	b.Subscribe(&handle{"late"}, session.Subscription{Filter: "sd/late", QoS: 1}, false, func(rc mqttcodec.ReasonCode) { done <- rc })
	select {
	case rc := <-done:
		if rc != mqttcodec.UnspecifiedError || time.Since(start) < 250*time.Millisecond {
			t.Fatalf("answered %v after %v, want 0x80 after the timeout", rc, time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("done never called while the broker was unreachable")
	}
}

// fakeV5Broker answers MQTT 5 CONNECT, SUBSCRIBE (refusing filters under
// "closed/" with 0x87, not authorized), UNSUBSCRIBE and PINGREQ. A
// SUBSCRIBE to "trigger/go" makes it send one QoS 0 PUBLISH on "multi/x"
// carrying the identifiers of every subscription with "multi/" in its
// filter, as a broker may [MQTT-3.3.4-3]. Mosquitto
// 2.0.11 grants a SUBSCRIBE its ACL denies (it filters at delivery), so a
// refusal takes a broker of the test's own.
func fakeV5Broker(t *testing.T) string {
	t.Helper()
	var (
		mu     sync.Mutex
		subIDs = map[string]int{}
	)
	return serveTCP(t, func(c net.Conn, _ int, _ func(net.Conn)) {
		for {
			cp, err := packets.ReadPacket(c)
			if err != nil {
				return
			}
			var out *packets.ControlPacket
			switch p := cp.Content.(type) {
			case *packets.Connect:
				out = packets.NewControlPacket(packets.CONNACK)
			case *packets.Subscribe:
				if p.Properties != nil && p.Properties.SubscriptionIdentifier != nil {
					mu.Lock()
					for _, s := range p.Subscriptions {
						subIDs[s.Topic] = *p.Properties.SubscriptionIdentifier
					}
					mu.Unlock()
				}
				out = packets.NewControlPacket(packets.SUBACK)
				sa := out.Content.(*packets.Suback)
				sa.PacketID = p.PacketID
				for _, s := range p.Subscriptions {
					rc := s.QoS
					if strings.HasPrefix(s.Topic, "closed/") {
						rc = byte(mqttcodec.NotAuthorized)
					}
					sa.Reasons = append(sa.Reasons, rc)
				}
			case *packets.Unsubscribe:
				out = packets.NewControlPacket(packets.UNSUBACK)
				ua := out.Content.(*packets.Unsuback)
				ua.PacketID = p.PacketID
				ua.Reasons = make([]byte, len(p.Topics))
			case *packets.Pingreq:
				out = packets.NewControlPacket(packets.PINGRESP)
			case *packets.Disconnect:
				return
			}
			if out != nil {
				if _, err := out.WriteTo(c); err != nil {
					return
				}
			}
			if sub, ok := cp.Content.(*packets.Subscribe); ok && sub.Subscriptions[0].Topic == "trigger/go" {
				// One copy for every "multi" subscription, with all
				// their identifiers.
				mu.Lock()
				var ids []int
				for f, id := range subIDs {
					if strings.Contains(f, "multi/") {
						ids = append(ids, id)
					}
				}
				mu.Unlock()
				if _, err := c.Write(rawPublish("multi/x", []byte("both"), ids)); err != nil {
					return
				}
			}
		}
	})
}

// A subscription the broker refuses gets the broker's reason, and is
// forgotten. (MQTT 5 only: the test's broker speaks no 3.1.1.)
func TestSubscribeRefused(t *testing.T) {
	addr := fakeV5Broker(t)
	cfg := testConfig(t, "tcp://"+addr)
	b := startBridge(t, cfg)
	waitReady(t, b)
	done := make(chan mqttcodec.ReasonCode, 2)
	b.Subscribe(&handle{"ok"}, session.Subscription{Filter: "open/x", QoS: 1}, false, func(rc mqttcodec.ReasonCode) { done <- rc })
	if rc := <-done; rc != 1 {
		t.Fatalf("allowed filter answered %v", rc)
	}
	b.Subscribe(&handle{"no"}, session.Subscription{Filter: "closed/x", QoS: 1}, false, func(rc mqttcodec.ReasonCode) { done <- rc })
	if rc := <-done; rc != mqttcodec.NotAuthorized {
		t.Fatalf("refused filter answered %v, want the broker's 0x87", rc)
	}
	waitFor(t, 5*time.Second, "the failure counted", func() bool { return b.Stats().SubscribeFailures == 1 })
	if n := b.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d filters held, want 1 (the refused one forgotten)", n)
	}
}

// A shared subscription of two device handles is held once upstream; its
// messages come with Shared set, apart from a plain subscription's copy.
func TestSharedSubscription(t *testing.T) {
	br := startBroker(t)
	app := peer(t, br.URL(), "app", true, nil)
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver = d.deliver
	b := startBridge(t, cfg)
	waitReady(t, b)
	done := make(chan mqttcodec.ReasonCode, 3)
	answer := func(rc mqttcodec.ReasonCode) { done <- rc }
	const shared = "$share/workers/jobs/#"
	b.Subscribe(&handle{"w1"}, session.Subscription{Filter: shared, QoS: 1}, true, answer)
	b.Subscribe(&handle{"w2"}, session.Subscription{Filter: shared, QoS: 1}, true, answer)
	b.Subscribe(&handle{"audit"}, session.Subscription{Filter: "jobs/#", QoS: 1}, false, answer)
	for range 3 {
		if rc := <-done; rc != 1 {
			t.Fatalf("granted %v", rc)
		}
	}
	if n := b.Stats().Subscriptions; n != 2 {
		t.Fatalf("%d filters held, want 2", n)
	}
	const n = 10
	for i := range n {
		mustToken(t, app.Publish("jobs/"+strconv.Itoa(i), 1, false, "j"), "publish")
	}
	msgs, _ := d.waitFor(t, 10*time.Second, "both copies of every job", func(msgs []Message, _ []retainedCall) bool { return len(msgs) >= 2*n })
	sharedN, plain := 0, 0
	for _, m := range msgs {
		switch m.Shared {
		case shared:
			sharedN++
		case "":
			plain++
		default:
			t.Fatalf("Shared %q", m.Shared)
		}
	}
	if sharedN != n || plain != n {
		t.Fatalf("%d shared and %d plain deliveries, want %d each", sharedN, plain, n)
	}
}

// fakeV311Broker answers MQTT 5 CONNECTs with refuse and relays MQTT
// 3.1.1 connections to the real broker.
func fakeV311Broker(t *testing.T, real string, refuse []byte) string {
	t.Helper()
	return serveTCP(t, func(c net.Conn, _ int, own func(net.Conn)) {
		raw, err := readRaw(c)
		if err != nil || raw[0]>>4 != packets.CONNECT {
			return
		}
		// Fixed header, then the protocol name "MQTT" (2 + 4
		// bytes), then the protocol level.
		hdr := 2
		for raw[hdr-1]&0x80 != 0 {
			hdr++
		}
		if raw[hdr+6] == 5 {
			_, _ = c.Write(refuse)
			return
		}
		up, err := net.Dial("tcp", real)
		if err != nil {
			return
		}
		own(up)
		defer up.Close()
		if _, err := up.Write(raw); err != nil {
			return
		}
		go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
		_, _ = io.Copy(c, up)
	})
}

// readRaw reads one MQTT packet, whole, as it came.
func readRaw(r io.Reader) ([]byte, error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, err
	}
	raw := []byte{b[0]}
	n, mul := 0, 1
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, err
		}
		raw = append(raw, b[0])
		n += int(b[0]&0x7f) * mul
		mul *= 128
		if b[0]&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(raw, body...), nil
}

// A broker that refuses MQTT 5 gets MQTT 3.1.1 on every connection; the
// fallback is logged once.
func TestFallbackTo311(t *testing.T) {
	for _, tc := range []struct {
		name   string
		refuse []byte
	}{
		{name: "MQTT 5 CONNACK 0x84", refuse: []byte{0x20, 0x03, 0x00, 0x84, 0x00}},
		{name: "MQTT 3.1.1 CONNACK 1", refuse: []byte{0x20, 0x02, 0x00, 0x01}},
	} {
		t.Run(tc.name, func(t *testing.T) { testFallbackTo311(t, tc.refuse) })
	}
}

func testFallbackTo311(t *testing.T, refuse []byte) {
	br := startBroker(t)
	addr := fakeV311Broker(t, br.Addr(), refuse)
	up := newInbox()
	app := peer(t, br.URL(), "app", true, up.handler)
	mustToken(t, app.Subscribe("devices/#", 1, nil), "subscribe")
	core, logs := observer.New(zap.InfoLevel)
	cfg := testConfig(t, "tcp://"+addr)
	cfg.Logger = zap.New(core)
	cfg.PoolSize = 3
	b := startBridge(t, cfg)
	waitReady(t, b)
	if b.Protocol() != Protocol311 || b.SharedSubscriptions() {
		t.Fatalf("protocol %q, shared %v: want 3.1.1 without shared subscriptions", b.Protocol(), b.SharedSubscriptions())
	}
	a := newAcks()
	publish(b, "car1", "devices/car1/up", "x", 1, a.fn(t, 0))
	a.waitN(t, 1, 10*time.Second)
	up.waitN(t, 1, 10*time.Second)
	if n := logs.FilterMessageSnippet("refused MQTT 5").Len(); n != 1 {
		t.Fatalf("fallback logged %d times, want once", n)
	}
	if got := b.Stats().Protocol; got != Protocol311 {
		t.Fatalf("Stats.Protocol %q", got)
	}
}

// Messages that went through the spill files keep their properties and
// QoS 2 on their way to the broker.
func TestSpilledPropertiesReachBroker(t *testing.T) {
	br := startBroker(t)
	app := newApp5(t, br.Addr(), "app5")
	app.subscribe(t, "devices/#", 2)
	cfg := testConfig(t, br.URL())
	cfg.BufferDir = t.TempDir()
	cfg.BufferMessages = 1
	cfg.MaxInflight = 1
	b := startBridge(t, cfg)
	waitReady(t, b)
	const n = 200
	a := newAcks()
	for i := range n {
		b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/up", Payload: []byte(strconv.Itoa(i)), QoS: 2,
			Props: testProps, Expires: time.Now().Add(time.Hour)}, a.fn(t, i))
	}
	a.waitN(t, n, 30*time.Second)
	if s := b.Stats(); s.SpilledTotal == 0 {
		t.Fatalf("stats %+v: nothing went through the spill", s)
	}
	for i, p := range app.waitN(t, n) {
		if string(p.Payload) != strconv.Itoa(i) || p.QoS != 2 {
			t.Fatalf("message %d at the application: %q at QoS %d", i, p.Payload, p.QoS)
		}
		mp, _ := messageProps(p.Properties)
		checkProps(t, "spilled message "+strconv.Itoa(i), mp)
	}
}

// rawPublish encodes a QoS 0 PUBLISH with Subscription Identifiers (paho's
// encoder writes one at most).
func rawPublish(topic string, payload []byte, ids []int) []byte {
	vbi := func(dst []byte, v int) []byte {
		for {
			b := byte(v & 0x7f)
			v >>= 7
			if v > 0 {
				b |= 0x80
			}
			dst = append(dst, b)
			if v == 0 {
				return dst
			}
		}
	}
	var props []byte
	for _, id := range ids {
		props = vbi(append(props, 0x0B), id)
	}
	body := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	body = append(body, topic...)
	body = vbi(body, len(props))
	body = append(body, props...)
	body = append(body, payload...)
	return append(vbi([]byte{0x30}, len(body)), body...)
}

// One broker copy carrying a shared and a plain subscription's
// identifiers goes to Deliver once for each.
func TestOneCopyForTwoSubscriptions(t *testing.T) {
	addr := fakeV5Broker(t)
	d := newDeliveries()
	cfg := testConfig(t, "tcp://"+addr)
	cfg.Deliver = d.deliver
	b := startBridge(t, cfg)
	waitReady(t, b)
	done := make(chan mqttcodec.ReasonCode, 3)
	answer := func(rc mqttcodec.ReasonCode) { done <- rc }
	b.Subscribe(&handle{"plain"}, session.Subscription{Filter: "multi/#", QoS: 0}, false, answer)
	b.Subscribe(&handle{"worker"}, session.Subscription{Filter: "$share/g/multi/#", QoS: 0}, false, answer)
	for range 2 {
		if rc := <-done; rc != 0 {
			t.Fatalf("granted %v", rc)
		}
	}
	b.Subscribe(&handle{"t"}, session.Subscription{Filter: "trigger/go", QoS: 0}, false, answer)
	<-done
	msgs, _ := d.waitFor(t, 10*time.Second, "two deliveries", func(msgs []Message, _ []retainedCall) bool { return len(msgs) >= 2 })
	got := []string{msgs[0].Shared, msgs[1].Shared}
	slices.Sort(got)
	if !slices.Equal(got, []string{"", "$share/g/multi/#"}) {
		t.Fatalf("deliveries for %q, want one plain and one for the shared subscription", got)
	}
}

// A publish the broker refuses (its ACL) is refused to the device with the
// broker's reason on MQTT 5; MQTT 3.1.1 has no way to say it.
func TestPublishRefusedByBroker(t *testing.T) { bothProtocols(t, testPublishRefusedByBroker) }

func testPublishRefusedByBroker(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(acl, []byte("topic readwrite open/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBroker(t, "acl_file "+acl)
	b := startBridge(t, testConfig(t, br.URL()))
	waitReady(t, b)
	a := newAcks()
	publish(b, "car1", "open/x", "ok", 1, a.fn(t, 0))
	publish(b, "car1", "closed/x", "no", 1, a.fn(t, 1))
	publish(b, "car1", "closed/y", "no", 2, a.fn(t, 2))
	a.waitN(t, 3, 10*time.Second)
	want := mqttcodec.NotAuthorized
	if protocolOf(t) == Protocol311 {
		want = mqttcodec.Success
	}
	for i, w := range []mqttcodec.ReasonCode{mqttcodec.Success, want, want} {
		if rc, _ := a.get(i); rc != w {
			t.Fatalf("message %d: ack %v, want %v", i, rc, w)
		}
	}
}

// What the broker had not acknowledged when the connection broke is sent
// again on the next one (the broker kept the session), first, in order,
// flagged DUP, with the same packet identifiers, from paho's session State
// (whose store, lazyStore, serialises a packet only then); the devices
// get their acknowledgements once the broker answers them there.
func TestMQTT5ResendAfterReconnect(t *testing.T) {
	type got struct {
		conn int
		pub  *packets.Publish
	}
	pubs := make(chan got, 100)
	addr := serveTCP(t, func(c net.Conn, n int, _ func(net.Conn)) {
		held := 0
		for {
			cp, err := packets.ReadPacket(c)
			if err != nil {
				return
			}
			var out *packets.ControlPacket
			switch p := cp.Content.(type) {
			case *packets.Connect:
				out = packets.NewControlPacket(packets.CONNACK)
				out.Content.(*packets.Connack).SessionPresent = n > 1
			case *packets.Publish:
				pubs <- got{n, p}
				if n == 1 {
					// The first connection breaks with three publishes
					// unacknowledged.
					if held++; held == 3 {
						return
					}
					continue
				}
				out = packets.NewControlPacket(packets.PUBACK)
				out.Content.(*packets.Puback).PacketID = p.PacketID
			case *packets.Pingreq:
				out = packets.NewControlPacket(packets.PINGRESP)
			case *packets.Disconnect:
				return
			}
			if out != nil {
				if _, err := out.WriteTo(c); err != nil {
					return
				}
			}
		}
	})

	cfg := testConfig(t, "tcp://"+addr)
	cfg.PoolSize = 1
	b := startBridge(t, cfg)
	waitReady(t, b)
	a := newAcks()
	for i := range 3 {
		publish(b, "car", "devices/car/up", strconv.Itoa(i), 1, a.fn(t, i))
	}
	next := func() got {
		t.Helper()
		select {
		case g := <-pubs:
			return g
		case <-time.After(20 * time.Second):
			t.Fatal("the broker got no publish")
			return got{}
		}
	}
	var first []*packets.Publish
	for range 3 {
		g := next()
		if g.conn != 1 {
			t.Fatalf("publish on connection %d, want 1", g.conn)
		}
		first = append(first, g.pub)
	}
	for i := range 3 {
		g := next()
		p := g.pub
		if g.conn != 2 || !p.Duplicate || p.PacketID != first[i].PacketID || p.Topic != "devices/car/up" ||
			string(p.Payload) != strconv.Itoa(i) {
			t.Fatalf("resend %d: connection %d, dup %v, id %d (was %d), %q %q", i, g.conn, p.Duplicate, p.PacketID,
				first[i].PacketID, p.Topic, p.Payload)
		}
	}
	publish(b, "car", "devices/car/up", "3", 1, a.fn(t, 3))
	if g := next(); g.conn != 2 || g.pub.Duplicate || string(g.pub.Payload) != "3" {
		t.Fatalf("the next publish: connection %d, dup %v, %q", g.conn, g.pub.Duplicate, g.pub.Payload)
	}
	a.waitN(t, 4, 20*time.Second)
	for i := range 4 {
		if rc, _ := a.get(i); rc != mqttcodec.Success {
			t.Fatalf("message %d: %v, want Success", i, rc)
		}
	}
}

// A broker that keeps no retained messages (MQTT 5 CONNACK Retain
// Available 0; Mosquitto's retain_available false) gets a device's retained
// publish without the retain flag: delivered live, acknowledged, not sent
// again and again (a retained PUBLISH there would be a protocol error).
func TestRetainNotAvailable(t *testing.T) {
	br := startBroker(t, "retain_available false")
	app := newApp5(t, br.Addr(), "app-"+strconv.Itoa(br.Port))
	app.subscribe(t, "devices/#", 1)
	b := startBridge(t, testConfig(t, br.URL()))
	waitReady(t, b)
	a := newAcks()
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/state", Payload: []byte("kept?"), QoS: 1, Retain: true}, a.fn(t, 0))
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/state", Payload: []byte("after"), QoS: 1}, a.fn(t, 1))
	a.waitN(t, 2, 10*time.Second)
	for i := range 2 {
		if rc, _ := a.get(i); rc != mqttcodec.Success {
			t.Fatalf("message %d: ack %v, want success", i, rc)
		}
	}
	got := app.waitN(t, 2)
	if string(got[0].Payload) != "kept?" || string(got[1].Payload) != "after" || got[0].Retain {
		t.Fatalf("the application got %q (retain %v), %q; want kept? (not retained), after",
			got[0].Payload, got[0].Retain, got[1].Payload)
	}
	if n := b.Stats().Reconnects; n != 0 {
		t.Fatalf("%d reconnects: the broker dropped the bridge", n)
	}
}
