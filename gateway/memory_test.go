package gateway

import (
	"runtime"
	"testing"

	"go.uber.org/zap"
)

// sink keeps test allocations from being optimised away.
var sink [][]byte

// After a burst of garbage and a quiet window, the releaser returns the
// heap's free memory; while the gateway keeps allocating it does not.
func TestMemReleaserAfterBurst(t *testing.T) {
	m := newMemReleaser(zap.NewNop())
	runtime.GC()
	m.check() // start from a clean heap and a fresh allocation count
	base := m.released.Load()
	for i := 0; i < 4096; i++ {
		sink = append(sink, make([]byte, 4096))
	}
	sink = nil // 16 MiB of garbage
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
		t.Fatal("released again with nothing to reclaim")
	}
}
