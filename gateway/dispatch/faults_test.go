package dispatch

import (
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// onTLS connects a device on TLS with a proven id, reads its CONNACK and
// queries.
func (w *world) onTLS(t *testing.T, id string) *conn {
	t.Helper()
	c := w.dial(id, registry.ModeTLS, mqttcodec.V311, true, false)
	w.settle()
	if r := w.read(c); !r.connack {
		t.Fatalf("%s: no CONNACK", id)
	}
	return c
}

// Session A has a secure command in flight on TLS; B takes over on TLS and
// queries; A's end is handled after that. The command must reach B without
// waiting for B to query again (it was stranded until its TTL).
func TestTakeoverOnTLSDoesNotStrandCommand(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	a := w.onTLS(t, "car")
	w.query(a)
	w.settle()
	w.read(a)
	cid, err := w.submit("car", true, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w.settle()
	if got := w.read(a).commands; len(got) != 1 || got[0].id != cid {
		t.Fatalf("A got %v, want the command", got)
	}
	if st := w.status(cid).Status; st != store.StatusSent {
		t.Fatalf("status %s, want sent", st)
	}

	// B connects and queries; its events reach the dispatcher before A's
	// end (A's close is still queued on A's owner).
	b := w.dial("car", registry.ModeTLS, mqttcodec.V311, true, false)
	w.query(b)
	for w.runTask() {
	}
	if len(w.owner) == 0 {
		t.Fatal("test setup: A's end is not queued")
	}
	w.settle() // A's end, then whatever the dispatcher does about it
	r := w.read(b)
	if len(r.commands) != 1 || r.commands[0].id != cid || !r.commands[0].dup {
		t.Fatalf("B got %+v, want the command again with DUP", r.commands)
	}
	w.ack(b, r.commands[0].pid)
	w.settle()
	if st := w.status(cid).Status; st != store.StatusDelivered {
		t.Fatalf("status %s, want delivered", st)
	}
}

// The same race with a plain successor: the command goes back to pending
// and B is told to move to TLS, not left waiting.
func TestTakeoverOnPlainInstructs(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	a := w.onTLS(t, "car")
	cid, _ := w.submit("car", true, time.Hour)
	w.settle()
	w.read(a)
	b := w.dial("car", registry.ModePlain, mqttcodec.V311, false, false)
	w.query(b)
	for w.runTask() {
	}
	w.settle()
	r := w.read(b)
	if len(r.commands) != 0 {
		t.Fatalf("secure command on plain: %+v", r.commands)
	}
	if r.instruction == nil || *r.instruction != "tls" {
		t.Fatalf("B was not told to move to TLS: %+v", r)
	}
	if st := w.status(cid).Status; st != store.StatusUpgrading {
		t.Fatalf("status %s, want upgrading", st)
	}
}

// A device is forgotten once gone past the retention, whatever state it
// was left in (an instructed device was remembered forever).
func TestGoneDeviceForgottenInEveryState(t *testing.T) {
	for _, tc := range []struct {
		name string
		want State
		// leave brings the device to the state, then makes it go away.
		leave func(t *testing.T, w *world)
	}{
		{"instructed then gone", StateUpgrading, func(t *testing.T, w *world) {
			c := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
			w.settle()
			w.submit("dev", true, 0)
			w.settle()
			w.crash(c) // leaves, never arrives on TLS
			w.settle()
		}},
		{"loop protected then gone", StateLoopProtected, func(t *testing.T, w *world) {
			for range w.cfg.MaxInstructions + 1 {
				c := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
				w.settle()
				if _, ok := w.d.Device("dev"); !ok {
					w.submit("dev", true, 0)
				}
				w.query(c)
				w.settle()
				w.crash(c)
				w.settle()
				w.advance(w.cfg.MaxBackoff)
				w.settle()
			}
		}},
		{"upgraded then gone", StateIdle, func(t *testing.T, w *world) {
			w.upgrade(t, "dev")
			w.settle()
		}},
		{"told plain then gone", StateDowngrading, func(t *testing.T, w *world) {
			c := w.onTLS(t, "dev")
			w.advance(w.cfg.SecureIdle)
			w.settle()
			if r := w.read(c); r.instruction == nil {
				t.Fatal("no plain instruction")
			}
			w.disconnect(c)
			w.settle()
		}},
		{"tls-only then gone", StateTLSOnly, func(t *testing.T, w *world) {
			for range 3 {
				c := w.onTLS(t, "dev")
				w.advance(w.cfg.SecureIdle)
				w.settle()
				w.disconnect(c)
				w.settle()
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(simConfig())
			defer w.stop()
			tc.leave(t, w)
			if st, ok := w.deviceState("dev"); !ok || st != tc.want {
				t.Fatalf("state %s (known %v), want %s", st, ok, tc.want)
			}
			for range 3 {
				w.advance(w.cfg.DeviceRetention / 2)
				w.settle()
			}
			if st, ok := w.deviceState("dev"); ok {
				t.Fatalf("still remembered in state %s after the retention", st)
			}
		})
	}
}

// What the dispatcher keeps per device is bounded however often the
// device moves.
func TestDeviceHistoryBounded(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	for i := range 50 {
		p := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
		w.settle()
		w.read(p)
		w.submit("dev", true, 0)
		w.settle()
		if r := w.read(p); r.instruction == nil {
			t.Fatalf("round %d: no TLS instruction", i)
		}
		w.disconnect(p)
		c := w.onTLS(t, "dev")
		w.query(c)
		w.settle()
		for _, d := range w.read(c).commands {
			w.ack(c, d.pid)
		}
		w.settle()
		w.advance(3 * w.cfg.SecureIdle)
		w.settle()
		w.disconnect(c)
		w.settle()
	}
	w.d.mu.Lock()
	dv := w.d.devices["dev"]
	n, c := len(dv.upgrades()), cap(dv.upgrades())
	w.d.mu.Unlock()
	if n > maxUpgrades || c > 2*maxUpgrades {
		t.Fatalf("upgrades kept: %d (cap %d), want at most %d", n, c, maxUpgrades)
	}
	if got := w.d.Stats().Upgrades.Load(); got != 50 {
		t.Fatalf("upgrades counted %d, want 50", got)
	}
}

// With its own workers and ticker (no Executor), the dispatcher takes a
// command for an offline device, answers pending, and leaves no goroutine
// behind after Stop.
func TestWorkersStartStop(t *testing.T) {
	mem := store.NewMemory(store.Options{})
	reg := registry.New[*session.Session]()
	d, err := New(Config{Store: mem, Registry: reg, Tick: time.Millisecond,
		Advertise: func(*session.Session, control.Mode) string { return "gw:8883" }})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	c := &store.Command{ID: "c1", ClientID: "away", Topic: "devices/away/commands/x", QoS: 1, Secure: true, CreatedAt: time.Now()}
	st, err := d.Submit(c)
	if err != nil || st != store.StatusPending {
		t.Fatalf("Submit: %s, %v", st, err)
	}
	d.Stop()
	d.Stop() // twice is harmless
}

// A device that needs TLS in bursts stays on TLS longer with the adaptive
// quiet period, so it goes through fewer upgrades than with a fixed one.
func TestAdaptiveQuietReducesChurn(t *testing.T) {
	upgrades := func(fixed bool) uint64 {
		cfg := simConfig()
		cfg.FixedQuiet = fixed
		w := newWorld(cfg)
		defer w.stop()
		c := w.dial("bursty", registry.ModePlain, mqttcodec.V311, true, false)
		// follow runs the device for dt in 100 ms steps: it obeys
		// instructions, queries after connecting and acknowledges.
		follow := func(dt time.Duration) {
			for end := w.now.Add(dt); w.now.Before(end); w.advance(100 * time.Millisecond) {
				w.settle()
				r := w.read(c)
				for _, d := range r.commands {
					w.ack(c, d.pid)
				}
				if r.instruction != nil {
					mode := registry.ModePlain
					if *r.instruction == "tls" {
						mode = registry.ModeTLS
					}
					w.disconnect(c)
					c = w.dial("bursty", mode, mqttcodec.V311, true, false)
					w.query(c)
				}
				w.settle()
			}
		}
		for range 6 {
			cid, _ := w.submit("bursty", true, 0)
			follow(2 * time.Second)
			if st := w.status(cid).Status; st != store.StatusDelivered {
				t.Fatalf("command %s", st)
			}
			follow(5 * time.Second) // longer than the base quiet period with what came before
		}
		return w.d.Stats().Upgrades.Load()
	}
	fixed, adaptive := upgrades(true), upgrades(false)
	if fixed != 6 || adaptive > 3 {
		t.Fatalf("upgrades for 6 bursts: fixed %d (want 6), adaptive %d (want at most 3)", fixed, adaptive)
	}
}

// A device record is born seen: the ticker must not forget a device whose
// first TLS instruction was just sent (its plain session may already have
// ended as it obeys), or its arrival on TLS would not count as the upgrade
// it is, and its backoff would be lost. Before the instruction is sent the
// record is blank: not kept, the same as kept.
func TestNewDeviceIsNotForgettable(t *testing.T) {
	mem := store.NewMemory(store.Options{})
	reg := registry.New[*session.Session]()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	d, err := New(Config{Store: mem, Registry: reg, Now: func() time.Time { return now },
		Executor:  func(_ string, fn func()) { fn() },
		Advertise: func(*session.Session, control.Mode) string { return "gw:8883" }})
	if err != nil {
		t.Fatal(err)
	}
	if act, _, ok := d.step("fresh", input{ev: EvSecureWaiting, now: now}, true); !ok || act != ActInstructTLS {
		t.Fatalf("secure waiting: %v, %v", act, ok)
	}
	kept := func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		_, ok := d.devices["fresh"]
		return ok
	}
	if kept() {
		t.Fatal("a blank record was kept")
	}
	if _, _, ok := d.step("fresh", input{ev: EvInstructedTLS, now: now}, true); !ok {
		t.Fatal("no record created")
	}
	d.Tick() // the device is not online: only the retention protects it
	if !kept() {
		t.Fatal("a record created now was forgotten at the next tick")
	}
}
