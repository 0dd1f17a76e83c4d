package session

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

func TestMatchDelivery(t *testing.T) {
	subs := []Subscription{
		{Filter: "a/#", QoS: 1, ID: 1},
		{Filter: "a/+", QoS: 2, RetainAsPublished: true, ID: 2},
		{Filter: "a/b", QoS: 0},
		{Filter: "$share/g/a/b", QoS: 2, ID: 4},
		{Filter: "n/#", QoS: 1, NoLocal: true, ID: 5},
	}
	for _, c := range []struct {
		name   string
		d      Delivery
		ok     bool
		qos    byte
		ids    []uint32
		retain bool
	}{
		{"every non-shared match, one copy", Delivery{Topic: "a/b", QoS: 2}, true, 2, []uint32{1, 2}, false},
		{"QoS the lower of the message's and the highest granted", Delivery{Topic: "a/b", QoS: 1}, true, 1, []uint32{1, 2}, false},
		{"one match", Delivery{Topic: "a/b/c", QoS: 2}, true, 1, []uint32{1}, false},
		{"no match", Delivery{Topic: "b", QoS: 1}, false, 0, nil, false},
		{"retained: kept for Retain As Published", Delivery{Topic: "a/b", QoS: 1, Retained: true}, true, 1, []uint32{1, 2}, true},
		{"retained: dropped without it", Delivery{Topic: "a/b/c", QoS: 1, Retained: true}, true, 1, []uint32{1}, false},
		{"named shared subscription only", Delivery{Topic: "a/b", QoS: 2, Filter: "$share/g/a/b"}, true, 2, []uint32{4}, false},
		{"named subscription, retained for it", Delivery{Topic: "a/b", QoS: 2, Filter: "a/b", Retain: true}, true, 0, nil, true},
		{"named, unknown", Delivery{Topic: "a/b", QoS: 2, Filter: "x"}, false, 0, nil, false},
		{"No Local: own message", Delivery{Topic: "n/1", QoS: 1, Publisher: "me"}, false, 0, nil, false},
		{"No Local: another's", Delivery{Topic: "n/1", QoS: 1, Publisher: "other"}, true, 1, []uint32{5}, false},
	} {
		m, ok := MatchDelivery(subs, "me", &c.d)
		if ok != c.ok {
			t.Errorf("%s: ok %v", c.name, ok)
			continue
		}
		if ok && (m.QoS != c.qos || !slices.Equal(m.SubIDs, c.ids) || m.Retain != c.retain || m.Topic != c.d.Topic) {
			t.Errorf("%s: QoS %d, ids %v, retain %v; want %d, %v, %v", c.name, m.QoS, m.SubIDs, m.Retain, c.qos, c.ids, c.retain)
		}
	}
}

// Route writes one copy per session, and nothing when no subscription
// takes the message; an ended session changes nothing and says
// ErrNotConnected; a closing one keeps the message for its end.
func TestRoute(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "r")
	p := &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("a/#"), QoS: 2}, {Filter: []byte("a/b"), QoS: 1}}}
	p.Properties.AddSubscriptionID(6)
	subscribe(t, s, ft, mqttcodec.V5, p)
	if err := s.Route(&Delivery{Topic: "x", QoS: 1}); err != nil || len(ft.out) != 0 {
		t.Fatalf("unmatched: %v, %d bytes", err, len(ft.out))
	}
	if err := s.Route(&Delivery{Topic: "a/b", Payload: []byte("p"), QoS: 2, Retained: true}); err != nil {
		t.Fatal(err)
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Publish.QoS != 2 || ps[0].Publish.Retain || !slices.Equal(ps[0].Publish.Properties.SubscriptionIDs, []uint32{6, 6}) {
		t.Fatalf("routed %+v", ps)
	}
	// Secure data stays off plain sockets whatever the route says.
	if err := s.Route(&Delivery{Topic: "a/b", QoS: 1, TLSOnly: true}); !errors.Is(err, ErrInsecureTransport) || len(ft.out) != 0 {
		t.Fatalf("TLS-only on plain: %v", err)
	}

	// Closing: a QoS 1/2 message stays with what was not sent, and
	// Closed keeps it with the session.
	k, kft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "k", connectOpts{expiry: 600})
	subscribe(t, k, kft, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("t"), QoS: 1}}})
	k.Kick(mqttcodec.AdministrativeAction, "")
	kft.packets(t, mqttcodec.V5)
	if err := k.Route(&Delivery{Topic: "t", Payload: []byte("while closing"), QoS: 1}); err != nil {
		t.Fatalf("Route while closing: %v", err)
	}
	k.Closed()
	if !k.Kept() {
		t.Fatal("not kept")
	}
	if err := k.Route(&Delivery{Topic: "t", QoS: 1}); !errors.Is(err, ErrNotConnected) || k.Queued() != 1 || len(kft.out) != 0 {
		t.Fatalf("Route after the end: %v, queued %d", err, k.Queued())
	}
	refused := env.Stats.RefusedOnPlain.Load()
	if err := k.Deliver(&Delivery{Topic: "t", QoS: 1, TLSOnly: true}); !errors.Is(err, ErrNotConnected) || env.Stats.RefusedOnPlain.Load() != refused {
		t.Fatalf("Deliver after the end: %v (secure data for a plain session that ended is the caller's to keep)", err)
	}
	if st := env.Sessions.Stats(); st.Queued != 1 {
		t.Fatalf("store holds %d messages, want the one routed while closing", st.Queued)
	}
}

func ack(t mqttcodec.Type, pid uint16, rc mqttcodec.ReasonCode) []byte {
	return mqttcodec.AppendAck(nil, mqttcodec.V5, t, &mqttcodec.Ack{PacketID: pid, ReasonCode: rc})
}

// QoS 2 toward a device: PUBREC, PUBREL, PUBCOMP; the slot is held until
// the PUBCOMP; a refusing PUBREC ends the exchange; commands stay QoS 1.
func TestQoS2Out(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	h := new(recordingHooks)
	env.Hooks = h
	s, ft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "q2", connectOpts{recvMax: 2}) // one routed slot
	for i := range 3 {
		if err := s.Deliver(&Delivery{Topic: "t", Payload: []byte{byte('0' + i)}, QoS: 2}); err != nil {
			t.Fatal(err)
		}
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Publish.QoS != 2 || ps[0].Publish.Dup || s.Queued() != 2 {
		t.Fatalf("first: %+v, queued %d", ps, s.Queued())
	}
	pid := ps[0].Publish.PacketID
	s.Feed(ack(mqttcodec.PUBREC, pid, 0))
	ps = ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.PUBREL || ps[0].Ack.PacketID != pid || s.Queued() != 2 {
		t.Fatalf("after PUBREC: %+v, queued %d; want PUBREL only, the slot held", ps, s.Queued())
	}
	s.Feed(ack(mqttcodec.PUBREC, pid, 0)) // repeated: PUBREL again
	if ps = ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Type != mqttcodec.PUBREL {
		t.Fatalf("repeated PUBREC: %+v", ps)
	}
	s.Feed(ack(mqttcodec.PUBCOMP, pid, 0))
	ps = ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || string(ps[0].Publish.Payload) != "1" || s.Queued() != 1 {
		t.Fatalf("after PUBCOMP: %+v", ps)
	}
	// Refused by the device: no PUBREL, the next goes.
	s.Feed(ack(mqttcodec.PUBREC, ps[0].Publish.PacketID, mqttcodec.QuotaExceeded))
	ps = ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.PUBLISH || string(ps[0].Publish.Payload) != "2" {
		t.Fatalf("after a refusing PUBREC: %+v", ps)
	}
	last := ps[0].Publish.PacketID
	// A PUBREC for nothing of ours is released with 0x92.
	s.Feed(ack(mqttcodec.PUBREC, 999, 0))
	if ps = ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Type != mqttcodec.PUBREL || ps[0].Ack.ReasonCode != mqttcodec.PacketIdentifierNotFound {
		t.Fatalf("unknown PUBREC: %+v", ps)
	}
	// A command at QoS 2 goes out at QoS 1 and is acknowledged by PUBACK.
	if err := s.Deliver(&Delivery{Topic: "c", QoS: 2, Token: "cmd"}); err != nil {
		t.Fatal(err)
	}
	ps = ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Publish.QoS != 1 {
		t.Fatalf("command %+v", ps)
	}
	s.Feed(ack(mqttcodec.PUBACK, ps[0].Publish.PacketID, 0))
	if !slices.Equal(h.acked, []string{"cmd"}) {
		t.Fatalf("acked %v", h.acked)
	}
	// PUBCOMP before the PUBREL breaks the protocol.
	if _, closeConn := s.Feed(ack(mqttcodec.PUBCOMP, last, 0)); !closeConn {
		t.Fatal("PUBCOMP before PUBREL accepted")
	}

	// PUBACK for a QoS 2 message, too.
	s, ft = newConnected(t, env, registry.ModePlain, mqttcodec.V5, "q2b")
	s.Deliver(&Delivery{Topic: "t", QoS: 2})
	ps = ft.packets(t, mqttcodec.V5)
	if _, closeConn := s.Feed(ack(mqttcodec.PUBACK, ps[0].Publish.PacketID, 0)); !closeConn {
		t.Fatal("PUBACK for a QoS 2 message accepted")
	}
}

// A resumed session sends again what it had not had acknowledged, with
// the same packet identifiers: PUBLISH with DUP, PUBREL for the released
// QoS 2 ones; then what waited; new identifiers skip those in use.
func TestResumeSameIdentifiers(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "car", connectOpts{keep: true, expiry: 600, recvMax: 4}) // three routed slots
	subscribe(t, s, ft, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("t/#"), QoS: 2}}})
	for _, d := range []Delivery{
		{Topic: "t/a", QoS: 2}, {Topic: "t/b", QoS: 2}, {Topic: "t/c", QoS: 1}, {Topic: "t/d", QoS: 1},
		{Topic: "t/e", QoS: 1, Expires: clk.now.Add(time.Minute)},
	} {
		if err := s.Route(&d); err != nil {
			t.Fatal(err)
		}
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 3 || s.Queued() != 2 {
		t.Fatalf("%d sent, %d queued", len(ps), s.Queued())
	}
	pa, pb, pc := ps[0].Publish.PacketID, ps[1].Publish.PacketID, ps[2].Publish.PacketID
	s.Feed(ack(mqttcodec.PUBREC, pa, 0)) // t/a released
	ft.packets(t, mqttcodec.V5)
	ft.closed = true
	s.Closed()
	if !s.Kept() {
		t.Fatal("session not kept")
	}
	// Queued for the absent device.
	if !env.Sessions.Enqueue("car", &Delivery{Topic: "t/f", QoS: 2}) {
		t.Fatal("no kept session for Enqueue")
	}
	clk.now = clk.now.Add(2 * time.Minute) // t/e expires

	s, ft, connack := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "car", connectOpts{keep: true, expiry: 600, recvMax: 4})
	if !connack.SessionPresent {
		t.Fatal("session not present")
	}
	ps = ft.packets(t, mqttcodec.V5)
	type out struct {
		typ   mqttcodec.Type
		topic string
		pid   uint16
		dup   bool
	}
	var got []out
	for _, p := range ps {
		if p.Type == mqttcodec.PUBREL {
			got = append(got, out{p.Type, "", p.Ack.PacketID, false})
		} else {
			got = append(got, out{p.Type, string(p.Publish.Topic), p.Publish.PacketID, p.Publish.Dup})
		}
	}
	// PUBREL a (a slot), b and c again (two more): the window is full;
	// t/d waits, t/e expired, t/f after t/d.
	want := []out{{mqttcodec.PUBREL, "", pa, false}, {mqttcodec.PUBLISH, "t/b", pb, true}, {mqttcodec.PUBLISH, "t/c", pc, true}}
	if !slices.Equal(got, want) || s.Queued() != 2 {
		t.Fatalf("sent again %+v, queued %d; want %+v and 2 queued", got, s.Queued(), want)
	}
	s.Feed(ack(mqttcodec.PUBCOMP, pa, 0))
	s.Feed(ack(mqttcodec.PUBACK, pc, 0))
	ps = ft.packets(t, mqttcodec.V5)
	if len(ps) != 2 || string(ps[0].Publish.Topic) != "t/d" || string(ps[1].Publish.Topic) != "t/f" || ps[0].Publish.Dup {
		t.Fatalf("then %+v", ps)
	}
	for _, p := range ps {
		if id := p.Publish.PacketID; id == pb {
			t.Fatalf("identifier %d handed out while t/b holds it", id)
		}
	}
	if st := env.Sessions.Stats(); st.QueueExpired != 1 || st.Queued != 0 {
		t.Fatalf("store stats %+v", st)
	}
}

// A QoS 2 message sent before is sent again past its expiry: expiry no
// longer applies to it [MQTT-4.3.3-7]; a QoS 1 one is dropped.
func TestResumeExpiredQoS2StillSent(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "car", connectOpts{keep: true, expiry: 600})
	subscribe(t, s, ft, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("t"), QoS: 2}}})
	exp := clk.now.Add(10 * time.Second)
	s.Route(&Delivery{Topic: "t", Payload: []byte("2"), QoS: 2, Expires: exp})
	s.Route(&Delivery{Topic: "t", Payload: []byte("1"), QoS: 1, Expires: exp})
	ft.packets(t, mqttcodec.V5)
	ft.closed = true
	s.Closed()
	clk.now = clk.now.Add(time.Minute)
	_, ft, _ = connectWith(t, env, registry.ModePlain, mqttcodec.V5, "car", connectOpts{keep: true, expiry: 600})
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || string(ps[0].Publish.Payload) != "2" || !ps[0].Publish.Dup || ps[0].Publish.Properties.MessageExpiry != 1 {
		t.Fatalf("sent again %+v", ps)
	}
}

// A session taken over by a connection that resumes it hands over what
// it had not had acknowledged; one that starts clean gets nothing.
func TestTakeoverHandsOver(t *testing.T) {
	for _, clean := range []bool{false, true} {
		clk := &clock{now: time.Unix(1_700_000_000, 0)}
		env := newTestEnv(t, clk)
		old, oft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "car", connectOpts{keep: true, expiry: 600, recvMax: 2})
		subscribe(t, old, oft, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("t"), QoS: 1}}})
		old.Route(&Delivery{Topic: "t", Payload: []byte("a"), QoS: 1})
		old.Route(&Delivery{Topic: "t", Payload: []byte("b"), QoS: 1}) // queued
		ps := oft.packets(t, mqttcodec.V5)
		pa := ps[0].Publish.PacketID

		next, nft, _ := connectWith(t, env, registry.ModeTLS, mqttcodec.V5, "car", connectOpts{keep: !clean, expiry: 600})
		if !oft.closed {
			t.Fatal("old session not kicked")
		}
		oft.packets(t, mqttcodec.V5)
		old.Closed()
		if old.Kept() {
			t.Fatal("a session taken over was kept")
		}
		ps = nft.packets(t, mqttcodec.V5)
		if clean {
			if len(ps) != 0 {
				t.Fatalf("clean successor got %+v", ps)
			}
			continue
		}
		if len(ps) != 2 || string(ps[0].Publish.Payload) != "a" || !ps[0].Publish.Dup || ps[0].Publish.PacketID != pa ||
			string(ps[1].Publish.Payload) != "b" || ps[1].Publish.Dup {
			t.Fatalf("successor got %+v", ps)
		}
		if subs := next.Subscriptions(); len(subs) != 1 {
			t.Fatalf("successor subscriptions %v", subs)
		}
	}
}

// A QoS 2 message the device sent, acknowledged with PUBREC, whose PUBREL
// had not come, is not delivered twice when the device sends it again on
// a resumed session [MQTT-4.3.3-10], nor on a connection that took the
// session over.
func TestReceivedQoS2Resumed(t *testing.T) {
	for _, takeover := range []bool{false, true} {
		clk := &clock{now: time.Unix(1_700_000_000, 0)}
		env := newTestEnv(t, clk)
		s, ft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "pub", connectOpts{keep: true, expiry: 600})
		pub := mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte("t"), Payload: []byte("once"), QoS: 2, PacketID: 5})
		s.Feed(pub)
		if ps := ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Type != mqttcodec.PUBREC {
			t.Fatalf("want PUBREC, got %+v", ps)
		}
		var next *Session
		var nft *fakeTransport
		if takeover {
			next, nft, _ = connectWith(t, env, registry.ModePlain, mqttcodec.V5, "pub", connectOpts{keep: true, expiry: 600})
			s.Closed()
		} else {
			ft.closed = true
			s.Closed()
			next, nft, _ = connectWith(t, env, registry.ModePlain, mqttcodec.V5, "pub", connectOpts{keep: true, expiry: 600})
		}
		dup := mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte("t"), Payload: []byte("once"), QoS: 2, PacketID: 5, Dup: true})
		next.Feed(dup)
		next.Feed(ack(mqttcodec.PUBREL, 5, 0))
		ps := nft.packets(t, mqttcodec.V5)
		if len(ps) != 2 || ps[0].Type != mqttcodec.PUBREC || ps[1].Type != mqttcodec.PUBCOMP || ps[1].Ack.ReasonCode != 0 {
			t.Fatalf("takeover %v: %+v, want PUBREC and PUBCOMP 0", takeover, ps)
		}
		if n := len(sinkMessages(env)); n != 1 {
			t.Fatalf("takeover %v: delivered %d times", takeover, n)
		}
	}
}
