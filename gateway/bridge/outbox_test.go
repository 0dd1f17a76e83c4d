package bridge

import (
	"context"
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
