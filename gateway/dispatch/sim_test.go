package dispatch

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

var (
	simSeed  = flag.Uint64("seed", 0, "replay this simulation seed only, with its trace")
	simSeeds = flag.Int("sim.seeds", 2000, "how many seeds TestSim runs")
	simSteps = flag.Int("sim.steps", 200, "random steps per seed before the settle phase")
)

// TestSim runs the real dispatcher, sessions and store against simulated
// devices, connections, clock and store faults, one seeded random schedule
// per seed, and checks the invariants after every step. A failure prints
// its seed; -seed N replays it with a trace.
func TestSim(t *testing.T) {
	if *simSeed != 0 {
		s := newSim(*simSeed, *simSteps, t.Logf)
		if err := s.run(); err != nil {
			t.Fatalf("seed %d: %v", *simSeed, err)
		}
		return
	}
	start := time.Now()
	stats := map[string]int{}
	dropped := 0
	var skipped uint64
	for seed := uint64(1); seed <= uint64(*simSeeds); seed++ {
		s := newSim(seed, *simSteps, nil)
		if err := s.run(); err != nil {
			t.Fatalf("seed %d: %v\nreplay: go test -run 'TestSim$' ./gateway/dispatch/ -seed %d -v", seed, err, seed)
		}
		for k, v := range s.counts {
			stats[k] += v
		}
		// The same schedule with every blank record kept: dropping them
		// must change no decision (rules.blank).
		k := newSim(seed, *simSteps, nil)
		k.keepBlank()
		if err := k.run(); err != nil {
			t.Fatalf("seed %d, blank records kept: %v", seed, err)
		}
		if fs, fk := s.fingerprint(), k.fingerprint(); fs != fk {
			t.Fatalf("seed %d decided differently with blank records dropped and kept:\n%s\n%s", seed, fs, fk)
		}
		// The same schedule with every event queued: skipping those that
		// would find no record must change no decision (Dispatcher.skip).
		q := newSim(seed, *simSteps, nil)
		q.queueAll()
		if err := q.run(); err != nil {
			t.Fatalf("seed %d, every event queued: %v", seed, err)
		}
		if fs, fq := s.fingerprint(), q.fingerprint(); fs != fq {
			t.Fatalf("seed %d decided differently with events skipped and queued:\n%s\n%s", seed, fs, fq)
		}
		skipped += s.w.d.Stats().Skipped.Load()
		if s.dropped > 0 {
			dropped++
		}
	}
	if dropped == 0 {
		t.Error("no seed dropped a blank record")
	}
	if skipped == 0 {
		t.Error("no seed skipped an event")
	}
	// The same seed is the same run.
	for _, seed := range []uint64{1, 2, 3} {
		a, b := newSim(seed, *simSteps, nil), newSim(seed, *simSteps, nil)
		if errA, errB := a.run(), b.run(); errA != nil || errB != nil {
			t.Fatalf("seed %d: %v, %v", seed, errA, errB)
		}
		if fa, fb := a.fingerprint(), b.fingerprint(); fa != fb {
			t.Fatalf("seed %d ran two ways:\n%s\n%s", seed, fa, fb)
		}
	}
	t.Logf("%d seeds in %s, %d events skipped; %v", *simSeeds, time.Since(start).Round(time.Millisecond), skipped, stats)
	// The schedules must reach the situations they are there for.
	for _, k := range []string{"delivered", "expired", "restart", "takeover", "crash", "unproven", "loop", "store-fault", "upgrade", "downgrade", "late-ack", "will",
		"cancel", "cancel-written", "cancel-finished", "failed-too-large"} {
		if stats[k] == 0 {
			t.Errorf("no seed reached %q", k)
		}
	}
}

// simDevice is one simulated device and what it saw.
type simDevice struct {
	id      string
	version byte
	obeys   bool // moves when told
	canTLS  bool
	proven  bool // holds a client certificate naming its id
	acks    bool // acknowledges at once (otherwise late, or never)
	// following: obeys, can do TLS, is proven and acknowledges: the
	// liveness check applies to it.
	following bool

	// maxPacket is the Maximum Packet Size it declares (MQTT 5), 0: none.
	maxPacket uint32

	c    *conn
	plan *control.Mode // told to reconnect in this mode
	mode control.Mode  // the mode of the last instruction it obeyed
	held []uint16      // PUBACKs held back, for late sending
	away bool          // settle phase: stays offline

	got map[string]bool
	// tracked: the dispatcher had a record of it at the last check.
	tracked bool
	// last is the index of the latest command first received, by class
	// (0 plain, 1 secure).
	last [2]int
}

type simCommand struct {
	id     string
	dev    *simDevice
	secure bool
	idx    int
	// seen is the status and history length last observed.
	status store.Status
	hist   int
	pruned bool
	// cancelled: its cancel answered success.
	cancelled bool
	// large: its PUBLISH exceeds simMaxPacket.
	large bool
}

// simMaxPacket is the Maximum Packet Size some MQTT 5 devices declare: a
// command's PUBLISH is ~50 bytes, a large one's ~330.
const simMaxPacket = 128

type sim struct {
	seed   uint64
	steps  int
	rng    *rand.Rand
	w      *world
	devs   []*simDevice
	cmds   []*simCommand
	byID   map[string]*simCommand
	faults float64 // store fault rate while on
	logf   func(string, ...any)
	counts map[string]int
	err    error
	// kept: the dispatcher keeps blank records; dropped counts the
	// records it dropped (otherwise).
	kept    bool
	dropped int
}

// queueAll makes the dispatcher queue every event, before the run and
// across restarts.
func (s *sim) queueAll() {
	s.w.queueAll, s.w.d.queueAll = true, true
}

// keepBlank makes the dispatcher keep blank records, before the run and
// across restarts.
func (s *sim) keepBlank() {
	s.kept, s.w.keepBlank, s.w.d.keepBlank = true, true, true
}

func newSim(seed uint64, steps int, logf func(string, ...any)) *sim {
	s := &sim{seed: seed, steps: steps, rng: rand.New(rand.NewPCG(seed, 0x5eed)), logf: logf,
		byID: map[string]*simCommand{}, counts: map[string]int{}}
	s.w = newWorld(simConfig())
	s.w.st.fail = func() bool { return s.faults > 0 && s.rng.Float64() < s.faults }
	n := 2 + s.rng.IntN(4)
	for i := range n {
		d := &simDevice{id: fmt.Sprintf("dev%d", i), version: mqttcodec.V311, obeys: true, canTLS: true, proven: true, acks: true,
			got: map[string]bool{}}
		if s.rng.IntN(2) == 0 {
			d.version = mqttcodec.V5
			if s.rng.IntN(3) == 0 {
				// Declares a Maximum Packet Size: the large commands
				// can never be written to it.
				d.maxPacket = simMaxPacket
				s.w.maxPacket[d.id] = simMaxPacket
			}
		}
		// Most devices follow the protocol; the others each break it in
		// one way.
		switch s.rng.IntN(8) {
		case 0:
			d.obeys = false
		case 1:
			d.canTLS = false
		case 2:
			d.proven = false
		case 3:
			d.acks = false
		}
		d.following = d.obeys && d.canTLS && d.proven && d.acks
		s.devs = append(s.devs, d)
	}
	return s
}

func (s *sim) trace(format string, args ...any) {
	if s.logf != nil {
		s.logf("%s  "+format, append([]any{s.w.now.Sub(epoch)}, args...)...)
	}
}

func (s *sim) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("at %s: "+format, append([]any{s.w.now.Sub(epoch)}, args...)...)
	}
}

func (s *sim) run() (err error) {
	defer s.w.stop()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	for i := 0; i < s.steps && s.err == nil; i++ {
		s.step()
		s.check()
	}
	if s.err == nil {
		s.settlePhase()
	}
	return s.err
}

// step does one random thing.
func (s *sim) step() {
	w := s.w
	switch r := s.rng.IntN(100); {
	case r < 25:
		if w.runTask() {
			s.trace("dispatcher work")
		}
	case r < 38:
		if w.runOwner() {
			s.trace("connection owner work")
		}
	case r < 58:
		s.react(s.pick(), false)
	case r < 76:
		s.act(s.pick())
	case r < 82:
		s.submit()
	case r < 84:
		s.cancel()
	case r < 93:
		dt := time.Duration(100+s.rng.IntN(1900)) * time.Millisecond
		s.trace("clock +%s", dt)
		w.advance(dt)
		s.checkRetention()
	case r < 95:
		dt := time.Duration(30+s.rng.IntN(1200)) * time.Second
		s.trace("clock jump +%s", dt)
		w.advance(dt)
		s.checkRetention()
	case r < 97:
		s.trace("gateway restart")
		s.counts["restart"]++
		f := s.faults
		s.faults = 0
		if err := w.restart(); err != nil {
			s.fail("restart: %v", err)
		}
		s.faults = f
	default:
		if s.faults > 0 {
			s.faults = 0
		} else {
			s.faults = 0.05 + 0.2*s.rng.Float64()
		}
		s.trace("store faults %.2f", s.faults)
	}
}

func (s *sim) pick() *simDevice { return s.devs[s.rng.IntN(len(s.devs))] }

// react makes a device read what the gateway wrote and respond.
func (s *sim) react(d *simDevice, settling bool) {
	c := d.c
	if c == nil {
		return
	}
	r := s.w.read(c)
	for _, cmd := range r.commands {
		s.receive(d, cmd)
		switch {
		case d.acks || settling:
			s.w.ack(c, cmd.pid)
		case s.rng.IntN(5) > 0:
			d.held = append(d.held, cmd.pid) // late, or never
		}
		if !d.acks && !settling && len(d.held) > 0 && s.rng.IntN(3) == 0 {
			s.trace("%s late PUBACK", d.id)
			s.counts["late-ack"]++
			s.w.ack(c, d.held[0])
			d.held = d.held[1:]
		}
	}
	if r.instruction != nil {
		s.trace("%s told %s", d.id, *r.instruction)
		if r.controlPID != 0 {
			s.w.ack(c, r.controlPID)
		}
		if *r.instruction == control.ModeTLS {
			s.counts["upgrade"]++
		} else {
			s.counts["downgrade"]++
		}
		if d.obeys {
			m := *r.instruction
			d.plan, d.mode = &m, m
			if !c.closed {
				s.w.disconnect(c)
			}
		}
	}
	if r.connack && (d.following || s.rng.IntN(2) == 0) {
		s.w.query(c)
	}
	if c.closed && len(c.toDev) == 0 {
		d.c = nil // the device sees the end of the connection
	}
}

// receive records a command's arrival at its device and checks the order.
func (s *sim) receive(d *simDevice, got delivered) {
	sc := s.byID[got.id]
	if sc == nil {
		s.fail("%s received unknown command %s", d.id, got.id)
		return
	}
	if sc.dev != d {
		s.fail("%s received %s's command %s", d.id, sc.dev.id, got.id)
	}
	if d.got[got.id] {
		return // again: at least once
	}
	d.got[got.id] = true
	class := 0
	if sc.secure {
		class = 1
	}
	if sc.idx < d.last[class] {
		s.fail("%s received command %d after command %d (same class): out of order", d.id, sc.idx, d.last[class])
	}
	d.last[class] = sc.idx
	s.trace("%s received %s", d.id, got.id)
}

// act makes a device do something of its own.
func (s *sim) act(d *simDevice) {
	w := s.w
	if d.away {
		return
	}
	if d.c != nil && d.c.closed {
		s.react(d, false)
		d.c = nil
	}
	if d.c == nil {
		s.connect(d, s.reconnectMode(d))
		return
	}
	switch r := s.rng.IntN(10); {
	case r < 2:
		s.trace("%s takes over", d.id)
		s.counts["takeover"]++
		mode := s.reconnectMode(d)
		d.c = nil
		s.connect(d, mode)
	case r < 4:
		s.trace("%s disconnects", d.id)
		w.disconnect(d.c)
	case r < 5:
		s.trace("%s crashes", d.id)
		s.counts["crash"]++
		w.crash(d.c)
		d.c = nil
	case r < 7:
		w.query(d.c)
	case r < 9:
		if len(d.held) > 0 {
			s.trace("%s late PUBACK", d.id)
			s.counts["late-ack"]++
			w.ack(d.c, d.held[0])
			d.held = d.held[1:]
		}
	default:
		// The same QoS 1 PUBLISH twice (a retry with DUP).
		p := &mqttcodec.Publish{Topic: []byte("devices/" + d.id + "/up"), Payload: []byte("x"), QoS: 1, PacketID: 7}
		w.send(d.c, mqttcodec.AppendPublish(nil, d.version, p))
		p.Dup = true
		w.send(d.c, mqttcodec.AppendPublish(nil, d.version, p))
	}
}

// reconnectMode is the transport a device connects on: where it was told,
// else, for a following device, the mode of the last instruction
// (protocol.md section 6), and for the others either.
func (s *sim) reconnectMode(d *simDevice) registry.Mode {
	m := d.mode
	switch {
	case d.plan != nil:
		m = *d.plan
	case !d.following && s.rng.IntN(3) == 0:
		m = control.ModeTLS
	case !d.following:
		m = control.ModePlain
	}
	if m == control.ModeTLS {
		return registry.ModeTLS
	}
	return registry.ModePlain
}

func (s *sim) connect(d *simDevice, mode registry.Mode) {
	if mode == registry.ModeTLS && !d.canTLS {
		mode = registry.ModePlain
	}
	d.plan = nil
	d.held = nil // a new connection: the old packet ids mean nothing
	if mode == registry.ModeTLS && !d.proven {
		s.counts["unproven"]++
	}
	s.trace("%s connects on %s", d.id, mode)
	d.c = s.w.dial(d.id, mode, d.version, d.proven, true)
}

func (s *sim) submit() {
	d := s.pick()
	secure := s.rng.IntN(10) < 7
	var ttl time.Duration
	if s.rng.IntN(10) < 7 {
		ttl = time.Duration(2+s.rng.IntN(120)) * time.Second
	}
	large := s.rng.IntN(10) == 0
	size := 0
	if large {
		size = 300
	}
	cid, err := s.w.submitSized(d.id, secure, ttl, size)
	if err != nil {
		s.counts["store-fault"]++
		s.trace("submit for %s refused: %v", d.id, err)
		return
	}
	sc := &simCommand{id: cid, dev: d, secure: secure, idx: len(s.cmds) + 1, status: store.StatusPending, hist: 1, large: large}
	s.cmds = append(s.cmds, sc)
	s.byID[cid] = sc
	s.trace("command %s for %s secure=%v ttl=%s large=%v", cid, d.id, secure, ttl, large)
}

// cancel queues the cancel of a random command, most often one that has
// not ended, and checks its answer when the dispatcher's work runs it.
func (s *sim) cancel() {
	var open []*simCommand
	for _, sc := range s.cmds {
		if !sc.status.Final() {
			open = append(open, sc)
		}
	}
	var sc *simCommand
	switch {
	case len(open) > 0 && s.rng.IntN(4) > 0:
		sc = open[s.rng.IntN(len(open))]
	case len(s.cmds) > 0:
		sc = s.cmds[s.rng.IntN(len(s.cmds))]
	default:
		return
	}
	s.trace("cancel %s queued", sc.id)
	s.w.d.cancelOn(sc.dev.id, sc.id, func(c *store.Command, err error) {
		switch {
		case err == nil:
			s.trace("cancel %s answered: cancelled", sc.id)
			s.counts["cancel"]++
			if c.Status != store.StatusCancelled {
				s.fail("cancel of %s answered success with status %s", sc.id, c.Status)
			}
			sc.cancelled = true
			s.w.cancelled[sc.id] = true
			// Written and not acknowledged on a live session: the cancel
			// came after the write and had to be refused.
			for _, conn := range s.w.conns {
				if conn.id == sc.dev.id && !conn.ended && slices.Contains(conn.s.Inflight(), sc.id) {
					s.fail("command %s cancelled while in flight on a session of %s", sc.id, sc.dev.id)
				}
			}
		case errors.Is(err, ErrWritten):
			s.trace("cancel %s answered: %v", sc.id, err)
			s.counts["cancel-written"]++
			if !s.everWritten(sc) {
				s.fail("cancel of %s refused as written (%v), but it never was", sc.id, err)
			}
		case errors.Is(err, ErrFinished):
			s.trace("cancel %s answered: %v", sc.id, err)
			s.counts["cancel-finished"]++
			if c == nil || !c.Status.Final() || c.Status == store.StatusDelivered {
				s.fail("cancel of %s refused as ended: %v, %+v", sc.id, err, c)
			}
		case errors.Is(err, store.ErrNotFound):
			if !sc.status.Final() {
				s.fail("cancel of %s, last seen %s: %v", sc.id, sc.status, err)
			}
			s.trace("cancel %s answered: pruned", sc.id)
		case errors.Is(err, errInjected):
			s.counts["store-fault"]++
			s.trace("cancel %s failed: %v", sc.id, err)
		default:
			s.fail("cancel of %s: %v", sc.id, err)
		}
	})
}

// everWritten reports whether a command's bytes were ever written to a
// connection of its device.
func (s *sim) everWritten(sc *simCommand) bool {
	for _, c := range s.w.conns {
		if c.id == sc.dev.id && writtenTo(c, "cmd:"+sc.id) {
			return true
		}
	}
	return false
}

// check verifies the invariants that hold after every step.
func (s *sim) check() {
	for _, v := range s.w.violations {
		s.fail("%s", v)
	}
	s.w.violations = nil
	s.checkBlank()
	s.checkReleased()
	for _, sc := range s.cmds {
		if sc.pruned {
			continue
		}
		c, err := s.w.mem.Get(sc.id)
		if errors.Is(err, store.ErrNotFound) && sc.status.Final() {
			sc.pruned = true // final and past the retention
			continue
		}
		if err != nil {
			s.fail("command %s: %v", sc.id, err)
			continue
		}
		switch {
		case sc.status.Final() && c.Status != sc.status:
			s.fail("command %s moved from final %s to %s", sc.id, sc.status, c.Status)
		case len(c.History) < sc.hist:
			s.fail("command %s lost history: %d entries, had %d", sc.id, len(c.History), sc.hist)
		case c.History[len(c.History)-1].Status != c.Status:
			s.fail("command %s: status %s but history ends with %s", sc.id, c.Status, c.History[len(c.History)-1].Status)
		}
		for i := 1; i < len(c.History); i++ {
			if !c.History[i-1].Status.CanMoveTo(c.History[i].Status) {
				s.fail("command %s: history moves %s -> %s", sc.id, c.History[i-1].Status, c.History[i].Status)
			}
		}
		if c.Status == store.StatusDelivered && !sc.dev.got[sc.id] {
			s.fail("command %s delivered but never received", sc.id)
		}
		tooLarge := sc.large && sc.dev.maxPacket != 0
		if tooLarge && sc.dev.got[sc.id] {
			s.fail("command %s received by %s, larger than the Maximum Packet Size it declared", sc.id, sc.dev.id)
		}
		if c.Status == store.StatusFailed && sc.status != store.StatusFailed {
			if !tooLarge || c.History[len(c.History)-1].Note != NoteTooLarge {
				s.fail("command %s failed, not too large for its device: %v", sc.id, c.History)
			}
			s.counts["failed-too-large"]++
		}
		if sc.cancelled && c.Status != store.StatusCancelled {
			s.fail("command %s is %s after its cancel answered", sc.id, c.Status)
		}
		if c.Status == store.StatusCancelled && len(c.History) > 0 && c.History[len(c.History)-1].Note != NoteCancelled {
			s.fail("command %s cancelled without its note: %v", sc.id, c.History)
		}
		if c.Status != sc.status {
			s.counts[string(c.Status)]++
		}
		sc.status, sc.hist = c.Status, len(c.History)
	}
}

// checkBlank: the dispatcher keeps no blank record (one that says nothing
// an absent one would not), and a device without a record is blank: the
// ticker, which runs whenever the clock moves, drops those the clock made
// blank, and every step the others. It counts the devices it saw dropped.
func (s *sim) checkBlank() {
	d := s.w.d
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, dv := range d.devices {
		if !s.kept && d.rules.blank(dv, s.w.now) {
			s.fail("device %s kept blank: %+v", id, *dv)
		}
	}
	for _, sd := range s.devs {
		if _, ok := d.devices[sd.id]; ok {
			sd.tracked = true
		} else if sd.tracked {
			sd.tracked = false
			s.dropped++
		}
	}
}

// checkReleased: once no work is queued, no connected TLS session holds
// what the gateway writes to it (Dispatcher.Online releases it, at once or
// after delivering); only the kernel's cork limit would send it.
func (s *sim) checkReleased() {
	w := s.w
	if len(w.tasks) > 0 || len(w.owner) > 0 {
		return
	}
	for _, c := range w.conns {
		if !c.closed && c.holding && c.s.Connected() {
			s.fail("the TLS session of %s is still held with no work queued", c.id)
		} else if !c.closed && c.mode == registry.ModeTLS && c.s.Connected() {
			s.counts["tls-released"]++
		}
	}
}

// checkRetention: right after a tick, nothing is kept for a device gone
// longer than the retention.
func (s *sim) checkRetention() {
	d := s.w.d
	now := s.w.now
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, dv := range d.devices {
		if dv.state == StateLoopProtected {
			s.counts["loop"]++
		}
		if _, online := s.w.reg.Get(id); online || dv.dirty || len(dv.retry()) > 0 || dv.tls != nil {
			continue
		}
		if gone := since(d.rules.at(now), dv.lastSeen); gone > d.cfg.DeviceRetention {
			s.fail("device %s kept in state %s, gone for %s", id, dv.state, gone)
		}
	}
}

// settleBound is how long a following device may take, once faults stop,
// to get every command that has not expired.
const settleBound = 90 * time.Second

// settlePhase stops the faults and lets the following devices behave:
// each of their commands must then be delivered within settleBound, or
// end expired or failed with a reason, or wait for a device its
// misbehaviour had loop-protected.
func (s *sim) settlePhase() {
	w := s.w
	s.faults = 0
	s.trace("settle")
	for _, d := range s.devs {
		if !d.following {
			if d.c != nil {
				w.crash(d.c)
				d.c = nil
			}
			d.away = true
		}
	}
	// What the faults caused (crashes, wills held past their grace) is
	// published by now; from here on the following devices only move
	// when told, and a move fires no will.
	w.settle()
	wills := map[string]int{}
	for _, d := range s.devs {
		wills[d.id] = w.wills[d.id]
	}
	start := w.now
	for w.now.Sub(start) < settleBound && s.err == nil {
		for range 20 {
			w.settle()
			busy := false
			for _, d := range s.devs {
				if d.away {
					continue
				}
				if d.c != nil && (len(d.c.toDev) > 0 || d.c.closed) {
					s.react(d, true)
					busy = true
				}
				if d.c == nil || d.c.closed {
					if d.c != nil {
						s.react(d, true)
					}
					s.connect(d, s.reconnectMode(d))
					busy = true
				}
			}
			s.check()
			if !busy && len(w.tasks) == 0 && len(w.owner) == 0 {
				break
			}
		}
		w.advance(time.Second)
		s.checkRetention()
	}
	for _, d := range s.devs {
		if d.following && w.wills[d.id] != wills[d.id] {
			s.fail("following device %s fired %d wills while only moved by the gateway", d.id, w.wills[d.id]-wills[d.id])
		}
		if w.wills[d.id] > 0 {
			s.counts["will"]++
		}
	}
	for _, sc := range s.cmds {
		d := sc.dev
		if !d.following || sc.pruned {
			continue
		}
		c, err := w.mem.Get(sc.id)
		if errors.Is(err, store.ErrNotFound) && sc.status.Final() {
			continue // final, and pruned past the retention
		}
		if err != nil {
			s.fail("command %s: %v", sc.id, err)
			continue
		}
		switch {
		case c.Status == store.StatusDelivered:
		case c.Status.Final():
			if c.History[len(c.History)-1].Note == "" {
				s.fail("command %s ended %s without a reason", sc.id, c.Status)
			}
		case sc.secure && s.loopProtected(d.id):
			// Waits for the device on TLS: reported, not flooded. (Only
			// faults make a following device loop-protected: crashes
			// that lost its instructions.)
			s.counts["waits-loop-protected"]++
		case !c.ExpiresAt.IsZero() && c.ExpiresAt.Before(start.Add(settleBound)):
			// It may expire soon; the ticker marks it.
		default:
			info, _ := w.d.Device(d.id)
			s.fail("command %s for following device %s (secure %v) still %s after %s of good behaviour; device %+v; history %v",
				sc.id, d.id, sc.secure, c.Status, settleBound, info, strings.ReplaceAll(fmt.Sprint(c.History), "\n", " "))
		}
	}
}

func (s *sim) loopProtected(id string) bool {
	info, _ := s.w.d.Device(id)
	return info.LoopProtected
}

// fingerprint sums up a finished run: its clock, counts, the dispatcher's
// counters, every command's history and what the gateway wrote to every
// connection.
func (s *sim) fingerprint() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %v\n", s.w.now, s.counts)
	st := s.w.d.Stats()
	fmt.Fprintf(&b, "accepted %d delivered %d expired %d instructions %d retries %d upgrades %d downgrades %d loop %d unproven %d cancelled %d\n",
		st.Accepted.Load(), st.Delivered.Load(), st.Expired.Load(), st.Instructions.Load(), st.InstructionRetries.Load(),
		st.Upgrades.Load(), st.Downgrades.Load(), st.LoopProtected.Load(), st.HeldUnproven.Load(), st.Cancelled.Load())
	for _, sc := range s.cmds {
		if c, err := s.w.mem.Get(sc.id); err == nil {
			fmt.Fprintf(&b, "%s %v\n", sc.id, c.History)
		}
	}
	h := fnv.New64a()
	for _, c := range s.w.conns {
		_, _ = h.Write([]byte(c.id))
		_, _ = h.Write(c.log)
	}
	fmt.Fprintf(&b, "%d connections, written %x\n", len(s.w.conns), h.Sum64())
	return b.String()
}
