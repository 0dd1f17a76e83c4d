package registry

import (
	"sync"
	"sync/atomic"
	"unsafe"
)

// shardCount is the number of shards; shardIndex relies on it being 256.
const shardCount = 256

// cacheLine is the size that keeps neighbouring shards and counters off each
// other's cache lines.
const cacheLine = 64

// Registry is a sharded map from client id to the live Entry of that client.
// It is safe for concurrent use. The zero Registry is empty and ready to use;
// a Registry must not be copied after first use.
type Registry struct {
	shards [shardCount]shard
	counts [numModes]counter // live entries per Mode, indexed by Mode
}

// shard is one lock and the part of the map it guards, padded to whole cache
// lines.
type shard struct {
	shardState
	_ [cacheLine - unsafe.Sizeof(shardState{})%cacheLine]byte
}

type shardState struct {
	mu sync.RWMutex
	m  map[string]*Entry // guarded by mu; created by the first Register
}

// counter is an atomic count alone on its cache line.
type counter struct {
	n atomic.Int64
	_ [cacheLine - 8]byte
}

// New returns an empty Registry.
func New() *Registry { return &Registry{} }

// shardIndex hashes id with 32-bit FNV-1a and keeps the top byte, the best
// mixed one (the low byte of FNV-1a depends on the low bytes of the input
// only).
func shardIndex(id string) uint8 {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= prime32
	}
	return uint8(h >> 24)
}

func (r *Registry) shard(id string) *shard { return &r.shards[shardIndex(id)] }

// Register installs e as the live entry for e.ClientID and returns the entry
// it replaced, or nil if there was none. The caller closes the connection of
// the replaced entry (session takeover).
//
// Register is atomic per client id: when calls for the same id race, exactly
// one entry is live afterwards and every replaced entry is returned to exactly
// one caller. Registering the entry that is already live changes nothing and
// returns nil.
//
// e must not be nil and e.Mode must be valid; anything else is a programming
// error and panics.
func (r *Registry) Register(e *Entry) (prev *Entry) {
	if e == nil {
		panic("registry: Register of a nil *Entry")
	}
	if !e.Mode.Valid() {
		panic("registry: Register of an entry with invalid " + e.Mode.String())
	}
	s := r.shard(e.ClientID)
	s.mu.Lock()
	prev = s.m[e.ClientID]
	if prev == e {
		s.mu.Unlock()
		return nil
	}
	if s.m == nil {
		s.m = make(map[string]*Entry)
	}
	s.m[e.ClientID] = e
	// Counters move under the shard lock, increment first, so that no
	// counter is ever negative, even for a moment.
	if prev == nil || prev.Mode != e.Mode {
		r.counts[e.Mode].n.Add(1)
		if prev != nil {
			r.counts[prev.Mode].n.Add(-1)
		}
	}
	s.mu.Unlock()
	return prev
}

// Unregister removes e if it is still the live entry for e.ClientID and
// reports whether it did. An entry that was replaced by a later Register is
// left alone, and so is its successor. Unregister(nil) returns false.
func (r *Registry) Unregister(e *Entry) bool {
	if e == nil {
		return false
	}
	s := r.shard(e.ClientID)
	s.mu.Lock()
	if s.m[e.ClientID] != e {
		s.mu.Unlock()
		return false
	}
	delete(s.m, e.ClientID)
	r.counts[e.Mode].n.Add(-1)
	s.mu.Unlock()
	return true
}

// Get returns the live entry for id.
func (r *Registry) Get(id string) (*Entry, bool) {
	s := r.shard(id)
	s.mu.RLock()
	e, ok := s.m[id]
	s.mu.RUnlock()
	return e, ok
}

// Len returns the number of live entries. While Register or Unregister calls
// are in flight it may be off by the number of those calls.
func (r *Registry) Len() int {
	plain, tls := r.CountByMode()
	return plain + tls
}

// CountByMode returns the number of live entries on plain TCP and on TLS. It
// is exact when no Register or Unregister is in flight; during a takeover
// that changes mode, the client may be counted in both modes for a moment.
func (r *Registry) CountByMode() (plain, tls int) {
	return int(r.counts[ModePlain].n.Load()), int(r.counts[ModeTLS].n.Load())
}

// Range calls fn for every live entry until fn returns false. It copies one
// shard at a time and calls fn without holding any lock, so fn may call any
// Registry method. An entry registered or unregistered while Range runs may
// or may not be seen; an entry passed to fn may have been replaced or
// unregistered by the time fn runs.
func (r *Registry) Range(fn func(*Entry) bool) {
	var snap []*Entry
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		snap = snap[:0]
		for _, e := range s.m {
			snap = append(snap, e)
		}
		s.mu.RUnlock()
		for _, e := range snap {
			if !fn(e) {
				return
			}
		}
	}
}
