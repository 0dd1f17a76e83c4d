package dispatch

import (
	"errors"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
)

// Config configures a Dispatcher. Store, Registry and Advertise are
// required; zero values of the rest mean their defaults.
type Config struct {
	Store    store.Store
	Registry *registry.Registry[*session.Session]
	Logger   *zap.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Advertise returns the host:port a device connected through s is told
	// to use for mode m. It runs in the session's owner context.
	Advertise func(s *session.Session, m control.Mode) string

	// SecureIdle is the base quiet period before a TLS device is sent back
	// to plain (default 30 s).
	SecureIdle time.Duration
	// FixedQuiet turns the adaptive quiet period off.
	FixedQuiet bool
	// MaxInstructions is how many TLS instructions in a row a device may
	// ignore before the dispatcher stops sending them (default 5).
	MaxInstructions int
	// InstructBackoff is the wait before the second instruction (default
	// 2 s); each further one waits twice as long, up to MaxBackoff (default
	// 5 min).
	InstructBackoff time.Duration
	MaxBackoff      time.Duration
	// Retention is how long delivered, expired and failed commands stay
	// readable through the API (default 24 h).
	Retention time.Duration
	// DeviceRetention is how long the dispatcher remembers a device that
	// is gone, in whatever state (default 10 x SecureIdle + MaxBackoff +
	// 1 h). Its commands stay in the store regardless.
	DeviceRetention time.Duration
	// Tick is how often quiet periods, backoffs and TTLs are checked
	// (default 1 s).
	Tick time.Duration
	// Workers is the number of event queues, each drained in order by a
	// goroutine that exists only while the queue has work (default 128).
	Workers int
	// WaitSession bounds how long a worker waits for a session to run a
	// delivery or an instruction (default 2 s).
	WaitSession time.Duration
	// Executor, if set, runs the dispatcher's work instead of its worker
	// goroutines and ticker: it must run each fn later, in the order given
	// for the same client id, never from inside a session's owner context.
	// The caller then calls Tick itself, and Submit does not wait for the
	// dispatch (it reports pending). Deterministic simulation uses it.
	Executor func(clientID string, fn func())
	// OnDelivered, if set, is told the latency of each delivered command
	// (from acceptance to the device's acknowledgement).
	OnDelivered func(c *store.Command, latency time.Duration)

	// Node names this gateway among the gateways sharing the store (a
	// cluster); empty for a gateway alone. The history entries of the
	// moves to upgrading and sent then name it (NodeNote), so that every
	// node can tell which one has a command in flight.
	Node string
	// NodeLive, with Node, reports whether another node is running. A
	// command left sent or upgrading by a node that is not (it died) goes
	// back to pending: at Start, and when its device is here; one in
	// flight on a live node is left to it. Nil: every other node counts as
	// gone, as a gateway alone treats its previous run.
	NodeLive func(node string) (bool, error)
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.SecureIdle <= 0 {
		c.SecureIdle = 30 * time.Second
	}
	if c.MaxInstructions <= 0 {
		c.MaxInstructions = 5
	}
	if c.InstructBackoff <= 0 {
		c.InstructBackoff = 2 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Minute
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
	}
	if c.Tick <= 0 {
		c.Tick = time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 128
	}
	if c.DeviceRetention <= 0 {
		c.DeviceRetention = 10*c.SecureIdle + c.MaxBackoff + time.Hour
	}
	if c.WaitSession <= 0 {
		c.WaitSession = 2 * time.Second
	}
	return c
}

// Stats counts what the dispatcher did. Safe for concurrent use.
type Stats struct {
	Accepted           atomic.Uint64 // commands stored
	Delivered          atomic.Uint64 // commands acknowledged by their device
	Expired            atomic.Uint64
	Instructions       atomic.Uint64 // reconnect instructions with mode tls
	InstructionRetries atomic.Uint64 // of which repeated to a device that came back on plain
	Upgrades           atomic.Uint64 // devices that arrived on TLS after an instruction
	Downgrades         atomic.Uint64 // reconnect instructions with mode plain
	LoopProtected      atomic.Uint64 // devices that ignored MaxInstructions instructions
	// HeldUnproven counts secure commands held (noted in their history)
	// because their device's TLS session did not prove its client id.
	HeldUnproven atomic.Uint64
	// Cancelled counts commands cancelled before they were written.
	Cancelled atomic.Uint64
	// Failed counts commands given up because they can never be written
	// to their device: larger than the Maximum Packet Size it declared.
	Failed atomic.Uint64
	// Skipped counts device events not queued because they would have
	// found no record and done nothing (Dispatcher.skip).
	Skipped atomic.Uint64
}

// Dispatcher routes commands to devices. Create it with New, start it with
// Start, stop it with Stop.
type Dispatcher struct {
	cfg     Config
	rules   rules
	stats   Stats
	workers []*worker

	mu sync.Mutex // guards devices
	// devices holds a record per device with something going on; a
	// device not in it is blank (rules.blank).
	devices map[string]*device
	// peak is the most records held since devices was last rebuilt.
	peak int
	// keepBlank keeps blank records (the simulation compares a run with
	// and without them: dropping one must change no decision).
	keepBlank bool
	// queueAll queues every event, even one that would find no record
	// (the simulation compares a run with and without skipping them).
	queueAll bool
	// busy, with an Executor, reports whether work of a device is queued
	// or running there (occupied); without one, an Executor's events are
	// never skipped.
	busy func(id string) bool

	umu sync.Mutex // guards unrecorded
	// unrecorded holds the commands written to a device whose move to
	// sent failed: the store says pending, yet a cancel must be refused.
	unrecorded map[string]struct{}

	wmu sync.Mutex // guards writes
	// writes holds, per device with status writes under way (writeBehind),
	// a channel closed when the last of them is done.
	writes map[string]chan struct{}

	lastPrune time.Time // Tick's only

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	// runMu orders starting a worker goroutine (wg.Add) before Stop's
	// wg.Wait: Stop sets stopped under the write lock.
	runMu   sync.RWMutex
	stopped bool
}

// New builds a dispatcher.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil || cfg.Registry == nil || cfg.Advertise == nil {
		return nil, errors.New("dispatch: Config needs Store, Registry and Advertise")
	}
	cfg = cfg.withDefaults()
	d := &Dispatcher{
		cfg: cfg,
		rules: rules{
			epoch:           cfg.Now(),
			secureIdle:      cfg.SecureIdle,
			fixedQuiet:      cfg.FixedQuiet,
			maxInstructions: cfg.MaxInstructions,
			instructBackoff: cfg.InstructBackoff,
			maxBackoff:      cfg.MaxBackoff,
			retention:       cfg.DeviceRetention,
		},
		devices:    make(map[string]*device),
		writes:     make(map[string]chan struct{}),
		unrecorded: make(map[string]struct{}),
		stop:       make(chan struct{}),
	}
	for range cfg.Workers {
		d.workers = append(d.workers, new(worker))
	}
	return d, nil
}

// Start recovers what a previous run left (commands written but never
// acknowledged go back to pending) and starts the workers and the ticker.
// On a cluster (Config.Node) it takes back only what this node's previous
// run or a node that is gone left in flight: a command another live node
// is delivering stays its own.
func (d *Dispatcher) Start() error {
	clients, err := d.cfg.Store.Clients()
	if err != nil {
		return err
	}
	now := d.cfg.Now()
	for _, id := range clients {
		cmds, err := d.cfg.Store.Pending(id)
		if err != nil {
			return err
		}
		for _, c := range cmds {
			if c.Status != store.StatusSent && c.Status != store.StatusUpgrading {
				continue
			}
			if live, err := d.heldElsewhere(c); err != nil {
				return err
			} else if live {
				continue
			}
			note := "gateway restarted"
			if n := heldBy(c); n != "" && n != d.cfg.Node {
				note = goneNote(n)
			}
			if _, err := d.cfg.Store.Transition(c.ID, store.StatusPending, now, note); err != nil {
				return err
			}
		}
	}
	if d.cfg.Executor == nil {
		d.wg.Add(1)
		go d.ticker()
	}
	return nil
}

// Stop ends the workers and the ticker; queued events are dropped (the
// commands they concern stay in the store).
func (d *Dispatcher) Stop() {
	d.once.Do(func() {
		d.runMu.Lock()
		d.stopped = true
		d.runMu.Unlock()
		close(d.stop)
	})
	d.wg.Wait()
}

// Stats are the dispatcher's counters.
func (d *Dispatcher) Stats() *Stats { return &d.stats }

// Submit stores a new command durably and queues its dispatch; it returns
// once the command is on disk, with the status it has there (pending). The
// instruction, the delivery and their status writes follow on the device's
// worker: a caller that waited for them would hold a store round trip and a
// session write per command, and a burst of commands would queue behind
// each other's disk syncs (docs/architecture.md, "Dispatcher").
func (d *Dispatcher) Submit(c *store.Command) (store.Status, error) {
	if c.Secure && len(c.History) == 0 && d.waitsUnproven(c.ClientID) {
		// Said once, where the API shows it: the command's first entry.
		c.History = []store.Transition{{Status: store.StatusPending, At: c.CreatedAt, Note: NoteUnproven}}
		d.stats.HeldUnproven.Add(1)
	}
	if err := d.cfg.Store.Put(c); err != nil {
		return "", err
	}
	d.stats.Accepted.Add(1)
	status := c.Status
	if status == "" {
		status = store.StatusPending
	}
	d.on(c.ClientID, func() { d.reconcile(c.ClientID, trigNew) })
	return status, nil
}

// DeviceInfo is what the dispatcher knows of a device, for the API.
type DeviceInfo struct {
	State         State
	Instructions  int // TLS instructions not answered by a proven TLS arrival
	LoopProtected bool
	TLSOnly       bool
	LastSeen      time.Time
}

// Device reports what the dispatcher knows of a device.
func (d *Dispatcher) Device(id string) (DeviceInfo, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev, ok := d.devices[id]
	if !ok {
		return DeviceInfo{}, false
	}
	return DeviceInfo{
		State:         dev.state,
		Instructions:  int(dev.tries),
		LoopProtected: dev.state == StateLoopProtected,
		TLSOnly:       dev.state == StateTLSOnly,
		LastSeen:      d.rules.time(dev.lastSeen),
	}, true
}

// Tracked counts the devices the dispatcher keeps a record of: those with
// something going on (on TLS, told anything, an upgrade the quiet period
// still counts, something to retry), and those gone in such a state within
// DeviceRetention. A device idle on plain, or gone with nothing going on,
// has none.
func (d *Dispatcher) Tracked() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.devices)
}

// LoopProtected counts devices whose secure commands wait for them on TLS
// because they ignored the instructions.
func (d *Dispatcher) LoopProtected() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, dev := range d.devices {
		if dev.state == StateLoopProtected {
			n++
		}
	}
	return n
}

// worker is a queue of functions run in order by one goroutine, which is
// started by the first function queued and ends when the queue is empty:
// an idle dispatcher holds no goroutine, and no stack grown by the store
// calls of its last burst.
type worker struct {
	mu      sync.Mutex // guards q and running
	q       []func()
	running bool
}

// occupied reports, under d.mu, whether an event of device id may be
// queued or running, or a status write of it under way: its worker has
// work (of any device) or the device has writes behind.
func (d *Dispatcher) occupied(id string) bool {
	if d.cfg.Executor != nil {
		return d.busy == nil || d.busy(id)
	}
	w := d.workerFor(id)
	w.mu.Lock()
	running := w.running
	w.mu.Unlock()
	if running {
		return true
	}
	d.wmu.Lock()
	_, writing := d.writes[id]
	d.wmu.Unlock()
	return writing
}

// push queues fn and reports whether the caller must start the goroutine.
func (w *worker) push(fn func()) (start bool) {
	w.mu.Lock()
	w.q = append(w.q, fn)
	start = !w.running
	w.running = true
	w.mu.Unlock()
	return start
}

func (w *worker) run(stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		w.mu.Lock()
		q := w.q
		w.q = nil
		if len(q) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		for _, fn := range q {
			select {
			case <-stop:
				return // queued events are dropped; running stays set
			default:
			}
			fn()
		}
	}
}

func (d *Dispatcher) workerFor(id string) *worker {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return d.workers[h.Sum32()%uint32(len(d.workers))]
}

// on queues fn on the device's worker, starting its goroutine if it has
// none. fn runs after the device's status writes under way (writeBehind)
// are done, so it reads the store as the device's earlier events left it.
// After Stop, fn is dropped.
func (d *Dispatcher) on(id string, fn func()) {
	d.queue(id, func() { d.settle(id); fn() })
}

// queue is on without waiting for the device's writes.
func (d *Dispatcher) queue(id string, fn func()) {
	if d.cfg.Executor != nil {
		d.cfg.Executor(id, fn)
		return
	}
	w := d.workerFor(id)
	d.runMu.RLock()
	defer d.runMu.RUnlock()
	if d.stopped {
		return
	}
	if w.push(fn) {
		d.wg.Add(1)
		go w.run(d.stop, &d.wg)
	}
}

// writeBehind runs fn, status writes of device id, without holding the
// device's worker: the worker goes on with other devices' events while
// the store gathers the writes of many devices into one transaction and
// one disk sync (store.Options.BatchDelay). A device's writes run in the
// order given, and its next event waits for them (on). With an Executor,
// fn runs at once: the simulation sees the order the workers keep.
func (d *Dispatcher) writeBehind(id string, fn func()) {
	if d.cfg.Executor != nil {
		fn()
		return
	}
	d.runMu.RLock()
	if d.stopped {
		d.runMu.RUnlock()
		fn()
		return
	}
	d.wg.Add(1)
	d.runMu.RUnlock()
	done := make(chan struct{})
	d.wmu.Lock()
	prev := d.writes[id]
	d.writes[id] = done
	d.wmu.Unlock()
	go func() {
		defer d.wg.Done()
		if prev != nil {
			<-prev
		}
		fn()
		d.wmu.Lock()
		if d.writes[id] == done {
			delete(d.writes, id)
		}
		d.wmu.Unlock()
		close(done)
	}()
}

// settle waits until the device's status writes under way are done.
func (d *Dispatcher) settle(id string) {
	d.wmu.Lock()
	w := d.writes[id]
	d.wmu.Unlock()
	if w != nil {
		<-w
	}
}

// exec runs fn on the session, in its owner context, and waits for its
// result; ok is false when the session ended first.
func (d *Dispatcher) exec(s *session.Session, fn func(s *session.Session) error) (err error, ok bool) {
	ch := make(chan error, 1)
	s.Exec(func(s *session.Session) { ch <- fn(s) })
	select {
	case err := <-ch:
		return err, true
	default:
	}
	t := time.NewTimer(d.cfg.WaitSession)
	defer t.Stop()
	select {
	case err := <-ch:
		return err, true
	case <-t.C:
		return nil, false
	case <-d.stop:
		return nil, false
	}
}
