package bridge

import (
	"bytes"
	"cmp"
	"io"
	"slices"
	"sync"

	"github.com/eclipse/paho.golang/paho/store/memory"
)

// lazyStore is where paho's session State keeps the bridge's own packets
// in flight (its client store): it keeps the packet paho hands it and
// serialises it only when paho reads it back, to send it again after a
// reconnect. paho's memory store serialises every publish as it is sent,
// a copy that is almost never read: a fifth of the bridge's allocations
// at QoS 1. A kept publish is not changed after paho stored it (paho
// reads a resent one back and sets its DUP flag on that copy), and its
// payload is the entry's own, never reused.
type lazyStore struct {
	mu   sync.Mutex
	seq  uint64
	data map[uint16]lazyPacket
}

type lazyPacket struct {
	seq uint64
	w   io.WriterTo
}

func newLazyStore() *lazyStore { return &lazyStore{data: make(map[uint16]lazyPacket)} }

// Put keeps w under id, after everything kept before (a PUBREL replacing
// its PUBLISH goes to the end, as in paho's memory store).
func (s *lazyStore) Put(id uint16, _ byte, w io.WriterTo) error {
	s.mu.Lock()
	s.seq++
	s.data[id] = lazyPacket{seq: s.seq, w: w}
	s.mu.Unlock()
	return nil
}

// Get serialises the packet kept under id.
func (s *lazyStore) Get(id uint16) (io.ReadCloser, error) {
	s.mu.Lock()
	p, ok := s.data[id]
	s.mu.Unlock()
	if !ok {
		return nil, memory.ErrNotInStore
	}
	var b bytes.Buffer
	if _, err := p.w.WriteTo(&b); err != nil {
		return nil, err
	}
	return io.NopCloser(&b), nil
}

func (s *lazyStore) Delete(id uint16) error {
	s.mu.Lock()
	delete(s.data, id)
	s.mu.Unlock()
	return nil
}

// Quarantine drops a packet paho found corrupt, as the memory store does.
func (s *lazyStore) Quarantine(id uint16) error { return s.Delete(id) }

// List returns the ids kept, in the order they were Put.
func (s *lazyStore) List() ([]uint16, error) {
	s.mu.Lock()
	type kept struct {
		id  uint16
		seq uint64
	}
	ks := make([]kept, 0, len(s.data))
	for id, p := range s.data {
		ks = append(ks, kept{id, p.seq})
	}
	s.mu.Unlock()
	slices.SortFunc(ks, func(a, b kept) int { return cmp.Compare(a.seq, b.seq) })
	ids := make([]uint16, len(ks))
	for i, k := range ks {
		ids[i] = k.id
	}
	return ids, nil
}

func (s *lazyStore) Reset() error {
	s.mu.Lock()
	clear(s.data)
	s.mu.Unlock()
	return nil
}
