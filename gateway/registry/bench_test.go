package registry

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// benchIDs is the number of distinct client ids the benchmarks use: large
// enough that the shards hold realistic maps, small enough to build quickly.
const benchIDs = 1 << 16

func benchEntries() []*Entry {
	es := make([]*Entry, benchIDs)
	for i := range es {
		mode := ModePlain
		if i%16 == 0 {
			mode = ModeTLS
		}
		es[i] = &Entry{ClientID: fmt.Sprintf("vehicle-%08d", i), Mode: mode}
	}
	return es
}

func benchRegistry(es []*Entry) *Registry[*Entry] {
	r := New[*Entry]()
	for _, e := range es {
		r.Register(e)
	}
	return r
}

func BenchmarkRegistryGet(b *testing.B) {
	es := benchEntries()
	r := benchRegistry(es)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := r.Get(es[i&(benchIDs-1)].ClientID); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

func BenchmarkRegistryGetParallel(b *testing.B) {
	es := benchEntries()
	r := benchRegistry(es)
	var seed atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			if _, ok := r.Get(es[i&(benchIDs-1)].ClientID); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}

// BenchmarkRegistryRegisterUnregister measures one connect and one
// disconnect of a device: a Register of a new entry and its Unregister.
func BenchmarkRegistryRegisterUnregister(b *testing.B) {
	es := benchEntries()
	r := New[*Entry]()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e := es[i&(benchIDs-1)]
		r.Register(e)
		r.Unregister(e)
		i++
	}
}

func BenchmarkRegistryRegisterUnregisterParallel(b *testing.B) {
	es := benchEntries()
	r := New[*Entry]()
	var worker atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// Each worker owns a disjoint set of entries (index = w mod 64, for
		// fewer than 64 workers): an Entry is one connection and is
		// registered by one goroutine at a time.
		w := int(worker.Add(1))
		i := w
		for pb.Next() {
			e := es[(i*64+w)&(benchIDs-1)]
			r.Register(e)
			r.Unregister(e)
			i++
		}
	})
}

// BenchmarkRegistryTakeover measures a reconnect that replaces the live entry
// of the same client id in the other mode (an upgrade or a downgrade).
func BenchmarkRegistryTakeover(b *testing.B) {
	es := benchEntries()
	r := benchRegistry(es)
	other := make([]*Entry, benchIDs)
	for i, e := range es {
		other[i] = &Entry{ClientID: e.ClientID, Mode: 1 - e.Mode}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := i & (benchIDs - 1)
		// Passes alternate: the first replaces every entry of es with its
		// counterpart in other, the second puts es back.
		e := other[k]
		if i&benchIDs != 0 {
			e = es[k]
		}
		if r.Register(e) == nil {
			b.Fatal("no entry replaced")
		}
		i++
	}
}
