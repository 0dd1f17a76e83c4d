package bridge

import (
	"cmp"
	"slices"
	"strings"
	"sync"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// maxResends is how many times a publish is sent again after reconnects
// without a PUBACK before it is given up: a message the broker answers by
// closing the connection would otherwise stall its connection for ever.
const maxResends = 16

// outbox is the paho Store of one pool connection, and the way the bridge
// learns that the broker acknowledged a publish.
//
// paho puts a QoS 1 publish into its store ("o.<packet id>") before
// sending it and deletes it when the PUBACK arrives; after a reconnect
// (clean session off) it sends again, in the order All returns them,
// whatever is still stored. Its tokens cannot be trusted for this: when it
// resends after a reconnect it completes the original token without error
// before the broker has answered. So the bridge tracks acknowledgements
// here: Del of a stored publish is the PUBACK. All returns keys in the
// order they were put, so a resend keeps the original order (paho's
// MemoryStore returns them in map order).
//
// Inbound keys ("i.<id>") are not kept: an inbound message the bridge has
// not acknowledged is sent again by the broker after a reconnect.
type outbox struct {
	l *lane

	mu    sync.Mutex // guards the fields below
	seq   uint64
	items map[string]*boxed
	live  int    // items that carry an entry
	next  *entry // the entry the sender is publishing, taken by Put
	// resumeDue is set when a connection is made and cleared when paho
	// lists the store to resend it (All): until then, a new publish could
	// be listed and sent twice, out of order.
	resumeDue bool
}

type boxed struct {
	seq     uint64
	pkt     packets.ControlPacket
	e       *entry
	resends int
}

const outboundPrefix = "o."

func newOutbox(l *lane) *outbox {
	return &outbox{l: l, items: make(map[string]*boxed)}
}

// Open implements mqtt.Store.
func (o *outbox) Open() {}

// Close implements mqtt.Store. The contents are kept: they are still owed.
func (o *outbox) Close() {}

// Put implements mqtt.Store.
func (o *outbox) Put(key string, m packets.ControlPacket) {
	if !strings.HasPrefix(key, outboundPrefix) {
		return
	}
	o.mu.Lock()
	if old := o.items[key]; old != nil && old.e != nil {
		if _, rel := m.(*packets.PubrelPacket); rel {
			// QoS 2 past PUBREC: a PUBREL stored in the publish's place
			// until PUBCOMP (Del) is resent in that place after a
			// reconnect. (paho.mqtt.golang v1.5.1 does not store the
			// PUBREL it sends: it resends the PUBLISH, and the broker
			// answers PUBREC again.)
			old.pkt = m
			o.mu.Unlock()
			return
		}
	}
	o.seq++
	b := &boxed{seq: o.seq, pkt: m}
	if p, ok := m.(*packets.PublishPacket); ok {
		// paho's writer encodes the packet it was handed, and writes into
		// it as it does (the remaining length); on a resend paho's resume
		// sets DUP on what Get gives back while that writer may still be
		// on the publish queued before the reconnect (a data race in
		// paho.mqtt.golang, its issue 703). The outbox keeps a copy taken
		// here, before paho queues the packet, and gives out copies of it
		// (Get); the payload is shared, read by all.
		b.pkt = copyPublish(p)
		if o.next != nil {
			b.e, o.next = o.next, nil
		}
	}
	if old := o.items[key]; old != nil && old.e != nil {
		o.live--
	}
	if b.e != nil {
		o.live++
	}
	o.items[key] = b
	o.mu.Unlock()
}

// Get implements mqtt.Store. paho calls it when it resends after a
// reconnect; a publish resent too often as the oldest unacknowledged is
// given up. Only the oldest counts: the broker handles a connection's
// publishes in order, so the one it closes on is the first it did not
// answer, and those after it, resent with it, were not read.
func (o *outbox) Get(key string) packets.ControlPacket {
	o.mu.Lock()
	b := o.items[key]
	if b == nil {
		o.mu.Unlock()
		return nil
	}
	if o.oldest() == b {
		b.resends++
	}
	if b.e != nil && b.resends > maxResends {
		delete(o.items, key)
		o.live--
		o.mu.Unlock()
		o.l.givenUp(b.e)
		return nil
	}
	pkt := b.pkt
	o.mu.Unlock()
	if p, ok := pkt.(*packets.PublishPacket); ok {
		return copyPublish(p) // see Put
	}
	return pkt
}

// oldest is the publish put first among those carrying an entry and not
// yet received by the broker (a QoS 2 one past PUBREC would hold its
// PUBREL; paho.mqtt.golang v1.5.1 does not store the PUBREL it sends, so
// such a one still looks unreceived), under o.mu.
func (o *outbox) oldest() *boxed {
	var first *boxed
	for _, b := range o.items {
		if _, rel := b.pkt.(*packets.PubrelPacket); rel {
			continue
		}
		if b.e != nil && (first == nil || b.seq < first.seq) {
			first = b
		}
	}
	return first
}

// copyPublish copies a publish's header and fields; the payload is shared.
func copyPublish(p *packets.PublishPacket) *packets.PublishPacket {
	c := *p
	return &c
}

// All implements mqtt.Store: the keys in the order they were put. paho
// calls it once per connection, to resend what is stored.
func (o *outbox) All() []string {
	o.mu.Lock()
	if o.resumeDue {
		o.resumeDue = false
		defer signal(o.l.wake)
	}
	bs := make([]*boxed, 0, len(o.items))
	keys := make(map[*boxed]string, len(o.items))
	for k, b := range o.items {
		bs = append(bs, b)
		keys[b] = k
	}
	o.mu.Unlock()
	slices.SortFunc(bs, func(a, b *boxed) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = keys[b]
	}
	return out
}

// Del implements mqtt.Store. For a stored publish it means the broker
// acknowledged it: PUBACK, or PUBCOMP for QoS 2.
func (o *outbox) Del(key string) {
	if !strings.HasPrefix(key, outboundPrefix) {
		return
	}
	o.mu.Lock()
	b := o.items[key]
	if b == nil {
		o.mu.Unlock()
		return
	}
	delete(o.items, key)
	if b.e != nil {
		o.live--
	}
	o.mu.Unlock()
	if b.e != nil {
		o.l.acked(b.e)
	}
}

// Reset implements mqtt.Store. paho resets only clean sessions, which the
// bridge does not use; should it happen, what was stored goes back to the
// head of the queue to be sent again.
func (o *outbox) Reset() {
	for _, e := range slices.Backward(o.drain()) {
		o.l.requeue(e)
	}
}

// awaitResume records that a connection was made: paho will list the
// store to resend what it holds.
func (o *outbox) awaitResume() {
	o.mu.Lock()
	o.resumeDue = true
	o.mu.Unlock()
}

// settled reports that no resend is due or in flight: paho has listed the
// store since the last connection was made and the broker acknowledged
// everything it held.
func (o *outbox) settled() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.resumeDue && o.live == 0
}

// expect names the entry the next Put belongs to.
func (o *outbox) expect(e *entry) {
	o.mu.Lock()
	o.next = e
	o.mu.Unlock()
}

// taken reports whether Put took e since expect, and forgets it.
func (o *outbox) taken(e *entry) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.next == e {
		o.next = nil
		return false
	}
	return true
}

// len is the number of publishes waiting for their PUBACK.
func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.live
}

// drain empties the outbox and returns its entries in the order they were
// sent.
func (o *outbox) drain() []*entry {
	o.mu.Lock()
	bs := make([]*boxed, 0, o.live)
	for _, b := range o.items {
		if b.e != nil {
			bs = append(bs, b)
		}
	}
	clear(o.items)
	o.live = 0
	o.mu.Unlock()
	slices.SortFunc(bs, func(a, b *boxed) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]*entry, len(bs))
	for i, b := range bs {
		out[i] = b.e
	}
	return out
}
