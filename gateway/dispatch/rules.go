package dispatch

import (
	"errors"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
)

// NoteUnproven is the history note of a secure command that waits because
// its device is on a TLS session that did not prove its client id.
const NoteUnproven = "waiting: the TLS session did not prove client id (see --secure-identity)"

// trigger is why a device's commands are looked at.
type trigger uint8

const (
	trigNew       trigger = iota // a command arrived
	trigQuery                    // the device published on the query topic
	trigSubscribe                // the device subscribed (on TLS)
	trigOnline                   // a TLS session came online
	trigAck                      // the device acknowledged a command
	trigTick                     // a backoff may have elapsed: instruct only
	trigResume                   // an older session ended, or a store operation failed
	trigCancel                   // one of its commands was cancelled
)

// Hooks, called by sessions in owner context: they only queue work.

// Online is called when a session is connected, before its CONNACK is
// written.
//
// A TLS session holds what it writes until released (session.Release),
// so that the commands delivered at its CONNECT leave in one segment with
// the CONNACK (docs/benchmarks.md §8.1): the device saves a segment and
// its ACK per upgrade. The session is released once online has delivered,
// or at once when the device's record is blank or missing (every device
// instructed to move has one that is not): then its CONNACK does not wait
// for the device's worker.
func (d *Dispatcher) Online(s *session.Session) {
	id, mode, proven, now := s.ClientID(), s.Mode(), s.IdentityProven(), d.cfg.Now()
	if mode != registry.ModeTLS && d.skip(id) {
		return // online would step no record: an idle device on plain
	}
	if mode == registry.ModeTLS && !d.expects(id, now) {
		s.Release()
	}
	d.on(id, func() { d.online(s, id, mode, proven, now) })
}

// expects reports whether device id has a record that is not blank:
// something is going on for it (it was told to come on TLS, or is there
// already). A blank record and none are the same to every decision.
func (d *Dispatcher) expects(id string, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	dv := d.devices[id]
	return dv != nil && !d.rules.blank(dv, now)
}

// Query is called when a device publishes on the query topic.
func (d *Dispatcher) Query(s *session.Session) {
	id := s.ClientID()
	d.on(id, func() { d.reconcile(id, trigQuery) })
}

// Subscribed is called for each filter a device subscribes to. On TLS a
// subscription is a device saying it is ready: pending commands follow.
func (d *Dispatcher) Subscribed(s *session.Session, _ string, _ byte) {
	if s.Mode() != registry.ModeTLS {
		return
	}
	id := s.ClientID()
	d.on(id, func() { d.reconcile(id, trigSubscribe) })
}

// Acked is called when a device acknowledges a command.
func (d *Dispatcher) Acked(s *session.Session, token string) {
	id, now := s.ClientID(), d.cfg.Now()
	// The acknowledgement is recorded behind the device's write of sent
	// (writeBehind keeps their order), not behind its other events.
	d.queue(id, func() { d.acked(id, token, now) })
}

// Offline is called when a session ends.
func (d *Dispatcher) Offline(s *session.Session, unacked []string) {
	id, now := s.ClientID(), d.cfg.Now()
	if len(unacked) == 0 && d.skip(id) {
		return // offline would step no record and move no command
	}
	d.on(id, func() { d.offline(s, id, unacked, now) })
}

// skip reports whether an event of device id can be left out: the device
// has no record, and no event or status write of it is queued or under
// way, so nothing can make one before the event would run (every record
// is made by a device's own events and writes). A plain device's CONNECT
// and a disconnect with nothing in flight would then find no record and
// do nothing; not queueing them spares a reconnect storm of idle devices
// a closure, a queue and often a goroutine start per CONNECT. The
// simulation runs every schedule with and without skipping and compares
// the decisions (TestSim). With an Executor, a skipped event still queues
// a task that does nothing, so that the schedule does not depend on it.
func (d *Dispatcher) skip(id string) bool {
	if d.queueAll {
		return false
	}
	d.mu.Lock()
	_, tracked := d.devices[id]
	skip := !tracked && !d.occupied(id)
	d.mu.Unlock()
	if skip {
		d.stats.Skipped.Add(1)
		if d.cfg.Executor != nil {
			d.cfg.Executor(id, func() {})
		}
	}
	return skip
}

// Worker context from here on.

// step feeds in to the device's state machine under the lock and returns
// the actions to perform and the device's TLS session after the step. An
// untracked device is created only when create is set; ok is false when it
// was not.
func (d *Dispatcher) step(id string, in input, create bool) (act Action, tls *session.Session, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dv := d.devices[id]
	if dv == nil {
		if !create {
			return 0, nil, false
		}
		dv = d.record(id, in.now)
	}
	act = d.rules.step(dv, in)
	tls = dv.tls
	d.dropBlank(id, dv, d.cfg.Now())
	return act, tls, true
}

// record starts tracking a device, under d.mu: a new record is blank, the
// state of every device not tracked, seen at now (so that it is never
// born forgettable).
func (d *Dispatcher) record(id string, now time.Time) *device {
	dv := &device{lastSeen: d.rules.at(now)}
	d.devices[id] = dv
	d.peak = max(d.peak, len(d.devices))
	return dv
}

// shrinkAt is the number of records from which the table is rebuilt
// once a quarter of them are left (Tick).
const shrinkAt = 1024

// shrink, under d.mu, rebuilds the table of records once it holds less
// than a quarter of its high-water mark: a Go map keeps the room of its
// largest size, and a burst of devices on TLS that then left would keep
// ~50 B per device that was there (docs/benchmarks.md, section 1).
func (d *Dispatcher) shrink() {
	if d.peak < shrinkAt || len(d.devices) >= d.peak/4 {
		return
	}
	m := make(map[string]*device, len(d.devices))
	for id, dv := range d.devices {
		m[id] = dv
	}
	d.devices, d.peak = m, len(m)
}

// dropBlank, under d.mu, stops tracking a device whose record says nothing
// an absent one would not (rules.blank) at now, and reports whether it did.
// It runs after every step and every change of what the ticker must retry,
// with the clock's time rather than the event's: an event may have waited
// in the queue, and the upgrades the quiet period counts are counted at the
// clock's time.
func (d *Dispatcher) dropBlank(id string, dv *device, now time.Time) bool {
	if d.keepBlank || !d.rules.blank(dv, now) {
		return false
	}
	delete(d.devices, id)
	return true
}

// perform does what a transition asked for. It is the one place where the
// state machine's decisions become instructions, store transitions, logs
// and counters; s is the device's live session.
func (d *Dispatcher) perform(id string, s *session.Session, act Action, cmds []*store.Command, now time.Time) {
	if act&ActCountUpgrade != 0 {
		d.stats.Upgrades.Add(1)
	}
	if act&ActReportTLSOnly != 0 {
		d.cfg.Logger.Info("device returns on TLS when told to use plain; leaving it on TLS",
			zap.String("client", id))
	}
	if act&ActReportLoop != 0 {
		d.stats.LoopProtected.Add(1)
		d.cfg.Logger.Warn("device keeps returning on plain after being told to use TLS; its secure commands wait for it on TLS",
			zap.String("client", id), zap.Int("instructions", d.cfg.MaxInstructions))
	}
	if act&ActNoteUnproven != 0 {
		d.cfg.Logger.Info("device arrived on TLS without proving its client id; secure commands wait",
			zap.String("client", id))
		if cmds == nil {
			var err error
			if cmds, err = d.cfg.Store.Pending(id); err != nil {
				d.storeFailed(id, err)
			}
		}
		d.noteUnproven(id, cmds, now)
	}
	if act&ActInstructTLS != 0 && s != nil {
		d.instructTLS(s, id, cmds, now)
	}
	if act&ActInstructPlain != 0 && s != nil {
		d.instructPlain(s, id, now)
	}
}

func (d *Dispatcher) online(s *session.Session, id string, mode registry.Mode, proven bool, now time.Time) {
	ev := EvOnlinePlain
	if mode == registry.ModeTLS {
		ev = EvOnlineTLS
		if !proven {
			ev = EvOnlineUnproven
		}
	}
	// An idle plain device costs the dispatcher nothing: only devices it
	// already tracks are updated.
	act, _, ok := d.step(id, input{ev: ev, now: now, s: s}, ev != EvOnlinePlain)
	if ok {
		d.perform(id, s, act, nil, now)
	}
	if ev != EvOnlinePlain {
		// A device that proved its client id on TLS gets what waits at
		// once: it came for it, and a query would cost it a PUBLISH and
		// a PUBACK more on the wire (docs/protocol.md). One that did not
		// has what is secure refused by its session, and counted.
		d.reconcile(id, trigOnline)
		// Tasks run in order on the session's loop: this one after the
		// writes of what reconcile delivered.
		s.Exec(func(s *session.Session) { s.Release() })
	}
}

func (d *Dispatcher) offline(s *session.Session, id string, unacked []string, now time.Time) {
	var failed []string
	for _, cid := range unacked {
		if _, err := d.cfg.Store.Transition(cid, store.StatusPending, now, "connection closed before PUBACK"); err != nil &&
			!errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
			d.cfg.Logger.Error("store", zap.String("command", cid), zap.Error(err))
			failed = append(failed, cid)
		}
	}
	d.mu.Lock()
	dv := d.devices[id]
	if dv == nil && len(failed) > 0 {
		dv = d.record(id, now)
	}
	if dv != nil {
		d.rules.step(dv, input{ev: EvOffline, now: now, s: s})
		dv.addRetry(failed)
		d.dropBlank(id, dv, d.cfg.Now())
	}
	d.mu.Unlock()
	// A newer session may already have queried while these commands were
	// still in flight on this one: it gets them now, not at its next query.
	if live, online := d.cfg.Registry.Get(id); online && live != s && len(unacked) > 0 {
		d.reconcile(id, trigResume)
	}
}

// addRetry remembers commands whose move back to pending failed.
func (dv *device) addRetry(ids []string) {
	for _, cid := range ids {
		if retry := dv.retry(); !slices.Contains(retry, cid) {
			dv.setMore(dv.upgrades(), append(retry, cid))
		}
	}
}

// storeFailed logs a failed store operation and marks the device for the
// ticker to look at its commands again.
func (d *Dispatcher) storeFailed(id string, err error) {
	d.cfg.Logger.Error("store", zap.String("client", id), zap.Error(err))
	d.lookAgain(id)
}

// lookAgain marks the device for the ticker to look at its commands again.
func (d *Dispatcher) lookAgain(id string) {
	d.mu.Lock()
	dv := d.devices[id]
	if dv == nil {
		dv = d.record(id, d.cfg.Now())
	}
	dv.dirty = true
	d.mu.Unlock()
}

// resume retries what failed for a device: commands left in flight by an
// ended session go back to pending, and its commands are looked at again.
func (d *Dispatcher) resume(id string) {
	now := d.cfg.Now()
	d.mu.Lock()
	var ids []string
	if dv := d.devices[id]; dv != nil {
		ids, dv.dirty = dv.retry(), false
		dv.setMore(dv.upgrades(), nil)
		d.dropBlank(id, dv, now)
	}
	d.mu.Unlock()
	var failed []string
	for _, cid := range ids {
		if _, err := d.cfg.Store.Transition(cid, store.StatusPending, now, "connection closed before PUBACK"); err != nil &&
			!errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
			failed = append(failed, cid)
		}
	}
	if len(failed) > 0 {
		d.mu.Lock()
		dv := d.devices[id]
		if dv == nil {
			dv = d.record(id, now) // dropped blank above
		}
		dv.addRetry(failed)
		d.mu.Unlock()
	}
	d.reconcile(id, trigResume)
}

// acked records a PUBACK, behind the device's other status writes; the
// next waiting command then goes out from the device's worker.
func (d *Dispatcher) acked(id, cid string, now time.Time) {
	d.writeBehind(id, func() {
		if d.recordAck(id, cid, now) {
			d.on(id, func() { d.reconcile(id, trigAck) })
		}
	})
}

// recordAck moves an acknowledged command to delivered and reports whether
// it did.
func (d *Dispatcher) recordAck(id, cid string, now time.Time) bool {
	c, err := d.cfg.Store.Transition(cid, store.StatusDelivered, now, "PUBACK")
	if errors.Is(err, store.ErrBadTransition) {
		// The write went out after its waiter gave up, or its move to
		// sent failed: record both steps.
		if _, err2 := d.cfg.Store.Transition(cid, store.StatusSent, now, d.byNode("written late")); err2 == nil {
			c, err = d.cfg.Store.Transition(cid, store.StatusDelivered, now, "PUBACK")
		}
	}
	if err == nil {
		d.recorded(cid)
	}
	if err != nil {
		if !errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
			// Not recorded: the command goes back to pending and out
			// again (at least once).
			d.storeFailed(id, err)
			d.mu.Lock()
			d.devices[id].addRetry([]string{cid})
			d.mu.Unlock()
			return false
		}
		d.cfg.Logger.Debug("acknowledgement for a command that is not in flight",
			zap.String("client", id), zap.String("command", cid), zap.Error(err))
		return false
	}
	d.delivered(c, now)
	return true
}

func (d *Dispatcher) delivered(c *store.Command, now time.Time) {
	d.stats.Delivered.Add(1)
	if c.Secure {
		d.step(c.ClientID, input{ev: EvSecureAcked, now: now}, false)
	}
	if d.cfg.OnDelivered != nil {
		d.cfg.OnDelivered(c, now.Sub(c.CreatedAt))
	}
}

// provenOn reports whether s is the device's TLS session and proved the
// client id, as far as the dispatcher was told (Online).
func (d *Dispatcher) provenOn(id string, s *session.Session) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	dv := d.devices[id]
	return dv != nil && dv.tls == s && dv.proven
}

// waitsUnproven reports whether the device is on a TLS session that did not
// prove its client id.
func (d *Dispatcher) waitsUnproven(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	dv := d.devices[id]
	return dv != nil && dv.tls != nil && !dv.proven
}

// reconcile looks at a device's waiting commands and its connection, and
// delivers, instructs, or waits.
func (d *Dispatcher) reconcile(id string, why trigger) {
	s, online := d.cfg.Registry.Get(id)
	if !online {
		return
	}
	cmds, err := d.cfg.Store.Pending(id)
	if err != nil {
		d.storeFailed(id, err)
		return
	}
	now := d.cfg.Now()
	onTLS := s.Mode() == registry.ModeTLS
	proven := onTLS && d.provenOn(id, s)
	var ready, held []*store.Command
	writable, secureWaiting, unproven := false, false, false
	for i, c := range cmds {
		if c.Status == store.StatusSent && c.QoS > 0 {
			c = d.reclaim(c, now)
			cmds[i] = c
		}
		switch {
		case c.Status == store.StatusSent && c.QoS == 0:
			d.finishQoS0(c, now)
		case c.Status == store.StatusSent:
			// In flight: on s it is skipped, elsewhere it holds back
			// what follows (deliver decides, in owner context).
			ready = append(ready, c)
		case !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt):
			continue // the ticker marks it expired
		case c.Secure && !onTLS:
			secureWaiting = true
		case c.Secure && !proven:
			unproven = true
			held = append(held, c)
		default:
			ready = append(ready, c)
			writable = true
		}
	}
	if writable && why != trigTick {
		d.deliver(s, ready, now)
	}
	if unproven {
		d.noteUnproven(id, cmds, now)
		if why != trigTick {
			d.refuse(s, held)
		}
	}
	switch {
	case secureWaiting && why != trigAck && why != trigSubscribe && why != trigOnline:
		act, _, _ := d.step(id, input{ev: EvSecureWaiting, now: now}, true)
		d.perform(id, s, act, cmds, now)
	case !secureWaiting && !onTLS:
		d.step(id, input{ev: EvNothingWaiting, now: now}, false)
	}
}

// finishQoS0 completes a QoS 0 command whose move to delivered failed.
func (d *Dispatcher) finishQoS0(c *store.Command, now time.Time) {
	if dc, err := d.cfg.Store.Transition(c.ID, store.StatusDelivered, now, "QoS 0 written"); err == nil {
		d.delivered(dc, now)
	}
}

// noteUnproven moves the device's upgrading secure commands back to
// pending, with the reason they wait: the device came on TLS but did not
// prove its client id there. It is said once per instruction.
func (d *Dispatcher) noteUnproven(id string, cmds []*store.Command, now time.Time) {
	for _, c := range cmds {
		if c.Secure && c.Status == store.StatusUpgrading {
			_, err := d.cfg.Store.Transition(c.ID, store.StatusPending, now, NoteUnproven)
			if err == nil {
				d.stats.HeldUnproven.Add(1)
			} else if !errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
				d.storeFailed(id, err)
			}
		}
	}
}

// deliver writes commands to the session in order, as far as its receive
// maximum allows, and records them sent. A command in flight on another
// session stops it: what follows waits until that session's end puts it
// back, so a device gets its commands in order.
//
// The writes happen in the session's owner context while the worker waits.
// If the worker stops waiting (WaitSession) before they ran, they never
// run: every write is one the worker knows of when deliver returns, so the
// device's next event (a cancel among them) sees the store as the writes
// left it.
func (d *Dispatcher) deliver(s *session.Session, cmds []*store.Command, now time.Time) {
	var mu sync.Mutex // orders the writes with the worker's giving up
	abandoned := false
	var written, oversized []*store.Command
	_, ok := d.exec(s, func(s *session.Session) error {
		mu.Lock()
		defer mu.Unlock()
		if abandoned {
			return nil
		}
		inflight := s.Inflight()
		for _, c := range cmds {
			if slices.Contains(inflight, c.ID) {
				// Written to this session already, whatever the store
				// says yet (a write the dispatcher stopped waiting for).
				continue
			}
			if c.Status == store.StatusSent {
				break
			}
			err := s.Deliver(&session.Delivery{
				Topic: c.Topic, Payload: c.Payload, QoS: c.QoS,
				Secure: c.Secure, Token: c.ID, Dup: c.Attempts > 0,
			})
			if errors.Is(err, session.ErrTooLarge) {
				// It can never be written to this device, and would
				// hold back every command after it: it fails, and the
				// next one goes.
				oversized = append(oversized, c)
				continue
			}
			if err != nil {
				if !errors.Is(err, session.ErrInflightFull) {
					d.cfg.Logger.Debug("delivery stopped", zap.String("client", s.ClientID()), zap.Error(err))
				}
				break
			}
			written = append(written, c)
		}
		return nil
	})
	// Past this point the owner writes nothing more for this call; if it
	// is writing now, this waits for it to finish.
	mu.Lock()
	abandoned = true
	mu.Unlock()
	if !ok && len(written) == 0 && len(oversized) == 0 {
		// The session did not run the writes in time: the ticker looks
		// at the device's commands again.
		d.lookAgain(s.ClientID())
	}
	if len(written) == 0 && len(oversized) == 0 {
		return
	}
	note := d.byNode("written to the " + s.Mode().String() + " connection")
	d.writeBehind(s.ClientID(), func() {
		for _, c := range oversized {
			d.fail(c, now, NoteTooLarge)
		}
		for _, c := range written {
			if _, err := d.cfg.Store.Transition(c.ID, store.StatusSent, now, note); err != nil {
				// Its PUBACK records it ("written late"); until then it
				// may go out again, and a cancel is refused. (A refused
				// move finds it sent already, or final: the store says so.)
				if !errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
					d.markUnrecorded(c.ID)
				}
				d.storeFailed(c.ClientID, err)
				continue
			}
			d.recorded(c.ID)
			if c.QoS == 0 {
				// No acknowledgement comes for QoS 0: written is delivered.
				if dc, err := d.cfg.Store.Transition(c.ID, store.StatusDelivered, now, "QoS 0 written"); err == nil {
					d.delivered(dc, now)
				} else {
					d.storeFailed(c.ClientID, err)
				}
			}
		}
	})
}

// NoteTooLarge is the history note of a command failed because its
// PUBLISH exceeds the Maximum Packet Size its device declared.
const NoteTooLarge = "larger than the Maximum Packet Size the device declared in its CONNECT: it cannot be written to it"

// fail gives a command up, with the reason in its history.
func (d *Dispatcher) fail(c *store.Command, now time.Time, note string) {
	if _, err := d.cfg.Store.Transition(c.ID, store.StatusFailed, now, note); err != nil {
		if !errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
			d.storeFailed(c.ClientID, err)
		}
		return
	}
	d.stats.Failed.Add(1)
	d.cfg.Logger.Warn("command failed", zap.String("client", c.ClientID), zap.String("command", c.ID), zap.String("reason", note))
}

// refuse offers the secure commands held for a TLS session that did not
// prove the client id to that session, which refuses each one before a
// byte is encoded (session.CheckTransport) and counts it in
// RefusedUnproven: the operator sees the commands kept off, and the rule
// is enforced where it always is. A session that proves the client id
// after all is offered nothing here (the next reconcile delivers).
func (d *Dispatcher) refuse(s *session.Session, held []*store.Command) {
	if len(held) == 0 {
		return
	}
	d.exec(s, func(s *session.Session) error {
		if s.Mode() != registry.ModeTLS || s.IdentityProven() {
			return nil
		}
		for _, c := range held {
			_ = s.Deliver(&session.Delivery{Topic: c.Topic, Payload: c.Payload, QoS: c.QoS, Secure: true, Token: c.ID})
		}
		return nil
	})
}

// instructTLS sends a plain device the reconnect instruction with mode
// tls and marks its secure commands upgrading.
func (d *Dispatcher) instructTLS(s *session.Session, id string, cmds []*store.Command, now time.Time) {
	err, ok := d.exec(s, func(s *session.Session) error {
		return s.Instruct(control.ModeTLS, d.cfg.Advertise(s, control.ModeTLS), control.ReasonSecureCommand)
	})
	if !ok || (err != nil && !errors.Is(err, session.ErrInstructed)) {
		return
	}
	d.mu.Lock()
	dv := d.devices[id]
	if dv == nil {
		// Not tracked (blank, or forgotten while the instruction was
		// on its way): the device must now be expected on TLS.
		dv = d.record(id, now)
	}
	retry := dv.tries > 0
	d.rules.step(dv, input{ev: EvInstructedTLS, now: now})
	d.dropBlank(id, dv, d.cfg.Now()) // never: it is upgrading now
	d.mu.Unlock()
	if err == nil {
		d.stats.Instructions.Add(1)
		if retry {
			d.stats.InstructionRetries.Add(1)
		}
	}
	d.writeBehind(id, func() {
		for _, c := range cmds {
			if c.Secure && c.Status == store.StatusPending {
				if _, err := d.cfg.Store.Transition(c.ID, store.StatusUpgrading, now, d.byNode("reconnect instruction sent")); err != nil &&
					!errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
					d.cfg.Logger.Error("store", zap.String("command", c.ID), zap.Error(err))
				}
			}
		}
	})
}

// instructPlain sends a quiet TLS device back to plain, over TLS.
func (d *Dispatcher) instructPlain(s *session.Session, id string, now time.Time) {
	err, ok := d.exec(s, func(s *session.Session) error {
		return s.Instruct(control.ModePlain, d.cfg.Advertise(s, control.ModePlain), control.ReasonSecureIdle)
	})
	if !ok || err != nil {
		return
	}
	d.stats.Downgrades.Add(1)
	d.step(id, input{ev: EvInstructedPlain, now: now}, false)
}

// quiet sends a TLS device whose quiet period is over back to plain,
// unless something secure is pending or in flight for it that its session
// may receive.
func (d *Dispatcher) quiet(id string) {
	now := d.cfg.Now()
	cmds, err := d.cfg.Store.Pending(id)
	if err != nil {
		d.storeFailed(id, err)
		return
	}
	secure := false
	for _, c := range cmds {
		secure = secure || c.Secure
	}
	act, s, ok := d.step(id, input{ev: EvQuiet, now: now, secureWaiting: secure}, false)
	if ok {
		d.perform(id, s, act, cmds, now)
	}
}

// Tick expires commands, prunes old ones, forgets devices gone past the
// retention, retries what failed, re-instructs devices whose backoff
// elapsed and sends quiet TLS devices back to plain. The ticker calls it
// every Config.Tick; with an Executor, the caller does.
func (d *Dispatcher) Tick() {
	now := d.cfg.Now()
	if expired, err := d.cfg.Store.Expire(now); err != nil {
		d.cfg.Logger.Error("store expire", zap.Error(err))
	} else if len(expired) > 0 {
		for _, c := range expired {
			d.recorded(c.ID)
		}
		d.stats.Expired.Add(uint64(len(expired)))
		d.cfg.Logger.Info("commands expired", zap.Int("count", len(expired)))
	}
	if now.Sub(d.lastPrune) > time.Hour {
		if _, err := d.cfg.Store.Prune(now.Add(-d.cfg.Retention)); err != nil {
			d.cfg.Logger.Error("store prune", zap.Error(err))
		} else {
			d.lastPrune = now
		}
	}
	var retry, quiet, resume []string
	d.mu.Lock()
	for id, dv := range d.devices {
		if d.dropBlank(id, dv, now) {
			// Blank by the clock: its last upgrade left the quiet
			// period's window.
			continue
		}
		_, online := d.cfg.Registry.Get(id)
		switch {
		case !online && !dv.dirty && d.rules.forgettable(dv, now):
			// Gone for long: forget it, whatever its state (its
			// commands stay in the store).
			delete(d.devices, id)
		case dv.dirty || len(dv.retry()) > 0:
			resume = append(resume, id)
		case dv.tls != nil && (dv.state == StateSecure || dv.state == StateUnproven) && d.rules.quietOver(dv, now):
			quiet = append(quiet, id)
		case online && d.rules.retryDue(dv, now):
			retry = append(retry, id)
		}
	}
	d.shrink()
	d.mu.Unlock()
	// In a stable order, so that a simulation replays exactly.
	slices.Sort(resume)
	slices.Sort(retry)
	slices.Sort(quiet)
	for _, id := range resume {
		d.on(id, func() { d.resume(id) })
	}
	for _, id := range retry {
		d.on(id, func() { d.reconcile(id, trigTick) })
	}
	for _, id := range quiet {
		d.on(id, func() { d.quiet(id) })
	}
}

func (d *Dispatcher) ticker() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		d.Tick()
	}
}
