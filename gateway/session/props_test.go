package session

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

// connectOpts are the CONNECT fields the tests vary.
type connectOpts struct {
	keep    bool   // Clean Start 0
	expiry  uint32 // MQTT 5 Session Expiry Interval
	recvMax uint16 // MQTT 5 Receive Maximum (0: none sent)
}

// connectWith connects a device and returns the CONNACK with the session.
func connectWith(t *testing.T, env *Env, mode registry.Mode, version byte, id string, o connectOpts) (*Session, *fakeTransport, mqttcodec.Connack) {
	t.Helper()
	ft := &fakeTransport{mode: mode}
	s := new(Session)
	s.Init(env, ft)
	c := &mqttcodec.Connect{ProtocolVersion: version, CleanStart: !o.keep, KeepAlive: 60, ClientID: []byte(id)}
	if version == mqttcodec.V5 {
		if o.expiry > 0 {
			c.Properties.SetSessionExpiry(o.expiry)
		}
		if o.recvMax > 0 {
			c.Properties.SetReceiveMaximum(o.recvMax)
		}
	}
	b := mqttcodec.AppendConnect(nil, c)
	if n, closeConn := s.Feed(b); n != len(b) || closeConn {
		t.Fatalf("Feed(CONNECT) = %d, %v", n, closeConn)
	}
	ps := ft.packets(t, version)
	if len(ps) == 0 || ps[0].Type != mqttcodec.CONNACK || ps[0].Connack.ReasonCode != 0 {
		t.Fatalf("want CONNACK 0, got %+v", ps)
	}
	// What followed the CONNACK (messages sent again) stays to be read.
	for i := len(ps) - 1; i > 0; i-- {
		ft.out = append(mqttcodec.Append(nil, version, &ps[i]), ft.out...)
	}
	return s, ft, ps[0].Connack
}

func sinkMessages(env *Env) []*Message {
	r := env.Sink.(*recordingSink)
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Message(nil), r.msgs...)
}

// The properties of an MQTT 5 PUBLISH travel with the message, copied out
// of the buffer the codec decoded them from; its expiry becomes a time.
func TestPublishPropertiesIn(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "pub5")
	pub := mqttcodec.Publish{Topic: []byte("tele/1"), Payload: []byte("{}"), QoS: 1, PacketID: 1}
	pub.Properties.SetPayloadFormat(1)
	pub.Properties.SetContentType([]byte("application/json"))
	pub.Properties.SetResponseTopic([]byte("reply/1"))
	pub.Properties.SetCorrelationData([]byte{1, 2, 3})
	pub.Properties.AddUserProperty([]byte("k"), []byte("v1"))
	pub.Properties.AddUserProperty([]byte("a"), []byte("b"))
	pub.Properties.AddUserProperty([]byte("k"), []byte("v2"))
	pub.Properties.SetMessageExpiry(30)
	b := mqttcodec.AppendPublish(nil, mqttcodec.V5, &pub)
	if _, closeConn := s.Feed(b); closeConn {
		t.Fatal("closed")
	}
	clear(b) // the transport reuses its buffer
	ft.packets(t, mqttcodec.V5)
	msgs := sinkMessages(env)
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages", len(msgs))
	}
	want := &MessageProps{PayloadFormat: 1, HasPayloadFormat: true, ContentType: "application/json", ResponseTopic: "reply/1",
		CorrelationData: []byte{1, 2, 3}, User: []UserProp{{"k", "v1"}, {"a", "b"}, {"k", "v2"}}}
	if m := msgs[0]; !reflect.DeepEqual(m.Props, want) || !m.Expires.Equal(clk.now.Add(30*time.Second)) {
		t.Fatalf("message props %+v expires %v; want %+v, %v", m.Props, m.Expires, want, clk.now.Add(30*time.Second))
	}

	// None: no props, no expiry.
	s.Feed(mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte("t"), Payload: []byte("x")}))
	if m := sinkMessages(env)[1]; m.Props != nil || !m.Expires.IsZero() {
		t.Fatalf("plain publish: props %+v, expires %v", m.Props, m.Expires)
	}

	// A client's PUBLISH carries no Subscription Identifier [MQTT-3.3.4-6].
	bad := mqttcodec.Publish{Topic: []byte("t")}
	bad.Properties.AddSubscriptionID(4)
	if _, closeConn := s.Feed(mqttcodec.AppendPublish(nil, mqttcodec.V5, &bad)); !closeConn {
		t.Fatal("a subscription identifier from a client was accepted")
	}
	if ps := ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Disconnect.ReasonCode != mqttcodec.ProtocolError {
		t.Fatalf("want DISCONNECT 0x82, got %+v", ps)
	}
}

// An MQTT 5 Will keeps its properties; its expiry counts from when it is
// published, after its delay.
func TestWillProperties(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	ft := &fakeTransport{mode: registry.ModePlain}
	s := new(Session)
	s.Init(env, ft)
	c := &mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, KeepAlive: 60, ClientID: []byte("car"),
		WillFlag: true, WillTopic: []byte("devices/car/status"), WillPayload: []byte("offline"), WillQoS: 1}
	c.Properties.SetSessionExpiry(600)
	c.WillProperties.SetWillDelay(10)
	c.WillProperties.SetMessageExpiry(30)
	c.WillProperties.SetContentType([]byte("text/plain"))
	c.WillProperties.AddUserProperty([]byte("why"), []byte("lost"))
	b := mqttcodec.AppendConnect(nil, c)
	s.Feed(b)
	clear(b)
	ft.packets(t, mqttcodec.V5)
	ft.closed = true
	s.Closed()
	clk.now = clk.now.Add(10 * time.Second)
	env.Sessions.Sweep(clk.now)
	msgs := sinkMessages(env)
	if len(msgs) != 1 {
		t.Fatalf("%d wills published", len(msgs))
	}
	want := &MessageProps{ContentType: "text/plain", User: []UserProp{{"why", "lost"}}}
	if m := msgs[0]; !reflect.DeepEqual(m.Props, want) || !m.Expires.Equal(clk.now.Add(30*time.Second)) {
		t.Fatalf("will props %+v expires %v; want %+v, published + 30s", m.Props, m.Expires, want)
	}
}

// An MQTT 5 device gets the message's properties, the expiry left
// (rounded up) and the subscription identifiers; a 3.1.1 device none.
func TestPublishPropertiesOut(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	props := &MessageProps{PayloadFormat: 1, HasPayloadFormat: true, ContentType: "text/plain", ResponseTopic: "r/1",
		CorrelationData: []byte("id-7"), User: []UserProp{{"k", "1"}, {"k", "2"}}}
	d := &Delivery{Topic: "t", Payload: []byte("x"), QoS: 1, Props: props, Expires: clk.now.Add(90*time.Second + 500*time.Millisecond), SubIDs: []uint32{3, 7}}

	s5, ft5 := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "sub5")
	if err := s5.Deliver(d); err != nil {
		t.Fatal(err)
	}
	ps := ft5.packets(t, mqttcodec.V5)
	if len(ps) != 1 {
		t.Fatalf("%d packets", len(ps))
	}
	pr := &ps[0].Publish.Properties
	users := []mqttcodec.UserProperty{{Key: []byte("k"), Value: []byte("1")}, {Key: []byte("k"), Value: []byte("2")}}
	if !pr.Has(mqttcodec.PropPayloadFormat) || pr.PayloadFormat != 1 || string(pr.ContentType) != "text/plain" ||
		string(pr.ResponseTopic) != "r/1" || string(pr.CorrelationData) != "id-7" || !reflect.DeepEqual(pr.UserProperties, users) ||
		!pr.Has(mqttcodec.PropMessageExpiry) || pr.MessageExpiry != 91 || !slices32Equal(pr.SubscriptionIDs, []uint32{3, 7}) {
		t.Fatalf("PUBLISH properties %+v", pr)
	}

	s3, ft3 := newConnected(t, env, registry.ModePlain, mqttcodec.V311, "sub3")
	if err := s3.Deliver(d); err != nil {
		t.Fatal(err)
	}
	if ps := ft3.packets(t, mqttcodec.V311); len(ps) != 1 || ps[0].Publish.Properties.Present != 0 || len(ps[0].Publish.Properties.SubscriptionIDs) != 0 {
		t.Fatalf("3.1.1 PUBLISH %+v", ps)
	}
}

func slices32Equal(a, b []uint32) bool { return reflect.DeepEqual(a, b) }

// A message whose expiry has passed when it would be written is dropped
// and counted: at once, and from the queue [MQTT-3.3.2-5].
func TestExpiredNotWritten(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft, _ := connectWith(t, env, registry.ModePlain, mqttcodec.V5, "late", connectOpts{recvMax: 2}) // one slot for routed messages
	if err := s.Deliver(&Delivery{Topic: "t", QoS: 1, Expires: clk.now}); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired delivery: %v", err)
	}
	if len(ft.out) != 0 || env.Stats.MessagesExpired.Load() != 1 {
		t.Fatalf("written %d bytes, expired %d", len(ft.out), env.Stats.MessagesExpired.Load())
	}
	if err := s.Deliver(&Delivery{Topic: "t", Payload: []byte("1"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(&Delivery{Topic: "t", Payload: []byte("2"), QoS: 1, Expires: clk.now.Add(5 * time.Second)}); err != nil || s.Queued() != 1 {
		t.Fatalf("second delivery: %v, queued %d", err, s.Queued())
	}
	if err := s.Deliver(&Delivery{Topic: "t", Payload: []byte("3"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	ps := ft.packets(t, mqttcodec.V5)
	clk.now = clk.now.Add(5 * time.Second)
	s.Feed(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: ps[0].Publish.PacketID}))
	ps = ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || string(ps[0].Publish.Payload) != "3" || env.Stats.MessagesExpired.Load() != 2 {
		t.Fatalf("after the PUBACK: %+v, expired %d; want message 3, 2 expired", ps, env.Stats.MessagesExpired.Load())
	}
}
