package registry

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
)

// Position is a place in the order Scan lists connections: by the hash of
// their client id, then by the id. The hash is this process's (the seed is
// chosen at start), so that order holds for the life of the process and
// does not depend on the tables' layout: a table that grows or shrinks
// between two calls moves entries to other slots, never to another place
// in that order. The zero Position is the start.
type Position struct {
	hash    uint64
	id      string
	started bool
}

// ErrBadPosition is a position that ParsePosition cannot read, or one
// made by another run of the process.
var ErrBadPosition = errors.New("registry: position not made by this process")

// posVersion starts an encoded Position.
const posVersion = 1

// runTag tells this process's positions from another run's: the hash of a
// fixed string under this run's seed.
var runTag = hashID("dualgate registry position")

// String encodes p for a client to hand back (base64url): "" for the
// start.
func (p Position) String() string {
	if !p.started {
		return ""
	}
	b := make([]byte, 0, 1+4+8+len(p.id))
	b = append(b, posVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(runTag))
	b = binary.BigEndian.AppendUint64(b, p.hash)
	b = append(b, p.id...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParsePosition reads a Position made by String in this process.
func ParsePosition(s string) (Position, error) {
	if s == "" {
		return Position{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 1+4+8+1 || b[0] != posVersion || binary.BigEndian.Uint32(b[1:]) != uint32(runTag) {
		return Position{}, ErrBadPosition
	}
	p := Position{hash: binary.BigEndian.Uint64(b[5:]), id: string(b[13:]), started: true}
	if hashID(p.id) != p.hash {
		return Position{}, ErrBadPosition
	}
	return p, nil
}

// less orders (hash, id) pairs.
func less(h1 uint64, id1 string, h2 uint64, id2 string) bool {
	if h1 != h2 {
		return h1 < h2
	}
	return strings.Compare(id1, id2) < 0
}

// Scan returns up to limit live connections that come after p in the
// order of Position and that keep accepts (nil: all), and the position of
// the last one returned; more reports whether any connection kept by keep
// follows it. A connection live for the whole of a listing that passes
// each call's position to the next is returned exactly once; one
// registered or unregistered meanwhile may or may not be. keep runs under
// a shard's read lock: it must be quick and call no Registry method.
//
// Each call reads the shards from p's on, one at a time, until it has
// limit+1 entries: a page costs the shards it spans, not the registry.
func (r *Registry[T]) Scan(p Position, limit int, keep func(T) bool) (page []T, next Position, more bool) {
	if limit < 1 {
		return nil, p, false
	}
	type keyed struct {
		h uint64
		x T
	}
	var zero T
	var cand []keyed
	start := 0
	if p.started {
		start = int(shardIndex(p.hash))
	}
	for i := start; i < shardCount && len(page) <= limit; i++ {
		s := &r.shards[i]
		cand = cand[:0]
		s.mu.RLock()
		for _, x := range s.slots {
			if x == zero {
				continue
			}
			id := x.RegistryEntry().ClientID
			h := hashID(id)
			if p.started && !less(p.hash, p.id, h, id) {
				continue
			}
			if keep != nil && !keep(x) {
				continue
			}
			cand = append(cand, keyed{h, x})
		}
		s.mu.RUnlock()
		slices.SortFunc(cand, func(a, b keyed) int {
			if a.h != b.h {
				if a.h < b.h {
					return -1
				}
				return 1
			}
			return strings.Compare(a.x.RegistryEntry().ClientID, b.x.RegistryEntry().ClientID)
		})
		for _, c := range cand {
			if len(page) > limit {
				break
			}
			page = append(page, c.x)
		}
	}
	if len(page) > limit {
		page, more = page[:limit], true
	}
	if len(page) == 0 {
		return nil, p, false
	}
	last := page[len(page)-1].RegistryEntry().ClientID
	return page, Position{hash: hashID(last), id: last, started: true}, more
}
