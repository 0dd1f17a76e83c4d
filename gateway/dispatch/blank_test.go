package dispatch

import (
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/mqttcodec"
)

// A record is blank when it says nothing an absent one would not: each
// field the rules decide with keeps it.
func TestBlank(t *testing.T) {
	r := testRules()
	now := epoch.Add(time.Hour)
	window := 10 * r.secureIdle
	for _, tc := range []struct {
		name  string
		dv    device
		blank bool
	}{
		{"new", device{lastSeen: r.at(now)}, true},
		{"idle, seen long ago, on TLS long ago", device{lastSeen: r.at(epoch), lastSecure: r.at(epoch)}, true},
		{"upgraded outside the window", device{more: &more{upgrades: []stamp{r.at(now.Add(-window - time.Nanosecond))}}}, true},
		{"upgraded within the window", device{more: &more{upgrades: []stamp{r.at(now.Add(-window))}}}, false},
		{"upgrading", device{state: StateUpgrading, tries: 1, nextInstruct: r.at(now)}, false},
		{"loop protected", device{state: StateLoopProtected, tries: 3}, false},
		{"downgrading, offline", device{state: StateDowngrading}, false},
		{"tls-only, offline", device{state: StateTLSOnly, ignoredPlain: 2}, false},
		{"secure", device{state: StateSecure, tls: new(session.Session), proven: true}, false},
		{"idle, instructions unanswered (arrived unproven)", device{tries: 1, nextInstruct: r.at(now.Add(time.Second))}, false},
		{"idle, backoff only", device{nextInstruct: r.at(now.Add(time.Second))}, false},
		{"idle, ignored a plain instruction", device{ignoredPlain: 1}, false},
		{"dirty", device{dirty: true}, false},
		{"commands to retry", device{more: &more{retry: []string{"c1"}}}, false},
	} {
		if got := r.blank(&tc.dv, now); got != tc.blank {
			t.Errorf("%s: blank %v, want %v", tc.name, got, tc.blank)
		}
	}
	// With a fixed quiet period the upgrades count for nothing.
	fixed := *r
	fixed.fixedQuiet = true
	if !fixed.blank(&device{more: &more{upgrades: []stamp{r.at(now)}}}, now) {
		t.Error("fixed quiet period: a recent upgrade keeps the record")
	}
}

// upgrade brings a device on plain through an instruction to TLS, gets its
// secure command to it there, and makes it leave: it has one upgrade the
// quiet period counts.
func (w *world) upgrade(t *testing.T, id string) {
	t.Helper()
	p := w.dial(id, registry.ModePlain, mqttcodec.V311, false, false)
	w.settle()
	cid, err := w.submit(id, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.settle()
	if r := w.read(p); r.instruction == nil {
		t.Fatalf("%s: no TLS instruction", id)
	}
	w.disconnect(p)
	c := w.dial(id, registry.ModeTLS, mqttcodec.V311, true, false)
	w.settle()
	for _, d := range w.read(c).commands {
		w.ack(c, d.pid)
	}
	w.settle()
	if st := w.status(cid).Status; st != store.StatusDelivered {
		t.Fatalf("%s: command %s", id, st)
	}
	w.disconnect(c)
	w.settle()
}

func (w *world) tracked(id string) bool {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	_, ok := w.d.devices[id]
	return ok
}

// A device with nothing going on costs the dispatcher no record: on plain,
// on TLS by itself and gone, and, once its upgrade leaves the quiet
// period's window, upgraded and gone. The API then knows nothing of it.
func TestBlankDeviceNotTracked(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	p := w.dial("plain", registry.ModePlain, mqttcodec.V311, false, false)
	w.settle()
	w.query(p)
	w.settle()
	c := w.onTLS(t, "tls")
	if !w.tracked("tls") {
		t.Fatal("a device on TLS is not tracked")
	}
	w.disconnect(c)
	w.disconnect(p)
	w.settle()
	for _, id := range []string{"plain", "tls"} {
		if w.tracked(id) {
			t.Fatalf("%s: tracked with nothing going on", id)
		}
		if _, ok := w.d.Device(id); ok {
			t.Fatalf("%s: Device reports it", id)
		}
	}

	w.upgrade(t, "up")
	if st, ok := w.deviceState("up"); !ok || st != StateIdle {
		t.Fatalf("upgraded device gone: state %s (tracked %v), want idle: its upgrade counts", st, ok)
	}
	w.advance(10 * w.cfg.SecureIdle)
	w.settle()
	if !w.tracked("up") {
		t.Fatal("dropped while its upgrade is within the window")
	}
	w.advance(time.Second)
	w.settle()
	if w.tracked("up") {
		t.Fatal("still tracked after its upgrade left the window")
	}
}

// A device that comes back within the window after an upgrade keeps it:
// its next quiet period is twice as long, as if nothing had been dropped.
func TestUpgradeHistoryKeptWhileItCounts(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	w.upgrade(t, "dev")
	w.advance(5 * w.cfg.SecureIdle)
	w.settle()
	w.upgrade(t, "dev") // the second within 10 x SecureIdle
	c := w.onTLS(t, "dev")
	w.d.mu.Lock()
	dv := w.d.devices["dev"]
	q := w.d.rules.quietPeriod(dv.upgrades(), w.now)
	w.d.mu.Unlock()
	if q != 2*w.cfg.SecureIdle {
		t.Fatalf("quiet period %s, want %s", q, 2*w.cfg.SecureIdle)
	}
	w.advance(w.cfg.SecureIdle + time.Second)
	w.settle()
	if r := w.read(c); r.instruction != nil {
		t.Fatalf("told %s after 1 x SecureIdle; the upgrade history was lost", *r.instruction)
	}
	w.advance(w.cfg.SecureIdle)
	w.settle()
	if r := w.read(c); r.instruction == nil {
		t.Fatal("not told plain after 2 x SecureIdle")
	}
}

// A device that keeps returning on plain when told to use TLS keeps its
// record, tries and all, however long it stays on plain between: it does
// not escape loop protection.
func TestLoopProtectionSurvivesPlainReturns(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	var cid string
	for i := range w.cfg.MaxInstructions + 1 {
		p := w.dial("stubborn", registry.ModePlain, mqttcodec.V311, false, false)
		w.settle()
		if i == 0 {
			cid, _ = w.submit("stubborn", true, 0)
		} else {
			w.query(p)
		}
		w.settle()
		w.read(p)
		w.disconnect(p)
		w.settle()
		if !w.tracked("stubborn") {
			t.Fatalf("round %d: not tracked", i)
		}
		w.advance(w.cfg.MaxBackoff)
		w.settle()
	}
	info, ok := w.d.Device("stubborn")
	if !ok || !info.LoopProtected {
		t.Fatalf("not loop protected: %+v (tracked %v); command %s", info, ok, w.status(cid).Status)
	}
	if w.d.LoopProtected() != 1 {
		t.Fatalf("LoopProtected() = %d", w.d.LoopProtected())
	}
}

// The table of records is rebuilt once most of a burst of tracked devices
// has left, so that it does not keep the room of its largest size.
func TestRecordsTableShrinks(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	n := 2 * shrinkAt
	var conns []*conn
	for i := range n {
		conns = append(conns, w.dial(fmt.Sprintf("dev%d", i), registry.ModeTLS, mqttcodec.V311, true, false))
	}
	w.settle()
	w.d.mu.Lock()
	tracked, peak := len(w.d.devices), w.d.peak
	w.d.mu.Unlock()
	if tracked != n || peak != n {
		t.Fatalf("%d devices on TLS: %d tracked, peak %d", n, tracked, peak)
	}
	for _, c := range conns[:n-10] {
		w.disconnect(c)
	}
	w.settle()
	w.advance(time.Second)
	w.d.mu.Lock()
	tracked, peak = len(w.d.devices), w.d.peak
	w.d.mu.Unlock()
	if tracked != 10 || peak != 10 {
		t.Fatalf("after most left: %d tracked, peak %d, want 10 and a table rebuilt for them", tracked, peak)
	}
	for i := n - 10; i < n; i++ {
		if _, ok := w.d.Device(fmt.Sprintf("dev%d", i)); !ok {
			t.Fatalf("dev%d lost in the rebuild", i)
		}
	}
}

// A device on TLS keeps its record while it is there: one per TLS
// connection, so its size shows in the memory per connection
// (docs/benchmarks.md, section 1).
func TestDeviceRecordSize(t *testing.T) {
	if n := unsafe.Sizeof(device{}); n > 48 {
		t.Fatalf("device record: %d B, want at most 48 (a size class of 48)", n)
	}
}
