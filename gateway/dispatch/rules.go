package dispatch

import (
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
)

// trigger is why a device's commands are looked at.
type trigger uint8

const (
	trigNew       trigger = iota // a command arrived
	trigQuery                    // the device published on the query topic
	trigSubscribe                // the device subscribed (on TLS)
	trigAck                      // the device acknowledged a command
	trigTick                     // a backoff may have elapsed
)

// Hooks, called by sessions in owner context: they only queue work.

// Online is called when a session is connected.
func (d *Dispatcher) Online(s *session.Session) {
	id, mode, now := s.ClientID(), s.Mode(), d.cfg.Now()
	d.on(id, func() { d.online(s, id, mode, now) })
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
	d.on(id, func() { d.acked(id, token, now) })
}

// Offline is called when a session ends.
func (d *Dispatcher) Offline(s *session.Session, unacked []string) {
	id, now := s.ClientID(), d.cfg.Now()
	d.on(id, func() { d.offline(s, id, unacked, now) })
}

// Worker context from here on.

func (d *Dispatcher) online(s *session.Session, id string, mode registry.Mode, now time.Time) {
	if mode != registry.ModeTLS {
		// An idle plain device costs the dispatcher nothing: only devices
		// it already tracks are updated.
		d.mu.Lock()
		if dv, ok := d.devices[id]; ok {
			dv.lastSeen = now
			dv.toldPlain, dv.ignoredPlain, dv.tlsOnly = false, 0, false
		}
		d.mu.Unlock()
		return
	}
	d.update(id, func(dv *device) {
		dv.lastSeen = now
		if dv.instructed {
			d.stats.Upgrades.Add(1)
			dv.upgrades = append(dv.upgrades, now)
			if len(dv.upgrades) > 8 {
				dv.upgrades = dv.upgrades[len(dv.upgrades)-8:]
			}
		}
		if dv.toldPlain {
			dv.ignoredPlain++
			if dv.ignoredPlain >= 2 && !dv.tlsOnly {
				dv.tlsOnly = true
				d.cfg.Logger.Info("device returns on TLS when told to use plain; leaving it on TLS",
					zap.String("client", id))
			}
		}
		dv.tries, dv.instructed, dv.stuck, dv.toldPlain = 0, false, false, false
		dv.nextInstruct = time.Time{}
		dv.tls, dv.lastSecure = s, now
	})
}

func (d *Dispatcher) offline(s *session.Session, id string, unacked []string, now time.Time) {
	for _, cid := range unacked {
		if _, err := d.cfg.Store.Transition(cid, store.StatusPending, now, "connection closed before PUBACK"); err != nil &&
			!errors.Is(err, store.ErrBadTransition) && !errors.Is(err, store.ErrNotFound) {
			d.cfg.Logger.Error("store", zap.String("command", cid), zap.Error(err))
		}
	}
	d.mu.Lock()
	if dv, ok := d.devices[id]; ok {
		dv.lastSeen = now
		if dv.tls == s {
			dv.tls = nil
		}
	}
	d.mu.Unlock()
}

func (d *Dispatcher) acked(id, cid string, now time.Time) {
	c, err := d.cfg.Store.Transition(cid, store.StatusDelivered, now, "PUBACK")
	if errors.Is(err, store.ErrBadTransition) {
		// The write went out after its waiter gave up: record both steps.
		if _, err2 := d.cfg.Store.Transition(cid, store.StatusSent, now, "written late"); err2 == nil {
			c, err = d.cfg.Store.Transition(cid, store.StatusDelivered, now, "PUBACK")
		}
	}
	if err != nil {
		d.cfg.Logger.Debug("acknowledgement for a command that is not in flight",
			zap.String("client", id), zap.String("command", cid), zap.Error(err))
		return
	}
	d.delivered(c, now)
	d.reconcile(id, trigAck)
}

func (d *Dispatcher) delivered(c *store.Command, now time.Time) {
	d.stats.Delivered.Add(1)
	if c.Secure {
		d.update(c.ClientID, func(dv *device) { dv.lastSecure = now })
	}
	if d.cfg.OnDelivered != nil {
		d.cfg.OnDelivered(c, now.Sub(c.CreatedAt))
	}
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
		d.cfg.Logger.Error("store", zap.String("client", id), zap.Error(err))
		return
	}
	now := d.cfg.Now()
	var ready []*store.Command
	secureWaiting := false
	for _, c := range cmds {
		switch {
		case c.Status == store.StatusSent:
			continue // in flight
		case !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt):
			continue // the ticker marks it expired
		case c.Secure && s.Mode() != registry.ModeTLS:
			secureWaiting = true
		default:
			ready = append(ready, c)
		}
	}
	if len(ready) > 0 && why != trigTick {
		d.deliver(s, ready, now)
	}
	if secureWaiting && why != trigAck && why != trigSubscribe {
		d.instruct(s, id, cmds, now)
	}
}

// deliver writes commands to the session in order, as far as its receive
// maximum allows, and records them sent.
func (d *Dispatcher) deliver(s *session.Session, cmds []*store.Command, now time.Time) {
	var written []*store.Command
	_, ok := d.exec(s, func(s *session.Session) error {
		for _, c := range cmds {
			err := s.Deliver(&session.Delivery{
				Topic: c.Topic, Payload: c.Payload, QoS: c.QoS,
				Secure: c.Secure, Token: c.ID, Dup: c.Attempts > 0,
			})
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
	if !ok {
		return
	}
	mode := s.Mode().String()
	for _, c := range written {
		if _, err := d.cfg.Store.Transition(c.ID, store.StatusSent, now, "written to the "+mode+" connection"); err != nil {
			d.cfg.Logger.Error("store", zap.String("command", c.ID), zap.Error(err))
			continue
		}
		if c.QoS == 0 {
			// No acknowledgement comes for QoS 0: written is delivered.
			if dc, err := d.cfg.Store.Transition(c.ID, store.StatusDelivered, now, "QoS 0 written"); err == nil {
				d.delivered(dc, now)
			}
		}
	}
}

// instruct sends a plain device the reconnect instruction with mode tls,
// within the loop-protection rules, and marks its secure commands
// upgrading.
func (d *Dispatcher) instruct(s *session.Session, id string, cmds []*store.Command, now time.Time) {
	var stuck, early bool
	var tries int
	d.update(id, func(dv *device) {
		stuck, tries = dv.stuck, dv.tries
		early = now.Before(dv.nextInstruct)
		if !stuck && !early && dv.tries >= d.cfg.MaxInstructions {
			dv.stuck, stuck = true, true
			d.stats.LoopProtected.Add(1)
			d.cfg.Logger.Warn("device keeps returning on plain after being told to use TLS; its secure commands wait for it on TLS",
				zap.String("client", id), zap.Int("instructions", dv.tries))
		}
	})
	if stuck || early {
		return
	}
	err, ok := d.exec(s, func(s *session.Session) error {
		// Recorded before the instruction leaves, so the device's arrival
		// on TLS always finds it, and undone if it does not leave.
		var was device
		d.update(id, func(dv *device) {
			was = *dv
			dv.tries++
			dv.instructed = true
			dv.lastSeen = now
			dv.nextInstruct = now.Add(d.backoff(dv.tries))
		})
		err := s.Instruct(control.ModeTLS, d.cfg.Advertise(s, control.ModeTLS), control.ReasonSecureCommand)
		if err != nil {
			d.update(id, func(dv *device) {
				dv.tries, dv.instructed, dv.nextInstruct = was.tries, was.instructed, was.nextInstruct
			})
			return err
		}
		d.stats.Instructions.Add(1)
		if tries > 0 {
			d.stats.InstructionRetries.Add(1)
		}
		return nil
	})
	if !ok || (err != nil && !errors.Is(err, session.ErrInstructed)) {
		return
	}
	for _, c := range cmds {
		if c.Secure && c.Status == store.StatusPending {
			if _, err := d.cfg.Store.Transition(c.ID, store.StatusUpgrading, now, "reconnect instruction sent"); err != nil &&
				!errors.Is(err, store.ErrBadTransition) {
				d.cfg.Logger.Error("store", zap.String("command", c.ID), zap.Error(err))
			}
		}
	}
}

// backoff is the wait after the n-th instruction before the next one.
func (d *Dispatcher) backoff(n int) time.Duration {
	b := d.cfg.InstructBackoff
	for i := 1; i < n && b < d.cfg.MaxBackoff; i++ {
		b *= 2
	}
	return min(b, d.cfg.MaxBackoff)
}

// QuietPeriod is how long a TLS device with nothing secure to do stays on
// TLS: SecureIdle x (1 + its other upgrades within 10 x SecureIdle), at
// most 3 x SecureIdle.
func (d *Dispatcher) quietPeriod(upgrades []time.Time, now time.Time) time.Duration {
	base := d.cfg.SecureIdle
	if d.cfg.FixedQuiet {
		return base
	}
	recent := 0
	for _, t := range upgrades {
		if now.Sub(t) <= 10*base {
			recent++
		}
	}
	k := max(recent-1, 0) // not counting the upgrade that brought it here
	return base * time.Duration(min(1+k, 3))
}

// ticker expires commands, prunes old ones, re-instructs devices whose
// backoff elapsed and sends quiet TLS devices back to plain.
func (d *Dispatcher) ticker() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.Tick)
	defer t.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		now := d.cfg.Now()
		if expired, err := d.cfg.Store.Expire(now); err != nil {
			d.cfg.Logger.Error("store expire", zap.Error(err))
		} else if len(expired) > 0 {
			d.stats.Expired.Add(uint64(len(expired)))
			d.cfg.Logger.Info("commands expired", zap.Int("count", len(expired)))
		}
		if now.Sub(lastPrune) > time.Hour {
			lastPrune = now
			if _, err := d.cfg.Store.Prune(now.Add(-d.cfg.Retention)); err != nil {
				d.cfg.Logger.Error("store prune", zap.Error(err))
			}
		}
		var retry, quiet []string
		d.mu.Lock()
		for id, dv := range d.devices {
			switch {
			case dv.tls != nil && !dv.tlsOnly && !dv.toldPlain &&
				now.Sub(dv.lastSecure) >= d.quietPeriod(dv.upgrades, now):
				quiet = append(quiet, id)
			case dv.instructed && !dv.stuck && !now.Before(dv.nextInstruct):
				if s, online := d.cfg.Registry.Get(id); online && s.Mode() == registry.ModePlain {
					retry = append(retry, id)
				}
			case dv.tls == nil && now.Sub(dv.lastSeen) > 10*d.cfg.SecureIdle+time.Hour:
				// Gone for long: forget it (its commands stay in the store).
				if _, online := d.cfg.Registry.Get(id); !online {
					delete(d.devices, id)
				}
			}
		}
		d.mu.Unlock()
		for _, id := range retry {
			d.on(id, func() { d.reconcile(id, trigTick) })
		}
		for _, id := range quiet {
			d.on(id, func() { d.downgrade(id) })
		}
	}
}

// downgrade sends a quiet TLS device back to plain, unless something
// secure is pending or in flight for it.
func (d *Dispatcher) downgrade(id string) {
	now := d.cfg.Now()
	var s *session.Session
	d.mu.Lock()
	if dv := d.devices[id]; dv != nil && dv.tls != nil && !dv.toldPlain &&
		now.Sub(dv.lastSecure) >= d.quietPeriod(dv.upgrades, now) {
		s = dv.tls
	}
	d.mu.Unlock()
	if s == nil {
		return
	}
	cmds, err := d.cfg.Store.Pending(id)
	if err != nil {
		return
	}
	for _, c := range cmds {
		if c.Secure {
			return // not quiet: it will be delivered, and the clock restarts
		}
	}
	err, ok := d.exec(s, func(s *session.Session) error {
		return s.Instruct(control.ModePlain, d.cfg.Advertise(s, control.ModePlain), control.ReasonSecureIdle)
	})
	if !ok || err != nil {
		return
	}
	d.stats.Downgrades.Add(1)
	d.update(id, func(dv *device) { dv.toldPlain = true })
}
