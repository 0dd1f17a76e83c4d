package bridge

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

func TestUplinkReachesBroker(t *testing.T) { bothProtocols(t, testUplinkReachesBroker) }

func testUplinkReachesBroker(t *testing.T) {
	br := startBroker(t)
	for _, tc := range []struct {
		name   string
		prefix string
		pool   int
	}{
		{name: "no prefix", pool: 2},
		{name: "prefix", prefix: "site1/", pool: 2},
		{name: "one connection", pool: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInbox()
			app := peer(t, br.URL(), "app-"+strings.ReplaceAll(t.Name(), "/", "-"), true, in.handler)
			mustToken(t, app.Subscribe(tc.prefix+"devices/#", 1, nil), "subscribe")
			cfg := testConfig(t, br.URL())
			cfg.TopicPrefix = tc.prefix
			cfg.PoolSize = tc.pool
			b := startBridge(t, cfg)
			waitReady(t, b)

			a := newAcks()
			publish(b, "car1", "devices/car1/telemetry", "q0", 0, nil)
			publish(b, "car1", "devices/car1/state", "q1", 1, a.fn(t, 1))
			publish(b, "car1", "devices/car1/event", "q2", 2, a.fn(t, 2))
			msgs := in.waitN(t, 3, 10*time.Second)
			want := []struct {
				topic, payload string
				qos            byte
			}{
				{tc.prefix + "devices/car1/telemetry", "q0", 0},
				{tc.prefix + "devices/car1/state", "q1", 1},
				{tc.prefix + "devices/car1/event", "q2", 1}, // QoS 2 travels upstream at QoS 1
			}
			for i, w := range want {
				m := msgs[i]
				if m.Topic() != w.topic || string(m.Payload()) != w.payload || m.Qos() != w.qos {
					t.Errorf("message %d: %s %q QoS %d, want %s %q QoS %d", i, m.Topic(), m.Payload(), m.Qos(), w.topic, w.payload, w.qos)
				}
			}
			a.waitN(t, 2, 10*time.Second)
			for i := 1; i <= 2; i++ {
				if rc, _ := a.get(i); rc != mqttcodec.Success {
					t.Errorf("ack of message %d: %v, want Success", i, rc)
				}
			}
			waitFor(t, 5*time.Second, "the buffer to empty", func() bool { return b.Stats().Buffered == 0 })
			if s := b.Stats(); s.ForwardedUp != 3 || s.InFlight != 0 || s.DroppedQoS0 != 0 {
				t.Errorf("stats %+v: want 3 forwarded, nothing in flight or dropped", s)
			}
		})
	}
}

// subscribedThenDown starts a broker, subscribes a persistent application
// to filter, and stops the broker: the subscription and what is queued for
// it survive in the broker's persistence file.
func subscribedThenDown(t *testing.T, filter string) (*broker, *inbox) {
	t.Helper()
	br := startBroker(t)
	in := newInbox()
	app := peer(t, br.URL(), "app-"+strings.ReplaceAll(t.Name(), "/", "-"), false, in.handler)
	mustToken(t, app.Subscribe(filter, 1, nil), "subscribe")
	br.Stop()
	return br, in
}

func TestUplinkBuffersWhileBrokerDown(t *testing.T) {
	bothProtocols(t, testUplinkBuffersWhileBrokerDown)
}

func testUplinkBuffersWhileBrokerDown(t *testing.T) {
	br, in := subscribedThenDown(t, "devices/#")
	b := startBridge(t, testConfig(t, br.URL()))

	const perClient = 40
	clients := []string{"car1", "car2", "meter3"}
	a := newAcks()
	for i := range perClient {
		for c, id := range clients {
			publish(b, id, "devices/"+id+"/seq", strconv.Itoa(i), 1, a.fn(t, c*perClient+i))
		}
		if i < 5 {
			publish(b, "car1", "devices/car1/live", "dropped", 0, nil)
		}
	}
	waitFor(t, 2*time.Second, "the messages to be buffered", func() bool { return b.Stats().Buffered == perClient*len(clients) })
	if n := a.count(); n != 0 {
		t.Fatalf("%d devices acknowledged while the broker is down", n)
	}
	if s := b.Stats(); s.DroppedQoS0 != 5 || s.Connected != 0 {
		t.Fatalf("stats %+v: want 5 QoS 0 dropped and no connection", s)
	}

	br.Start()
	msgs := in.waitN(t, perClient*len(clients), 20*time.Second)
	a.waitN(t, perClient*len(clients), 10*time.Second)
	next := map[string]int{}
	for _, m := range msgs {
		if strings.HasSuffix(m.Topic(), "/live") {
			t.Fatalf("a QoS 0 message sent while the broker was down arrived: %s", m.Topic())
		}
		id := strings.Split(m.Topic(), "/")[1]
		seq, _ := strconv.Atoi(string(m.Payload()))
		if seq != next[id] {
			t.Fatalf("%s: message %d arrived when %d was due (order lost)", id, seq, next[id])
		}
		next[id]++
	}
	for i := range perClient * len(clients) {
		if rc, _ := a.get(i); rc != mqttcodec.Success {
			t.Errorf("message %d: ack %v, want Success", i, rc)
		}
	}
}

func TestUplinkBufferFull(t *testing.T) { bothProtocols(t, testUplinkBufferFull) }

func testUplinkBufferFull(t *testing.T) {
	for _, tc := range []struct {
		name      string
		memory    int
		spill     int // 0: no BufferDir
		publishes int
	}{
		{name: "memory only", memory: 4, publishes: 6},
		{name: "spill to disk", memory: 2, spill: 3, publishes: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br, in := subscribedThenDown(t, "devices/#")
			cfg := testConfig(t, br.URL())
			cfg.BufferMessages = tc.memory
			if tc.spill > 0 {
				cfg.BufferDir = t.TempDir()
				cfg.SpillMessages = tc.spill
			}
			b := startBridge(t, cfg)
			a := newAcks()
			for i := range tc.publishes {
				publish(b, "car1", "devices/car1/seq", strconv.Itoa(i), 1, a.fn(t, i))
			}
			room := tc.memory + tc.spill
			// The spiller writes (or refuses) past the memory buffer on
			// its own goroutine.
			waitFor(t, 5*time.Second, "the spiller to catch up", func() bool { return b.Stats().Handoff == 0 })
			for i := range tc.publishes {
				rc, ok := a.get(i)
				switch {
				case i < room && ok:
					t.Fatalf("message %d answered %v while the broker is down", i, rc)
				case i >= room && (!ok || rc != mqttcodec.QuotaExceeded):
					t.Fatalf("message %d past the buffer: ack %v (%v), want QuotaExceeded", i, rc, ok)
				}
			}
			s := b.Stats()
			if s.Buffered != room || s.Spilled != tc.spill || s.QuotaExceeded != uint64(tc.publishes-room) {
				t.Fatalf("stats %+v: want %d buffered, %d spilled, %d pushed back", s, room, tc.spill, tc.publishes-room)
			}

			br.Start()
			msgs := in.waitN(t, room, 20*time.Second)
			for i, m := range msgs {
				if string(m.Payload()) != strconv.Itoa(i) {
					t.Fatalf("message %d is %q: order lost", i, m.Payload())
				}
			}
			a.waitN(t, tc.publishes, 10*time.Second)
			for i := range room {
				if rc, _ := a.get(i); rc != mqttcodec.Success {
					t.Errorf("message %d: ack %v, want Success", i, rc)
				}
			}
			waitFor(t, 5*time.Second, "the buffer to empty", func() bool { return b.Stats().Buffered == 0 })
		})
	}
}

func TestUplinkRefusals(t *testing.T) { bothProtocols(t, testUplinkRefusals) }

func testUplinkRefusals(t *testing.T) {
	// Topic authorization is the gateway's (package acl): the bridge takes
	// any topic and refuses only what the broker cannot carry.
	for _, tc := range []struct {
		name   string
		prefix string
		client string
		topic  string
		want   mqttcodec.ReasonCode // Success: taken (buffered)
	}{
		{name: "any topic", client: "car1", topic: "anything/at/all", want: mqttcodec.Success},
		{name: "prefix makes it too long", prefix: "p/", client: "car1", topic: strings.Repeat("x", 0xFFFF-1), want: mqttcodec.TopicNameInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, "tcp://127.0.0.1:1")
			cfg.TopicPrefix = tc.prefix
			b, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			a := newAcks()
			publish(b, tc.client, tc.topic, "x", 1, a.fn(t, 0))
			publish(b, tc.client, tc.topic, "x", 0, nil)
			rc, answered := a.get(0)
			s := b.Stats()
			if tc.want == mqttcodec.Success {
				if answered {
					t.Fatalf("answered %v, want the message taken and waiting", rc)
				}
				if s.Buffered != 1 || s.Refused != 0 {
					t.Fatalf("stats %+v: want 1 buffered, none refused", s)
				}
			} else {
				if !answered || rc != tc.want {
					t.Fatalf("ack %v (%v), want %v at once", rc, answered, tc.want)
				}
				if s.Refused != 2 || s.Buffered != 0 {
					t.Fatalf("stats %+v: want 2 refused (QoS 1 and 0), none buffered", s)
				}
			}
			if err := b.Stop(context.Background()); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if tc.want == mqttcodec.Success {
				// Stopped without a BufferDir: the waiting message is refused.
				if rc, _ := a.get(0); rc != mqttcodec.UnspecifiedError {
					t.Fatalf("after Stop: ack %v, want UnspecifiedError", rc)
				}
			}
		})
	}
}

func TestPublishAfterStop(t *testing.T) {
	b, err := New(testConfig(t, "tcp://127.0.0.1:1"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := b.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := b.Start(context.Background()); err != ErrClosed {
		t.Fatalf("Start after Stop: %v, want ErrClosed", err)
	}
	a := newAcks()
	publish(b, "car1", "t", "x", 1, a.fn(t, 0))
	if rc, ok := a.get(0); !ok || rc != mqttcodec.UnspecifiedError {
		t.Fatalf("ack %v (%v), want UnspecifiedError at once", rc, ok)
	}
	if b.Ready() {
		t.Fatal("a stopped bridge is ready")
	}
}

// TestUplinkSpreadsDevices checks that devices use several connections and
// each device always the same one.
func TestUplinkSpreadsDevices(t *testing.T) { bothProtocols(t, testUplinkSpreadsDevices) }

func testUplinkSpreadsDevices(t *testing.T) {
	b, err := New(Config{URL: "tcp://127.0.0.1:1", PoolSize: 4})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer b.Stop(context.Background())
	used := map[int]bool{}
	for i := range 100 {
		id := fmt.Sprintf("device-%d", i)
		l := b.laneIndex(id)
		if l != b.laneIndex(id) || l < 0 || l >= 4 {
			t.Fatalf("lane %d for %s", l, id)
		}
		used[l] = true
	}
	if len(used) != 4 {
		t.Fatalf("100 devices use %d of 4 connections", len(used))
	}
}

// One device's QoS 0 messages hold at most its share of the memory
// buffer: past it, its own messages are dropped (device_share) while
// another device still gets room; past the whole buffer, buffer_full.
func TestDeviceShareOfTheBuffer(t *testing.T) { bothProtocols(t, testDeviceShareOfTheBuffer) }

func testDeviceShareOfTheBuffer(t *testing.T) {
	m := budget{maxCount: 6, maxBytes: 1 << 20, shareCount: 4, shareBytes: 100}
	reserve := func(c string, n int64) int {
		why, _ := m.reserveShared(c, n)
		return why
	}
	for i := range 4 {
		if why := reserve("flood", 10); why != dropNone {
			t.Fatalf("flood message %d: %s", i, dropReasons[why])
		}
	}
	if why := reserve("flood", 10); why != dropDeviceShare {
		t.Fatalf("flood past its share: %q, want device_share", dropReasons[why])
	}
	if why := reserve("flood2", 101); why != dropDeviceShare {
		t.Fatalf("a message larger than a share: %q, want device_share", dropReasons[why])
	}
	for _, c := range []string{"good", "other"} {
		if why := reserve(c, 10); why != dropNone {
			t.Fatalf("%s within its share: %s", c, dropReasons[why])
		}
	}
	if why := reserve("third", 10); why != dropBufferFull {
		t.Fatalf("buffer full: %q, want buffer_full", dropReasons[why])
	}
	m.releaseShared("flood", 10)
	if why := reserve("flood", 10); why != dropNone {
		t.Fatalf("flood after one left: %s", dropReasons[why])
	}
	for range 4 {
		m.releaseShared("flood", 10)
	}
	m.releaseShared("good", 10)
	m.releaseShared("other", 10)
	if c, b := m.usage(); c != 0 || b != 0 || len(m.devices) != 0 {
		t.Fatalf("after releasing everything: %d messages, %d bytes, %d devices", c, b, len(m.devices))
	}
}

// Backpressure before the drop: a device is paused once, at three quarters
// of its share, and resumed once, when it is down to a quarter; a device
// within its share is never paused.
func TestDeviceShareThrottle(t *testing.T) {
	m := budget{maxCount: 100, maxBytes: 1 << 20, shareCount: 8, shareBytes: 1 << 10}
	var marks []int
	for range 8 {
		_, th := m.reserveShared("flood", 10)
		marks = append(marks, th)
	}
	// The 6th message reaches 6/8: pause, once.
	want := []int{throttleNone, throttleNone, throttleNone, throttleNone, throttleNone, throttlePause, throttleNone, throttleNone}
	if fmt.Sprint(marks) != fmt.Sprint(want) {
		t.Fatalf("throttle marks while filling %v, want %v", marks, want)
	}
	if why, th := m.reserveShared("flood", 10); why != dropDeviceShare || th != throttleNone {
		t.Fatalf("past the share: %s, mark %d; want device_share, no second pause", dropReasons[why], th)
	}
	if _, th := m.reserveShared("calm", 10); th != throttleNone {
		t.Fatal("a device within its share was paused")
	}
	marks = marks[:0]
	for range 8 {
		marks = append(marks, m.releaseShared("flood", 10))
	}
	// Down to 2 of 8 (a quarter): resume, once.
	want = []int{throttleNone, throttleNone, throttleNone, throttleNone, throttleNone, throttleResume, throttleNone, throttleNone}
	if fmt.Sprint(marks) != fmt.Sprint(want) {
		t.Fatalf("throttle marks while draining %v, want %v", marks, want)
	}
}

// Publish never waits on the disk: with the spill writer held (a slow
// disk), publishes past the memory buffer return at once, handed off;
// past the hand-off they are pushed back (0x97) at once; once the writer
// goes on, the handed-off messages are spilled and all reach the broker
// in order.
func TestPublishDoesNotWaitForTheSpill(t *testing.T) {
	bothProtocols(t, testPublishDoesNotWaitForTheSpill)
}

func testPublishDoesNotWaitForTheSpill(t *testing.T) {
	br, in := subscribedThenDown(t, "devices/#")
	cfg := testConfig(t, br.URL())
	cfg.BufferMessages = 2
	cfg.BufferDir = t.TempDir()
	cfg.SpillQueue = 3
	cfg.spillGate = make(chan struct{})
	b := startBridge(t, cfg)
	a := newAcks()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 7 {
			publish(b, "car1", "devices/car1/seq", strconv.Itoa(i), 1, a.fn(t, i))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish waited for the spill writer")
	}
	for i := 5; i < 7; i++ {
		if rc, ok := a.get(i); !ok || rc != mqttcodec.QuotaExceeded {
			t.Fatalf("message %d past the hand-off: %v (%v), want QuotaExceeded at once", i, rc, ok)
		}
	}
	if s := b.Stats(); s.Handoff != 3 || s.Spilled != 0 || s.Buffered != 5 || s.HandoffFull != 2 {
		t.Fatalf("stats %+v: want 3 handed off, none spilled, 5 buffered, 2 refused", s)
	}
	for range 3 {
		cfg.spillGate <- struct{}{}
	}
	waitFor(t, 5*time.Second, "the spill writer to write", func() bool {
		s := b.Stats()
		return s.Handoff == 0 && s.Spilled == 3
	})
	br.Start()
	msgs := in.waitN(t, 5, 20*time.Second)
	for i, m := range msgs {
		if string(m.Payload()) != strconv.Itoa(i) {
			t.Fatalf("message %d is %q: order lost", i, m.Payload())
		}
	}
	a.waitN(t, 7, 10*time.Second)
	for i := range 5 {
		if rc, _ := a.get(i); rc != mqttcodec.Success {
			t.Errorf("message %d: ack %v, want Success", i, rc)
		}
	}
}

// windowConn is a connection with a window and publishes in flight, for
// the sender's choice of what to send (lane.next).
type windowConn struct {
	conn    // unused methods: nil, they panic if called
	win, in int
}

func (c *windowConn) open() bool    { return true }
func (c *windowConn) settled() bool { return true }
func (c *windowConn) inflight() int { return c.in }
func (c *windowConn) window() int   { return c.win }

// TestBurstWaitsForASecondSlot: with publishes in flight, a burst starts
// only when it can send at least minBurst (or all that is queued); with
// none in flight it starts at once; within a burst, every free slot is
// used.
func TestBurstWaitsForASecondSlot(t *testing.T) {
	for _, tc := range []struct {
		name          string
		win, in, held int
		first         bool
		want          bool
	}{
		{name: "one slot free, more queued", win: 20, in: 19, held: 3, first: true, want: false},
		{name: "two slots free", win: 20, in: 18, held: 3, first: true, want: true},
		{name: "one slot free, one queued", win: 20, in: 19, held: 1, first: true, want: true},
		{name: "nothing in flight", win: 20, in: 0, held: 3, first: true, want: true},
		{name: "window of one, empty", win: 1, in: 0, held: 3, first: true, want: true},
		{name: "within a burst, one slot free", win: 20, in: 19, held: 3, first: false, want: true},
		{name: "window full", win: 20, in: 20, held: 3, first: false, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &lane{b: &Bridge{cfg: Config{MaxInflight: 256}}}
			l.cur.Store(&connRef{&windowConn{win: tc.win, in: tc.in}})
			for range tc.held {
				l.queue.push(&entry{qos: 1})
			}
			got := l.next(tc.first) != nil
			if got != tc.want {
				t.Fatalf("window %d, %d in flight, %d queued, first %v: next gave a message %v, want %v",
					tc.win, tc.in, tc.held, tc.first, got, tc.want)
			}
			if want := tc.held - map[bool]int{true: 1}[got]; l.queue.len() != want {
				t.Fatalf("%d left queued, want %d", l.queue.len(), want)
			}
		})
	}
}
