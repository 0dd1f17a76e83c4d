package cluster

import (
	"sync/atomic"
	"time"
)

// clock hands out session epochs: a hybrid logical clock in nanoseconds.
// An epoch is the wall clock's Unix nanoseconds, or one more than the
// last epoch handed out or seen, whichever is larger, so that on one node
// epochs strictly increase even when the wall clock steps back, and a node
// that has seen an epoch from another node never hands out a smaller one.
type clock struct {
	last atomic.Uint64
	now  func() time.Time
}

// next returns a new epoch, larger than every epoch returned or observed.
func (c *clock) next() uint64 {
	wall := uint64(c.now().UnixNano())
	for {
		last := c.last.Load()
		e := max(wall, last+1)
		if c.last.CompareAndSwap(last, e) {
			return e
		}
	}
}

// maxDrift is how far ahead of this node's wall clock an observed epoch
// may be and still raise the clock: an epoch further ahead (a node whose
// clock is far wrong, a damaged record) is not followed, so it cannot
// carry this node's epochs away from time.
const maxDrift = time.Minute

// observe raises the clock to e, so that the next epoch is above it,
// unless e is more than maxDrift ahead of the wall clock.
func (c *clock) observe(e uint64) {
	if e > uint64(c.now().Add(maxDrift).UnixNano()) {
		return
	}
	for {
		last := c.last.Load()
		if e <= last || c.last.CompareAndSwap(last, e) {
			return
		}
	}
}
