package bridge

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/gateway/session"
)

// handle stands for a gateway session.
type handle struct{ name string }

// syncDelivery publishes marker messages on topic, a topic the bridge holds
// a subscription for, until one reaches Deliver: the subscriptions sent
// before are then in effect, and what was published before has arrived.
func syncDelivery(t *testing.T, app mqtt.Client, d *deliveries, topic string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		token := fmt.Sprintf("marker-%d-%d", time.Now().UnixNano(), i)
		mustToken(t, app.Publish(topic, 1, false, token), "publish marker")
		wait := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(wait) {
			msgs, _ := d.snapshot()
			for _, m := range msgs {
				if string(m.Payload) == token {
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no marker on %s reached Deliver", topic)
		}
	}
}

// brokerSubscriptions follows $SYS/broker/subscriptions/count.
type brokerSubscriptions struct {
	mu   sync.Mutex
	last int
}

func watchSubscriptions(t *testing.T, url string) *brokerSubscriptions {
	t.Helper()
	w := &brokerSubscriptions{last: -1}
	c := peer(t, url, "sys-"+t.Name(), true, nil)
	mustToken(t, c.Subscribe("$SYS/broker/subscriptions/count", 0, func(_ mqtt.Client, m mqtt.Message) {
		n, err := strconv.Atoi(string(m.Payload()))
		if err == nil {
			w.mu.Lock()
			w.last = n
			w.mu.Unlock()
		}
	}), "subscribe $SYS")
	return w
}

// wait waits until the broker counts n subscriptions (its own $SYS one
// included).
func (w *brokerSubscriptions) wait(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("the broker to count %d subscriptions", n), func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.last == n
	})
}

func TestSubscriptionRefcount(t *testing.T) { bothProtocols(t, testSubscriptionRefcount) }

func testSubscriptionRefcount(t *testing.T) {
	br := startBroker(t)
	subs := watchSubscriptions(t, br.URL())
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver, cfg.DeliverRetained = d.deliver, d.deliverRetained
	b := startBridge(t, cfg)
	waitReady(t, b)
	app := peer(t, br.URL(), "app", true, nil)

	a, bb, ctl := &handle{"a"}, &handle{"b"}, &handle{"control"}
	// No retained messages asked for: in MQTT 5 their fetch would count
	// as a subscription at the broker for a while.
	b.Subscribe(ctl, session.Subscription{Filter: "ctl/#", QoS: 1}, false, nil)
	b.Subscribe(a, session.Subscription{Filter: "fleet/+/config", QoS: 1}, false, nil)
	b.Subscribe(bb, session.Subscription{Filter: "fleet/+/config", QoS: 1}, false, nil)
	b.Subscribe(a, session.Subscription{Filter: "fleet/+/config", QoS: 1}, false, nil) // again: still one subscriber
	syncDelivery(t, app, d, "ctl/sync")
	if n := b.Stats().Subscriptions; n != 2 {
		t.Fatalf("%d filters held, want 2", n)
	}
	subs.wait(t, 3) // ctl/#, fleet/+/config and the $SYS watcher

	steps := []struct {
		name      string
		leave     *handle // unsubscribes before the publish
		delivered bool
		upstream  int
	}{
		{name: "two subscribers", delivered: true, upstream: 3},
		{name: "one left", leave: a, delivered: true, upstream: 3},
		{name: "none left", leave: bb, delivered: false, upstream: 2},
	}
	for i, st := range steps {
		if st.leave != nil {
			b.Unsubscribe(st.leave, "fleet/+/config")
		}
		subs.wait(t, st.upstream)
		payload := "v" + strconv.Itoa(i)
		mustToken(t, app.Publish("fleet/car1/config", 1, false, payload), "publish")
		syncDelivery(t, app, d, "ctl/sync") // arrives after the publish above
		msgs, _ := d.snapshot()
		n := 0
		for _, m := range msgs {
			if m.Topic == "fleet/car1/config" && string(m.Payload) == payload {
				n++
			}
		}
		want := 0
		if st.delivered {
			want = 1
		}
		if n != want {
			t.Fatalf("%s: delivered %d times, want %d", st.name, n, want)
		}
	}
	if n := b.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d filters held at the end, want 1 (ctl/#)", n)
	}
	// Unsubscribing what is not held changes nothing.
	b.Unsubscribe(a, "fleet/+/config")
	b.Unsubscribe(a, "never/subscribed")
	if n := b.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d filters held, want 1", n)
	}
}

func TestOverlappingFiltersDeliverOnce(t *testing.T) {
	bothProtocols(t, testOverlappingFiltersDeliverOnce)
}

func testOverlappingFiltersDeliverOnce(t *testing.T) {
	br := startBroker(t)
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver = d.deliver
	cfg.PoolSize = 3
	b := startBridge(t, cfg)
	waitReady(t, b)
	app := peer(t, br.URL(), "app", true, nil)
	b.Subscribe(&handle{"a"}, session.Subscription{Filter: "ov/#", QoS: 1}, true, nil)
	b.Subscribe(&handle{"b"}, session.Subscription{Filter: "ov/+/x", QoS: 0}, true, nil)
	b.Subscribe(&handle{"c"}, session.Subscription{Filter: "ov/car1/x", QoS: 1}, true, nil)
	syncDelivery(t, app, d, "ov/sync")
	mustToken(t, app.Publish("ov/car1/x", 1, false, "once"), "publish")
	syncDelivery(t, app, d, "ov/sync")
	msgs, _ := d.snapshot()
	if n := countTopic(msgs, "ov/car1/x"); n != 1 {
		t.Fatalf("a message matching three held filters reached Deliver %d times, want 1", n)
	}
}

func TestRetainedGoesToNewSubscribersOnly(t *testing.T) {
	bothProtocols(t, testRetainedGoesToNewSubscribersOnly)
}

func testRetainedGoesToNewSubscribersOnly(t *testing.T) {
	br := startBroker(t)
	d := newDeliveries()
	cfg := testConfig(t, br.URL())
	cfg.Deliver, cfg.DeliverRetained = d.deliver, d.deliverRetained
	b := startBridge(t, cfg)
	waitReady(t, b)
	app := peer(t, br.URL(), "app", true, nil)
	mustToken(t, app.Publish("cfg/a", 1, true, "ra"), "retain cfg/a")
	mustToken(t, app.Publish("cfg/b", 1, true, "rb"), "retain cfg/b")
	mark := &handle{"marker"}
	b.Subscribe(mark, session.Subscription{Filter: "mark/#", QoS: 1}, true, nil)
	syncDelivery(t, app, d, "mark/sync")

	x, y, z := &handle{"x"}, &handle{"y"}, &handle{"z"}
	steps := []struct {
		name   string
		sub    *handle
		filter string
		want   map[string]string // topic -> payload handed to DeliverRetained for sub alone
	}{
		{name: "first subscriber", sub: x, filter: "cfg/#", want: map[string]string{"cfg/a": "ra", "cfg/b": "rb"}},
		{name: "second subscriber of a held filter", sub: y, filter: "cfg/#", want: map[string]string{"cfg/a": "ra", "cfg/b": "rb"}},
		{name: "narrower filter", sub: z, filter: "cfg/a", want: map[string]string{"cfg/a": "ra"}},
	}
	seen := 0
	for _, st := range steps {
		b.Subscribe(st.sub, session.Subscription{Filter: st.filter, QoS: 1}, true, nil)
		_, ret := d.waitFor(t, 10*time.Second, st.name, func(_ []Message, ret []retainedCall) bool {
			return len(ret) >= seen+len(st.want)
		})
		for _, c := range ret[seen : seen+len(st.want)] {
			if c.filter != st.filter || !slices.Equal(c.subs, []any{st.sub}) {
				t.Fatalf("%s: retained %s for %q %v, want for %q [%s] only", st.name, c.msg.Topic, c.filter, c.subs, st.filter, st.sub.name)
			}
			if want, ok := st.want[c.msg.Topic]; !ok || string(c.msg.Payload) != want || !c.msg.Retain {
				t.Fatalf("%s: retained %+v, want one of %v with Retain set", st.name, c.msg, st.want)
			}
		}
		seen += len(st.want)
	}
	// A live publish is an ordinary delivery, once, for everybody.
	mustToken(t, app.Publish("cfg/a", 1, false, "live"), "publish live")
	syncDelivery(t, app, d, "mark/sync")
	msgs, ret := d.snapshot()
	if len(ret) != seen {
		t.Fatalf("%d retained deliveries, want %d", len(ret), seen)
	}
	if n := countTopic(msgs, "cfg/a"); n != 1 {
		t.Fatalf("the live message on cfg/a reached Deliver %d times, want 1", n)
	}
	for _, m := range msgs {
		if m.Retain {
			t.Fatalf("Deliver got a retained message: %+v", m)
		}
	}

	// After a reconnect the bridge subscribes again. In MQTT 3.1.1 the
	// broker sends the retained messages again: nobody new waits for them.
	// In MQTT 5 the devices' subscriptions ask for none (Retain Handling 2).
	before := b.Stats()
	b.subLane.cycle()
	waitFor(t, 10*time.Second, "the reconnect", func() bool { return b.Stats().Reconnects > before.Reconnects })
	if protocolOf(t) == Protocol311 {
		waitFor(t, 10*time.Second, "the retained copies of the resubscription", func() bool {
			return b.Stats().RetainedSkipped >= before.RetainedSkipped+3
		})
	}
	syncDelivery(t, app, d, "mark/sync")
	if _, ret := d.snapshot(); len(ret) != seen {
		t.Fatalf("%d retained deliveries after the reconnect, want still %d", len(ret), seen)
	}
	if s := b.Stats(); s.RetainedDelivered != uint64(seen) {
		t.Fatalf("stats %+v: want %d retained delivered", s, seen)
	}
}

func TestRetainedWaitUnit(t *testing.T) {
	now := time.Unix(1000, 0)
	x, y := &handle{"x"}, &handle{"y"}
	tab := newSubTable()
	tab.add(x, "a/#", "a/#", 1, true, false, false, nil)
	tab.add(y, "a/#", "a/#", 1, true, false, false, nil) // joins the SUBSCRIBE not yet sent
	if _, _, ok := tab.claim("a/b", now); ok {
		t.Fatal("a retained message was claimed before the SUBSCRIBE was sent")
	}
	subs, unsubs, _ := tab.work(now, 10*time.Second, false)
	if len(subs) != 1 || subs[0].filter != "a/#" || subs[0].qos != 1 || len(unsubs) != 0 {
		t.Fatalf("work: %v %v", subs, unsubs)
	}
	for _, tc := range []struct {
		topic string
		at    time.Duration
		want  []any
	}{
		{topic: "a/b", want: []any{x, y}},
		{topic: "a/b", want: nil}, // a second copy: already had it
		{topic: "a/c", at: 9 * time.Second, want: []any{x, y}},
		{topic: "a/d", at: 11 * time.Second, want: nil}, // the window is over
		{topic: "b/c", want: nil},
	} {
		_, got, ok := tab.claim(tc.topic, now.Add(tc.at))
		if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
			t.Fatalf("claim(%s, +%v) = %v %v, want %v", tc.topic, tc.at, got, ok, tc.want)
		}
	}
	tab.prune(now.Add(11 * time.Second))
	if len(tab.waits) != 0 || len(tab.wild) != 0 {
		t.Fatalf("waits left after prune: %v", tab.waits)
	}
	// The last one out unsubscribes; a filter never sent is not left behind.
	tab.remove(x, "a/#")
	tab.remove(y, "a/#")
	tab.add(x, "b", "b", 0, true, false, false, nil)
	tab.remove(x, "b")
	subs, unsubs, _ = tab.work(now, time.Second, false)
	var left []string
	for _, r := range unsubs {
		left = append(left, r.filter)
	}
	slices.Sort(left)
	if len(subs) != 0 || !slices.Equal(left, []string{"a/#", "b"}) {
		t.Fatalf("work after leaving: %v %v", subs, unsubs)
	}
}

func TestCommandSpaceNotDelivered(t *testing.T) { bothProtocols(t, testCommandSpaceNotDelivered) }

func testCommandSpaceNotDelivered(t *testing.T) {
	br := startBroker(t)
	d := newDeliveries()
	cmds := newCommandLog(nil)
	cfg := testConfig(t, br.URL())
	cfg.Deliver = d.deliver
	cfg.SubmitCommand = cmds.submit
	b := startBridge(t, cfg)
	waitReady(t, b)
	waitFor(t, 10*time.Second, "the command subscription", func() bool { return b.Stats().CommandsSubscribed })
	app := peer(t, br.URL(), "app", true, nil)
	b.Subscribe(&handle{"car1"}, session.Subscription{Filter: "devices/car1/#", QoS: 1}, true, nil)
	syncDelivery(t, app, d, "devices/car1/sync")
	mustToken(t, app.Publish("devices/car1/commands/unlock", 1, false, "secret"), "publish command")
	cmds.waitN(t, 1)
	syncDelivery(t, app, d, "devices/car1/sync")
	msgs, _ := d.snapshot()
	if hasTopic(msgs, "devices/car1/commands/unlock") {
		t.Fatal("a command reached Deliver through a device subscription")
	}
	waitFor(t, 5*time.Second, "the copy to be counted", func() bool { return b.Stats().CommandCopies == 1 })
	if got := cmds.snapshot(); len(got) != 1 {
		t.Fatalf("SubmitCommand called %d times, want 1", len(got))
	}
}

func TestSubscribeFiltersNotForwarded(t *testing.T) {
	b, err := New(testConfig(t, "tcp://127.0.0.1:1"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer stopBridge(t, b)
	h := &handle{"h"}
	for _, f := range []string{"$SYS/#", "$share/g/$SYS/x", "$share//a", "a/#/b", ""} {
		b.Subscribe(h, session.Subscription{Filter: f, QoS: 1}, true, nil)
	}
	if n := b.Stats().Subscriptions; n != 0 {
		t.Fatalf("%d filters held, want none", n)
	}
	b.Subscribe(h, session.Subscription{Filter: "a/+", QoS: 2}, true, nil)
	if st := b.subLane.subs.held["a/+"]; st == nil || st.qos != 2 {
		t.Fatalf("a/+ held as %+v, want QoS 2", st)
	}
}
