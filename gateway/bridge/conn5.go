package bridge

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	pahosession "github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/eclipse/paho.golang/paho/store/memory"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// sessionExpiry is the Session Expiry Interval the bridge asks for: the
// broker keeps its sessions as an MQTT 3.1.1 broker keeps a session with
// clean session off.
const sessionExpiry = math.MaxUint32

// receiveMaximum is the Receive Maximum the bridge announces: how many
// QoS 1 and 2 messages the broker may send before the bridge acknowledged
// them.
const receiveMaximum = 1024

// conn5 is a pool connection in MQTT 5, made with paho.golang's paho
// package. The lane reconnects it (paho.Client is one network connection);
// the session state, paho's in-memory State wrapped in track, outlives
// the connections, so what the broker had not acknowledged is sent again,
// in order, when the next connection is up.
type conn5 struct {
	l   *lane
	ses *track

	mu   sync.Mutex // guards cli, fc, wc, down and ids
	cli  *paho.Client
	fc   *flushConn // the current connection's writer
	wc   net.Conn   // the same, as paho writes to it (a sync.Locker held per packet)
	down chan struct{}
	ids  *subIDReader // of the current connection
	// corked is the writer the sender corked (sender only).
	corked *flushConn

	gen     atomic.Uint64 // counts connections: an acknowledgement goes on the connection its message came on
	up      atomic.Bool
	recvMax atomic.Int32
	shared  atomic.Bool
	subIDs  atomic.Bool
	maxQoS  atomic.Int32
	// retainOK: the broker keeps retained messages (CONNACK Retain
	// Available); noRetainLogged says the loss of the flag was logged
	// for this connection.
	retainOK       atomic.Bool
	noRetainLogged atomic.Bool
	// maxPacket is the broker's Maximum Packet Size (CONNACK), 0 for
	// none: a client must not send a larger packet (MQTT 5, 3.2.2.3.6),
	// and a broker closes the connection on one.
	maxPacket atomic.Uint32
	pubMu     sync.Mutex // one publish at a time: track.next names its entry
}

func newConn5(l *lane) *conn5 {
	c := &conn5{l: l}
	c.ses = newTrack(c)
	c.recvMax.Store(int32(l.b.cfg.MaxInflight))
	c.maxQoS.Store(2)
	c.retainOK.Store(true)
	return c
}

func (c *conn5) protocol() string { return Protocol5 }

func (c *conn5) connect() error {
	l := c.l
	b := l.b
	cfg := &b.cfg
	nc, err := b.dial(b.up.url)
	if err != nil {
		return err
	}
	fc := newFlushConn(nc)
	bc := bufferedConn{Conn: fc, r: bufio.NewReaderSize(nc, 32<<10), head: &head{}, ids: newSubIDReader()}
	wc := packets.NewThreadSafeConn(bc)
	cli := paho.NewClient(paho.ClientConfig{
		ClientID:           l.id,
		Conn:               wc,
		Session:            c.ses,
		OnPublishReceived:  []func(paho.PublishReceived) (bool, error){c.onPublish},
		OnServerDisconnect: l.serverDisconnect,
		PacketTimeout:      cfg.ConnectTimeout,
	})
	expiry, recv := uint32(sessionExpiry), uint16(receiveMaximum)
	cp := &paho.Connect{
		ClientID:   l.id,
		KeepAlive:  uint16(min(cfg.KeepAlive/time.Second, math.MaxUint16)),
		CleanStart: l.wipe,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recv},
	}
	if cfg.Username != "" {
		cp.Username, cp.UsernameFlag = cfg.Username, true
		cp.Password, cp.PasswordFlag = []byte(cfg.Password), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	defer cancel()
	go func() {
		select {
		case <-b.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	// The broker may send messages as soon as it answered, before
	// Connect returns: they belong to this connection, and their
	// Subscription Identifiers are read by its reader.
	c.gen.Add(1)
	c.mu.Lock()
	c.ids, c.fc = bc.ids, fc
	c.mu.Unlock()
	ca, err := cli.Connect(ctx, cp)
	if err != nil {
		_ = bc.Conn.Close() // paho closed it too, unless it failed before writing
		if ca != nil && (ca.ReasonCode == byte(mqttcodec.UnsupportedProtocolVersion) || ca.ReasonCode == 0x01) {
			return errUnsupportedProtocol
		}
		if bc.head.refused311() {
			// A broker of MQTT 3.1.1 only answers with its own CONNACK,
			// which paho cannot read as an MQTT 5 one.
			return errUnsupportedProtocol
		}
		if b.isStopping() {
			return ErrClosed
		}
		return err
	}
	rm, shared, ids, mq, retain, mp := int32(65535), true, true, int32(2), true, uint32(0)
	if p := ca.Properties; p != nil {
		retain = p.RetainAvailable
		if p.MaximumPacketSize != nil {
			mp = *p.MaximumPacketSize
		}
		if p.ReceiveMaximum != nil {
			rm = int32(*p.ReceiveMaximum)
		}
		if p.MaximumQoS != nil {
			mq = int32(*p.MaximumQoS)
		}
		shared, ids = p.SharedSubAvailable, p.SubIDAvailable
	}
	c.recvMax.Store(rm)
	c.shared.Store(shared)
	c.subIDs.Store(ids)
	c.maxQoS.Store(mq)
	c.retainOK.Store(retain)
	c.maxPacket.Store(mp)
	c.noRetainLogged.Store(false)
	down := make(chan struct{})
	c.mu.Lock()
	c.cli, c.down, c.wc = cli, down, wc
	c.mu.Unlock()
	c.up.Store(true)
	go func() {
		<-cli.Done()
		c.up.Store(false)
		close(down)
	}()
	l.connected()
	return nil
}

func (c *conn5) lost() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down
}

func (c *conn5) open() bool { return c.up.Load() }

func (c *conn5) client() *paho.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cli
}

func (c *conn5) publish(e *entry, topic string, payload []byte) bool {
	cli := c.client()
	if cli == nil || !c.open() {
		return false
	}
	p := &paho.Publish{QoS: min(e.qos, byte(c.maxQoS.Load())), Retain: e.retain, Topic: topic, Payload: payload,
		Properties: publishProps(e.props, e.expires)}
	if p.Retain && !c.retainOK.Load() {
		// A retained PUBLISH to a broker without retained messages is a
		// protocol error there (and paho refuses to send it): the message
		// goes live, without the flag, rather than never.
		p.Retain = false
		if !c.noRetainLogged.Swap(true) {
			c.l.b.log.Warn("upstream broker keeps no retained messages (Retain Available 0): retained publishes are forwarded without the retain flag",
				zap.String("topic", topic))
		}
	}
	// paho bounds the wait for a slot in the broker's window by its
	// PacketTimeout; the lane never sends past the window anyway.
	ctx := context.Background()
	if p.QoS == 0 {
		_, err := cli.PublishWithOptions(ctx, p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
		if err == nil && e.qos > 0 {
			// The broker's CONNACK said Maximum QoS 0: written is all
			// it ever acknowledges.
			c.l.acked(e)
		}
		return err == nil
	}
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	c.ses.expect(e)
	if p.Properties == nil && !p.Retain { // paho checks a retained one against the CONNACK
		return c.publishPlain(e, p)
	}
	// AsyncSend returns once the publish is in the session state (and
	// written); the acknowledgement comes through track.
	_, _ = cli.PublishWithOptions(ctx, p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
	return c.ses.taken(e)
}

func (c *conn5) fits(e *entry, topic string, payload []byte) (bool, uint32) {
	limit := c.maxPacket.Load()
	if limit == 0 {
		return true, 0
	}
	// Topic, packet identifier (QoS > 0 as sent), payload; the
	// properties are encoded only when there are some.
	n := 2 + len(topic) + len(payload)
	if min(e.qos, byte(c.maxQoS.Load())) > 0 {
		n += 2
	}
	props := 0
	if pp := publishProps(e.props, e.expires); pp != nil {
		props = len((&paho.Publish{Properties: pp}).Packet().Properties.Pack(packets.PUBLISH))
	}
	n += mqttcodec.VarintLen(props) + props
	return 1+mqttcodec.VarintLen(n)+n <= int(limit), limit
}

// publishPlain publishes at QoS 1 or 2 a message without properties, the
// common case, as paho's PublishWithOptions would, minus its cost per
// publish (a context with a timer, a channel, and the packet encoded
// through net.Buffers and a bytes.Buffer): the packet goes into paho's
// session State (AddToSession: packet identifier, window, kept for a
// resend), then is encoded with the gateway's codec and written whole
// under paho's write lock. c.pubMu held, e expected.
func (c *conn5) publishPlain(e *entry, p *paho.Publish) bool {
	c.mu.Lock()
	wc := c.wc
	c.mu.Unlock()
	pb := &packets.Publish{QoS: p.QoS, Retain: p.Retain, Topic: p.Topic, Payload: p.Payload,
		Properties: &packets.Properties{}}
	if err := c.ses.AddToSession(context.Background(), pb, nil); err != nil || !c.ses.taken(e) {
		return false
	}
	bp := pubBufs.Get().(*[]byte)
	b := mqttcodec.AppendPublish((*bp)[:0], mqttcodec.V5, &mqttcodec.Publish{QoS: pb.QoS, Retain: pb.Retain,
		Topic: []byte(pb.Topic), PacketID: pb.PacketID, Payload: pb.Payload})
	lk := wc.(sync.Locker)
	lk.Lock()
	// A failed write ends the connection; the State sends the publish
	// again on the next one.
	_, _ = wc.Write(b)
	lk.Unlock()
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		pubBufs.Put(bp)
	}
	return true
}

// pubBufs holds encoding buffers for publishPlain.
var pubBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func (c *conn5) cork() {
	c.mu.Lock()
	fc := c.fc
	c.mu.Unlock()
	if fc != nil {
		fc.cork()
		c.corked = fc
	}
}

func (c *conn5) uncork() {
	if c.corked != nil {
		c.corked.uncork()
		c.corked = nil
	}
}

// publishProps builds the MQTT 5 properties of an uplink publish.
func publishProps(mp *session.MessageProps, expires time.Time) *paho.PublishProperties {
	if mp == nil && expires.IsZero() {
		return nil
	}
	pp := &paho.PublishProperties{}
	if mp != nil {
		if mp.HasPayloadFormat {
			f := mp.PayloadFormat
			pp.PayloadFormat = &f
		}
		pp.ContentType = mp.ContentType
		pp.ResponseTopic = mp.ResponseTopic
		pp.CorrelationData = mp.CorrelationData
		for _, u := range mp.User {
			pp.User = append(pp.User, paho.UserProperty{Key: u.Key, Value: u.Value})
		}
	}
	if !expires.IsZero() {
		left := uint32(max(1, min(math.MaxUint32, (time.Until(expires)+time.Second-1)/time.Second)))
		pp.MessageExpiry = &left
	}
	return pp
}

// messageProps reads the application properties of a broker message.
func messageProps(pp *paho.PublishProperties) (*session.MessageProps, time.Time) {
	if pp == nil {
		return nil, time.Time{}
	}
	var exp time.Time
	if pp.MessageExpiry != nil {
		exp = time.Now().Add(time.Duration(*pp.MessageExpiry) * time.Second)
	}
	if pp.PayloadFormat == nil && pp.ContentType == "" && pp.ResponseTopic == "" && pp.CorrelationData == nil && len(pp.User) == 0 {
		return nil, exp
	}
	mp := &session.MessageProps{ContentType: pp.ContentType, ResponseTopic: pp.ResponseTopic, CorrelationData: pp.CorrelationData}
	if pp.PayloadFormat != nil {
		mp.PayloadFormat, mp.HasPayloadFormat = *pp.PayloadFormat, true
	}
	for _, u := range pp.User {
		mp.User = append(mp.User, session.UserProp{Key: u.Key, Value: u.Value})
	}
	return mp, exp
}

func (c *conn5) subscribe(ctx context.Context, subs []upSub, id int) ([]byte, error) {
	cli := c.client()
	if cli == nil || !c.open() {
		return nil, errors.New("bridge: not connected")
	}
	s := &paho.Subscribe{}
	for _, u := range subs {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: u.filter, QoS: u.qos,
			NoLocal: u.noLocal, RetainAsPublished: u.retainAsPub, RetainHandling: u.retainHandling})
	}
	if id > 0 && c.subIDs.Load() {
		s.Properties = &paho.SubscribeProperties{SubscriptionIdentifier: &id}
	}
	sa, err := cli.Subscribe(ctx, s)
	if sa != nil && len(sa.Reasons) == len(subs) {
		return sa.Reasons, nil // a refusal is a reason code, not an error
	}
	if err == nil {
		err = errors.New("bridge: SUBACK does not answer every filter")
	}
	return nil, err
}

func (c *conn5) unsubscribe(ctx context.Context, filters []string) error {
	cli := c.client()
	if cli == nil || !c.open() {
		return errors.New("bridge: not connected")
	}
	ua, err := cli.Unsubscribe(ctx, &paho.Unsubscribe{Topics: filters})
	if ua != nil {
		return nil // answered, refusals included: nothing more to do
	}
	return err
}

func (c *conn5) cycle() {
	if cli := c.client(); cli != nil && c.open() {
		// Ending the network connection without DISCONNECT: the broker
		// keeps the session and resends what was not acknowledged.
		go cli.TerminateConnectionForTest()
	}
}

func (c *conn5) disconnect() {
	cli := c.client()
	if cli == nil {
		return
	}
	if c.open() {
		_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	<-cli.Done()
}

func (c *conn5) inflight() int { return c.ses.len() }

func (c *conn5) window() int { return int(c.recvMax.Load()) }

// settled: paho resends what its session state holds while it handles the
// CONNACK, before any new publish can be written.
func (c *conn5) settled() bool { return true }

func (c *conn5) drain() []*entry { return c.ses.drain() }

func (c *conn5) sharedOK() bool { return c.open() && c.shared.Load() }

func (c *conn5) subIDsOK() bool { return c.subIDs.Load() }

// onPublish is paho's handler: it hands the message to the receiver, which
// acknowledges it once handled (track.ack).
func (c *conn5) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	in := inMsg{topic: p.Topic, payload: p.Payload, qos: p.QoS, retain: p.Retain, dup: p.Duplicate(), id: p.PacketID,
		ack: func() {}}
	if p.QoS > 0 {
		gen := c.gen.Load()
		in.ack = func() { c.ses.ack(gen, p) }
	}
	in.props, in.expires = messageProps(p.Properties)
	if p.Properties != nil && p.Properties.SubscriptionIdentifier != nil {
		in.subIDs = []int{*p.Properties.SubscriptionIdentifier}
		// paho keeps the last identifier; the reader has them all.
		c.mu.Lock()
		ids := c.ids
		c.mu.Unlock()
		if all := ids.take(p.Topic, p.PacketID); all != nil {
			in.subIDs = all
		}
	}
	select {
	case c.l.in <- in:
	case <-c.l.b.stop:
	}
	return true, nil
}

// track is paho's session state with the bridge's bookkeeping around it:
// it learns, per publish, the broker's final answer (PUBACK, or PUBCOMP
// for QoS 2, or a PUBREC with a failure code) without a goroutine per
// message. AddToSession gives the State one response channel per lane
// instead of the one paho made for the publish (which nobody reads with
// PublishMethod_AsyncSend), and remembers which entry the packet
// identifier stands for; PacketReceived empties the channel right after
// the State filled it, on paho's reading goroutine.
type track struct {
	*state.State
	c     *conn5
	resp  chan packets.ControlPacket
	ansMu sync.Mutex // held while answering what resp holds

	mu   sync.Mutex // guards the fields below
	next *entry
	seq  uint64
	byID map[uint16]*sent
	// live is the connection (conn5.gen) whose CONNACK came last, at
	// liveAt; counted the one whose loss was counted (ConnectionLost may
	// be called more than once per loss, and for a connection that never
	// got its CONNACK, on which nothing was sent).
	live, counted uint64
	liveAt        time.Time
}

type sent struct {
	e   *entry
	seq uint64
	// givenUp: the State is being told it was answered, so that it stops
	// resending it (giveUp); the answer goes to the device as a refusal.
	givenUp bool
	// received: QoS 2 with PUBREC success: the broker has it, only the
	// PUBREL/PUBCOMP exchange is left, and it is not what the broker
	// closes the connection on.
	received bool
}

func newTrack(c *conn5) *track {
	t := &track{State: state.New(newLazyStore(), memory.New()), c: c, byID: make(map[uint16]*sent),
		// The State sends while holding its lock: the channel must never
		// be full. The lane keeps at most MaxInflight publishes out.
		resp: make(chan packets.ControlPacket, c.l.b.cfg.MaxInflight+16)}
	return t
}

func (t *track) expect(e *entry) {
	t.mu.Lock()
	t.next = e
	t.mu.Unlock()
}

// taken reports whether AddToSession took e since expect.
func (t *track) taken(e *entry) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next == e {
		t.next = nil
		return false
	}
	return true
}

// AddToSession implements paho's session.SessionManager.
func (t *track) AddToSession(ctx context.Context, p pahosession.Packet, resp chan<- packets.ControlPacket) error {
	pub, ok := p.(*packets.Publish)
	if !ok {
		return t.State.AddToSession(ctx, p, resp)
	}
	t.mu.Lock()
	e := t.next
	t.next = nil
	t.mu.Unlock()
	if e == nil {
		return t.State.AddToSession(ctx, p, resp)
	}
	if err := t.State.AddToSession(ctx, p, t.resp); err != nil {
		t.mu.Lock()
		t.next = e
		t.mu.Unlock()
		return err
	}
	// The packet is written after this returns: its answer cannot come
	// before the entry is recorded.
	t.mu.Lock()
	t.seq++
	t.byID[pub.PacketID] = &sent{e: e, seq: t.seq}
	t.mu.Unlock()
	return nil
}

// ConAckReceived implements paho's session.SessionManager. A broker that
// kept no session lost what it had not acknowledged: paho's State forgets
// it, and the entries go back to the head of the queue, in order.
func (t *track) ConAckReceived(w io.Writer, cp *packets.Connect, ca *packets.Connack) error {
	t.mu.Lock()
	t.live, t.liveAt = t.c.gen.Load(), time.Now()
	t.mu.Unlock()
	if ca.SessionPresent {
		t.giveUp()
	}
	err := t.State.ConAckReceived(w, cp, ca)
	t.answerAll() // what the State let go of, if anything
	if err == nil && !ca.SessionPresent {
		t.c.l.prepend(t.drain())
	}
	return err
}

// ConnectionLost implements paho's session.SessionManager. A connection
// that ends soon after it was made (stableConnection) counts against the
// oldest publish in flight on it: a broker that closes the connection on
// a message gets it again at every connection, and the lane's later
// messages wait behind it (the size the broker admits is checked before
// sending, conn5.fits; this is for what it refuses otherwise).
func (t *track) ConnectionLost(dp *packets.Disconnect) error {
	gen := t.c.gen.Load()
	t.mu.Lock()
	if t.counted != gen && t.live == gen {
		t.counted = gen
		short := time.Since(t.liveAt) < stableConnection
		// Only the oldest not yet received (QoS 2 past PUBREC): the
		// broker handles a connection's publishes in order, so the one
		// it closes on is the first it did not answer; those after it
		// were not read.
		var oldest *sent
		for _, s := range t.byID {
			if !s.received && (oldest == nil || s.seq < oldest.seq) {
				oldest = s
			}
		}
		if short && oldest != nil && oldest.e.losses < maxResends {
			oldest.e.losses++
		}
	}
	t.mu.Unlock()
	return t.State.ConnectionLost(dp)
}

// giveUp, between connections, ends in the State each publish lost with
// maxResends connections, as if the broker had refused it (paho's State
// has no call to drop a publish; a PUBACK it reads is its way out), so
// that it is not resent; the device gets 0x80 (lane.givenUp).
func (t *track) giveUp() {
	var ids []uint16
	t.mu.Lock()
	for id, s := range t.byID {
		if s.e.losses >= maxResends && !s.givenUp {
			s.givenUp = true
			ids = append(ids, id)
		}
	}
	t.mu.Unlock()
	for _, id := range ids {
		_ = t.State.PacketReceived(&packets.ControlPacket{FixedHeader: packets.FixedHeader{Type: packets.PUBACK},
			Content: &packets.Puback{PacketID: id, ReasonCode: byte(mqttcodec.UnspecifiedError)}}, nil)
	}
	t.answerAll()
}

// PacketReceived implements paho's session.SessionManager. paho calls it
// on its reading goroutine; the State puts its answer to a publish in
// resp, and the device is answered from here, without a hand-off to
// another goroutine.
func (t *track) PacketReceived(recv *packets.ControlPacket, pubChan chan<- *packets.Publish) error {
	if rec, ok := recv.Content.(*packets.Pubrec); ok && rec.ReasonCode < 0x80 {
		t.mu.Lock()
		if s := t.byID[rec.PacketID]; s != nil {
			s.received = true
		}
		t.mu.Unlock()
	}
	err := t.State.PacketReceived(recv, pubChan)
	t.answerAll()
	return err
}

// answerAll answers what the State put in resp, in order: under ansMu,
// so that answers taken by two callers (paho's reading goroutine, the
// CONNACK's) are not answered out of the broker's order.
func (t *track) answerAll() {
	t.ansMu.Lock()
	defer t.ansMu.Unlock()
	for {
		select {
		case cp := <-t.resp:
			t.answer(cp)
		default:
			return
		}
	}
}

func (t *track) answer(cp packets.ControlPacket) {
	var id uint16
	rc := byte(0)
	switch p := cp.Content.(type) {
	case *packets.Puback:
		id, rc = p.PacketID, p.ReasonCode
	case *packets.Pubcomp:
		id, rc = p.PacketID, p.ReasonCode
	case *packets.Pubrec:
		id, rc = p.PacketID, p.ReasonCode
	default:
		return
	}
	t.mu.Lock()
	s := t.byID[id]
	delete(t.byID, id)
	t.mu.Unlock()
	if s == nil {
		return
	}
	l := t.c.l
	if s.givenUp {
		l.givenUp(s.e)
		return
	}
	if rc >= 0x80 {
		l.nacked(s.e, mqttcodec.ReasonCode(rc))
		return
	}
	l.acked(s.e)
}

// Ack implements paho's session.SessionManager. paho calls it as soon as
// its handler returned; the bridge acknowledges a message itself once the
// gateway took it (track.ack), so this does nothing.
func (t *track) Ack(*packets.Publish) error { return nil }

// ack acknowledges a broker message (PUBACK, or PUBREC for QoS 2; paho
// answers the PUBREL), if the connection it came on is still the current
// one: otherwise the broker sends it again on the new one. Acknowledgements
// go in the order the receiver handled the messages, the order they came,
// except for a command left unacknowledged on purpose (Config.CommandRetry).
func (t *track) ack(gen uint64, p *paho.Publish) {
	if t.c.gen.Load() != gen {
		return
	}
	// Without a connection, the State sends nothing.
	_ = t.State.Ack(p.Packet())
}

func (t *track) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}

// drain takes the entries sent and not acknowledged, in the order sent.
func (t *track) drain() []*entry {
	t.mu.Lock()
	ss := make([]*sent, 0, len(t.byID))
	for _, s := range t.byID {
		ss = append(ss, s)
	}
	clear(t.byID)
	t.mu.Unlock()
	slices.SortFunc(ss, func(a, b *sent) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]*entry, len(ss))
	for i, s := range ss {
		out[i] = s.e
	}
	return out
}

// bufferedConn reads through a buffer: paho.golang reads a packet a few
// bytes at a time (the fixed header byte by byte), which would otherwise
// be a system call each. Only paho's reading goroutine reads.
// It also keeps the first bytes the broker sent, to recognise an MQTT
// 3.1.1 CONNACK refusing the protocol version, and follows the packets
// for the Subscription Identifiers of each PUBLISH (subIDReader).
type bufferedConn struct {
	net.Conn
	r    *bufio.Reader
	head *head
	ids  *subIDReader
}

func (c bufferedConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.head.keep(p[:n])
	c.ids.feed(p[:n])
	return n, err
}

// head is the first four bytes read on a connection.
type head struct {
	mu sync.Mutex
	b  []byte
}

func (h *head) keep(p []byte) {
	h.mu.Lock()
	if len(h.b) < 4 {
		h.b = append(h.b, p[:min(len(p), 4-len(h.b))]...)
	}
	h.mu.Unlock()
}

// refused311 reports an MQTT 3.1.1 CONNACK with return code 1,
// unacceptable protocol version: 0x20 0x02, flags, 0x01.
func (h *head) refused311() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.b) == 4 && h.b[0] == 0x20 && h.b[1] == 0x02 && h.b[3] == 0x01
}
