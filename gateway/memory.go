package gateway

import (
	"bytes"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// readRSS returns the process's resident set size in bytes (0 if unknown).
func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}

// memReleaser returns the heap's free memory to the operating system once
// the gateway goes quiet after a burst. A burst of connections or TLS
// handshakes leaves the heap much larger than the state it keeps, and the
// Go runtime gives the difference back only slowly (a few pages a second),
// so an idle fleet would keep paying for its last burst for minutes.
type memReleaser struct {
	samples   [4]metrics.Sample
	lastAlloc uint64 // /gc/heap/allocs at the last check
	prevAlloc uint64 // bytes allocated during the window before the last check
	residue   uint64 // what looked reclaimable right after the last release
	logger    *zap.Logger
	released  atomic.Uint64 // times memory was returned
}

// Indexes into memReleaser.samples.
const (
	memLive = iota
	memObjects
	memFree
	memAllocs
)

func newMemReleaser(logger *zap.Logger) *memReleaser {
	m := &memReleaser{logger: logger}
	m.samples[memLive].Name = "/gc/heap/live:bytes"
	m.samples[memObjects].Name = "/memory/classes/heap/objects:bytes"
	m.samples[memFree].Name = "/memory/classes/heap/free:bytes"
	m.samples[memAllocs].Name = "/gc/heap/allocs:bytes"
	m.read()
	m.lastAlloc = m.value(memAllocs)
	return m
}

func (m *memReleaser) read() { metrics.Read(m.samples[:]) }

func (m *memReleaser) value(i int) uint64 {
	if m.samples[i].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return m.samples[i].Value.Uint64()
}

// check is called once per window. It returns memory to the OS when the
// gateway allocated less than an eighth of what there is to reclaim during
// the window (under steady load the collector's own cycle is left alone)
// and there is at least 256 KiB and 1/32 of the live heap to reclaim:
// either visibly (unswept garbage and free pages not yet returned), or
// because the window before was a burst that allocated that much. The
// second reading matters when the collector ran during the burst: what the
// burst held then (handshake state, read buffers) counts as live until the
// next cycle, which an idle gateway reaches only after minutes.
func (m *memReleaser) check() bool {
	m.read()
	live, objects, free, allocs := m.value(memLive), m.value(memObjects), m.value(memFree), m.value(memAllocs)
	allocated, burst := allocs-m.lastAlloc, m.prevAlloc
	m.lastAlloc, m.prevAlloc = allocs, allocated
	reclaimable := m.reclaimable(live, objects, free)
	worth := func(n uint64) bool { return n >= 256<<10 && n >= live/32 && allocated <= n/8 }
	if !worth(reclaimable) && !worth(burst) {
		return false
	}
	debug.FreeOSMemory()
	m.released.Add(1)
	m.read()
	m.lastAlloc, m.prevAlloc, m.residue = m.value(memAllocs), 0, 0
	m.residue = m.reclaimable(m.value(memLive), m.value(memObjects), m.value(memFree))
	m.logger.Debug("returned free memory to the OS",
		zap.Uint64("reclaimable_bytes", reclaimable), zap.Uint64("burst_bytes", burst),
		zap.Uint64("live_bytes", m.value(memLive)))
	return true
}

// reclaimable is the heap beyond what is live (unswept garbage plus free
// pages not yet returned), less what even a release leaves there.
func (m *memReleaser) reclaimable(live, objects, free uint64) uint64 {
	var n uint64
	if objects > live {
		n = objects - live
	}
	n += free
	if n < m.residue {
		return 0
	}
	return n - m.residue
}

// run checks every window until stop is closed.
func (m *memReleaser) run(window time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(window)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			m.check()
		}
	}
}
