package cluster

import "sync"

// op is one registry write waiting for Redis: the latest state of one
// device as this node knows it.
type op struct {
	online bool
	rec    Record // ClientID and Epoch always; the rest when online
}

// supersedes tells whether a replaces b, two writes of the same device:
// the higher epoch wins; at equal epochs (one session) the disconnect
// wins over the connect.
func (a op) supersedes(b op) bool {
	if a.rec.Epoch != b.rec.Epoch {
		return a.rec.Epoch > b.rec.Epoch
	}
	return !a.online || b.online
}

// note is one NotifyAsync event waiting for Redis.
type note struct {
	node string
	ev   Event
}

// queue holds the writes and notifications not yet in Redis: one write
// per device (coalesced by client id), oldest first. Its lock is held for
// table operations only, never across I/O.
type queue struct {
	mu      sync.Mutex
	pending map[string]op
	order   []string // client ids in pending, oldest first, from head
	head    int
	notes   []note
	// inflight counts the writes and notes taken by the writer and not
	// yet settled.
	inflight int
	// held counts the node steps the writer keeps to send again (Redis
	// Cluster): the queue is not idle while it holds any.
	held int
	// idle is closed, and replaced, when the queue is empty with nothing
	// in flight: Flush waits on it.
	idle     chan struct{}
	maxPend  int
	maxNotes int

	kick chan struct{} // the first write of an empty queue
	full chan struct{} // a batch's worth is queued
}

func (q *queue) init(maxPending, maxNotes int) {
	q.pending = make(map[string]op)
	q.idle = make(chan struct{})
	q.maxPend, q.maxNotes = maxPending, maxNotes
	q.kick = make(chan struct{}, 1)
	q.full = make(chan struct{}, 1)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// put queues a write. It reports whether a queued write of the device was
// merged with it, and how many writes were dropped (the oldest, when
// full). batch is the size that wakes the writer at once.
func (q *queue) put(o op, batch int) (merged bool, dropped int) {
	id := o.rec.ClientID
	q.mu.Lock()
	defer q.mu.Unlock()
	if cur, ok := q.pending[id]; ok {
		if o.supersedes(cur) {
			q.pending[id] = o
		}
		return true, 0
	}
	for len(q.pending) >= q.maxPend {
		old := q.order[q.head]
		q.order[q.head] = ""
		q.head++
		delete(q.pending, old)
		dropped++
	}
	q.pending[id] = o
	q.order = append(q.order, id)
	switch n := len(q.pending) + len(q.notes); {
	case n == 1:
		signal(q.kick)
	case n >= batch:
		signal(q.full)
	}
	return false, dropped
}

// putNote queues a notification; false when the queue of notes is full.
func (q *queue) putNote(n note, batch int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.notes) >= q.maxNotes {
		return false
	}
	q.notes = append(q.notes, n)
	switch c := len(q.pending) + len(q.notes); {
	case c == 1:
		signal(q.kick)
	case c >= batch:
		signal(q.full)
	}
	return true
}

// take removes up to max writes and notes, oldest first, and marks them in
// flight.
func (q *queue) take(max int) ([]op, []note) {
	q.mu.Lock()
	defer q.mu.Unlock()
	nn := min(len(q.notes), max)
	var notes []note
	if nn > 0 {
		notes = make([]note, nn)
		copy(notes, q.notes)
		q.notes = append(q.notes[:0], q.notes[nn:]...)
	}
	n := min(len(q.pending), max-nn)
	var ops []op
	if n > 0 {
		ops = make([]op, 0, n)
		for len(ops) < n {
			id := q.order[q.head]
			q.order[q.head] = ""
			q.head++
			ops = append(ops, q.pending[id])
			delete(q.pending, id)
		}
	}
	if q.head > 1024 && q.head*2 > len(q.order) {
		q.order = append(q.order[:0], q.order[q.head:]...)
		q.head = 0
	}
	q.inflight += len(ops) + len(notes)
	return ops, notes
}

// settle ends the flight of n writes and notes, after putting back those
// that failed (a write superseded meanwhile is not put back). It returns
// how many were dropped for want of room.
func (q *queue) settle(n int, retryOps []op, retryNotes []note) (dropped int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, o := range retryOps {
		id := o.rec.ClientID
		if cur, ok := q.pending[id]; ok {
			if o.supersedes(cur) {
				q.pending[id] = o
			}
			continue
		}
		if len(q.pending) >= q.maxPend {
			dropped++
			continue
		}
		q.pending[id] = o
		q.order = append(q.order, id)
	}
	for _, nt := range retryNotes {
		if len(q.notes) >= q.maxNotes {
			dropped++
			continue
		}
		q.notes = append(q.notes, nt)
	}
	q.inflight -= n
	q.checkIdle()
	return dropped
}

// checkIdle wakes the Flush callers when nothing is left. q.mu is held.
func (q *queue) checkIdle() {
	if len(q.pending) == 0 && len(q.notes) == 0 && q.inflight == 0 && q.held == 0 {
		close(q.idle)
		q.idle = make(chan struct{})
	}
}

// state returns the queue's length (writes and notes) and the channel
// closed when it is next idle; nil when it is idle now.
func (q *queue) state() (int, chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.pending) + len(q.notes) + q.held
	if n == 0 && q.inflight == 0 {
		return 0, nil
	}
	return n, q.idle
}

func (q *queue) lens() (int, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending), len(q.notes)
}

// hold records how many node steps the writer keeps to send again.
func (q *queue) hold(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.held = n
	q.checkIdle()
}

// drain empties the queue and returns how many were in it.
func (q *queue) drain() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.pending) + len(q.notes)
	n += q.held
	clear(q.pending)
	q.order, q.head, q.notes, q.held = nil, 0, nil, 0
	q.checkIdle()
	return n
}
