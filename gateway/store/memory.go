package store

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Memory is a Store held in memory, with the semantics of Bolt but no
// durability. It is meant for tests.
type Memory struct {
	limit int // constant after NewMemory

	mu sync.Mutex
	// guarded by mu
	closed bool
	cmds   map[string]*Command            // every command by id
	open   map[string]map[string]*Command // non-final commands by client, then id
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store. Only opts.Limit applies.
func NewMemory(opts Options) *Memory {
	o := opts.withDefaults()
	return &Memory{
		limit: o.Limit,
		cmds:  make(map[string]*Command),
		open:  make(map[string]map[string]*Command),
	}
}

// Put implements Store.
func (m *Memory) Put(c *Command) error {
	d, err := prepare(c)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if _, ok := m.cmds[d.ID]; ok {
		return fmt.Errorf("%w: %s", ErrExists, d.ID)
	}
	open := m.open[d.ClientID]
	if n := len(open); n >= m.limit {
		return fmt.Errorf("%w: %s has %d (limit %d)", ErrFull, d.ClientID, n, m.limit)
	}
	if open == nil {
		open = make(map[string]*Command)
		m.open[d.ClientID] = open
	}
	m.cmds[d.ID] = d
	open[d.ID] = d
	return nil
}

// Get implements Store.
func (m *Memory) Get(id string) (*Command, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	c, ok := m.cmds[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return c.Clone(), nil
}

// Pending implements Store.
func (m *Memory) Pending(clientID string) ([]*Command, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	open := m.open[clientID]
	if len(open) == 0 {
		return nil, nil
	}
	out := make([]*Command, 0, len(open))
	for _, c := range open {
		out = append(out, c.Clone())
	}
	slices.SortFunc(out, func(a, b *Command) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// List implements Store. It reads every command in memory: Memory is for
// tests.
func (m *Memory) List(clientID, cursor string, limit int) ([]*Command, string, error) {
	if err := checkLimit(limit); err != nil {
		return nil, "", err
	}
	pos, after, err := parseCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, "", ErrClosed
	}
	type keyed struct {
		k []byte
		c *Command
	}
	var all []keyed
	for _, c := range m.cmds {
		if c.ClientID != clientID {
			continue
		}
		k := listKey(c.CreatedAt, c.ID)
		if after && !before(k, pos) {
			continue
		}
		all = append(all, keyed{k, c})
	}
	slices.SortFunc(all, func(a, b keyed) int { return bytes.Compare(b.k, a.k) })
	next := ""
	if len(all) > limit {
		all = all[:limit]
		next = cursorOf(all[limit-1].c)
	}
	out := make([]*Command, len(all))
	for i, kc := range all {
		out[i] = kc.c.Clone()
	}
	return out, next, nil
}

// CountPending implements Store.
func (m *Memory) CountPending(clientID string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	return len(m.open[clientID]), nil
}

// Transition implements Store.
func (m *Memory) Transition(id string, to Status, at time.Time, note string) (*Command, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	c, ok := m.cmds[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := m.move(c, to, at, note); err != nil {
		return nil, err
	}
	return c.Clone(), nil
}

// move applies the transition on a copy, so that a refused move leaves the
// stored command as it was, then keeps the copy. m.mu is held.
func (m *Memory) move(c *Command, to Status, at time.Time, note string) error {
	d := c.Clone()
	if err := move(d, to, at, note); err != nil {
		return err
	}
	*c = *d
	if to.Final() {
		open := m.open[c.ClientID]
		delete(open, c.ID)
		if len(open) == 0 {
			delete(m.open, c.ClientID)
		}
	}
	return nil
}

// Expire implements Store.
func (m *Memory) Expire(now time.Time) ([]*Command, error) {
	if !storable(now) {
		return nil, fmt.Errorf("%w: time %s out of range", ErrInvalid, now)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	var due []*Command
	for _, open := range m.open {
		for _, c := range open {
			if !c.ExpiresAt.IsZero() && !c.ExpiresAt.After(now) {
				due = append(due, c)
			}
		}
	}
	slices.SortFunc(due, func(a, b *Command) int {
		return cmp.Or(a.ExpiresAt.Compare(b.ExpiresAt), cmp.Compare(a.ID, b.ID))
	})
	var out []*Command
	for _, c := range due {
		if err := m.move(c, StatusExpired, now, noteExpired); err != nil {
			return nil, err
		}
		out = append(out, c.Clone())
	}
	return out, nil
}

// Stats implements Store.
func (m *Memory) Stats() (Counts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Counts{}, ErrClosed
	}
	var counts Counts
	for _, c := range m.cmds {
		counts.add(c.Status, 1)
	}
	counts.Clients = len(m.open)
	return counts, nil
}

// Prune implements Store.
func (m *Memory) Prune(before time.Time) (int, error) {
	if !storable(before) {
		return 0, fmt.Errorf("%w: time %s out of range", ErrInvalid, before)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	n := 0
	for id, c := range m.cmds {
		if c.Status.Final() && c.FinishedAt().Before(before) {
			delete(m.cmds, id)
			n++
		}
	}
	return n, nil
}

// HasOrigin implements Store.
func (m *Memory) HasOrigin(origin string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false, ErrClosed
	}
	if origin == "" {
		return false, nil
	}
	for _, c := range m.cmds {
		if c.Origin == origin {
			return true, nil
		}
	}
	return false, nil
}

// Clients implements Store.
func (m *Memory) Clients() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if len(m.open) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(m.open))
	for id := range m.open {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
