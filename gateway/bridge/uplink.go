package bridge

import (
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// entry is one device message on its way to the broker.
//
// Until the sender takes it (taken, under its lane's mu), an entry queued
// for the spiller may change under the lane's mu: the spiller moves its
// bytes to disk (spilled) or refuses it (refused). After that, only the
// goroutine holding it (sender, outbox, Stop) touches it.
type entry struct {
	ack      func(mqttcodec.ReasonCode) // nil: QoS 0, or replayed from the spill files
	clientID string
	topic    string // as sent upstream (prefix included); empty when spilled
	payload  []byte // nil when spilled
	ref      spoolRef
	size     int64 // bytes counted against the memory budget or the hand-off
	qos      byte  // 0, 1 or 2 upstream
	retain   bool
	props    *session.MessageProps // MQTT 5 properties; nil when spilled
	expires  time.Time             // zero: never
	spilled  bool
	// handoff: the entry waits for the spiller, its bytes counted
	// against Bridge.handoff, not the memory budget.
	handoff bool
	// shared: a QoS 0 entry counted against its device's share.
	shared  bool
	taken   bool // popped by the sender
	refused bool // refused by the spiller; skipped by the sender
	// losses counts the MQTT 5 connections that ended soon after they
	// were made (stableConnection) while it was sent and unacknowledged
	// there: a message the broker closes the connection on. At
	// maxResends it is given up (track.ConnectionLost).
	losses uint8
}

// Publish implements session.Sink: it takes a device's message for the
// broker without blocking, and never touches the disk or waits on the
// network: it runs on the publishing device's event loop.
//
// QoS 0 is queued if the device's connection to the broker is up and the
// device is within its share of the memory buffer (Config.DeviceBufferMessages,
// DeviceBufferBytes), and dropped and counted by reason otherwise: a
// device that floods loses its own messages, not the others'. Before
// that, at three quarters of its share, Config.Throttle pauses reading it
// until its share is down to a quarter: backpressure first, drop last. QoS 1 and 2
// are sent at their QoS, and ack is called with Success once the broker
// acknowledged (PUBACK; PUBCOMP for QoS 2), or with the broker's failure
// code; a message whose Expires passed before it could be sent is not
// sent and ack gets Success (Stats.Expired); while the broker is unreachable they wait in the memory
// buffer, then in the hand-off to the spiller, which writes them to the
// spill files on its own goroutine; when all are full, ack gets
// QuotaExceeded (0x97) at once. Which topics a device may publish on is
// decided before, by the gateway's topic authorization (package acl) in
// front of the Bridge.
func (b *Bridge) Publish(m *session.Message, ack func(mqttcodec.ReasonCode)) {
	if rc := b.check(m); rc != mqttcodec.Success {
		if m.QoS == 0 && rc == mqttcodec.UnspecifiedError {
			b.stats.dropped[dropStopping].Add(1)
		}
		b.refuse(m, ack, rc)
		return
	}
	if !m.Expires.IsZero() && !time.Now().Before(m.Expires) {
		b.expire(ack)
		return
	}
	l := b.lanes[b.laneIndex(m.ClientID)]
	topic := b.cfg.TopicPrefix + m.Topic
	size := int64(len(topic)+len(m.Payload)) + propsSize(m.Props)
	e := &entry{ack: ack, clientID: m.ClientID, qos: min(m.QoS, 2), retain: m.Retain,
		topic: topic, payload: m.Payload, size: size, props: m.Props, expires: m.Expires}
	switch {
	case e.qos == 0:
		if !l.c().open() {
			b.stats.dropped[dropDisconnected].Add(1)
			return
		}
		why, throttle := b.mem.reserveShared(m.ClientID, size)
		if throttle == throttlePause {
			// Backpressure first: stop reading the device before its
			// share is full, so that what it sends waits in its socket.
			b.pause(m)
		}
		if why != dropNone {
			b.stats.dropped[why].Add(1)
			// Check first: a flood drops hundreds of thousands a second,
			// and the sampler lets a handful through.
			if ce := b.hot.Check(zap.InfoLevel, "QoS 0 device message dropped"); ce != nil {
				ce.Write(zap.String("client", m.ClientID), zap.String("reason", dropReasons[why]))
			}
			return
		}
		e.shared = true
	case b.mem.reserve(size):
	case b.spool.Load() == nil:
		b.quota(e)
		return
	case b.handoff.reserve(size):
		e.handoff = true
	default:
		// The spiller is behind: push the device back rather than wait.
		b.stats.handoffFull.Add(1)
		b.quota(e)
		return
	}
	if !l.push(e) {
		if e.handoff {
			b.handoff.release(size)
		} else {
			b.release(e)
		}
		reply(ack, mqttcodec.UnspecifiedError)
		return
	}
	if e.handoff {
		// Never blocks: the channel holds as many entries as the
		// hand-off budget admits.
		b.spillq <- e
	}
	signal(l.wake)
}

// spiller writes the entries handed off by Publish to the spill files, on
// its own goroutine, so that no event loop waits on the disk.
func (b *Bridge) spiller() {
	defer b.wg.Done()
	for {
		select {
		case e := <-b.spillq:
			b.spillOne(e)
		case <-b.stop:
			return
		}
	}
}

// spillOne moves one handed-off entry to the spill files, or refuses it.
// The entry stays in its lane's queue meanwhile; if the sender takes it
// first, it goes from memory and the spiller leaves it alone.
//
// The spiller alone gives an entry's room in the hand-off back, once it
// has read it from spillq: so spillq never holds more entries than the
// hand-off admits, and Publish's send on it never blocks.
func (b *Bridge) spillOne(e *entry) {
	defer b.handoff.release(e.size)
	l := b.lanes[b.laneIndex(e.clientID)]
	l.mu.Lock()
	taken := e.taken
	l.mu.Unlock()
	if taken {
		return // sent from memory, which MaxInflight bounds
	}
	if b.cfg.spillGate != nil {
		select {
		case <-b.cfg.spillGate:
		case <-b.stop:
			return
		}
	}
	sp := b.spool.Load()
	ref, err := sp.writeMeta(e.clientID, e.topic, e.payload, e.qos, e.retain, recMeta{props: e.props, expires: e.expires})
	l.mu.Lock()
	if e.taken {
		l.mu.Unlock()
		if err == nil {
			sp.release(ref)
		}
		return
	}
	if err == nil {
		e.spilled, e.ref, e.handoff = true, ref, false
		e.topic, e.payload, e.props = "", nil, nil
		l.mu.Unlock()
		b.stats.spilledTotal.Add(1)
		return
	}
	e.refused = true
	l.mu.Unlock()
	if errors.Is(err, errSpoolFull) {
		// The newest message is the one refused: what waits keeps its
		// order, and the device sends this one again later.
		b.stats.spillFull.Add(1)
		b.stats.quotaExceeded.Add(1)
		b.hot.Warn("upstream spill full; device publish refused until the broker takes what waits",
			zap.String("client", e.clientID), zap.Error(err))
		reply(e.ack, mqttcodec.QuotaExceeded)
		return
	}
	b.hot.Error("cannot spill a message; refusing it", zap.String("client", e.clientID), zap.Error(err))
	b.stats.abandoned.Add(1)
	reply(e.ack, mqttcodec.UnspecifiedError)
}

// pause stops reading a device that is filling its QoS 0 share: at once
// when Publish runs in the device's own context (m.From), so that the rest
// of what was read from its socket waits rather than is dropped, else
// through Config.Throttle. Resuming goes through Config.Throttle.
func (b *Bridge) pause(m *session.Message) {
	if m.From == nil || b.cfg.Throttle == nil {
		b.throttle(m.ClientID, true)
		return
	}
	b.stats.throttled.Add(1)
	m.From.PauseReading(session.PauseUpstream)
}

// expire answers a device whose message expired before it could be sent:
// taken, as the broker would have dropped it.
func (b *Bridge) expire(ack func(mqttcodec.ReasonCode)) {
	b.stats.expired.Add(1)
	reply(ack, mqttcodec.Success)
}

// propsSize is what a message's properties count against the buffer.
func propsSize(p *session.MessageProps) int64 {
	if p == nil {
		return 0
	}
	n := len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData) + 2
	for _, u := range p.User {
		n += len(u.Key) + len(u.Value)
	}
	return int64(n)
}

func (b *Bridge) quota(e *entry) {
	b.stats.quotaExceeded.Add(1)
	b.hot.Info("upstream buffer full; device pushed back", zap.String("client", e.clientID))
	reply(e.ack, mqttcodec.QuotaExceeded)
}

// reply answers a device unless there is nobody to answer.
func reply(ack func(mqttcodec.ReasonCode), rc mqttcodec.ReasonCode) {
	if ack != nil {
		ack(rc)
	}
}

// check decides whether a device may publish m upstream.
func (b *Bridge) check(m *session.Message) mqttcodec.ReasonCode {
	switch {
	case b.closing.Load():
		return mqttcodec.UnspecifiedError
	case len(b.cfg.TopicPrefix)+len(m.Topic) > 0xFFFF:
		return mqttcodec.TopicNameInvalid
	}
	return mqttcodec.Success
}

func (b *Bridge) refuse(m *session.Message, ack func(mqttcodec.ReasonCode), rc mqttcodec.ReasonCode) {
	if rc != mqttcodec.UnspecifiedError {
		b.stats.refused.Add(1)
		b.hot.Info("device publish refused", zap.String("client", m.ClientID),
			zap.String("topic", m.Topic), zap.Stringer("reason", rc))
	}
	reply(ack, rc)
}

// laneIndex spreads devices over the pool; one device always uses the same
// connection, which keeps its messages in order (FNV-1a of the client id).
func (b *Bridge) laneIndex(clientID string) int {
	h := uint32(2166136261)
	for i := 0; i < len(clientID); i++ {
		h ^= uint32(clientID[i])
		h *= 16777619
	}
	return int(h % uint32(len(b.lanes)))
}

// finish ends an entry's life: it frees its buffer space and answers its
// device.
func (b *Bridge) finish(e *entry, rc mqttcodec.ReasonCode) {
	b.release(e)
	if e.ack != nil {
		ack := e.ack
		e.ack = nil
		ack(rc)
	}
}

func (b *Bridge) release(e *entry) {
	switch {
	case e.spilled:
		if sp := b.spool.Load(); sp != nil {
			sp.release(e.ref)
		}
	case e.handoff:
		// The spiller gives the hand-off's room back (spillOne).
	case e.shared:
		if b.mem.releaseShared(e.clientID, e.size) == throttleResume {
			b.throttle(e.clientID, false)
		}
	default:
		b.mem.release(e.size)
	}
}

// push queues e unless the lane is closed.
func (l *lane) push(e *entry) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.queue.push(e)
	return true
}

// prepend puts es at the head of the queue, in their order.
func (l *lane) prepend(es []*entry) {
	if len(es) == 0 {
		return
	}
	l.mu.Lock()
	l.queue.prepend(es)
	l.mu.Unlock()
}

// requeue puts e back at the head of the queue.
func (l *lane) requeue(e *entry) {
	l.prepend([]*entry{e})
	signal(l.wake)
}

// pending reports queued or unacknowledged messages.
func (l *lane) pending() bool {
	l.mu.Lock()
	n := l.queue.len()
	l.mu.Unlock()
	return n > 0 || l.box.len() > 0
}

// acked is told by the outbox that the broker acknowledged e.
func (l *lane) acked(e *entry) {
	l.b.stats.forwardedUp.Add(1)
	l.b.finish(e, mqttcodec.Success)
	signal(l.wake)
}

// nacked is told that the broker refused e (a PUBACK, PUBREC or PUBCOMP
// with a failure code): the device gets the broker's reason.
func (l *lane) nacked(e *entry, rc mqttcodec.ReasonCode) {
	l.b.hot.Info("the broker refused a device message", zap.String("client_id", l.id),
		zap.String("client", e.clientID), zap.Stringer("reason", rc))
	l.b.stats.refused.Add(1)
	l.b.finish(e, rc)
	signal(l.wake)
}

// tooLarge refuses a message larger than the broker's Maximum Packet Size
// (PUBACK 0x95 on MQTT 5; a 3.1.1 device's session decides what a
// refusal becomes): sent, it would only make the broker close the
// connection, again at every resend, with the lane's later messages
// waiting behind it.
func (l *lane) tooLarge(e *entry, size int, limit uint32) {
	l.b.stats.tooLarge.Add(1)
	l.b.hot.Warn("a device message is larger than the upstream broker's Maximum Packet Size; refusing it",
		zap.String("client_id", l.id), zap.String("client", e.clientID), zap.Int("topic_and_payload", size),
		zap.Uint32("broker_maximum", limit))
	if e.qos == 0 {
		l.b.release(e)
		return
	}
	l.b.finish(e, mqttcodec.PacketTooLarge)
	signal(l.wake)
}

// givenUp is told by the outbox that e was resent too often.
func (l *lane) givenUp(e *entry) {
	l.b.stats.abandoned.Add(1)
	l.b.hot.Warn("a message was resent too often without acknowledgement; refusing it",
		zap.String("client_id", l.id), zap.String("client", e.clientID), zap.Int("resends", maxResends))
	l.b.finish(e, mqttcodec.UnspecifiedError)
	signal(l.wake)
}

// send moves queued messages to paho, in order, with at most MaxInflight
// unacknowledged.
func (l *lane) send() {
	defer l.b.wg.Done()
	tick := time.NewTicker(time.Second) // a safety net: every change also signals wake
	defer tick.Stop()
	for {
		select {
		case <-l.b.stop:
			return
		default:
		}
		if l.burst() {
			continue
		}
		select {
		case <-l.wake:
		case <-tick.C:
		case <-l.b.stop:
			return
		}
	}
}

// maxBurst bounds the publishes written corked, in one burst.
const maxBurst = 64

// minBurst is the fewest publishes a burst starts with while others are
// unacknowledged (fewer only when fewer are queued): with the broker's
// window full, each acknowledgement would otherwise free one slot and
// send one publish, a write of ~70 bytes per message, which the broker
// answers with one PUBACK per read; waiting for a second acknowledgement
// halves the writes and lets the acknowledgements arrive together (the
// sender side of TCP's silly-window avoidance). It never waits on an
// empty window, so a lone message leaves at once. docs/benchmarks.md §6.
const minBurst = 2

// burst publishes what may go now, up to maxBurst, with the connection
// corked, so that they leave in one system call; it reports whether it
// found anything to send.
func (l *lane) burst() bool {
	e := l.next(true)
	if e == nil {
		return false
	}
	c := l.c()
	c.cork()
	refused := false
	for n := 1; ; n++ {
		if refused = !l.publish(e); refused || n == maxBurst {
			break
		}
		if e = l.next(false); e == nil {
			break
		}
	}
	c.uncork()
	if refused {
		// The client refused a publish before storing it (the
		// connection went down): give it time.
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-l.b.stop:
			t.Stop()
		}
	}
	return true
}

// next returns the message to send now, if any; first: the first of a
// burst (minBurst).
func (l *lane) next(first bool) *entry {
	c := l.c()
	open := c.open()
	var dropped []*entry
	defer func() {
		for _, e := range dropped {
			l.b.stats.dropped[dropDisconnected].Add(1)
			l.b.release(e)
		}
	}()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		e := l.queue.peek()
		if e == nil {
			return nil
		}
		if e.refused {
			l.queue.pop() // the spiller answered its device
			continue
		}
		if open {
			break
		}
		if e.qos != 0 {
			return nil
		}
		dropped = append(dropped, l.queue.pop())
	}
	if l.gate {
		// What paho resends on a new connection goes first: new messages
		// wait until the broker acknowledged it, so the order holds and
		// nothing is sent twice.
		if !c.settled() {
			return nil
		}
		l.gate = false
	}
	win, in := min(l.b.cfg.MaxInflight, c.window()), c.inflight()
	if in >= win || first && in > 0 && win-in < min(minBurst, l.queue.len()) {
		return nil
	}
	e := l.queue.pop()
	e.taken = true
	return e
}

// publish hands one message to the client. It reports false when the
// client refused it (the connection is down): e is queued again.
func (l *lane) publish(e *entry) bool {
	topic, payload := e.topic, e.payload
	if e.spilled {
		var (
			err  error
			meta recMeta
		)
		if topic, payload, meta, err = l.b.spool.Load().readMeta(e.ref); err != nil {
			l.b.log.Error("a spilled message cannot be read back; refusing it",
				zap.String("client", e.clientID), zap.Error(err))
			l.b.stats.abandoned.Add(1)
			l.b.finish(e, mqttcodec.UnspecifiedError)
			return true
		}
		e.props, e.expires = meta.props, meta.expires
	}
	if !e.expires.IsZero() && !time.Now().Before(e.expires) {
		ack := e.ack
		e.ack = nil
		l.b.release(e)
		l.b.expire(ack)
		return true
	}
	c := l.c()
	if e.losses >= maxResends {
		l.givenUp(e) // back from a connection without session (track.ConAckReceived)
		return true
	}
	if ok, limit := c.fits(e, topic, payload); !ok {
		l.tooLarge(e, len(topic)+len(payload), limit)
		return true
	}
	if e.qos == 0 {
		if c.publish(e, topic, payload) {
			l.b.stats.forwardedUp.Add(1)
		} else {
			l.b.stats.dropped[dropDisconnected].Add(1)
		}
		l.b.release(e)
		return true
	}
	if c.publish(e, topic, payload) {
		// The client stored it: it is sent, or resent after a reconnect,
		// until the broker acknowledges it. e is no longer this
		// goroutine's to touch.
		return true
	}
	if e.spilled {
		e.props = nil // in the spill record; read again when sent again
	}
	// The client refused it before storing it (the connection went down).
	l.b.hot.Debug("publish refused by the client; queued again", zap.String("client_id", l.id))
	l.requeue(e)
	return false
}

// fifo is a queue of entries.
type fifo struct {
	items []*entry
	head  int
}

func (q *fifo) len() int { return len(q.items) - q.head }

func (q *fifo) push(e *entry) { q.items = append(q.items, e) }

func (q *fifo) peek() *entry {
	if q.head == len(q.items) {
		return nil
	}
	return q.items[q.head]
}

func (q *fifo) pop() *entry {
	if q.head == len(q.items) {
		return nil
	}
	e := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.head >= 1024 && q.head*2 >= len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return e
}

// prepend puts es before the current head, in their order.
func (q *fifo) prepend(es []*entry) {
	if len(es) <= q.head {
		q.head -= len(es)
		copy(q.items[q.head:], es)
		return
	}
	items := make([]*entry, 0, len(es)+q.len())
	items = append(items, es...)
	items = append(items, q.items[q.head:]...)
	q.items, q.head = items, 0
}

// drain empties the queue and returns its entries in order.
func (q *fifo) drain() []*entry {
	out := append([]*entry(nil), q.items[q.head:]...)
	q.items, q.head = nil, 0
	return out
}
