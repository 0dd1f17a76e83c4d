package bridge

import (
	"bytes"
	"context"
	"io"
	"slices"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/dualgate/dualgate/mqttcodec"
)

func newTestOutbox(t *testing.T) (*Bridge, *outbox) {
	t.Helper()
	b, err := New(testConfig(t, "tcp://127.0.0.1:1"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	return b, b.lanes[0].box
}

// put stores a publish for e as paho does: expect, then Put inside Publish.
func put(b *Bridge, o *outbox, key string, e *entry) {
	if !b.mem.reserve(e.size) {
		panic("budget")
	}
	o.expect(e)
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.Qos = 1
	o.Put(key, p)
}

func TestOutboxOrderAndAcks(t *testing.T) {
	b, o := newTestOutbox(t)
	a := newAcks()
	keys := []string{"o.9", "o.1", "o.300", "o.2"}
	for i, k := range keys {
		put(b, o, k, &entry{ack: a.fn(t, i), qos: 1, size: 10})
	}
	o.Put("i.5", packets.NewControlPacket(packets.Publish)) // inbound: not kept
	if got := o.All(); !slices.Equal(got, keys) {
		t.Fatalf("All() = %v, want the order of Put %v", got, keys)
	}
	if o.len() != 4 {
		t.Fatalf("len %d", o.len())
	}
	o.Del("i.5")
	o.Del("o.77") // a SUBACK's id: nothing stored
	o.Del("o.1")
	if rc, ok := a.get(1); !ok || rc != mqttcodec.Success {
		t.Fatalf("the PUBACK of o.1 did not acknowledge its message: %v %v", rc, ok)
	}
	if a.count() != 1 || o.len() != 3 {
		t.Fatalf("%d acks, %d left", a.count(), o.len())
	}
	if n, _ := b.mem.usage(); n != 3 {
		t.Fatalf("memory budget holds %d, want 3", n)
	}
	left := o.drain()
	if len(left) != 3 || left[0].ack == nil || o.len() != 0 {
		t.Fatalf("drain: %d entries, %d left", len(left), o.len())
	}
}

func TestOutboxResendLimit(t *testing.T) {
	b, o := newTestOutbox(t)
	a := newAcks()
	put(b, o, "o.1", &entry{ack: a.fn(t, 0), qos: 1})
	for i := range maxResends {
		if o.Get("o.1") == nil {
			t.Fatalf("resend %d refused", i+1)
		}
	}
	if o.Get("o.1") != nil {
		t.Fatal("a publish resent past the limit")
	}
	if rc, ok := a.get(0); !ok || rc != mqttcodec.UnspecifiedError {
		t.Fatalf("given up: ack %v %v, want UnspecifiedError", rc, ok)
	}
	if s := b.Stats(); s.Abandoned != 1 || o.len() != 0 {
		t.Fatalf("stats %+v, %d left", s, o.len())
	}
}

func TestOutboxGate(t *testing.T) {
	b, o := newTestOutbox(t)
	e := &entry{qos: 1}
	o.expect(e)
	if o.taken(e) {
		t.Fatal("taken without a Put")
	}
	put(b, o, "o.4", e)
	if !o.taken(e) {
		t.Fatal("not taken after Put")
	}
	for _, step := range []struct {
		name string
		do   func()
		want bool
	}{
		{name: "one unacknowledged", do: func() {}, want: false},
		{name: "acknowledged", do: func() { o.Del("o.4") }, want: true},
		{name: "connection made", do: o.awaitResume, want: false},
		{name: "paho listed the store", do: func() { o.All() }, want: true},
	} {
		step.do()
		if got := o.settled(); got != step.want {
			t.Fatalf("%s: settled %v, want %v", step.name, got, step.want)
		}
	}
}

// paho.mqtt.golang's writer encodes the publish it was handed, and writes
// into it as it does; its resume sets DUP on the publish the store gives
// back while that writer may still be on the packet queued before the
// reconnect (paho's issue 703; seen under -race in
// TestBrokerRestartLosesNothing/v3.1.1). The outbox keeps its own copy
// and gives out copies: the writer's packet is never read nor written by
// a resend, and the resend carries DUP and the same message.
func TestOutboxResendIsACopy(t *testing.T) {
	b, o := newTestOutbox(t)
	e := &entry{ack: newAcks().fn(t, 0), qos: 1}
	if !b.mem.reserve(e.size) {
		t.Fatal("budget")
	}
	o.expect(e)
	queued := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	queued.Qos, queued.TopicName, queued.Payload, queued.MessageID = 1, "devices/d/t", []byte("m"), 1
	o.Put("o.1", queued) // as paho's Publish does, before it queues the packet

	done := make(chan struct{})
	go func() { // paho's writer, still on the packet queued before
		defer close(done)
		for range 100 {
			if err := queued.Write(io.Discard); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var resent *packets.PublishPacket
	for range maxResends { // paho's resume, after each reconnect
		p, ok := o.Get("o.1").(*packets.PublishPacket)
		if !ok || p == queued {
			t.Fatalf("Get gave back %p (%T), want a copy of %p", p, p, queued)
		}
		p.Dup = true
		resent = p
	}
	<-done

	var q, r bytes.Buffer
	if err := queued.Write(&q); err != nil {
		t.Fatal(err)
	}
	if err := resent.Write(&r); err != nil {
		t.Fatal(err)
	}
	if q.Bytes()[0]&0x08 != 0 || r.Bytes()[0]&0x08 == 0 || !bytes.Equal(q.Bytes()[1:], r.Bytes()[1:]) {
		t.Fatalf("queued % x, resent % x: want the same publish, DUP on the resent one only", q.Bytes(), r.Bytes())
	}
}
