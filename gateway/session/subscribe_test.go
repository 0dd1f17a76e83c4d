package session

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

func subscribe(t *testing.T, s *Session, ft *fakeTransport, version byte, p *mqttcodec.Subscribe) []mqttcodec.Packet {
	t.Helper()
	s.Feed(mqttcodec.AppendSubscribe(nil, version, p))
	return ft.packets(t, version)
}

// The subscription options and the SUBSCRIBE's identifier are kept; QoS 2
// is granted; the CONNACK says identifiers and shared subscriptions are
// available.
func TestSubscriptionOptions(t *testing.T) {
	env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
	s, ft, ack := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "opts", connectOpts{})
	if pr := &ack.Properties; !pr.Has(mqttcodec.PropSubIDAvailable) || pr.SubIDAvailable != 1 ||
		!pr.Has(mqttcodec.PropSharedSubAvailable) || pr.SharedSubAvailable != 1 {
		t.Fatalf("CONNACK properties %+v", pr)
	}
	p := &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{
		{Filter: []byte("a/#"), QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2},
		{Filter: []byte("$share/g/b/+"), QoS: 1},
	}}
	p.Properties.AddSubscriptionID(9)
	ps := subscribe(t, s, ft, mqttcodec.V5, p)
	if len(ps) != 1 || !slices.Equal(ps[0].Suback.ReasonCodes, []mqttcodec.ReasonCode{2, 1}) {
		t.Fatalf("SUBACK %+v", ps)
	}
	want := []Subscription{
		{Filter: "a/#", QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2, ID: 9},
		{Filter: "$share/g/b/+", QoS: 1, ID: 9},
	}
	if got := s.Subscriptions(); !slices.Equal(got, want) {
		t.Fatalf("subscriptions %+v, want %+v", got, want)
	}
	// Subscribing again replaces the options, and drops the identifier.
	subscribe(t, s, ft, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 2, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("a/#"), QoS: 1}}})
	if got := s.Subscriptions()[0]; got != (Subscription{Filter: "a/#", QoS: 1}) {
		t.Fatalf("replaced subscription %+v", got)
	}

	// A Subscription Identifier of 0 is a protocol error.
	if _, closeConn := s.Feed(encodeSubscribeWithID0(t)); !closeConn {
		t.Fatal("subscription identifier 0 accepted")
	}
	if ps := ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Type != mqttcodec.DISCONNECT || ps[0].Disconnect.ReasonCode != mqttcodec.ProtocolError {
		t.Fatalf("want DISCONNECT 0x82, got %+v", ps)
	}
}

// encodeSubscribeWithID0 is a SUBSCRIBE whose Subscription Identifier is 0.
func encodeSubscribeWithID0(t *testing.T) []byte {
	t.Helper()
	p := &mqttcodec.Subscribe{PacketID: 3, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("c")}}}
	p.Properties.AddSubscriptionID(1)
	b := mqttcodec.AppendSubscribe(nil, mqttcodec.V5, p)
	// fixed header (2), packet id (2), property length (1), id 0x0B, value.
	if b[5] != byte(mqttcodec.PropSubscriptionID) || b[6] != 1 {
		t.Fatalf("unexpected encoding % x", b)
	}
	b[6] = 0
	return b
}

// Shared subscriptions: accepted (also from 3.1.1 devices), checked by the
// topic authorization on the filter they share, refused when the gateway
// is set not to offer them; No Local on one is a protocol error.
func TestSharedSubscriptions(t *testing.T) {
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
		withACL(t, env, "")
		s, ft := newConnected(t, env, registry.ModePlain, version, "car1")
		ps := subscribe(t, s, ft, version, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{
			{Filter: []byte("$share/g/devices/car1/commands/#"), QoS: 1},
			{Filter: []byte("$share/g/devices/car2/commands/#"), QoS: 1},
		}})
		notAuth := mqttcodec.ReasonCode(0x80)
		if version == mqttcodec.V5 {
			notAuth = mqttcodec.NotAuthorized
		}
		if len(ps) != 1 || !slices.Equal(ps[0].Suback.ReasonCodes, []mqttcodec.ReasonCode{1, notAuth}) {
			t.Fatalf("v%d: SUBACK %+v", version, ps)
		}
		if version == mqttcodec.V311 {
			// Not a valid shared filter: the codec took it for an ordinary one.
			ps = subscribe(t, s, ft, version, &mqttcodec.Subscribe{PacketID: 2, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("$share/g")}}})
			if len(ps) != 1 || !slices.Equal(ps[0].Suback.ReasonCodes, []mqttcodec.ReasonCode{0x80}) {
				t.Fatalf("v3: SUBACK %+v", ps)
			}
		}

		env.NoSharedSubscriptions = true
		s, ft, ack := connectWith(t, env, registry.ModePlain, version, "car3", connectOpts{})
		if version == mqttcodec.V5 && (!ack.Properties.Has(mqttcodec.PropSharedSubAvailable) || ack.Properties.SharedSubAvailable != 0) {
			t.Fatalf("CONNACK %+v", ack.Properties)
		}
		ps = subscribe(t, s, ft, version, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("$share/g/x")}}})
		want := mqttcodec.ReasonCode(0x80)
		if version == mqttcodec.V5 {
			want = mqttcodec.SharedSubscriptionsNotSupported
		}
		if len(ps) != 1 || !slices.Equal(ps[0].Suback.ReasonCodes, []mqttcodec.ReasonCode{want}) || len(s.Subscriptions()) != 0 {
			t.Fatalf("v%d: without shared subscriptions: %+v, %v", version, ps, s.Subscriptions())
		}
	}

	env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
	s, _ := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "nl")
	// The codec encodes No Local whatever the filter; the decoder refuses it [MQTT-3.8.3-4].
	b := mqttcodec.AppendSubscribe(nil, mqttcodec.V5, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("$share/g/x"), NoLocal: true}}})
	if _, closeConn := s.Feed(b); !closeConn {
		t.Fatal("No Local on a shared subscription accepted")
	}
}

// heldHooks keeps Subscribed's ready to call it later.
type heldHooks struct {
	recordingHooks
	events [][]SubscribeEvent
	ready  []func([]mqttcodec.ReasonCode)
}

func (h *heldHooks) Subscribed(_ *Session, subs []SubscribeEvent, ready func([]mqttcodec.ReasonCode)) {
	h.events = append(h.events, subs)
	h.ready = append(h.ready, ready)
}

// The SUBACK waits for the routes: the subscriptions are held at once,
// reading pauses until ready, and those whose routes failed are undone
// (the one replaced is back) and get the failure in the SUBACK.
func TestSubackAfterRoutes(t *testing.T) {
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		t.Run(fmt.Sprint("v", version), func(t *testing.T) {
			env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
			h := new(heldHooks)
			env.Hooks = h
			s, ft := newConnected(t, env, registry.ModePlain, version, "dev")
			subscribe(t, s, ft, version, &mqttcodec.Subscribe{PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("old"), QoS: 0}}})
			h.ready[0](nil)
			if ps := ft.packets(t, version); len(ps) != 1 || ps[0].Type != mqttcodec.SUBACK || ft.paused {
				t.Fatalf("first SUBACK %+v, paused %v", ps, ft.paused)
			}

			ps := subscribe(t, s, ft, version, &mqttcodec.Subscribe{PacketID: 2, Subscriptions: []mqttcodec.Subscription{
				{Filter: []byte("a"), QoS: 1}, {Filter: []byte("old"), QoS: 1}, {Filter: []byte("b"), QoS: 1},
			}})
			if len(ps) != 0 || !ft.paused {
				t.Fatalf("SUBACK before the routes: %+v, paused %v", ps, ft.paused)
			}
			if want := []Subscription{{Filter: "old", QoS: 1}, {Filter: "a", QoS: 1}, {Filter: "b", QoS: 1}}; !slices.Equal(s.Subscriptions(), want) {
				t.Fatalf("subscriptions while waiting %+v", s.Subscriptions())
			}
			if ev := h.events[1]; len(ev) != 3 || !ev[0].New || ev[1].New || !ev[2].New {
				t.Fatalf("events %+v", ev)
			}
			ping := mqttcodec.AppendPingreq(nil)
			if used, _ := s.Feed(ping); used != 0 {
				t.Fatal("read while waiting for the routes")
			}
			// ready from another goroutine: the answer hops to the owner.
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.ready[1]([]mqttcodec.ReasonCode{0, mqttcodec.QuotaExceeded, mqttcodec.ImplementationSpecificError})
			}()
			wg.Wait()
			h.ready[1](nil) // a second call is ignored
			ps = ft.packets(t, version)
			want := []mqttcodec.ReasonCode{1, mqttcodec.QuotaExceeded, mqttcodec.ImplementationSpecificError}
			if version == mqttcodec.V311 {
				want = []mqttcodec.ReasonCode{1, 0x80, 0x80}
			}
			if len(ps) != 1 || ps[0].Suback.PacketID != 2 || !slices.Equal(ps[0].Suback.ReasonCodes, want) {
				t.Fatalf("SUBACK %+v, want codes %v", ps, want)
			}
			if want := []Subscription{{Filter: "old", QoS: 0}, {Filter: "a", QoS: 1}}; !slices.Equal(s.Subscriptions(), want) {
				t.Fatalf("subscriptions after the failures %+v, want %+v", s.Subscriptions(), want)
			}
			if ft.paused {
				t.Fatal("still paused after the SUBACK")
			}
			if used, _ := s.Feed(ping); used != len(ping) {
				t.Fatal("not reading after the SUBACK")
			}
			ft.packets(t, version)

			// The session ends before the routes: nothing is written.
			subscribe(t, s, ft, version, &mqttcodec.Subscribe{PacketID: 3, Subscriptions: []mqttcodec.Subscription{{Filter: []byte("c")}}})
			ft.closed = true
			s.Closed()
			h.ready[2](nil)
			if len(ft.out) != 0 {
				t.Fatalf("wrote % x after the end", ft.out)
			}
		})
	}
}
