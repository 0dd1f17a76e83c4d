package bridge

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

// submitted is one call of SubmitCommand.
type submitted struct {
	clientID, topic, payload string
	qos                      byte
	secure                   bool
}

// commandLog is a SubmitCommand that records its calls; fail, when set,
// decides the answer from the call and how many times the same payload
// was submitted before.
type commandLog struct {
	mu    sync.Mutex
	calls []submitted
	fail  func(s submitted, before int) error
	ch    chan struct{}
}

func newCommandLog(fail func(submitted, int) error) *commandLog {
	return &commandLog{fail: fail, ch: make(chan struct{}, 1)}
}

func (c *commandLog) submit(cmd Command) error {
	s := submitted{clientID: cmd.ClientID, topic: cmd.Topic, payload: string(cmd.Payload), qos: cmd.QoS, secure: cmd.Secure}
	c.mu.Lock()
	before := 0
	for _, x := range c.calls {
		if x.payload == s.payload {
			before++
		}
	}
	c.calls = append(c.calls, s)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
	if c.fail != nil {
		return c.fail(s, before)
	}
	return nil
}

func (c *commandLog) snapshot() []submitted {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]submitted(nil), c.calls...)
}

func (c *commandLog) times(payload string) int {
	n := 0
	for _, s := range c.snapshot() {
		if s.payload == payload {
			n++
		}
	}
	return n
}

// waitN waits until SubmitCommand was called n times.
func (c *commandLog) waitN(t *testing.T, n int) {
	t.Helper()
	c.waitFor(t, fmt.Sprintf("%d commands", n), func(calls []submitted) bool { return len(calls) >= n })
}

func (c *commandLog) waitFor(t *testing.T, what string, cond func([]submitted) bool) {
	t.Helper()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for !cond(c.snapshot()) {
		select {
		case <-c.ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; calls: %+v", what, c.snapshot())
		}
	}
}

// commandBridge starts a bridge with commands on and waits until the
// command subscription is held.
func commandBridge(t *testing.T, cfg Config, log *commandLog) *Bridge {
	t.Helper()
	cfg.SubmitCommand = log.submit
	b := startBridge(t, cfg)
	waitFor(t, 10*time.Second, "the command subscription", func() bool { return b.Stats().CommandsSubscribed })
	return b
}

func TestCommandsReachSubmit(t *testing.T) { bothProtocols(t, testCommandsReachSubmit) }

func testCommandsReachSubmit(t *testing.T) {
	br := startBroker(t)
	log := newCommandLog(nil)
	cfg := testConfig(t, br.URL())
	cfg.PlainAllowed = []string{"devices/+/commands/ping"}
	cfg.TopicPrefix = "site/"
	b := commandBridge(t, cfg, log)
	app := peer(t, br.URL(), "app", true, nil)

	mustToken(t, app.Publish("site/devices//commands/x", 1, false, "no client"), "publish")
	want := []submitted{
		{clientID: "car1", topic: "devices/car1/commands/unlock", payload: "open", qos: 1, secure: true},
		{clientID: "car2", topic: "devices/car2/commands/ping", payload: "hi", qos: 1, secure: false},
		{clientID: "car3", topic: "devices/car3/commands/horn", payload: "beep", qos: 0, secure: true},
		{clientID: "car4", topic: "devices/car4/commands/a/b", payload: "deep", qos: 1, secure: true},
	}
	for _, w := range want {
		mustToken(t, app.Publish("site/"+w.topic, w.qos, false, w.payload), "publish")
	}
	mustToken(t, app.Publish("devices/car5/commands/x", 1, false, "outside the prefix"), "publish")
	log.waitN(t, len(want))
	got := log.snapshot()
	for i, w := range want {
		if got[i] != w {
			t.Errorf("command %d: %+v, want %+v", i, got[i], w)
		}
	}
	waitFor(t, 5*time.Second, "the counts", func() bool {
		s := b.Stats()
		return s.Commands == uint64(len(want)) && s.CommandsRejected == 1
	})
	if len(log.snapshot()) != len(want) {
		t.Fatalf("SubmitCommand called %d times, want %d", len(log.snapshot()), len(want))
	}
}

func TestCommandsSharedAcrossGateways(t *testing.T) {
	bothProtocols(t, testCommandsSharedAcrossGateways)
}

func testCommandsSharedAcrossGateways(t *testing.T) {
	br := startBroker(t)
	logs := []*commandLog{newCommandLog(nil), newCommandLog(nil)}
	for i, l := range logs {
		cfg := testConfig(t, br.URL())
		cfg.ClientIDPrefix += "-gw" + strconv.Itoa(i)
		commandBridge(t, cfg, l)
	}
	app := peer(t, br.URL(), "app", true, nil)
	const n = 20
	for i := range n {
		mustToken(t, app.Publish(fmt.Sprintf("devices/car%d/commands/go", i), 1, false, strconv.Itoa(i)), "publish")
	}
	waitFor(t, 15*time.Second, "all commands", func() bool { return len(logs[0].snapshot())+len(logs[1].snapshot()) >= n })
	count := map[string]int{}
	for i, l := range logs {
		calls := l.snapshot()
		if len(calls) == 0 {
			t.Errorf("gateway %d took no command: the subscription is not shared", i)
		}
		for _, c := range calls {
			count[c.payload]++
		}
	}
	for i := range n {
		if c := count[strconv.Itoa(i)]; c != 1 {
			t.Errorf("command %d taken %d times, want once across the gateways", i, c)
		}
	}
}

func TestCommandNotAcknowledgedOnError(t *testing.T) {
	bothProtocols(t, testCommandNotAcknowledgedOnError)
}

func testCommandNotAcknowledgedOnError(t *testing.T) {
	errStore := errors.New("store unavailable")
	for _, tc := range []struct {
		name      string
		fail      func(s submitted, before int) error
		calls     int // SubmitCommand calls for the command, in the end
		accepted  uint64
		errorsMin uint64
		rejected  uint64
	}{
		{
			name: "transient failure",
			fail: func(s submitted, before int) error {
				if s.payload == "open" && before < 2 {
					return errStore
				}
				return nil
			},
			calls: 3, accepted: 1, errorsMin: 2,
		},
		{
			name: "rejected for good",
			fail: func(s submitted, _ int) error {
				if s.payload == "open" {
					return fmt.Errorf("payload too large: %w", ErrCommandRejected)
				}
				return nil
			},
			calls: 1, rejected: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := startBroker(t)
			log := newCommandLog(tc.fail)
			cfg := testConfig(t, br.URL())
			cfg.CommandRetry = 200 * time.Millisecond
			b := commandBridge(t, cfg, log)
			app := peer(t, br.URL(), "app", true, nil)
			mustToken(t, app.Publish("devices/car1/commands/unlock", 1, false, "open"), "publish")
			log.waitFor(t, "the last attempt", func([]submitted) bool { return log.times("open") >= tc.calls })
			waitFor(t, 10*time.Second, "the outcome", func() bool {
				s := b.Stats()
				return s.Commands == tc.accepted && s.CommandsRejected == tc.rejected
			})
			s := b.Stats()
			if s.CommandErrors < tc.errorsMin || (tc.errorsMin > 0 && s.CommandCycles < tc.errorsMin) {
				t.Fatalf("stats %+v: want at least %d errors, each followed by a cycled connection", s, tc.errorsMin)
			}
			// Once acknowledged, a new connection brings it no more.
			flushLane(t, b, 0)
			reconnects := s.Reconnects
			b.lanes[0].cycle()
			waitFor(t, 10*time.Second, "the reconnect", func() bool {
				s := b.Stats()
				return s.Reconnects > reconnects && s.CommandsSubscribed
			})
			mustToken(t, app.Publish("devices/car1/commands/later", 1, false, "later"), "publish")
			log.waitFor(t, "the later command", func([]submitted) bool { return log.times("later") == 1 })
			if n := log.times("open"); n != tc.calls {
				t.Fatalf("SubmitCommand saw the command %d times, want %d", n, tc.calls)
			}
		})
	}
}

func TestCommandRedeliveredToNextRun(t *testing.T) { bothProtocols(t, testCommandRedeliveredToNextRun) }

func testCommandRedeliveredToNextRun(t *testing.T) {
	br := startBroker(t)
	down := newCommandLog(func(submitted, int) error { return errors.New("store unavailable") })
	cfg := testConfig(t, br.URL())
	cfg.CommandRetry = time.Minute
	first := commandBridge(t, cfg, down)
	app := peer(t, br.URL(), "app", true, nil)
	mustToken(t, app.Publish("devices/car9/commands/unlock", 1, false, "open"), "publish")
	down.waitN(t, 1)
	stopBridge(t, first)

	up := newCommandLog(nil)
	second := commandBridge(t, cfg, up)
	up.waitN(t, 1)
	if got := up.snapshot()[0]; got.clientID != "car9" || got.payload != "open" {
		t.Fatalf("redelivered %+v, want car9's command", got)
	}
	waitFor(t, 5*time.Second, "the count", func() bool { return second.Stats().Commands == 1 })
	if n := len(down.snapshot()); n != 1 {
		t.Fatalf("the failing run saw the command %d times, want 1", n)
	}
}

// flushLane makes sure what the bridge wrote on connection i so far (such
// as a PUBACK) reached the broker: it publishes through that connection and
// waits for the broker's PUBACK, which paho writes after what was queued
// before.
func flushLane(t *testing.T, b *Bridge, i int) {
	t.Helper()
	id := ""
	for n := 0; id == ""; n++ {
		if c := "flush-" + strconv.Itoa(n); b.laneIndex(c) == i {
			id = c
		}
	}
	a := newAcks()
	publish(b, id, "flush/"+id, "x", 1, a.fn(t, 0))
	a.waitN(t, 1, 10*time.Second)
}
