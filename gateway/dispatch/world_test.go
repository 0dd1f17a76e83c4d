package dispatch

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// world is a whole gateway in one goroutine: the real dispatcher, sessions,
// registry and store, over simulated connections and a simulated clock.
// Nothing runs unless the test says so: the dispatcher's work and the
// connections' owner work wait in queues that the test drains, in the
// order it chooses. Unit tests drive it by hand; the simulation drives it
// from a seed.
type world struct {
	now   time.Time
	mem   *store.Memory // what survives a restart
	st    *faultyStore
	reg   *registry.Registry[*session.Session]
	env   *session.Env
	d     *Dispatcher
	cfg   Config // as given to New, before defaults
	tasks []task // the dispatcher's queued work
	owner []func()
	// depth > 0 while a connection's owner code runs: an Exec from there
	// is queued, one from the dispatcher's work runs at once (the owner
	// is idle then).
	depth int
	conns []*conn // every connection ever made, in order
	// violations found while bytes were written.
	violations []string
	// secret holds the secure commands' ids, for the checks on writes.
	secret map[string]bool
	wills  map[string]int // wills published, by client id
	ids    int            // commands made
	// cancelled holds the commands whose cancel has answered: none of
	// them may be written after that.
	cancelled map[string]bool
	// maxPacket holds the Maximum Packet Size a device declares in its
	// CONNECT (MQTT 5), by client id.
	maxPacket map[string]uint32
	// keepBlank is given to every dispatcher started (Dispatcher.keepBlank).
	keepBlank bool
	// queueAll is given to every dispatcher started (Dispatcher.queueAll).
	queueAll bool
	// running holds the ids of the tasks running (a task may run others).
	running []string
}

type task struct {
	id string
	fn func()
}

// conn is one simulated connection: a session.Transport for the gateway
// and a byte pipe for the device.
type conn struct {
	w      *world
	s      *session.Session
	mode   registry.Mode
	peer   []string // client certificate names (TLS)
	id     string   // client id it connected with
	toDev  []byte   // written by the gateway, not yet read by the device
	log    []byte   // everything the gateway wrote
	closed bool     // closed by either side
	ended  bool     // session.Closed has run
	// A TLS connection holds what the gateway writes until its session is
	// released, as the gateway's TLS connections do (TCP_CORK): held is
	// what waits, since heldAt; the kernel sends it after corkLimit
	// anyway, and when the connection closes.
	holding bool
	held    []byte
	heldAt  time.Time
}

// corkLimit is how long the kernel holds what a corked socket was given.
const corkLimit = 200 * time.Millisecond

func (c *conn) Write(b []byte) error {
	if c.closed {
		return errors.New("closed")
	}
	c.w.checkWrite(c, b)
	c.log = append(c.log, b...)
	if c.holding {
		if len(c.held) == 0 {
			c.heldAt = c.w.now
		}
		c.held = append(c.held, b...)
		return nil
	}
	c.toDev = append(c.toDev, b...)
	return nil
}

// Release sends what is held, and what follows as it comes.
func (c *conn) Release() {
	c.holding = false
	c.send()
}

// send hands what is held to the device.
func (c *conn) send() {
	c.toDev = append(c.toDev, c.held...)
	c.held = nil
}

// Finish writes the last packet and closes.
func (c *conn) Finish(b []byte) error {
	err := c.Write(b)
	c.Close()
	return err
}

// Close is the gateway closing the connection: Closed follows, later, in
// owner context, as with a real event loop.
func (c *conn) Close() {
	if c.closed {
		return
	}
	c.closed = true
	c.send()
	c.w.owner = append(c.w.owner, c.end)
}

func (c *conn) end() {
	if c.ended {
		return
	}
	c.ended = true
	c.w.depth++
	c.s.Closed()
	c.w.depth--
}

func (c *conn) Exec(fn func()) {
	if c.w.depth > 0 {
		c.w.owner = append(c.w.owner, func() { c.w.depth++; fn(); c.w.depth-- })
		return
	}
	c.w.depth++
	fn()
	c.w.depth--
}

func (c *conn) Mode() registry.Mode    { return c.mode }
func (c *conn) Remote() string         { return "192.0.2.1:4000" }
func (c *conn) Local() string          { return "192.0.2.9:1883" }
func (c *conn) PeerIdentity() []string { return c.peer }
func (c *conn) ChannelBinding() []byte { return nil }

// Buffered: the simulated device takes every byte at once.
func (c *conn) Buffered() int { return 0 }

// PauseRead and ResumeRead: simulated devices send no more QoS 1/2
// publishes than the gateway takes at once.
func (c *conn) PauseRead()  {}
func (c *conn) ResumeRead() {}

// checkWrite checks what the gateway writes, before the device can read
// it: no secure command on plain or on an unproven session, and no plain
// instruction on plain.
func (w *world) checkWrite(c *conn, b []byte) {
	var p mqttcodec.Packet
	n, err := mqttcodec.Decode(b, c.s.Version(), 0, &p)
	if err != nil || n != len(b) {
		w.violations = append(w.violations, fmt.Sprintf("undecodable write to %s: %v", c.id, err))
		return
	}
	if p.Type != mqttcodec.PUBLISH {
		return
	}
	topic := string(p.Publish.Topic)
	if topic == control.ControlTopic {
		in, err := control.ParseInstruction(p.Publish.Payload)
		if err == nil && in.Mode == control.ModePlain && c.mode != registry.ModeTLS {
			w.violations = append(w.violations, "a mode plain instruction on a plain connection to "+c.id)
		}
		return
	}
	cid, ok := commandID(p.Publish.Payload)
	if ok && w.cancelled[cid] {
		w.violations = append(w.violations, fmt.Sprintf("command %s written to %s after its cancel answered", cid, c.id))
	}
	if !ok || !w.secret[cid] {
		return
	}
	switch {
	case c.mode != registry.ModeTLS:
		w.violations = append(w.violations, fmt.Sprintf("secure command %s written to a plain connection of %s", cid, c.id))
	case !c.s.IdentityProven():
		w.violations = append(w.violations, fmt.Sprintf("secure command %s written to an unproven TLS session of %s", cid, c.id))
	}
}

// commandID reads the command id the tests put in every payload (before
// the padding of a large one).
func commandID(payload []byte) (string, bool) {
	s, ok := strings.CutPrefix(string(payload), "cmd:")
	s, _, _ = strings.Cut(s, ".")
	return s, ok
}

// faultyStore injects errors into a store: while fail is set, each call
// that changes or reads commands fails when fail says so.
type faultyStore struct {
	store.Store
	fail func() bool
}

var errInjected = errors.New("injected store error")

func (f *faultyStore) bad() bool { return f.fail != nil && f.fail() }

func (f *faultyStore) Put(c *store.Command) error {
	if f.bad() {
		return errInjected
	}
	return f.Store.Put(c)
}

func (f *faultyStore) Pending(id string) ([]*store.Command, error) {
	if f.bad() {
		return nil, errInjected
	}
	return f.Store.Pending(id)
}

func (f *faultyStore) Transition(id string, to store.Status, at time.Time, note string) (*store.Command, error) {
	if f.bad() {
		return nil, errInjected
	}
	return f.Store.Transition(id, to, at, note)
}

func (f *faultyStore) Expire(now time.Time) ([]*store.Command, error) {
	if f.bad() {
		return nil, errInjected
	}
	return f.Store.Expire(now)
}

// Close leaves the memory store open: a restart reopens it.
func (f *faultyStore) Close() error { return nil }

// willSink counts wills.
type willSink struct{ w *world }

func (s willSink) Publish(m *session.Message, ack func(mqttcodec.ReasonCode)) {
	s.w.wills[m.ClientID]++
	if ack != nil {
		ack(mqttcodec.Success)
	}
}

// hooks passes session events to the dispatcher.
type hooks struct{ d *Dispatcher }

func (h hooks) Online(s *session.Session) { h.d.Online(s) }
func (h hooks) Query(s *session.Session)  { h.d.Query(s) }
func (h hooks) Subscribed(s *session.Session, subs []session.SubscribeEvent, ready func([]mqttcodec.ReasonCode)) {
	for _, ev := range subs {
		h.d.Subscribed(s, ev.Sub.Filter, ev.Sub.QoS)
	}
	ready(nil)
}
func (h hooks) Unsubscribed(*session.Session, string)        {}
func (h hooks) Acked(s *session.Session, token string)       { h.d.Acked(s, token) }
func (h hooks) Offline(s *session.Session, unacked []string) { h.d.Offline(s, unacked) }

// simConfig is the dispatcher configuration of the tests: short periods,
// so that everything happens within a few simulated minutes.
func simConfig() Config {
	return Config{
		SecureIdle:      5 * time.Second,
		MaxInstructions: 4,
		InstructBackoff: time.Second,
		MaxBackoff:      8 * time.Second,
		Retention:       time.Hour,
		DeviceRetention: 10 * time.Minute,
		Tick:            time.Second,
	}
}

var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// newWorld builds a gateway over a memory store, started.
func newWorld(cfg Config) *world {
	w := &world{now: epoch, mem: store.NewMemory(store.Options{Limit: 1000}), secret: make(map[string]bool), cfg: cfg,
		wills: make(map[string]int), cancelled: make(map[string]bool), maxPacket: make(map[string]uint32)}
	w.st = &faultyStore{Store: w.mem}
	if err := w.start(); err != nil {
		panic(err)
	}
	return w
}

// start builds the gateway's parts around the store, as a process start
// does, and starts the dispatcher (which recovers what was in flight).
func (w *world) start() error {
	w.reg = registry.New[*session.Session]()
	cfg := w.cfg
	cfg.Store, cfg.Registry = w.st, w.reg
	cfg.Now = func() time.Time { return w.now }
	cfg.Advertise = func(_ *session.Session, m control.Mode) string {
		if m == control.ModeTLS {
			return "gw:8883"
		}
		return "gw:1883"
	}
	cfg.Executor = func(id string, fn func()) { w.tasks = append(w.tasks, task{id: id, fn: fn}) }
	d, err := New(cfg)
	if err != nil {
		return err
	}
	sink := willSink{w: w}
	env, err := session.NewEnv(session.Env{
		Registry: w.reg,
		Auth:     auth.AllowAll(),
		Identity: func(req *auth.Request, _ auth.Result) (bool, auth.Result, bool) {
			return slices.Contains(req.PeerIdentity, req.ClientID), auth.Result{}, true
		},
		Sink:         sink,
		Sessions:     session.NewStore(sink, session.StoreLimits{}),
		Hooks:        hooks{d: d},
		Now:          func() time.Time { return w.now },
		ControlGrace: 2 * time.Second,
	})
	if err != nil {
		return err
	}
	d.keepBlank, d.queueAll, d.busy = w.keepBlank, w.queueAll, w.busy
	w.env, w.d = env, d
	w.tasks, w.owner = nil, nil
	return d.Start()
}

// restart is a crash of the gateway process and a start on the same store:
// every connection drops without its session ending, queued work is lost.
func (w *world) restart() error {
	w.d.Stop()
	for _, c := range w.conns {
		c.closed, c.ended = true, true
	}
	return w.start()
}

// stop stops the dispatcher (its ticker and workers are not running in
// this mode, but Stop must be safe).
func (w *world) stop() { w.d.Stop() }

// runTask runs the oldest queued dispatcher work; false when none.
func (w *world) runTask() bool {
	if len(w.tasks) == 0 {
		return false
	}
	t := w.tasks[0]
	w.tasks = w.tasks[1:]
	w.running = append(w.running, t.id)
	t.fn()
	w.running = w.running[:len(w.running)-1]
	return true
}

// busy reports whether work of device id is queued or running: what a
// worker would say of it (Dispatcher.occupied), one device at a time
// where a worker answers for all of its devices.
func (w *world) busy(id string) bool {
	return slices.Contains(w.running, id) || slices.ContainsFunc(w.tasks, func(t task) bool { return t.id == id })
}

// runOwner runs the oldest queued owner work; false when none.
func (w *world) runOwner() bool {
	if len(w.owner) == 0 {
		return false
	}
	fn := w.owner[0]
	w.owner = w.owner[1:]
	fn()
	return true
}

// settle runs queued work until there is none.
func (w *world) settle() {
	for w.runOwner() || w.runTask() {
	}
}

// advance moves the clock and runs what time triggers: the sessions'
// deadlines and the dispatcher's tick.
func (w *world) advance(dt time.Duration) {
	w.now = w.now.Add(dt)
	for _, c := range w.conns {
		if len(c.held) > 0 && w.now.Sub(c.heldAt) >= corkLimit {
			c.send() // still corked: what comes next waits again
		}
		if !c.closed {
			w.depth++
			c.s.Tick(w.now) // closes through the transport when due
			w.depth--
		}
	}
	w.env.Sessions.Sweep(w.now)
	w.d.Tick()
}

// dial opens a connection for a device and sends its CONNECT. proven gives
// it a client certificate naming id (TLS only).
func (w *world) dial(id string, mode registry.Mode, version byte, proven bool, will bool) *conn {
	c := &conn{w: w, mode: mode, id: id, holding: mode == registry.ModeTLS}
	if proven && mode == registry.ModeTLS {
		c.peer = []string{id}
	}
	c.s = new(session.Session)
	c.s.Init(w.env, c)
	w.conns = append(w.conns, c)
	k := &mqttcodec.Connect{ProtocolVersion: version, CleanStart: true, ClientID: []byte(id)}
	if max := w.maxPacket[id]; max != 0 && version == mqttcodec.V5 {
		k.Properties.SetMaximumPacketSize(max)
	}
	if will {
		k.WillFlag, k.WillTopic, k.WillPayload, k.WillQoS = true, []byte("devices/"+id+"/status"), []byte("offline"), 1
	}
	w.send(c, mqttcodec.AppendConnect(nil, k))
	return c
}

// send feeds bytes from the device to its session, in owner context.
func (w *world) send(c *conn, b []byte) {
	if c.closed {
		return
	}
	w.depth++
	_, closeConn := c.s.Feed(b)
	w.depth--
	if closeConn {
		c.Close()
	}
}

// query publishes on the query topic (QoS 1, packet id 1).
func (w *world) query(c *conn) {
	w.send(c, mqttcodec.AppendPublish(nil, c.s.Version(), &mqttcodec.Publish{Topic: []byte(control.QueryTopic), QoS: 1, PacketID: 1}))
}

// ack sends a PUBACK.
func (w *world) ack(c *conn, pid uint16) {
	w.send(c, mqttcodec.AppendAck(nil, c.s.Version(), mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: pid}))
}

// disconnect sends DISCONNECT and closes.
func (w *world) disconnect(c *conn) {
	w.send(c, mqttcodec.AppendDisconnect(nil, c.s.Version(), &mqttcodec.Disconnect{}))
	c.Close()
}

// crash drops the connection from the device's side: no DISCONNECT.
func (w *world) crash(c *conn) { c.Close() }

// received is what a device read from its connection.
type received struct {
	commands    []delivered // PUBLISHes of commands
	instruction *control.Mode
	ref         string // MQTT 5 Server Reference
	controlPID  uint16
	connack     bool
}

type delivered struct {
	id  string
	pid uint16
	dup bool
}

// read takes what the gateway wrote to the device since the last read.
func (w *world) read(c *conn) received {
	var r received
	b := c.toDev
	c.toDev = nil
	for len(b) > 0 {
		var p mqttcodec.Packet
		n, err := mqttcodec.Decode(b, c.s.Version(), 0, &p)
		if err != nil || n == 0 {
			panic(fmt.Sprintf("device cannot decode % x: %v", b, err))
		}
		b = b[n:]
		switch p.Type {
		case mqttcodec.CONNACK:
			r.connack = p.Connack.ReasonCode == 0
		case mqttcodec.DISCONNECT:
			if pr := &p.Disconnect.Properties; pr.Has(mqttcodec.PropServerReference) {
				ref := string(pr.ServerReference)
				m, _, _ := control.ParseServerReference(ref)
				r.instruction, r.ref = &m, ref
			}
		case mqttcodec.PUBLISH:
			if string(p.Publish.Topic) == control.ControlTopic {
				in, err := control.ParseInstruction(p.Publish.Payload)
				if err == nil {
					r.instruction, r.controlPID = &in.Mode, p.Publish.PacketID
				}
				continue
			}
			if id, ok := commandID(p.Publish.Payload); ok {
				r.commands = append(r.commands, delivered{id: id, pid: p.Publish.PacketID, dup: p.Publish.Dup})
			}
		}
	}
	return r
}

// submit puts a command for id through the dispatcher.
func (w *world) submit(id string, secure bool, ttl time.Duration) (string, error) {
	return w.submitSized(id, secure, ttl, 0)
}

// submitSized is submit with the payload padded to at least size bytes.
func (w *world) submitSized(id string, secure bool, ttl time.Duration, size int) (string, error) {
	w.ids++
	cid := fmt.Sprintf("c%06d", w.ids) // in submission order, and the same in every run
	payload := []byte("cmd:" + cid)
	if size > len(payload) {
		payload = append(payload, strings.Repeat(".", size-len(payload))...)
	}
	c := &store.Command{ID: cid, ClientID: id, Topic: "devices/" + id + "/commands/x",
		Payload: payload, QoS: 1, Secure: secure, CreatedAt: w.now}
	if ttl > 0 {
		c.ExpiresAt = w.now.Add(ttl)
	}
	if secure {
		w.secret[cid] = true
	}
	_, err := w.d.Submit(c)
	return cid, err
}

// status reads a command from the store under the faults.
func (w *world) status(cid string) *store.Command {
	c, err := w.mem.Get(cid)
	if err != nil {
		panic(err)
	}
	return c
}

// hasNote reports whether a command's history holds the note.
func hasNote(c *store.Command, note string) int {
	n := 0
	for _, h := range c.History {
		if h.Note == note {
			n++
		}
	}
	return n
}

// deviceState reads a device's state.
func (w *world) deviceState(id string) (State, bool) {
	info, ok := w.d.Device(id)
	return info.State, ok
}

// writtenTo reports whether bytes holding s were ever written to c.
func writtenTo(c *conn, s string) bool { return bytes.Contains(c.log, []byte(s)) }
