package dispatch

import (
	"errors"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/store"
)

// cancelNow queues a cancel, runs the queued work and returns its answer.
func (w *world) cancelNow(t *testing.T, id, cid string) (*store.Command, error) {
	t.Helper()
	answered := false
	var c *store.Command
	var err error
	w.d.cancelOn(id, cid, func(cc *store.Command, e error) { c, err, answered = cc, e, true })
	w.settle()
	if !answered {
		t.Fatal("the cancel did not answer")
	}
	return c, err
}

// A command cancelled before its device came is never written; one
// written first is refused with its status; one cancelled twice is
// refused as ended.
func TestCancelOrderedWithDelivery(t *testing.T) {
	w := newWorld(simConfig())
	defer w.stop()
	early, err := w.submit("car", true, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w.settle()
	c, err := w.cancelNow(t, "car", early)
	if err != nil || c.Status != store.StatusCancelled || c.History[len(c.History)-1].Note != NoteCancelled {
		t.Fatalf("cancel of a pending command: %+v, %v", c, err)
	}
	w.cancelled[early] = true
	a := w.onTLS(t, "car")
	w.query(a)
	w.settle()
	late, err := w.submit("car", true, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The cancel queued behind the delivery: written first, refused.
	c, err = w.cancelNow(t, "car", late)
	if !errors.Is(err, ErrWritten) || c.Status != store.StatusSent {
		t.Fatalf("cancel after the write: %+v, %v", c, err)
	}
	if got := w.read(a).commands; len(got) != 1 || got[0].id != late {
		t.Fatalf("the device got %+v, want only %s", got, late)
	}
	if _, err := w.cancelNow(t, "car", early); !errors.Is(err, ErrFinished) {
		t.Fatalf("second cancel: %v", err)
	}
	for _, v := range w.violations {
		t.Error(v)
	}
	if n := w.d.Stats().Cancelled.Load(); n != 1 {
		t.Fatalf("Cancelled = %d", n)
	}
}

// A delivery that its session did not run within WaitSession writes
// nothing later: the worker knows every write when it moves on. The
// ticker looks at the device again and delivers.
func TestDeliveryAbandonedWritesNothing(t *testing.T) {
	cfg := simConfig()
	cfg.WaitSession = time.Millisecond
	w := newWorld(cfg)
	defer w.stop()
	a := w.onTLS(t, "car")
	cid, err := w.submit("car", true, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The connection's owner is busy while the dispatcher delivers: the
	// write waits in its queue and the dispatcher gives up on it.
	w.depth++
	for w.runTask() {
	}
	w.depth--
	if len(w.owner) == 0 {
		t.Fatal("test setup: the write is not queued on the owner")
	}
	w.settle() // the owner runs the write now: too late
	if writtenTo(a, "cmd:"+cid) {
		t.Fatal("the abandoned delivery was written late")
	}
	if st := w.status(cid).Status; st != store.StatusPending {
		t.Fatalf("status %s, want pending", st)
	}
	w.advance(time.Second)
	w.settle()
	if got := w.read(a).commands; len(got) != 1 || got[0].id != cid {
		t.Fatalf("after the tick the device got %+v", got)
	}
}
