package gateway

import (
	"runtime"
	"testing"

	"go.uber.org/zap"
)

// sink keeps test allocations from being optimised away.
var sink [][]byte

// burst allocates 16 MiB that stay reachable until the burst ends; with
// gcDuring the collector runs before they die, so they count as live.
func burst(gcDuring bool) {
	for i := 0; i < 4096; i++ {
		sink = append(sink, make([]byte, 4096))
	}
	if gcDuring {
		runtime.GC()
	}
	sink = nil
}

// After a burst of garbage and a quiet window, the releaser returns the
// heap's free memory once, whether or not the collector ran during the
// burst; while the gateway keeps allocating it does not.
func TestMemReleaserAfterBurst(t *testing.T) {
	for _, tc := range []struct {
		name     string
		gcDuring bool
	}{
		{"collector idle during the burst", false},
		// The burst's 16 MiB were live at the last cycle: only the
		// burst's size says there is something to reclaim.
		{"collector ran during the burst", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemReleaser(zap.NewNop())
			runtime.GC()
			m.check() // start from a clean heap and fresh allocation counts
			m.check()
			base := m.released.Load()
			burst(tc.gcDuring)
			if m.check() {
				t.Fatal("released while the burst was still allocating")
			}
			if !m.check() {
				t.Fatalf("did not release 16 MiB of garbage after a quiet window: %+v", m.samples)
			}
			if got := m.released.Load() - base; got != 1 {
				t.Fatalf("released %d times, want 1", got)
			}
			if m.check() {
				t.Fatalf("released again with nothing to reclaim: %+v", m.samples)
			}
		})
	}
}

// Under steady allocation, however long, the collector's own cycle is
// left alone.
func TestMemReleaserSteadyLoad(t *testing.T) {
	m := newMemReleaser(zap.NewNop())
	runtime.GC()
	m.check()
	for i := range 20 {
		burst(i%2 == 0)
		if m.check() {
			t.Fatalf("window %d: released under steady load: %+v", i, m.samples)
		}
	}
}
