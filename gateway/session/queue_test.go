package session

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

func payloads(msgs []Delivery) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Payload))
	}
	return out
}

// Enqueue keeps what a kept session's subscriptions take, at QoS 1 or 2,
// in order, and says when no session is kept.
func TestStoreEnqueue(t *testing.T) {
	st := NewStore(&recordingSink{}, StoreLimits{})
	t0 := time.Unix(1_000_000, 0)
	if st.Enqueue("car", &Delivery{Topic: "t", QoS: 1}) {
		t.Fatal("Enqueue without a kept session")
	}
	st.Keep("car", []Subscription{{Filter: "t/#", QoS: 2, ID: 3}, {Filter: "q0", QoS: 0}}, nil, t0.Add(time.Hour))
	for _, d := range []Delivery{
		{Topic: "x", QoS: 1, Payload: []byte("unmatched")},
		{Topic: "q0", QoS: 1, Payload: []byte("granted QoS 0")},
		{Topic: "t/1", QoS: 0, Payload: []byte("QoS 0")},
		{Topic: "t/1", QoS: 1, Payload: []byte("a")},
		{Topic: "t/2", QoS: 2, Payload: []byte("b"), Dup: true, PacketID: 9},
	} {
		if !st.Enqueue("car", &d) {
			t.Fatalf("%s: no kept session", d.Payload)
		}
	}
	if s := st.Stats(); s.Queued != 2 {
		t.Fatalf("%d queued, want 2", s.Queued)
	}
	_, msgs, ok := st.Take("car", t0)
	if !ok || !slices.Equal(payloads(msgs), []string{"a", "b"}) {
		t.Fatalf("taken %v", payloads(msgs))
	}
	if b := msgs[1]; b.QoS != 2 || b.Dup || b.PacketID != 0 || !slices.Equal(b.SubIDs, []uint32{3}) {
		t.Fatalf("queued message %+v: want QoS 2, a new one, the subscription's identifier", b)
	}
	if s := st.Stats(); s.Queued != 0 || s.Bytes != 0 {
		t.Fatalf("after Take %+v", s)
	}
}

// A kept session's queue is bounded: the newest is refused, or the oldest
// queued dropped (never one sent on the connection), each counted; the
// byte bound drops from that session's queue rather than evicting
// sessions.
func TestStoreQueueOverflow(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	subs := []Subscription{{Filter: "t", QoS: 1}}
	sent := []Delivery{{Topic: "t", QoS: 1, Payload: []byte("sent"), Dup: true, PacketID: 7}}
	for _, c := range []struct {
		policy Overflow
		want   []string
	}{
		{OverflowDropNew, []string{"sent", "0", "1"}},
		{OverflowDropOldest, []string{"sent", "3", "4"}},
	} {
		st := NewStore(&recordingSink{}, StoreLimits{Messages: 3, Overflow: c.policy})
		st.Keep("car", subs, slices.Clone(sent), t0.Add(time.Hour))
		for i := range 5 {
			st.Enqueue("car", &Delivery{Topic: "t", QoS: 1, Payload: []byte(fmt.Sprint(i))})
		}
		if s := st.Stats(); s.Queued != 3 || s.QueueDropped != 3 {
			t.Fatalf("policy %d: %+v", c.policy, s)
		}
		if _, msgs, _ := st.Take("car", t0); !slices.Equal(payloads(msgs), c.want) {
			t.Fatalf("policy %d: kept %v, want %v", c.policy, payloads(msgs), c.want)
		}
	}

	// Bytes: room for about three messages beside the sessions.
	msg := func(i int) *Delivery {
		return &Delivery{Topic: "t", QoS: 1, Payload: make([]byte, 1000), Expires: t0.Add(time.Hour + time.Duration(i))}
	}
	one := msgSize(msg(0))
	base := keptSize("a", subs, nil) + keptSize("b", subs, nil)
	for _, policy := range []Overflow{OverflowDropNew, OverflowDropOldest} {
		st := NewStore(&recordingSink{}, StoreLimits{Bytes: base + 3*one, Overflow: policy})
		st.Keep("a", subs, nil, t0.Add(time.Hour))
		st.Keep("b", subs, nil, t0.Add(2*time.Hour))
		st.Enqueue("b", msg(0))
		for i := 1; i <= 4; i++ {
			st.Enqueue("a", msg(i))
		}
		s := st.Stats()
		if s.Sessions != 2 || s.Evicted != 0 || s.Queued != 3 || s.QueueDropped != 2 || s.Bytes > base+3*one {
			t.Fatalf("policy %d: %+v", policy, s)
		}
		_, msgs, _ := st.Take("a", t0)
		want := []time.Time{t0.Add(time.Hour + 1), t0.Add(time.Hour + 2)}
		if policy == OverflowDropOldest {
			want = []time.Time{t0.Add(time.Hour + 3), t0.Add(time.Hour + 4)}
		}
		if len(msgs) != 2 || !msgs[0].Expires.Equal(want[0]) || !msgs[1].Expires.Equal(want[1]) {
			t.Fatalf("policy %d: kept %+v", policy, msgs)
		}
		// A message that cannot fit even alone is refused, and drops nothing.
		if !st.Enqueue("b", &Delivery{Topic: "t", QoS: 1, Payload: make([]byte, 10*one)}) {
			t.Fatal("b not kept")
		}
		if _, msgs, _ := st.Take("b", t0); len(msgs) != 1 {
			t.Fatalf("policy %d: b kept %d messages, want its first", policy, len(msgs))
		}
	}
}

// OnEnd hears of every kept session that ends without its device: by
// expiry, eviction or a Clean Start; not of one resumed.
func TestStoreOnEnd(t *testing.T) {
	st := NewStore(&recordingSink{}, StoreLimits{Sessions: 2})
	var ends []string
	st.OnEnd(func(id string, subs []Subscription) {
		if len(subs) != 1 || subs[0].Filter != id+"/#" {
			t.Errorf("%s ended with %v", id, subs)
		}
		ends = append(ends, id)
	})
	t0 := time.Unix(1_000_000, 0)
	keep := func(id string, at time.Duration) {
		st.Keep(id, []Subscription{{Filter: id + "/#"}}, nil, t0.Add(at))
	}
	keep("a", time.Minute)
	keep("b", 2*time.Minute)
	keep("c", 3*time.Minute) // evicts a
	keep("b", 4*time.Minute) // replaces b: not an end
	st.Take("c", t0)         // resumed: not an end
	keep("d", time.Minute)
	st.Drop("b", t0) // Clean Start
	st.Sweep(t0.Add(time.Minute))
	keep("e", time.Minute)
	st.Take("e", t0.Add(time.Minute)) // found expired
	if !slices.Equal(ends, []string{"a", "b", "d", "e"}) {
		t.Fatalf("ended %v, want [a b d e]", ends)
	}
}

// A session is Kept when Closed gave its state to the store: not when it
// had no expiry, nor when it was taken over.
func TestKept(t *testing.T) {
	env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "gone")
	ft.closed = true
	s.Closed()
	if s.Kept() {
		t.Fatal("a session without expiry was kept")
	}
	s, ft, _ = connectWith(t, env, registry.ModePlain, mqttcodec.V311, "stays", connectOpts{keep: true})
	ft.closed = true
	s.Closed()
	if !s.Kept() {
		t.Fatal("a 3.1.1 session with clean session 0 was not kept")
	}
	if n, _ := env.Sessions.Len(); n != 1 {
		t.Fatalf("%d kept sessions", n)
	}
}
