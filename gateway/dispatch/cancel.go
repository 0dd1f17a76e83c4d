package dispatch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dualgate/dualgate/gateway/store"
)

// Errors of Cancel. The command that could not be cancelled comes with
// them.
var (
	// ErrWritten: the command was written to its device before the cancel
	// (status sent or delivered, or written while the store was failing).
	ErrWritten = errors.New("dispatch: already written to the device")
	// ErrFinished: the command had ended (expired, failed, cancelled).
	ErrFinished = errors.New("dispatch: the command has ended")
	// ErrStopped: the dispatcher stopped before the cancel ran.
	ErrStopped = errors.New("dispatch: stopped")
)

// NoteCancelled is the history note of a cancel.
const NoteCancelled = "cancelled through the API"

// Cancel withdraws a command that has not been written to its device: it
// moves to cancelled and is never written afterwards, restarts included
// (cancelled is final in the store). It runs on the device's worker, after
// the device's earlier events and their status writes, so it is ordered
// with the deliveries: either the command was written first and Cancel
// fails with ErrWritten, or it is cancelled and no delivery follows.
// A command that went back to pending after a connection lost before its
// PUBACK (Attempts above 0) may have reached the device then; it is
// cancelled, and its history shows the attempt.
//
// Cancel fails with store.ErrNotFound for an unknown id, ErrWritten or
// ErrFinished with the command as it stands, a store error, ErrStopped, or
// ctx's error when ctx ends first (the cancel may still run).
func (d *Dispatcher) Cancel(ctx context.Context, cid string) (*store.Command, error) {
	c, err := d.cfg.Store.Get(cid)
	if err != nil {
		return nil, err
	}
	if c.Status.Final() {
		return c, FinishedError(c)
	}
	type result struct {
		c   *store.Command
		err error
	}
	ch := make(chan result, 1)
	d.cancelOn(c.ClientID, cid, func(c *store.Command, err error) { ch <- result{c, err} })
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-d.stop:
		return nil, ErrStopped
	}
}

// cancelOn queues the cancel of command cid of device id on the device's
// worker and calls done with its outcome there. done is not called if the
// dispatcher stops first.
func (d *Dispatcher) cancelOn(id, cid string, done func(*store.Command, error)) {
	d.on(id, func() {
		c, err := d.cancel(cid, d.cfg.Now())
		done(c, err)
		if err == nil {
			// The device may have nothing left waiting: its state
			// follows at once rather than at its next event.
			d.reconcile(id, trigCancel)
		}
	})
}

// cancel runs on the device's worker.
func (d *Dispatcher) cancel(cid string, now time.Time) (*store.Command, error) {
	if d.isUnrecorded(cid) {
		c, err := d.cfg.Store.Get(cid)
		if err != nil {
			return nil, err
		}
		return c, fmt.Errorf("%w: command %s (its status write failed; it counts as sent)", ErrWritten, cid)
	}
	c, err := d.cfg.Store.Transition(cid, store.StatusCancelled, now, NoteCancelled)
	if err == nil {
		d.stats.Cancelled.Add(1)
		return c, nil
	}
	if !errors.Is(err, store.ErrBadTransition) {
		return nil, err
	}
	if c, err = d.cfg.Store.Get(cid); err != nil {
		return nil, err
	}
	return c, FinishedError(c)
}

// FinishedError says why a command in status sent or final cannot be
// cancelled: ErrWritten or ErrFinished, wrapped.
func FinishedError(c *store.Command) error {
	if c.Status == store.StatusSent || c.Status == store.StatusDelivered {
		return fmt.Errorf("%w: command %s is %s", ErrWritten, c.ID, c.Status)
	}
	return fmt.Errorf("%w: command %s is %s", ErrFinished, c.ID, c.Status)
}

// markUnrecorded remembers a command written to its device whose move to
// sent failed.
func (d *Dispatcher) markUnrecorded(cid string) {
	d.umu.Lock()
	d.unrecorded[cid] = struct{}{}
	d.umu.Unlock()
}

// recorded forgets a command once the store shows it written or ended.
func (d *Dispatcher) recorded(cid string) {
	d.umu.Lock()
	delete(d.unrecorded, cid)
	d.umu.Unlock()
}

func (d *Dispatcher) isUnrecorded(cid string) bool {
	d.umu.Lock()
	defer d.umu.Unlock()
	_, ok := d.unrecorded[cid]
	return ok
}
