package tlsmux

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Server-side TLS sessions. With stateless tickets (TicketKeys) the whole
// session state, encrypted, is the ticket: ~105 bytes travel up in every
// resumed ClientHello and ~145 come down in every NewSessionTicket, and
// with a client certificate the state carries that certificate and its
// verified chain (without the leaf: the CA), about 1 KB more each way.
// Sessions keep the state on the server, in a SessionStore, under a random
// 16-byte id that is the ticket.
//
// Take-once: a lookup deletes the id, so a ticket is good for one
// resumption, a copied ticket cannot be replayed, and a device always
// holds the one ticket the gateway last gave it (crypto/tls sends a new
// one on every handshake, resumed ones included). The id alone gives
// nothing: TLS 1.3 resumption still needs the PSK binder, made with the
// secret only the device and the state hold; TLS 1.2 resumption needs the
// master secret for the Finished messages. A miss (unknown, taken, expired
// or evicted id, a store that does not answer) is a full handshake, never
// a failed one.
//
// TLS 1.2: crypto/tls calls UnwrapSession with the ClientHello's ticket
// (empty without one: not counted) and, as for TLS 1.3, sends a new ticket
// on every resumption, so take-once holds there too; the ticket travels
// in the clear in TLS 1.2, as stateless tickets do.

// SessionIDLen is the length of a session id, the ticket a device holds.
const SessionIDLen = 16

// DefaultSessionLifetime is how long a session stays resumable: the lower
// end of a stateless ticket's two to three hours under hourly rotation
// keeping DefaultTicketKeysKept keys. A resumption makes a new session
// with a new lifetime.
const DefaultSessionLifetime = 2 * time.Hour

// SessionID is a session's key in a SessionStore.
type SessionID [SessionIDLen]byte

// SessionStore keeps session states (tls.SessionState.Bytes, secrets:
// keep the store as private as the ticket keys) for Sessions. Its methods
// are called by handshakes, on the Server's workers, concurrently.
type SessionStore interface {
	// Put keeps state under id for ttl. state is not retained by the
	// caller.
	Put(id SessionID, state []byte, ttl time.Duration) error
	// Take returns the state under id and forgets it; nil, nil when there
	// is none.
	Take(id SessionID) ([]byte, error)
}

// Sessions turns a SessionStore into a tls.Config's WrapSession and
// UnwrapSession. Safe for concurrent use.
type Sessions struct {
	store SessionStore
	ttl   time.Duration
	log   *zap.Logger

	hits, misses, errs, stored atomic.Uint64
	warned                     atomic.Bool
}

// SessionStats counts what Sessions did.
type SessionStats struct {
	// Hits are resumptions that found their session; Misses, those that
	// did not (a full handshake follows).
	Hits, Misses uint64
	// Stored counts sessions put in the store (one per handshake).
	Stored uint64
	// Errors counts store calls that failed (a miss, or a ticket that will
	// miss).
	Errors uint64
}

// NewSessions keeps sessions in store for ttl (DefaultSessionLifetime if
// not positive). A nil logger logs nothing.
func NewSessions(store SessionStore, ttl time.Duration, logger *zap.Logger) *Sessions {
	if ttl <= 0 {
		ttl = DefaultSessionLifetime
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Sessions{store: store, ttl: ttl, log: logger}
}

// Apply makes cfg keep its sessions in s: tickets become session ids.
// Ticket keys set on cfg are then unused.
func (s *Sessions) Apply(cfg *tls.Config) {
	cfg.WrapSession = s.wrap
	cfg.UnwrapSession = s.unwrap
}

// Stats returns the counters.
func (s *Sessions) Stats() SessionStats {
	return SessionStats{Hits: s.hits.Load(), Misses: s.misses.Load(), Stored: s.stored.Load(), Errors: s.errs.Load()}
}

// Lifetime is how long a session stays resumable.
func (s *Sessions) Lifetime() time.Duration { return s.ttl }

func (s *Sessions) wrap(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	state, err := ss.Bytes()
	if err != nil {
		return nil, fmt.Errorf("tlsmux: session state: %w", err)
	}
	var id SessionID
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("tlsmux: session id: %w", err)
	}
	if err := s.store.Put(id, state, s.ttl); err != nil {
		// The device gets a ticket that misses: its next handshake is
		// a full one. Failing this one would cost more.
		s.failed("stored", err)
	} else {
		s.stored.Add(1)
		if s.warned.Load() {
			s.warned.Store(false) // the store answers again: log the next failure
		}
	}
	return id[:], nil
}

func (s *Sessions) unwrap(ticket []byte, _ tls.ConnectionState) (*tls.SessionState, error) {
	if len(ticket) == 0 {
		return nil, nil // TLS 1.2 without a ticket: nothing to resume
	}
	if len(ticket) != SessionIDLen {
		s.misses.Add(1) // a stateless ticket from before, or garbage
		return nil, nil
	}
	state, err := s.store.Take(SessionID(ticket))
	if err != nil {
		s.failed("read", err)
		s.misses.Add(1)
		return nil, nil
	}
	if state == nil {
		s.misses.Add(1)
		return nil, nil
	}
	ss, err := tls.ParseSessionState(state)
	if err != nil {
		// A state from another Go version (the encoding is Go's own).
		s.misses.Add(1)
		return nil, nil
	}
	s.hits.Add(1)
	return ss, nil
}

// failed counts a store error and logs the first of a run.
func (s *Sessions) failed(what string, err error) {
	s.errs.Add(1)
	if s.warned.CompareAndSwap(false, true) {
		s.log.Warn("tlsmux: TLS session not "+what+"; devices make full handshakes until the session store answers (logged once until it answers)",
			zap.Error(err))
	}
}

// ErrSessionTooLarge is returned by MemorySessions.Put for a state larger
// than the whole store.
var ErrSessionTooLarge = errors.New("tlsmux: session state larger than the session store")

// sessionOverhead is what an entry costs beside its state: the map slot
// (id and pointer) and the entry (links, slice header, expiry).
const sessionOverhead = 128

// MemorySessions is a SessionStore in this process's memory, bounded in
// bytes (states plus about 128 bytes per entry); when full, the oldest
// session goes first (its device then makes a full handshake). A restart
// forgets every session: each device makes one full handshake.
type MemorySessions struct {
	max int64
	now func() time.Time

	mu         sync.Mutex
	byID       map[SessionID]*memSession
	head, tail *memSession // oldest first; insertion order is expiry order
	bytes      int64
	evicted    uint64
}

type memSession struct {
	prev, next *memSession
	id         SessionID
	expires    int64 // unix nanoseconds
	state      []byte
}

// MemorySessionStats are a MemorySessions' figures.
type MemorySessionStats struct {
	// Entries and Bytes are what the store holds now (Bytes counts the
	// per-entry overhead).
	Entries int
	Bytes   int64
	// Evicted counts sessions dropped, oldest first, to make room.
	Evicted uint64
}

// NewMemorySessions returns a store of at most maxBytes. now is the clock
// (nil: time.Now).
func NewMemorySessions(maxBytes int64, now func() time.Time) (*MemorySessions, error) {
	if maxBytes < 1<<10 {
		return nil, fmt.Errorf("tlsmux: session store of %d bytes: want at least 1 KiB", maxBytes)
	}
	if now == nil {
		now = time.Now
	}
	return &MemorySessions{max: maxBytes, now: now, byID: make(map[SessionID]*memSession)}, nil
}

// Put implements SessionStore.
func (m *MemorySessions) Put(id SessionID, state []byte, ttl time.Duration) error {
	size := int64(len(state)) + sessionOverhead
	if size > m.max {
		return ErrSessionTooLarge
	}
	e := &memSession{id: id, state: append([]byte(nil), state...)}
	now := m.now().UnixNano()
	e.expires = now + int64(ttl)
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.head != nil && m.head.expires <= now {
		m.removeLocked(m.head)
	}
	for m.bytes+size > m.max {
		m.removeLocked(m.head)
		m.evicted++
	}
	if old := m.byID[id]; old != nil { // 2^-128: but keep the list whole
		m.removeLocked(old)
	}
	m.byID[id] = e
	e.prev = m.tail
	if m.tail != nil {
		m.tail.next = e
	} else {
		m.head = e
	}
	m.tail = e
	m.bytes += size
	return nil
}

// Take implements SessionStore.
func (m *MemorySessions) Take(id SessionID) ([]byte, error) {
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.byID[id]
	if e == nil {
		return nil, nil
	}
	m.removeLocked(e)
	if e.expires <= now {
		return nil, nil
	}
	return e.state, nil
}

// Stats returns the store's figures.
func (m *MemorySessions) Stats() MemorySessionStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MemorySessionStats{Entries: len(m.byID), Bytes: m.bytes, Evicted: m.evicted}
}

func (m *MemorySessions) removeLocked(e *memSession) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		m.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		m.tail = e.prev
	}
	e.prev, e.next = nil, nil
	delete(m.byID, e.id)
	m.bytes -= int64(len(e.state)) + sessionOverhead
}
