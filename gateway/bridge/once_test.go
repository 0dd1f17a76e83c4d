package bridge

import (
	"sync"
	"testing"
	"time"
)

// origins stands for the gateway's command store: it keeps the Origin of
// every command SubmitCommand took, across bridge runs.
type origins struct {
	mu   sync.Mutex
	seen map[string]int
}

func newOrigins() *origins { return &origins{seen: map[string]int{}} }

func (o *origins) keep(log *commandLog) func(Command) error {
	return func(c Command) error {
		o.mu.Lock()
		o.seen[c.Origin]++
		o.mu.Unlock()
		return log.submit(c)
	}
}

func (o *origins) known(origin string) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[origin] > 0, nil
}

// A retained message on the command topic is not a command: not when the
// bridge subscribes, not when it subscribes again after a reconnection.
// Published while the bridge is subscribed, it reaches it as a live
// message (the broker clears the retain flag) and is taken once.
func TestRetainedCommandNotTaken(t *testing.T) { bothProtocols(t, testRetainedCommandNotTaken) }

func testRetainedCommandNotTaken(t *testing.T) {
	br := startBroker(t)
	app := peer(t, br.URL(), "app", true, nil)
	mustToken(t, app.Publish("devices/car1/commands/unlock", 1, true, "stale"), "publish")

	log := newCommandLog(nil)
	cfg := testConfig(t, br.URL())
	// As in the gateway, taken commands are remembered by origin: the
	// reconnection below may come before the live command's PUBACK left,
	// and the broker then sends it again with DUP, which is dropped.
	store := newOrigins()
	cfg.KnownCommand = store.known
	cfg.SubmitCommand = store.keep(log)
	b := startBridge(t, cfg)
	waitFor(t, 10*time.Second, "the command subscription", func() bool { return b.Stats().CommandsSubscribed })
	waitFor(t, 10*time.Second, "the retained message dropped", func() bool { return b.Stats().CommandsRetained == 1 })

	mustToken(t, app.Publish("devices/car1/commands/unlock", 1, true, "open"), "publish")
	log.waitN(t, 1)

	reconnects := b.Stats().Reconnects
	b.lanes[0].cycle()
	waitFor(t, 10*time.Second, "the retained message after the reconnection", func() bool {
		s := b.Stats()
		return s.Reconnects > reconnects && s.CommandsRetained == 2
	})
	mustToken(t, app.Publish("devices/car1/commands/horn", 1, false, "beep"), "publish")
	log.waitFor(t, "the later command", func([]submitted) bool { return log.times("beep") == 1 })
	if got := log.snapshot(); len(got) != 2 || got[0].payload != "open" {
		t.Fatalf("SubmitCommand calls %+v, want open then beep", got)
	}
}

// The gateway stores a command and stops before its PUBACK leaves (a
// crash, a lost connection): the broker sends the message again with DUP
// set to the next run, which recognises it by its origin and drops it. The
// same command published again is a new command.
func TestCommandRedeliveryDropped(t *testing.T) { bothProtocols(t, testCommandRedeliveryDropped) }

func testCommandRedeliveryDropped(t *testing.T) {
	br := startBroker(t)
	app := peer(t, br.URL(), "app", true, nil)
	store := newOrigins()
	log := newCommandLog(nil)

	cfg := testConfig(t, br.URL())
	cfg.KnownCommand = store.known
	crashing := cfg
	crashing.dropCommandAcks = true
	crashing.SubmitCommand = store.keep(log)
	first := startBridge(t, crashing)
	waitFor(t, 10*time.Second, "the command subscription", func() bool { return first.Stats().CommandsSubscribed })
	mustToken(t, app.Publish("devices/car2/commands/unlock", 1, false, "open"), "publish")
	log.waitN(t, 1)
	stopBridge(t, first)

	cfg.SubmitCommand = store.keep(log)
	second := startBridge(t, cfg)
	waitFor(t, 10*time.Second, "the redelivery dropped", func() bool { return second.Stats().CommandsDuplicate == 1 })
	if n := log.times("open"); n != 1 {
		t.Fatalf("SubmitCommand saw the command %d times, want 1", n)
	}

	// The operator sends "unlock" again: same topic and payload, a new
	// message.
	mustToken(t, app.Publish("devices/car2/commands/unlock", 1, false, "open"), "publish")
	log.waitFor(t, "the second unlock", func([]submitted) bool { return log.times("open") == 2 })
	// SubmitCommand returned before the bridge counts the command.
	waitFor(t, 10*time.Second, "the second unlock counted", func() bool { return second.Stats().Commands == 1 })
	if s := second.Stats(); s.Commands != 1 || s.CommandsDuplicate != 1 {
		t.Fatalf("stats %+v: want 1 command taken and 1 duplicate", s)
	}
}

// An origin names topic, packet identifier and payload.
func TestCommandOrigin(t *testing.T) {
	a := commandOrigin("devices/c/commands/x", 7, []byte("p"))
	for _, b := range []string{
		commandOrigin("devices/c/commands/y", 7, []byte("p")),
		commandOrigin("devices/c/commands/x", 8, []byte("p")),
		commandOrigin("devices/c/commands/x", 7, []byte("q")),
		commandOrigin("devices/c/commands/x\x00\x00", 7, []byte("p")),
	} {
		if a == b {
			t.Fatalf("two messages share origin %s", a)
		}
	}
	if a != commandOrigin("devices/c/commands/x", 7, []byte("p")) || len(a) != len("mqtt:")+64 {
		t.Fatalf("origin %q is not stable or not a SHA-256", a)
	}
}
