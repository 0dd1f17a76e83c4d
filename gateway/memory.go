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
	lastAlloc uint64
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

// check is called once per quiet window. It returns memory to the OS when
// the heap holds at least 256 KiB and 1/32 of the live heap beyond what is
// live (unswept garbage plus free pages not yet returned), and the gateway
// allocated less than an eighth of that during the window: under steady
// load the collector's own cycle is left alone.
func (m *memReleaser) check() bool {
	m.read()
	live, objects, free, allocs := m.value(memLive), m.value(memObjects), m.value(memFree), m.value(memAllocs)
	allocated := allocs - m.lastAlloc
	m.lastAlloc = allocs
	var reclaimable uint64
	if objects > live {
		reclaimable = objects - live
	}
	reclaimable += free
	if reclaimable < 256<<10 || reclaimable < live/32 || allocated > reclaimable/8 {
		return false
	}
	debug.FreeOSMemory()
	m.released.Add(1)
	m.read()
	m.lastAlloc = m.value(memAllocs)
	m.logger.Debug("returned free memory to the OS",
		zap.Uint64("reclaimable_bytes", reclaimable), zap.Uint64("live_bytes", m.value(memLive)))
	return true
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
