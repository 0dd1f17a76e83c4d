package bridge

import (
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Message is a message from the broker for the gateway's devices.
type Message struct {
	// Topic is the topic as devices see it (TopicPrefix removed).
	Topic   string
	Payload []byte
	// QoS is the QoS the broker sent it at.
	QoS byte
	// Retain is set on retained messages handed to DeliverRetained.
	Retain bool
	// Retained reports that a live message was published with the retain
	// flag (known from an MQTT 5 broker: Retain As Published upstream).
	Retained bool
	// Props are its MQTT 5 properties (nil: none); Expires when it
	// expires (zero: never).
	Props   *session.MessageProps
	Expires time.Time
	// Shared, when set, is the shared subscription ("$share/group/filter",
	// as devices sent it) this copy was sent for: it goes to one member
	// of that group, and not to other subscribers (the broker sends them
	// their own copy).
	Shared string
}

// subChunk bounds the filters of one SUBSCRIBE or UNSUBSCRIBE.
const subChunk = 128

// Subscribe records that subscriber (an opaque, comparable handle: the
// gateway passes its *session.Session) subscribed with sub, whose filter
// is as the device sent it. The first subscriber of a filter makes the
// bridge subscribe upstream; a later one makes it subscribe again when
// retained is set, so that the broker sends its retained messages, which
// go to DeliverRetained for the new subscriber(s) only. Filters starting
// with '$' are not forwarded. It does not block: the SUBSCRIBE is sent by
// the bridge's own goroutine. done, when not nil, is called exactly once,
// from any goroutine, with the granted QoS once the subscription is in
// place upstream, or a failure reason code (>= 0x80).
func (b *Bridge) Subscribe(subscriber any, sub session.Subscription, retained bool, done func(mqttcodec.ReasonCode)) {
	filter, qos := sub.Filter, sub.QoS
	if done != nil {
		defer done(mqttcodec.ReasonCode(min(qos, 1)))
	}
	if err := mqttcodec.ValidTopicFilter([]byte(filter)); err != nil || strings.HasPrefix(filter, "$") {
		// '$' topics ($SYS, $share) are the broker's business, not the
		// devices'.
		b.hot.Info("subscription not forwarded upstream", zap.String("filter", filter), zap.Error(err))
		return
	}
	if b.closing.Load() {
		return
	}
	l := b.subLane
	l.subs.add(subscriber, filter, min(qos, 1))
	signal(l.ctl)
}

// Unsubscribe records that subscriber left filter; the last one out
// (unsubscribe or disconnect: the gateway calls Unsubscribe for each of a
// departing session's filters) removes the upstream subscription.
func (b *Bridge) Unsubscribe(subscriber any, filter string) {
	l := b.subLane
	if l.subs.remove(subscriber, filter) {
		signal(l.ctl)
	}
}

// subTable is the devices' subscriptions held upstream, by filter (device
// side, without TopicPrefix), with what must be sent to the broker and the
// subscribers waiting for retained messages.
type subTable struct {
	mu      sync.Mutex // guards the fields below
	held    map[string]*filterState
	toSub   map[string]struct{}
	toUnsub map[string]struct{}
	// waits are the new subscribers of a filter waiting for the retained
	// messages of their SUBSCRIBE, oldest first.
	waits map[string][]*retainedWait
	// wild holds the keys of waits that hold wildcards.
	wild map[string]struct{}
}

type filterState struct {
	subs map[any]byte // subscriber -> requested QoS
	qos  byte         // the QoS asked for upstream: the highest requested
}

// retainedWait is one SUBSCRIBE sent (or about to be) for new subscribers
// of filter. Each retained message the broker sends in answer goes to them;
// seen keeps a topic from going twice to the same wait when the broker
// sends copies for other subscriptions too.
type retainedWait struct {
	filter      string
	subscribers []any
	sent        bool
	expires     time.Time
	seen        map[string]struct{}
}

func newSubTable() *subTable {
	return &subTable{
		held:    make(map[string]*filterState),
		toSub:   make(map[string]struct{}),
		toUnsub: make(map[string]struct{}),
		waits:   make(map[string][]*retainedWait),
		wild:    make(map[string]struct{}),
	}
}

func (t *subTable) add(sub any, f string, qos byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.held[f]
	if st == nil {
		st = &filterState{subs: make(map[any]byte, 1)}
		t.held[f] = st
	}
	st.subs[sub] = qos
	st.qos = max(st.qos, qos)
	delete(t.toUnsub, f)
	t.toSub[f] = struct{}{}
	ws := t.waits[f]
	if n := len(ws); n > 0 && !ws[n-1].sent {
		if !slices.Contains(ws[n-1].subscribers, sub) {
			ws[n-1].subscribers = append(ws[n-1].subscribers, sub)
		}
		return
	}
	t.waits[f] = append(ws, &retainedWait{filter: f, subscribers: []any{sub}})
	if strings.ContainsAny(f, "+#") {
		t.wild[f] = struct{}{}
	}
}

// remove reports whether something changed.
func (t *subTable) remove(sub any, f string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.held[f]
	if st == nil {
		return false
	}
	if _, ok := st.subs[sub]; !ok {
		return false
	}
	delete(st.subs, sub)
	if len(st.subs) > 0 {
		for _, w := range t.waits[f] {
			w.subscribers = slices.DeleteFunc(w.subscribers, func(x any) bool { return x == sub })
		}
		return true
	}
	delete(t.held, f)
	delete(t.toSub, f)
	delete(t.waits, f)
	delete(t.wild, f)
	t.toUnsub[f] = struct{}{}
	return true
}

func (t *subTable) size() int {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.held)
}

// resubscribeAll marks every filter to be sent again (a new connection).
func (t *subTable) resubscribeAll() {
	t.mu.Lock()
	for f := range t.held {
		t.toSub[f] = struct{}{}
	}
	t.mu.Unlock()
}

// work takes what must be sent: filters to subscribe (with their QoS) and
// to unsubscribe. The waits of the filters subscribed count as sent.
func (t *subTable) work(now time.Time, window time.Duration) (map[string]byte, []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	subs := make(map[string]byte, len(t.toSub))
	for f := range t.toSub {
		if st := t.held[f]; st != nil {
			subs[f] = st.qos
			for _, w := range t.waits[f] {
				if !w.sent {
					w.sent, w.expires = true, now.Add(window)
				}
			}
		}
	}
	clear(t.toSub)
	unsubs := make([]string, 0, len(t.toUnsub))
	for f := range t.toUnsub {
		unsubs = append(unsubs, f)
	}
	clear(t.toUnsub)
	return subs, unsubs
}

// subscribed is told that the broker answered the SUBACK of filters: the
// retained messages follow, and the waits run from now.
func (t *subTable) subscribed(fs []string, expires time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range fs {
		for _, w := range t.waits[f] {
			if w.sent && w.expires.Before(expires) {
				w.expires = expires
			}
		}
	}
}

// retry marks filters whose SUBSCRIBE or UNSUBSCRIBE was not answered.
func (t *subTable) retry(subs, unsubs []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range subs {
		if t.held[f] != nil {
			t.toSub[f] = struct{}{}
		}
	}
	for _, f := range unsubs {
		if t.held[f] == nil {
			t.toUnsub[f] = struct{}{}
		}
	}
}

// pending reports whether something is left to send.
func (t *subTable) pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.toSub) > 0 || len(t.toUnsub) > 0
}

// prune drops the waits whose time is over.
func (t *subTable) prune(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for f, ws := range t.waits {
		ws = slices.DeleteFunc(ws, func(w *retainedWait) bool { return w.sent && now.After(w.expires) })
		if len(ws) == 0 {
			delete(t.waits, f)
			delete(t.wild, f)
			continue
		}
		t.waits[f] = ws
	}
}

// claim finds who a retained message on topic is for: the oldest live
// wait of a matching filter that has not had this topic yet.
func (t *subTable) claim(topic string, now time.Time) (string, []any, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pick := func(ws []*retainedWait) *retainedWait {
		for _, w := range ws {
			if !w.sent || now.After(w.expires) || len(w.subscribers) == 0 {
				continue
			}
			if _, dup := w.seen[topic]; !dup {
				return w
			}
		}
		return nil
	}
	w := pick(t.waits[topic])
	if w == nil {
		tb := []byte(topic)
		for f := range t.wild {
			if mqttcodec.MatchTopic([]byte(f), tb) {
				if w = pick(t.waits[f]); w != nil {
					break
				}
			}
		}
	}
	if w == nil {
		return "", nil, false
	}
	if w.seen == nil {
		w.seen = make(map[string]struct{})
	}
	w.seen[topic] = struct{}{}
	return w.filter, slices.Clone(w.subscribers), true
}

// control sends SUBSCRIBE and UNSUBSCRIBE for the lane's subscriptions.
func (l *lane) control() {
	defer l.b.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-l.ctl:
		case <-tick.C:
			if l.subs != nil {
				l.subs.prune(time.Now())
			}
		case <-l.b.stop:
			return
		}
		if !l.cli.IsConnectionOpen() {
			continue // onConnect signals ctl
		}
		if l.commands {
			l.syncCommands()
		}
		if l.subs != nil {
			l.syncSubscriptions()
		}
	}
}

// syncCommands holds the command subscription.
func (l *lane) syncCommands() {
	l.mu.Lock()
	need := l.needCmdSub
	l.needCmdSub = false
	l.mu.Unlock()
	if !need {
		return
	}
	tok := l.cli.Subscribe(l.b.cmdSub, 1, nil)
	if err := l.wait(tok, l.b.cfg.ConnectTimeout); err != nil {
		l.b.hot.Warn("command subscription not answered; retrying", zap.String("filter", l.b.cmdSub), zap.Error(err))
		l.mu.Lock()
		l.needCmdSub = true
		l.mu.Unlock()
		return
	}
	for _, code := range tok.(*mqtt.SubscribeToken).Result() {
		if code == 0x80 {
			l.b.stats.subscribeFailures.Add(1)
			l.b.log.Error("the broker refused the command subscription; no command will arrive from it until the next connection",
				zap.String("filter", l.b.cmdSub))
			return
		}
	}
	l.cmdHeld.Store(true)
	l.b.log.Info("command subscription held", zap.String("filter", l.b.cmdSub))
}

// syncSubscriptions sends what the subscription table asks for.
func (l *lane) syncSubscriptions() {
	b := l.b
	subs, unsubs := l.subs.work(time.Now(), b.cfg.RetainedWindow)
	for chunk := range slices.Chunk(unsubs, subChunk) {
		up := make([]string, len(chunk))
		for i, f := range chunk {
			up[i] = b.cfg.TopicPrefix + f
		}
		if err := l.wait(l.cli.Unsubscribe(up...), b.cfg.ConnectTimeout); err != nil {
			b.hot.Warn("UNSUBSCRIBE not answered; retrying", zap.Int("filters", len(chunk)), zap.Error(err))
			l.subs.retry(nil, chunk)
		}
	}
	fs := make([]string, 0, len(subs))
	for f := range subs {
		fs = append(fs, f)
	}
	slices.Sort(fs)
	for chunk := range slices.Chunk(fs, subChunk) {
		up := make(map[string]byte, len(chunk))
		for _, f := range chunk {
			up[b.cfg.TopicPrefix+f] = subs[f]
		}
		tok := l.cli.SubscribeMultiple(up, nil)
		if err := l.wait(tok, b.cfg.ConnectTimeout); err != nil {
			b.hot.Warn("SUBSCRIBE not answered; retrying", zap.Int("filters", len(chunk)), zap.Error(err))
			l.subs.retry(chunk, nil)
			continue
		}
		l.subs.subscribed(chunk, time.Now().Add(b.cfg.RetainedWindow))
		for f, code := range tok.(*mqtt.SubscribeToken).Result() {
			if code == 0x80 {
				b.stats.subscribeFailures.Add(1)
				b.hot.Warn("the broker refused a subscription", zap.String("filter", f))
			}
		}
	}
	if l.subs.pending() {
		signal(l.ctl)
	}
}

// onMessage is paho's handler: it hands the message to the receiver, which
// acknowledges it once handled. Blocking here (the receiver is behind)
// slows the broker down through TCP, which is what should happen.
func (l *lane) onMessage(_ mqtt.Client, m mqtt.Message) {
	select {
	case l.in <- m:
	case <-l.b.stop:
		// Not acknowledged: the broker sends it again next time.
	}
}

func (l *lane) receive() {
	defer l.b.wg.Done()
	for {
		select {
		case m := <-l.in:
			l.b.handle(l, m)
		case <-l.b.stop:
			return
		}
	}
}

// handle routes one broker message: a command, a message for subscribers,
// or a retained message for new subscribers.
func (b *Bridge) handle(l *lane, m mqtt.Message) {
	topic, ok := strings.CutPrefix(m.Topic(), b.cfg.TopicPrefix)
	if !ok || topic == "" {
		b.stats.unrouted.Add(1)
		m.Ack()
		return
	}
	if b.cmd != nil && mqttcodec.MatchTopic([]byte(b.cmd.filter), []byte(topic)) {
		if l.commands {
			b.command(l, m, topic)
			return
		}
		// A device's subscription covers the command space: commands
		// reach devices through the dispatcher only, never as a plain
		// subscription delivery.
		b.stats.commandCopies.Add(1)
		m.Ack()
		return
	}
	if l.subs == nil {
		b.stats.unrouted.Add(1)
		m.Ack()
		return
	}
	msg := Message{Topic: topic, Payload: m.Payload(), QoS: min(m.Qos(), 1)}
	if m.Retained() {
		// A broker sets retain only on messages sent because of a
		// SUBSCRIBE [MQTT-3.3.1-8, MQTT-3.3.1-9].
		b.retained(l, msg)
	} else if b.cfg.Deliver != nil {
		if b.safely("Deliver", topic, func() { b.cfg.Deliver(msg) }) {
			b.stats.forwardedDown.Add(1)
		}
	} else {
		b.stats.unrouted.Add(1)
	}
	m.Ack()
}

// retained hands a retained message to the subscribers whose SUBSCRIBE
// it answers.
func (b *Bridge) retained(l *lane, msg Message) {
	msg.Retain = true
	filter, subs, ok := l.subs.claim(msg.Topic, time.Now())
	if !ok || b.cfg.DeliverRetained == nil {
		b.stats.retainedSkipped.Add(1)
		return
	}
	if b.safely("DeliverRetained", msg.Topic, func() { b.cfg.DeliverRetained(filter, subs, msg) }) {
		b.stats.retainedDelivered.Add(1)
		b.stats.forwardedDown.Add(1)
	}
}

// safely runs a gateway callback; a panic in it is logged and reported as
// false, and the message is acknowledged anyway: sent again, it would
// panic again.
func (b *Bridge) safely(what, topic string, fn func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			b.hot.Error("panic in a bridge callback", zap.String("callback", what), zap.String("topic", topic),
				zap.String("panic", fmt.Sprint(r)), zap.ByteString("stack", debug.Stack()))
			ok = false
		}
	}()
	fn()
	return true
}
