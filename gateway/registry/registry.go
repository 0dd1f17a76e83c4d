package registry

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"unsafe"
)

// shardCount is the number of shards; shardIndex relies on it being 256.
const shardCount = 256

// cacheLine is the size that keeps neighbouring shards and counters off each
// other's cache lines.
const cacheLine = 64

// Item is what a Registry holds: a pointer to a connection's state, which
// embeds the connection's Entry. *Entry is an Item itself.
type Item interface {
	comparable
	RegistryEntry() *Entry
}

// Registry is a sharded set of live connections keyed by client id. It is
// safe for concurrent use. The zero Registry is empty and ready to use; a
// Registry must not be copied after first use.
//
// Each shard is an open-addressed hash table of T (linear probing,
// backward-shift deletion): one pointer per slot and no allocation per
// connection, where a Go map costs a key, a value and control bytes per
// slot. Ids are hashed with a seed chosen at start, so devices cannot pick
// client ids that collide.
type Registry[T Item] struct {
	shards [shardCount]shard[T]
	counts [numModes]counter // live entries per Mode, indexed by Mode
}

// shard is one lock and the table it guards, padded to whole cache lines.
// The padding is computed for T = *Entry; every T the gateway uses is a
// pointer, so the layout is the same.
type shard[T Item] struct {
	shardState[T]
	_ [cacheLine - unsafe.Sizeof(shardState[*Entry]{})%cacheLine]byte
}

type shardState[T Item] struct {
	mu    sync.RWMutex
	slots []T // guarded by mu; length 0 or a power of two; the zero T is an empty slot
	n     int // occupied slots
}

// counter is an atomic count alone on its cache line.
type counter struct {
	n atomic.Int64
	_ [cacheLine - 8]byte
}

// minSlots is the size of a shard's table when it first holds an entry.
const minSlots = 8

// seed keys the hash of client ids for this process.
var seed = maphash.MakeSeed()

func hashID(id string) uint64 { return maphash.String(seed, id) }

// New returns an empty Registry.
func New[T Item]() *Registry[T] { return &Registry[T]{} }

// shardIndex picks a shard from the top byte of the hash; the table slot
// comes from its low bits.
func shardIndex(h uint64) uint8 { return uint8(h >> 56) }

// Register installs x as the live connection for its client id and returns
// the one it replaced, or the zero T if there was none. The caller closes
// the connection of the replaced one (session takeover).
//
// Register is atomic per client id: when calls for the same id race, exactly
// one connection is live afterwards and every replaced one is returned to
// exactly one caller. Registering the connection that is already live
// changes nothing and returns the zero T.
//
// x must not be the zero T and its Entry's Mode must be valid; anything
// else is a programming error and panics.
func (r *Registry[T]) Register(x T) (prev T) {
	var zero T
	if x == zero {
		panic("registry: Register of a nil item")
	}
	e := x.RegistryEntry()
	if !e.Mode.Valid() {
		panic("registry: Register of an entry with invalid " + e.Mode.String())
	}
	h := hashID(e.ClientID)
	s := &r.shards[shardIndex(h)]
	s.mu.Lock()
	i, found := s.find(e.ClientID, h)
	if found {
		prev = s.slots[i]
		if prev == x {
			s.mu.Unlock()
			return zero
		}
		s.slots[i] = x
	} else {
		s.insert(x, h)
	}
	// Counters move under the shard lock, increment first, so that no
	// counter is ever negative, even for a moment.
	if !found || prev.RegistryEntry().Mode != e.Mode {
		r.counts[e.Mode].n.Add(1)
		if found {
			r.counts[prev.RegistryEntry().Mode].n.Add(-1)
		}
	}
	s.mu.Unlock()
	return prev
}

// Unregister removes x if it is still the live connection for its client id
// and reports whether it did. One that was replaced by a later Register is
// left alone, and so is its successor. Unregister of the zero T returns
// false.
func (r *Registry[T]) Unregister(x T) bool {
	var zero T
	if x == zero {
		return false
	}
	e := x.RegistryEntry()
	h := hashID(e.ClientID)
	s := &r.shards[shardIndex(h)]
	s.mu.Lock()
	i, found := s.find(e.ClientID, h)
	if !found || s.slots[i] != x {
		s.mu.Unlock()
		return false
	}
	s.removeAt(i)
	r.counts[e.Mode].n.Add(-1)
	s.mu.Unlock()
	return true
}

// Get returns the live connection for id.
func (r *Registry[T]) Get(id string) (T, bool) {
	h := hashID(id)
	s := &r.shards[shardIndex(h)]
	s.mu.RLock()
	i, found := s.find(id, h)
	var x T
	if found {
		x = s.slots[i]
	}
	s.mu.RUnlock()
	return x, found
}

// Len returns the number of live connections. While Register or Unregister
// calls are in flight it may be off by the number of those calls.
func (r *Registry[T]) Len() int {
	plain, tls := r.CountByMode()
	return plain + tls
}

// CountByMode returns the number of live connections on plain TCP and on
// TLS. It is exact when no Register or Unregister is in flight; during a
// takeover that changes mode, the client may be counted in both modes for a
// moment.
func (r *Registry[T]) CountByMode() (plain, tls int) {
	return int(r.counts[ModePlain].n.Load()), int(r.counts[ModeTLS].n.Load())
}

// Range calls fn for every live connection until fn returns false. It
// copies one shard at a time and calls fn without holding any lock, so fn
// may call any Registry method. A connection registered or unregistered
// while Range runs may or may not be seen; one passed to fn may have been
// replaced or unregistered by the time fn runs.
func (r *Registry[T]) Range(fn func(T) bool) {
	var zero T
	var snap []T
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		snap = snap[:0]
		for _, x := range s.slots {
			if x != zero {
				snap = append(snap, x)
			}
		}
		s.mu.RUnlock()
		for _, x := range snap {
			if !fn(x) {
				return
			}
		}
	}
}

// find returns the slot holding id, or the empty slot where it would go.
// The caller holds mu. An empty table has no slot: find returns (0, false).
func (s *shardState[T]) find(id string, h uint64) (int, bool) {
	var zero T
	if len(s.slots) == 0 {
		return 0, false
	}
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		x := s.slots[i]
		if x == zero {
			return int(i), false
		}
		if x.RegistryEntry().ClientID == id {
			return int(i), true
		}
	}
}

// insert adds x, whose id is not in the table, growing the table to keep it
// at most three quarters full. The caller holds mu.
func (s *shardState[T]) insert(x T, h uint64) {
	if (s.n+1)*4 > len(s.slots)*3 {
		s.resize(max(minSlots, 2*len(s.slots)))
	}
	i, _ := s.find(x.RegistryEntry().ClientID, h)
	s.slots[i] = x
	s.n++
}

// removeAt empties slot i and moves later entries of its probe run back so
// that every entry stays reachable from its home slot. The table shrinks
// when it falls to an eighth full, down to minSlots (kept, so that a shard
// whose one device reconnects does not allocate each time). The caller
// holds mu.
func (s *shardState[T]) removeAt(i int) {
	var zero T
	mask := len(s.slots) - 1
	for j := (i + 1) & mask; s.slots[j] != zero; j = (j + 1) & mask {
		home := int(hashID(s.slots[j].RegistryEntry().ClientID)) & mask
		// The entry at j may fill the hole at i unless its home slot lies
		// cyclically in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			s.slots[i] = s.slots[j]
			i = j
		}
	}
	s.slots[i] = zero
	s.n--
	if len(s.slots) > minSlots && s.n*8 < len(s.slots) {
		s.resize(len(s.slots) / 2)
	}
}

// resize rehashes the table into size slots (a power of two).
func (s *shardState[T]) resize(size int) {
	var zero T
	old := s.slots
	s.slots = make([]T, size)
	mask := uint64(size - 1)
	for _, x := range old {
		if x == zero {
			continue
		}
		i := hashID(x.RegistryEntry().ClientID) & mask
		for s.slots[i] != zero {
			i = (i + 1) & mask
		}
		s.slots[i] = x
	}
}
