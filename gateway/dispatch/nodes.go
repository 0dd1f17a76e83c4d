package dispatch

import (
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/store"
)

// On a cluster every node shares the store, and a command in flight (sent,
// or upgrading) is in flight on one node's session. The history entry of
// the move says which: its note ends with " (node NAME)". A node that sees
// a command its device's session here does not have in flight can then
// tell whether the node that wrote it still runs (its session will end and
// put the command back, or its PUBACK will come) or died with it, in which
// case the command is taken back here: nobody else will.

const nodeMark = " (node "

// byNode is note naming this node, on a cluster.
func (d *Dispatcher) byNode(note string) string {
	if d.cfg.Node == "" {
		return note
	}
	return note + nodeMark + d.cfg.Node + ")"
}

// goneNote is the history note of a command taken back from a node that
// is gone.
func goneNote(node string) string {
	return "node " + node + " that had it in flight is gone"
}

// heldBy is the node whose move put c in its status, sent or upgrading,
// as its last history entry names it; "" when it names none (a gateway
// alone, or an entry written by another kind of move).
func heldBy(c *store.Command) string {
	if len(c.History) == 0 {
		return ""
	}
	last := c.History[len(c.History)-1]
	if last.Status != c.Status || !strings.HasSuffix(last.Note, ")") {
		return ""
	}
	i := strings.LastIndex(last.Note, nodeMark)
	if i < 0 {
		return ""
	}
	return last.Note[i+len(nodeMark) : len(last.Note)-1]
}

// heldElsewhere reports whether c is in flight on another node that is
// live.
func (d *Dispatcher) heldElsewhere(c *store.Command) (bool, error) {
	n := heldBy(c)
	if n == "" || n == d.cfg.Node || d.cfg.NodeLive == nil {
		return false, nil
	}
	return d.cfg.NodeLive(n)
}

// reclaim looks at a command sent by another node, which the device's
// session here did not write: if that node is gone, the command goes
// back to pending and is returned so (it goes out again, with DUP); if it
// runs, or cannot be asked, the device is looked at again at the next
// tick, until that node's session ends and puts it back (it does not tell
// this node) or the node is found dead.
func (d *Dispatcher) reclaim(c *store.Command, now time.Time) *store.Command {
	n := heldBy(c)
	if n == "" || n == d.cfg.Node {
		return c // a session of this node: its end puts it back
	}
	live, err := d.heldElsewhere(c)
	if err != nil || live {
		d.lookAgain(c.ClientID)
		return c
	}
	back, err := d.cfg.Store.Transition(c.ID, store.StatusPending, now, goneNote(n))
	switch {
	case err == nil:
		d.cfg.Logger.Info("command taken back from a node that is gone",
			zap.String("client", c.ClientID), zap.String("command", c.ID), zap.String("node", n))
		return back
	case errors.Is(err, store.ErrBadTransition) || errors.Is(err, store.ErrNotFound):
		// Moved meanwhile (its PUBACK was recorded after all): the
		// device's next look reads it as it is.
		d.lookAgain(c.ClientID)
		return c
	default:
		d.storeFailed(c.ClientID, err)
		return c
	}
}
