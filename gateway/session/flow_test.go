package session

import (
	"errors"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

// holdingSink keeps the acks of QoS 1/2 messages, to give them later: a
// broker that acknowledges after a while.
type holdingSink struct{ acks []func(mqttcodec.ReasonCode) }

func (h *holdingSink) Publish(_ *Message, ack func(mqttcodec.ReasonCode)) {
	if ack != nil {
		h.acks = append(h.acks, ack)
	}
}

// A 3.1.1 device with more QoS 1 publishes in flight than the window is
// not closed: Feed stops at the publish that fills the window and the
// transport stops reading; the keepalive does not run out while the
// gateway is the one not reading; half the window acknowledged reads on.
func TestV311WindowPausesReading(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	sink := &holdingSink{}
	env, err := NewEnv(Env{Registry: registry.New[*Session](), Auth: auth.AllowAll(), Sink: sink,
		Sessions: NewStore(sink, StoreLimits{}), Now: clk.Now, ReceiveMaximum: 8})
	if err != nil {
		t.Fatal(err)
	}
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V311, "flusher")
	var b []byte
	var firstEight int
	for pid := uint16(1); pid <= 20; pid++ {
		b = mqttcodec.AppendPublish(b, mqttcodec.V311, &mqttcodec.Publish{Topic: []byte("t"), Payload: []byte("x"), QoS: 1, PacketID: pid})
		if pid == 8 {
			firstEight = len(b)
		}
	}
	used, closeConn := s.Feed(b)
	if closeConn || used != firstEight || !ft.paused || !s.ReadingPaused() {
		t.Fatalf("Feed = %d, %v, paused %v; want %d, false, paused", used, closeConn, ft.paused, firstEight)
	}
	clk.now = clk.now.Add(10 * time.Minute) // far past 1.5 x 60 s
	if s.Tick(clk.now) || ft.closed {
		t.Fatal("keepalive ran out while the gateway was not reading")
	}
	for _, ack := range sink.acks[:3] {
		ack(mqttcodec.Success)
	}
	if !ft.paused {
		t.Fatal("resumed with 5 of 8 still waiting")
	}
	sink.acks[3](mqttcodec.Success)
	if ft.paused || s.ReadingPaused() {
		t.Fatal("still paused with half the window free")
	}
	if ps := ft.packets(t, mqttcodec.V311); len(ps) != 4 || ps[0].Type != mqttcodec.PUBACK {
		t.Fatalf("got %d packets, want 4 PUBACKs", len(ps))
	}
	if s.Tick(clk.now.Add(80 * time.Second)) {
		t.Fatal("the keepalive should count from the resume")
	}
	if used, closeConn = s.Feed(b[used:]); closeConn || used == 0 {
		t.Fatalf("Feed after resume = %d, %v", used, closeConn)
	}
}

// A device that reads but never acknowledges cannot make the gateway keep
// without bound what it routes to it: MaxQueued messages in flight,
// MaxQueued more queued, then drops, counted; a PUBACK lets the next
// queued one out.
func TestRoutedDeliveriesBounded(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	sink := new(recordingSink)
	env, err := NewEnv(Env{Registry: registry.New[*Session](), Auth: auth.AllowAll(), Sink: sink,
		Sessions: NewStore(sink, StoreLimits{}), Now: clk.Now, MaxQueued: 4})
	if err != nil {
		t.Fatal(err)
	}
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "never-acks")
	var dropped int
	for i := range 10 {
		switch err := s.Deliver(&Delivery{Topic: "t", Payload: []byte{byte(i)}, QoS: 1}); {
		case errors.Is(err, ErrQueueFull):
			dropped++
		case err != nil:
			t.Fatal(err)
		}
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 4 || s.Queued() != 4 || dropped != 2 || env.Stats.QueueDropped.Load() != 2 {
		t.Fatalf("%d sent, %d queued, %d dropped; want 4, 4, 2", len(ps), s.Queued(), dropped)
	}
	ack := mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: ps[0].Publish.PacketID})
	if _, closeConn := s.Feed(ack); closeConn {
		t.Fatal("closed on PUBACK")
	}
	if ps = ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Publish.Payload[0] != 4 || s.Queued() != 3 {
		t.Fatalf("after a PUBACK: %d sent, %d queued; want message 4 out, 3 queued", len(ps), s.Queued())
	}
}

// A pause for another reason (the bridge's) holds the device back from
// the next packet on, keeps the session's own reason apart, and reading
// resumes only when no reason is left.
func TestPauseReasonsAdd(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V311, "held")
	s.PauseReading(PauseUpstream)
	ping := mqttcodec.AppendPingreq(nil)
	if used, closeConn := s.Feed(ping); used != 0 || closeConn || !ft.paused {
		t.Fatalf("Feed while paused = %d, %v; want 0 (kept for later), paused", used, closeConn)
	}
	s.PauseReading(pauseInbound)
	s.ResumeReading(PauseUpstream)
	if !ft.paused {
		t.Fatal("resumed with a reason left")
	}
	s.ResumeReading(pauseInbound)
	if ft.paused {
		t.Fatal("still paused with no reason left")
	}
	if used, _ := s.Feed(ping); used != len(ping) {
		t.Fatalf("Feed after resume = %d, want %d", used, len(ping))
	}
	if ps := ft.packets(t, mqttcodec.V311); len(ps) != 1 || ps[0].Type != mqttcodec.PINGRESP {
		t.Fatalf("want one PINGRESP, got %d packets", len(ps))
	}
}

// Acknowledgements the Sink gives after Publish returned (the bridge's,
// when the broker answered) reach the device batched: those ready
// together go in one task and one write, in the order given, each
// counted as a packet; one given later starts a new batch.
func TestLateAcksBatched(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	sink := &holdingSink{}
	env, err := NewEnv(Env{Registry: registry.New[*Session](), Auth: auth.AllowAll(), Sink: sink,
		Sessions: NewStore(sink, StoreLimits{}), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "batched")
	var b []byte
	for pid := uint16(1); pid <= 6; pid++ {
		b = mqttcodec.AppendPublish(b, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte("t"), Payload: []byte("x"), QoS: 1, PacketID: pid})
	}
	if used, closeConn := s.Feed(b); closeConn || used != len(b) || len(sink.acks) != 6 {
		t.Fatalf("Feed = %d, %v with %d acks waiting", used, closeConn, len(sink.acks))
	}
	ft.deferExec = true
	writes, out := ft.writes, env.Stats.PacketsOut.Load()
	for i, ack := range sink.acks[:5] {
		rc := mqttcodec.Success
		if i == 2 {
			rc = mqttcodec.QuotaExceeded // MQTT 5 carries a refusal in the PUBACK
		}
		ack(rc)
	}
	if n := ft.runTasks(); n != 1 {
		t.Fatalf("%d tasks ran for 5 acknowledgements given together, want 1", n)
	}
	if ft.writes-writes != 1 {
		t.Fatalf("%d writes for 5 PUBACKs, want 1", ft.writes-writes)
	}
	if got := env.Stats.PacketsOut.Load() - out; got != 5 {
		t.Fatalf("PacketsOut grew by %d, want 5", got)
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 5 {
		t.Fatalf("got %d packets, want 5 PUBACKs", len(ps))
	}
	for i, p := range ps {
		want := mqttcodec.Success
		if i == 2 {
			want = mqttcodec.QuotaExceeded
		}
		if p.Type != mqttcodec.PUBACK || p.Ack.PacketID != uint16(i+1) || p.Ack.ReasonCode != want {
			t.Fatalf("packet %d: type %v, id %d, reason %v; want PUBACK %d %v", i, p.Type, p.Ack.PacketID, p.Ack.ReasonCode, i+1, want)
		}
	}
	sink.acks[5](mqttcodec.Success)
	if n := ft.runTasks(); n != 1 {
		t.Fatalf("a later acknowledgement ran %d tasks, want 1", n)
	}
	if ps := ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Ack.PacketID != 6 {
		t.Fatalf("want PUBACK 6, got %+v", ps)
	}
}

// A refusal in a batch for a 3.1.1 device, which no PUBACK can carry,
// closes the connection after the PUBACKs before it were written, and
// nothing after it is written.
func TestLateAcksBatchedV311Refusal(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	sink := &holdingSink{}
	env, err := NewEnv(Env{Registry: registry.New[*Session](), Auth: auth.AllowAll(), Sink: sink,
		Sessions: NewStore(sink, StoreLimits{}), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V311, "refused")
	var b []byte
	for pid := uint16(1); pid <= 4; pid++ {
		b = mqttcodec.AppendPublish(b, mqttcodec.V311, &mqttcodec.Publish{Topic: []byte("t"), Payload: []byte("x"), QoS: 1, PacketID: pid})
	}
	if _, closeConn := s.Feed(b); closeConn || len(sink.acks) != 4 {
		t.Fatalf("Feed closed %v with %d acks waiting", closeConn, len(sink.acks))
	}
	ft.deferExec = true
	sink.acks[0](mqttcodec.Success)
	sink.acks[1](mqttcodec.Success)
	sink.acks[2](mqttcodec.UnspecifiedError)
	sink.acks[3](mqttcodec.Success)
	ft.runTasks()
	if !ft.closed {
		t.Fatal("a refused 3.1.1 publish left the connection open")
	}
	ps := ft.packets(t, mqttcodec.V311)
	if len(ps) != 2 || ps[0].Ack.PacketID != 1 || ps[1].Ack.PacketID != 2 {
		t.Fatalf("want PUBACKs 1 and 2 before the close, got %+v", ps)
	}
}
