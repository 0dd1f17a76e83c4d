package dispatch

import (
	"fmt"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// With its own workers, the dispatcher leaves out an event only for a
// device it has no record of and whose worker and status writes are idle:
// work queued or running on the device's worker (for any device), a write
// of the device under way, or a record, each keeps its events queued.
// TestSim checks, schedule by schedule, that skipping decides nothing
// differently; this checks the guards on the real workers.
func TestSkipGuards(t *testing.T) {
	d := newWorkers(t)
	// Not started: no ticker, so the dispatcher's WaitGroup counts only
	// the workers' goroutines and the status writes.
	defer d.Stop()
	const id = "meter-1"
	// idle waits until the worker's goroutine has ended (it clears its
	// flag before) and no write is under way.
	idle := func() { d.wg.Wait() }
	want := func(what string, skip bool, skipped uint64) {
		t.Helper()
		if got := d.skip(id); got != skip {
			t.Errorf("%s: skip %v, want %v", what, got, skip)
		}
		if got := d.Stats().Skipped.Load(); got != skipped {
			t.Errorf("%s: %d skipped, want %d", what, got, skipped)
		}
	}
	want("no record, nothing queued", true, 1)

	// Another device's work on the same worker: its queue is one, and
	// the worker cannot tell which devices it holds.
	other := sameWorker(t, d, id)
	release, running := make(chan struct{}), make(chan struct{})
	d.queue(other, func() { close(running); <-release })
	<-running
	want("worker running another device's event", false, 1)
	d.queue(id, func() {})
	want("an event of the device queued", false, 1)
	close(release)
	idle()
	want("worker done", true, 2)

	// A status write of the device under way.
	release = make(chan struct{})
	d.writeBehind(id, func() { <-release })
	want("status write under way", false, 2)
	close(release)
	idle()
	want("write done", true, 3)

	// A record.
	d.mu.Lock()
	d.record(id, d.cfg.Now())
	d.mu.Unlock()
	want("tracked", false, 3)
	d.mu.Lock()
	delete(d.devices, id)
	d.mu.Unlock()

	d.queueAll = true
	want("queueAll", false, 3)
}

// newWorkers is a dispatcher with its own workers on an empty memory
// store, not started: no ticker runs (Start adds only that and the
// recovery of what a previous run left, nothing here).
func newWorkers(tb testing.TB) *Dispatcher {
	tb.Helper()
	d, err := New(Config{Store: store.NewMemory(store.Options{}), Registry: registry.New[*session.Session](), Tick: time.Hour,
		Advertise: func(*session.Session, control.Mode) string { return "gw:8883" }})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// sameWorker returns a client id other than id that hashes to id's worker.
func sameWorker(t *testing.T, d *Dispatcher, id string) string {
	t.Helper()
	w := d.workerFor(id)
	for i := range 10000 {
		other := fmt.Sprintf("other-%d", i)
		if d.workerFor(other) == w {
			return other
		}
	}
	t.Fatal("no id shares the worker")
	return ""
}

// BenchmarkIdlePlainDevice measures what the dispatcher costs a plain
// device with nothing going on, per CONNECT and disconnect (its Online and
// Offline hooks, on the loop, and the work they queue, on the workers):
// queued is every event queued, as before events were skipped.
//
//	go test -run '^$' -bench IdlePlainDevice -benchmem ./gateway/dispatch/
func BenchmarkIdlePlainDevice(b *testing.B) {
	// Sessions connected on plain, made in a simulated world; the hooks
	// read only their client id and mode.
	w := newWorld(simConfig())
	defer w.stop()
	var ss []*session.Session
	for i := range 1024 {
		ss = append(ss, w.dial(fmt.Sprintf("meter-%d", i), registry.ModePlain, mqttcodec.V311, false, false).s)
	}
	for _, queueAll := range []bool{true, false} {
		name := "skipped"
		if queueAll {
			name = "queued"
		}
		b.Run(name, func(b *testing.B) {
			d := newWorkers(b)
			d.queueAll = queueAll
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				s := ss[i%len(ss)]
				d.Online(s)
				d.Offline(s, nil)
			}
			d.Stop() // waits for the queued work
		})
	}
}
