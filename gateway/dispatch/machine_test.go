package dispatch

import (
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/mqttcodec"
)

func testRules() *rules {
	return &rules{
		epoch:           epoch,
		secureIdle:      10 * time.Second,
		maxInstructions: 3,
		instructBackoff: time.Second,
		maxBackoff:      8 * time.Second,
		retention:       time.Hour,
	}
}

// Every transition of step, one row each: the state before (with the
// fields that matter), the event, the state after and the actions.
func TestStepTransitions(t *testing.T) {
	now := epoch
	sA, sB := new(session.Session), new(session.Session) // identities only
	r := testRules()
	for _, tc := range []struct {
		name  string
		dv    device
		in    input
		want  State
		act   Action
		check func(t *testing.T, dv *device)
	}{
		// Online on plain.
		{name: "idle, plain", dv: device{state: StateIdle}, in: input{ev: EvOnlinePlain}, want: StateIdle},
		{name: "upgrading, plain again: backoff carries on", dv: device{state: StateUpgrading, tries: 2},
			in: input{ev: EvOnlinePlain}, want: StateUpgrading,
			check: func(t *testing.T, dv *device) { wantInt(t, "tries", dv.tries, 2) }},
		{name: "loop protected, plain", dv: device{state: StateLoopProtected, tries: 3}, in: input{ev: EvOnlinePlain}, want: StateLoopProtected},
		{name: "downgrading, plain as told", dv: device{state: StateDowngrading, ignoredPlain: 1}, in: input{ev: EvOnlinePlain}, want: StateIdle,
			check: func(t *testing.T, dv *device) { wantInt(t, "ignoredPlain", dv.ignoredPlain, 0) }},
		{name: "tls-only, plain by itself", dv: device{state: StateTLSOnly, ignoredPlain: 2}, in: input{ev: EvOnlinePlain}, want: StateIdle},
		{name: "idle after leaving tls, plain: the count of ignored plain instructions ends", dv: device{state: StateIdle, ignoredPlain: 1},
			in: input{ev: EvOnlinePlain}, want: StateIdle,
			check: func(t *testing.T, dv *device) { wantInt(t, "ignoredPlain", dv.ignoredPlain, 0) }},
		{name: "secure, taken over on plain", dv: device{state: StateSecure, tls: sA, proven: true}, in: input{ev: EvOnlinePlain}, want: StateIdle,
			check: func(t *testing.T, dv *device) { wantNoTLS(t, dv) }},
		{name: "unproven, plain", dv: device{state: StateUnproven, tls: sA}, in: input{ev: EvOnlinePlain}, want: StateIdle},

		// Online on TLS, proven.
		{name: "idle, tls by itself", dv: device{state: StateIdle}, in: input{ev: EvOnlineTLS, s: sA}, want: StateSecure,
			check: func(t *testing.T, dv *device) {
				wantTLS(t, dv, sA, true)
				wantTime(t, "lastSecure", dv.lastSecure, now)
			}},
		{name: "upgrading, arrives", dv: device{state: StateUpgrading, tries: 2, nextInstruct: r.at(now.Add(time.Second))},
			in: input{ev: EvOnlineTLS, s: sA}, want: StateSecure, act: ActCountUpgrade,
			check: func(t *testing.T, dv *device) {
				wantInt(t, "tries", dv.tries, 0)
				wantInt(t, "upgrades", len(dv.upgrades()), 1)
				wantTime(t, "nextInstruct", dv.nextInstruct, time.Time{})
			}},
		{name: "loop protected, comes on tls by itself", dv: device{state: StateLoopProtected, tries: 3}, in: input{ev: EvOnlineTLS, s: sA}, want: StateSecure,
			check: func(t *testing.T, dv *device) { wantInt(t, "tries", dv.tries, 0) }},
		{name: "downgrading, back on tls once", dv: device{state: StateDowngrading}, in: input{ev: EvOnlineTLS, s: sA}, want: StateSecure,
			check: func(t *testing.T, dv *device) { wantInt(t, "ignoredPlain", dv.ignoredPlain, 1) }},
		{name: "downgrading, back on tls twice", dv: device{state: StateDowngrading, ignoredPlain: 1}, in: input{ev: EvOnlineTLS, s: sA},
			want: StateTLSOnly, act: ActReportTLSOnly},
		{name: "tls-only stays", dv: device{state: StateTLSOnly, ignoredPlain: 2}, in: input{ev: EvOnlineTLS, s: sA}, want: StateTLSOnly},
		{name: "secure, taken over on tls", dv: device{state: StateSecure, tls: sA, proven: true}, in: input{ev: EvOnlineTLS, s: sB}, want: StateSecure,
			check: func(t *testing.T, dv *device) { wantTLS(t, dv, sB, true) }},

		// Online on TLS without a proven id.
		{name: "idle, unproven", dv: device{state: StateIdle}, in: input{ev: EvOnlineUnproven, s: sA}, want: StateUnproven,
			check: func(t *testing.T, dv *device) { wantTLS(t, dv, sA, false) }},
		{name: "upgrading, arrives unproven: counts, notes, backs off", dv: device{state: StateUpgrading, tries: 1, nextInstruct: r.at(now)},
			in: input{ev: EvOnlineUnproven, s: sA}, want: StateUnproven, act: ActCountUpgrade | ActNoteUnproven,
			check: func(t *testing.T, dv *device) {
				wantInt(t, "tries", dv.tries, 1)
				wantTime(t, "nextInstruct", dv.nextInstruct, now.Add(time.Second))
			}},
		{name: "downgrading, back unproven twice", dv: device{state: StateDowngrading, ignoredPlain: 1}, in: input{ev: EvOnlineUnproven, s: sA},
			want: StateTLSOnly, act: ActReportTLSOnly},

		// Offline.
		{name: "secure, its session ends", dv: device{state: StateSecure, tls: sA, proven: true}, in: input{ev: EvOffline, s: sA}, want: StateIdle,
			check: func(t *testing.T, dv *device) { wantNoTLS(t, dv); wantTime(t, "lastSeen", dv.lastSeen, now) }},
		{name: "secure, an older session ends", dv: device{state: StateSecure, tls: sB, proven: true}, in: input{ev: EvOffline, s: sA}, want: StateSecure,
			check: func(t *testing.T, dv *device) { wantTLS(t, dv, sB, true) }},
		{name: "unproven, its session ends", dv: device{state: StateUnproven, tls: sA}, in: input{ev: EvOffline, s: sA}, want: StateIdle},
		{name: "upgrading, leaves to reconnect", dv: device{state: StateUpgrading, tries: 1}, in: input{ev: EvOffline, s: sA}, want: StateUpgrading},
		{name: "downgrading, leaves to reconnect", dv: device{state: StateDowngrading, tls: sA}, in: input{ev: EvOffline, s: sA}, want: StateDowngrading,
			check: func(t *testing.T, dv *device) { wantNoTLS(t, dv) }},
		{name: "tls-only, leaves", dv: device{state: StateTLSOnly, tls: sA}, in: input{ev: EvOffline, s: sA}, want: StateTLSOnly},

		// Secure commands wait for a device on plain.
		{name: "idle: instruct", dv: device{state: StateIdle}, in: input{ev: EvSecureWaiting}, want: StateIdle, act: ActInstructTLS},
		{name: "upgrading, backing off", dv: device{state: StateUpgrading, tries: 1, nextInstruct: r.at(now.Add(time.Second))},
			in: input{ev: EvSecureWaiting}, want: StateUpgrading},
		{name: "upgrading, backoff over: instruct again", dv: device{state: StateUpgrading, tries: 1, nextInstruct: r.at(now)},
			in: input{ev: EvSecureWaiting}, want: StateUpgrading, act: ActInstructTLS},
		{name: "upgrading, too many: loop protection", dv: device{state: StateUpgrading, tries: 3, nextInstruct: r.at(now)},
			in: input{ev: EvSecureWaiting}, want: StateLoopProtected, act: ActReportLoop},
		{name: "loop protected: nothing", dv: device{state: StateLoopProtected, tries: 3}, in: input{ev: EvSecureWaiting}, want: StateLoopProtected},
		{name: "idle after unproven, backing off", dv: device{state: StateIdle, tries: 1, nextInstruct: r.at(now.Add(time.Second))},
			in: input{ev: EvSecureWaiting}, want: StateIdle},

		// Instructions sent.
		{name: "instructed tls", dv: device{state: StateIdle}, in: input{ev: EvInstructedTLS}, want: StateUpgrading,
			check: func(t *testing.T, dv *device) {
				wantInt(t, "tries", dv.tries, 1)
				wantTime(t, "nextInstruct", dv.nextInstruct, now.Add(time.Second))
			}},
		{name: "instructed tls again: backoff doubles", dv: device{state: StateUpgrading, tries: 1}, in: input{ev: EvInstructedTLS}, want: StateUpgrading,
			check: func(t *testing.T, dv *device) { wantTime(t, "nextInstruct", dv.nextInstruct, now.Add(2*time.Second)) }},
		{name: "instructed plain", dv: device{state: StateSecure, tls: sA, proven: true}, in: input{ev: EvInstructedPlain}, want: StateDowngrading},
		{name: "instructed plain, unproven", dv: device{state: StateUnproven, tls: sA}, in: input{ev: EvInstructedPlain}, want: StateDowngrading},
		{name: "instructed plain, tls-only: no change", dv: device{state: StateTLSOnly, tls: sA}, in: input{ev: EvInstructedPlain}, want: StateTLSOnly},

		// Secure acknowledgements restart the quiet period.
		{name: "secure ack", dv: device{state: StateSecure, tls: sA, proven: true, lastSecure: r.at(now.Add(-time.Minute))},
			in: input{ev: EvSecureAcked}, want: StateSecure,
			check: func(t *testing.T, dv *device) { wantTime(t, "lastSecure", dv.lastSecure, now) }},

		// Quiet period.
		{name: "secure, not quiet yet", dv: device{state: StateSecure, tls: sA, proven: true, lastSecure: r.at(now.Add(-9 * time.Second))},
			in: input{ev: EvQuiet}, want: StateSecure},
		{name: "secure, quiet: plain", dv: device{state: StateSecure, tls: sA, proven: true, lastSecure: r.at(now.Add(-10 * time.Second))},
			in: input{ev: EvQuiet}, want: StateSecure, act: ActInstructPlain},
		{name: "secure, quiet but secure work waits", dv: device{state: StateSecure, tls: sA, proven: true, lastSecure: r.at(now.Add(-time.Minute))},
			in: input{ev: EvQuiet, secureWaiting: true}, want: StateSecure},
		{name: "unproven, quiet with secure waiting: plain anyway", dv: device{state: StateUnproven, tls: sA, lastSecure: r.at(now.Add(-time.Minute))},
			in: input{ev: EvQuiet, secureWaiting: true}, want: StateUnproven, act: ActInstructPlain},
		{name: "tls-only, quiet: stays", dv: device{state: StateTLSOnly, tls: sA, lastSecure: r.at(now.Add(-time.Hour))},
			in: input{ev: EvQuiet}, want: StateTLSOnly},
		{name: "downgrading, quiet: told already", dv: device{state: StateDowngrading, tls: sA, lastSecure: r.at(now.Add(-time.Hour))},
			in: input{ev: EvQuiet}, want: StateDowngrading},

		// Nothing secure waits any more.
		{name: "upgrading, commands gone: afresh", dv: device{state: StateUpgrading, tries: 2, nextInstruct: r.at(now.Add(time.Second))},
			in: input{ev: EvNothingWaiting}, want: StateIdle,
			check: func(t *testing.T, dv *device) { wantInt(t, "tries", dv.tries, 0) }},
		{name: "loop protected, commands gone", dv: device{state: StateLoopProtected, tries: 3}, in: input{ev: EvNothingWaiting}, want: StateIdle},
		{name: "secure: not its business", dv: device{state: StateSecure, tls: sA, proven: true}, in: input{ev: EvNothingWaiting}, want: StateSecure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dv := tc.dv
			in := tc.in
			in.now = now
			act := r.step(&dv, in)
			if dv.state != tc.want || act != tc.act {
				t.Fatalf("%s --%s--> %s actions %b, want %s actions %b", tc.dv.state, in.ev, dv.state, act, tc.want, tc.act)
			}
			if tc.check != nil {
				tc.check(t, &dv)
			}
		})
	}
}

func wantInt[T ~int | ~int32 | ~uint8](t *testing.T, what string, got T, want int) {
	t.Helper()
	if int(got) != want {
		t.Errorf("%s = %d, want %d", what, got, want)
	}
}

// wantTime checks a stamp of testRules' clock.
func wantTime(t *testing.T, what string, got stamp, want time.Time) {
	t.Helper()
	if g := testRules().time(got); !g.Equal(want) {
		t.Errorf("%s = %s, want %s", what, g, want)
	}
}

func wantTLS(t *testing.T, dv *device, s *session.Session, proven bool) {
	t.Helper()
	if dv.tls != s || dv.proven != proven {
		t.Errorf("tls session %p proven %v, want %p %v", dv.tls, dv.proven, s, proven)
	}
}

func wantNoTLS(t *testing.T, dv *device) {
	t.Helper()
	if dv.tls != nil || dv.proven {
		t.Errorf("still holds a TLS session")
	}
}

// The rules say when a device is due a retry and when it may be forgotten.
func TestRetryDueAndForgettable(t *testing.T) {
	r := testRules()
	now := epoch
	for _, tc := range []struct {
		name string
		dv   device
		due  bool
	}{
		{"upgrading, backoff over", device{state: StateUpgrading, tries: 1, nextInstruct: r.at(now)}, true},
		{"upgrading, backing off", device{state: StateUpgrading, tries: 1, nextInstruct: r.at(now.Add(time.Nanosecond))}, false},
		{"idle after unproven", device{state: StateIdle, tries: 1}, true},
		{"idle, never instructed", device{state: StateIdle}, false},
		{"loop protected", device{state: StateLoopProtected, tries: 3}, false},
	} {
		if got := r.retryDue(&tc.dv, now); got != tc.due {
			t.Errorf("%s: retryDue %v, want %v", tc.name, got, tc.due)
		}
	}
	for _, st := range []State{StateIdle, StateUpgrading, StateLoopProtected, StateSecure, StateUnproven, StateDowngrading, StateTLSOnly} {
		dv := device{state: st, lastSeen: r.at(now.Add(-r.retention - time.Nanosecond))}
		if !r.forgettable(&dv, now) {
			t.Errorf("%s gone past the retention: not forgettable", st)
		}
		dv.lastSeen = r.at(now.Add(-r.retention))
		if r.forgettable(&dv, now) {
			t.Errorf("%s gone exactly the retention: forgettable", st)
		}
		dv = device{state: st, lastSeen: r.at(now.Add(-2 * r.retention)), more: &more{retry: []string{"c"}}}
		if r.forgettable(&dv, now) {
			t.Errorf("%s with a retry left: forgettable", st)
		}
		dv = device{state: st, lastSeen: r.at(now.Add(-2 * r.retention)), tls: new(session.Session)}
		if r.forgettable(&dv, now) {
			t.Errorf("%s on TLS: forgettable", st)
		}
	}
}

// The actions, performed against the real store and sessions.

// A plain device with a secure command is told to use TLS; its command is
// upgrading; a second command while it is told does not instruct again.
func TestPerformInstructTLS(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	c := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
	w.settle()
	w.read(c)
	cid, _ := w.submit("dev", true, 0)
	w.settle()
	r := w.read(c)
	if r.instruction == nil || *r.instruction != "tls" || len(r.commands) != 0 {
		t.Fatalf("read %+v, want a TLS instruction and no command", r)
	}
	if st := w.status(cid).Status; st != store.StatusUpgrading {
		t.Fatalf("status %s", st)
	}
	if st, _ := w.deviceState("dev"); st != StateUpgrading {
		t.Fatalf("state %s", st)
	}
	w.submit("dev", true, 0)
	w.settle()
	if r := w.read(c); r.instruction != nil {
		t.Fatal("instructed twice within the backoff")
	}
	if n := w.d.Stats().Instructions.Load(); n != 1 {
		t.Fatalf("instructions %d", n)
	}
}

// A device that came on TLS without proving its id: its secure command is
// not written, stays pending with the reason said once, the device is not
// told to use TLS (it is on TLS); after the quiet period it is sent back to
// plain, and told TLS again only after the backoff.
func TestUnprovenSessionWaits(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	p := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
	w.settle()
	w.read(p)
	cid, _ := w.submit("dev", true, 0)
	w.settle()
	if r := w.read(p); r.instruction == nil {
		t.Fatal("no TLS instruction")
	}
	w.disconnect(p)
	u := w.dial("dev", registry.ModeTLS, mqttcodec.V311, false, false) // no certificate
	w.query(u)
	w.settle()
	r := w.read(u)
	if len(r.commands) != 0 || r.instruction != nil {
		t.Fatalf("unproven session got %+v", r)
	}
	c := w.status(cid)
	if c.Status != store.StatusPending || hasNote(c, NoteUnproven) != 1 {
		t.Fatalf("command %s, history %+v", c.Status, c.History)
	}
	// Another query, another command: no second note, nothing written.
	cid2, _ := w.submit("dev", true, 0)
	w.query(u)
	w.settle()
	if r := w.read(u); len(r.commands) != 0 {
		t.Fatalf("unproven session got %+v", r.commands)
	}
	if n := hasNote(w.status(cid), NoteUnproven); n != 1 {
		t.Fatalf("note said %d times", n)
	}
	if n := hasNote(w.status(cid2), NoteUnproven); n != 1 {
		t.Fatalf("second command: note said %d times", n)
	}
	if st, _ := w.deviceState("dev"); st != StateUnproven {
		t.Fatalf("state %s", st)
	}
	// A plain command still reaches it.
	plain, _ := w.submit("dev", false, 0)
	w.settle()
	r = w.read(u)
	if len(r.commands) != 1 || r.commands[0].id != plain {
		t.Fatalf("plain command: %+v", r.commands)
	}
	w.ack(u, r.commands[0].pid)
	// Quiet: back to plain, although secure commands wait.
	w.advance(w.cfg.SecureIdle)
	w.settle()
	if r := w.read(u); r.instruction == nil || *r.instruction != "plain" {
		t.Fatalf("no plain instruction: %+v", r)
	}
	w.disconnect(u)
	// Back on plain, it queries: the backoff (1 s after the first
	// instruction) elapsed during the quiet period, so it is told again.
	p = w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
	w.query(p)
	w.settle()
	if r := w.read(p); r.instruction == nil || *r.instruction != "tls" {
		t.Fatalf("no second TLS instruction: %+v", r)
	}
	if info, _ := w.d.Device("dev"); info.State != StateUpgrading || info.Instructions != 2 {
		t.Fatalf("after the unproven round: %+v", info)
	}
	w.query(p)
	w.advance(time.Second)
	w.settle()
	if r := w.read(p); r.instruction != nil {
		t.Fatal("instructed again within the backoff")
	}
	// Now it proves its id: both secure commands arrive, in order.
	w.disconnect(p)
	s := w.dial("dev", registry.ModeTLS, mqttcodec.V311, true, false)
	w.query(s)
	w.settle()
	r = w.read(s)
	if len(r.commands) != 2 || r.commands[0].id != cid || r.commands[1].id != cid2 {
		for _, id := range []string{cid, cid2} {
			t.Logf("%s %+v", id, w.status(id).History)
		}
		info, _ := w.d.Device("dev")
		t.Fatalf("proven session got %+v; device %+v", r.commands, info)
	}
	if writtenTo(u, "cmd:"+cid) || writtenTo(p, "cmd:"+cid) {
		t.Fatal("a secure command was written to an unproven or plain session")
	}
}

// A device that keeps arriving on TLS without proving its id is not told
// to use TLS forever: the arrivals count toward loop protection.
func TestUnprovenDoesNotLoop(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	w.submit("dev", true, 0)
	instructions := 0
	for range 20 {
		p := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
		w.query(p)
		w.settle()
		if r := w.read(p); r.instruction != nil {
			instructions++
		}
		w.disconnect(p)
		w.settle()
		u := w.dial("dev", registry.ModeTLS, mqttcodec.V311, false, false)
		w.query(u)
		w.settle()
		w.advance(w.cfg.MaxBackoff)
		w.settle()
		w.read(u)
		w.disconnect(u)
		w.settle()
	}
	if instructions != w.cfg.MaxInstructions {
		t.Fatalf("%d TLS instructions, want %d", instructions, w.cfg.MaxInstructions)
	}
	if n := w.d.Stats().LoopProtected.Load(); n == 0 {
		t.Fatal("loop protection never tripped")
	}
}

// The backoff doubles from InstructBackoff up to MaxBackoff.
func TestBackoffTable(t *testing.T) {
	r := testRules()
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 9: 8 * time.Second} {
		if got := r.backoff(n); got != want {
			t.Errorf("backoff(%d) = %s, want %s", n, got, want)
		}
	}
}

// A command that was already pending when the device arrived on TLS
// without proof gets its note at the first instruction round: the store
// records moves only, so the note comes with the move from upgrading back
// to pending.
func TestUnprovenNoteForEarlierCommand(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	cid, _ := w.submit("dev", true, 0) // the device is away
	u := w.dial("dev", registry.ModeTLS, mqttcodec.V311, false, false)
	w.query(u)
	w.settle()
	if r := w.read(u); len(r.commands) != 0 || r.instruction != nil {
		t.Fatalf("unproven session got %+v", r)
	}
	w.advance(w.cfg.SecureIdle)
	w.settle()
	if r := w.read(u); r.instruction == nil || *r.instruction != "plain" {
		t.Fatalf("no plain instruction: %+v", r)
	}
	w.disconnect(u)
	p := w.dial("dev", registry.ModePlain, mqttcodec.V311, false, false)
	w.query(p)
	w.settle()
	if r := w.read(p); r.instruction == nil || *r.instruction != "tls" {
		t.Fatalf("no TLS instruction: %+v", r)
	}
	w.disconnect(p)
	u = w.dial("dev", registry.ModeTLS, mqttcodec.V311, false, false)
	w.query(u)
	w.settle()
	c := w.status(cid)
	if c.Status != store.StatusPending || hasNote(c, NoteUnproven) != 1 {
		t.Fatalf("command %s, history %+v", c.Status, c.History)
	}
	if writtenTo(u, "cmd:"+cid) {
		t.Fatal("written to an unproven session")
	}
}
