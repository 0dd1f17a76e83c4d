package session

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// fakeTransport records what a session writes; Exec runs at once, as the
// test is the owner.
type fakeTransport struct {
	mode   registry.Mode
	out    []byte
	closed bool
	// stalled: the device reads nothing; what it is sent stays queued.
	stalled bool
	// paused: the session told the transport to stop reading.
	paused bool
	// deferExec: Exec queues fn in tasks, run by runTasks, as an event
	// loop runs tasks after the current one; writes counts Write calls.
	deferExec bool
	tasks     []func()
	writes    int
}

func (f *fakeTransport) Write(b []byte) error {
	if f.closed {
		return errors.New("closed")
	}
	f.writes++
	f.out = append(f.out, b...)
	return nil
}
func (f *fakeTransport) Close() { f.closed = true }
func (f *fakeTransport) Finish(b []byte) error {
	err := f.Write(b)
	f.Close()
	return err
}
func (f *fakeTransport) Exec(fn func()) {
	if f.deferExec {
		f.tasks = append(f.tasks, fn)
		return
	}
	fn()
}

// runTasks runs the tasks Exec queued, and those they queue; it returns
// how many ran.
func (f *fakeTransport) runTasks() int {
	n := 0
	for len(f.tasks) > 0 {
		fn := f.tasks[0]
		f.tasks = f.tasks[1:]
		fn()
		n++
	}
	return n
}
func (f *fakeTransport) Mode() registry.Mode    { return f.mode }
func (f *fakeTransport) Remote() string         { return "192.0.2.1:5000" }
func (f *fakeTransport) PeerIdentity() []string { return nil }
func (f *fakeTransport) ChannelBinding() []byte { return nil }
func (f *fakeTransport) Buffered() int {
	if f.stalled {
		return len(f.out)
	}
	return 0
}
func (f *fakeTransport) Local() string { return "192.0.2.9:1883" }
func (f *fakeTransport) PauseRead()    { f.paused = true }
func (f *fakeTransport) Release()      {}
func (f *fakeTransport) ResumeRead()   { f.paused = false }

// packets decodes and drains what the session wrote.
func (f *fakeTransport) packets(t *testing.T, version byte) []mqttcodec.Packet {
	t.Helper()
	var out []mqttcodec.Packet
	for len(f.out) > 0 {
		var p mqttcodec.Packet
		n, err := mqttcodec.Decode(f.out, version, 0, &p)
		if err != nil || n == 0 {
			t.Fatalf("session wrote undecodable bytes % x: %v", f.out, err)
		}
		out = append(out, p)
		f.out = f.out[n:]
	}
	return out
}

type recordingSink struct {
	mu   sync.Mutex
	msgs []*Message
}

func (r *recordingSink) Publish(m *Message, ack func(mqttcodec.ReasonCode)) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	if ack != nil {
		ack(mqttcodec.Success)
	}
}

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func newTestEnv(t *testing.T, clk *clock) *Env {
	t.Helper()
	sink := new(recordingSink)
	env, err := NewEnv(Env{
		Registry:       registry.New[*Session](),
		Auth:           auth.AllowAll(),
		Sink:           sink,
		Sessions:       NewStore(sink, StoreLimits{}),
		Now:            clk.Now,
		ConnectTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func connectBytes(version byte, id string, ka uint16) []byte {
	return mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: version, CleanStart: true, KeepAlive: ka, ClientID: []byte(id)})
}

func newConnected(t *testing.T, env *Env, mode registry.Mode, version byte, id string) (*Session, *fakeTransport) {
	t.Helper()
	ft := &fakeTransport{mode: mode}
	s := new(Session)
	s.Init(env, ft)
	b := connectBytes(version, id, 60)
	if n, closeConn := s.Feed(b); n != len(b) || closeConn {
		t.Fatalf("Feed(CONNECT) = %d, %v", n, closeConn)
	}
	ps := ft.packets(t, version)
	if len(ps) != 1 || ps[0].Type != mqttcodec.CONNACK || ps[0].Connack.ReasonCode != 0 {
		t.Fatalf("want CONNACK 0, got %+v", ps)
	}
	return s, ft
}

func TestConnectDeadlineUsesClock(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	ft := &fakeTransport{}
	var s Session
	s.Init(env, ft)
	clk.now = clk.now.Add(9 * time.Second)
	if s.Tick(clk.now) || ft.closed {
		t.Fatal("closed before the CONNECT deadline")
	}
	clk.now = clk.now.Add(2 * time.Second)
	if !s.Tick(clk.now) || !ft.closed {
		t.Fatal("not closed after the CONNECT deadline")
	}
	if env.Stats.ConnectTimeouts.Load() != 1 {
		t.Fatal("connect timeout not counted")
	}
}

func TestKeepAliveOneAndAHalf(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "ka")
	clk.now = clk.now.Add(89 * time.Second) // keepalive 60: limit 90 s
	if s.Tick(clk.now) {
		t.Fatal("closed before 1.5x keepalive")
	}
	s.Feed(mqttcodec.AppendPingreq(nil)) // activity moves the deadline
	ft.packets(t, mqttcodec.V5)
	clk.now = clk.now.Add(89 * time.Second)
	if s.Tick(clk.now) {
		t.Fatal("closed although the device pinged")
	}
	clk.now = clk.now.Add(2 * time.Second)
	if !s.Tick(clk.now) {
		t.Fatal("not closed after 1.5x keepalive")
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.DISCONNECT || ps[0].Disconnect.ReasonCode != mqttcodec.KeepAliveTimeout {
		t.Fatalf("want DISCONNECT 0x8D, got %+v", ps)
	}
}

// The one rule: a secure payload never reaches a plain connection.
func TestSecureNeverOnPlain(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V311, "plain-dev")
	err := s.Deliver(&Delivery{Topic: "devices/plain-dev/commands/unlock", Payload: []byte("SECRET"), QoS: 1, Secure: true, Token: "c1"})
	if !errors.Is(err, ErrInsecureTransport) {
		t.Fatalf("Deliver secure on plain: %v", err)
	}
	if len(ft.out) != 0 {
		t.Fatalf("bytes reached the plain socket: % x", ft.out)
	}
	sec, data, none := &Delivery{Secure: true}, &Delivery{TLSOnly: true}, &Delivery{}
	for _, c := range []struct {
		mode   registry.Mode
		proven bool
		d      *Delivery
		want   error
	}{
		{registry.ModePlain, false, sec, ErrInsecureTransport},
		{registry.ModePlain, true, sec, ErrInsecureTransport},
		{registry.Mode(7), true, sec, ErrInsecureTransport},
		{registry.ModePlain, true, data, ErrInsecureTransport},
		{registry.ModeTLS, false, sec, ErrIdentityUnproven},
		{registry.ModeTLS, true, sec, nil},
		{registry.ModeTLS, false, data, nil},
		{registry.ModePlain, false, none, nil},
		{registry.ModeTLS, false, none, nil},
	} {
		if err := CheckTransport(c.mode, c.proven, c.d); !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Fatalf("CheckTransport(%s, proven %v, %+v) = %v, want %v", c.mode, c.proven, c.d, err, c.want)
		}
	}
	// Not secure: delivered on plain.
	if err := s.Deliver(&Delivery{Topic: "devices/plain-dev/commands/ping", Payload: []byte("hello"), QoS: 1, Token: "c2"}); err != nil {
		t.Fatal(err)
	}
	ps := ft.packets(t, mqttcodec.V311)
	if len(ps) != 1 || ps[0].Type != mqttcodec.PUBLISH || string(ps[0].Publish.Payload) != "hello" {
		t.Fatalf("want the plain command, got %+v", ps)
	}
}

type recordingHooks struct {
	online, queries int
	acked           []string
	offline         [][]string
	// Each (un)subscription is recorded with the bytes the session had
	// written and not yet drained, to tell whether its acknowledgement had
	// left already; likewise onlineAfter for the CONNACK.
	onlineAfter  int
	subscribed   []string
	unsubscribed []string
}

func unread(s *Session) int { return len(s.t.(*fakeTransport).out) }

func (h *recordingHooks) Online(s *Session) { h.online++; h.onlineAfter = unread(s) }
func (h *recordingHooks) Query(*Session)    { h.queries++ }
func (h *recordingHooks) Subscribed(s *Session, subs []SubscribeEvent, ready func([]mqttcodec.ReasonCode)) {
	for _, ev := range subs {
		h.subscribed = append(h.subscribed, fmt.Sprintf("%s after %d bytes", ev.Sub.Filter, unread(s)))
	}
	ready(nil)
}
func (h *recordingHooks) Unsubscribed(s *Session, filter string) {
	h.unsubscribed = append(h.unsubscribed, fmt.Sprintf("%s after %d bytes", filter, unread(s)))
}
func (h *recordingHooks) Acked(_ *Session, token string) { h.acked = append(h.acked, token) }
func (h *recordingHooks) Offline(_ *Session, unacked []string) {
	h.offline = append(h.offline, unacked)
}

func TestDeliverAckAndOffline(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)
	h := new(recordingHooks)
	env.Hooks = h
	s, ft := newConnected(t, env, registry.ModeTLS, mqttcodec.V5, "tls-dev")
	if h.online != 1 {
		t.Fatal("Online not called")
	}
	for _, tok := range []string{"a", "b"} {
		if err := s.Deliver(&Delivery{Topic: "devices/tls-dev/commands/x", Payload: []byte(tok), QoS: 1, Secure: true, Token: tok}); err != nil {
			t.Fatal(err)
		}
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 2 || ps[0].Publish.PacketID == ps[1].Publish.PacketID {
		t.Fatalf("deliveries %+v", ps)
	}
	s.Feed(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: ps[0].Publish.PacketID}))
	if len(h.acked) != 1 || h.acked[0] != "a" {
		t.Fatalf("acked %v", h.acked)
	}
	// The query is acknowledged and reported.
	s.Feed(mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte(control.QueryTopic), QoS: 1, PacketID: 9}))
	if h.queries != 1 {
		t.Fatal("query not reported")
	}
	if ps := ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Type != mqttcodec.PUBACK || ps[0].Ack.PacketID != 9 {
		t.Fatalf("query answer %+v", ps)
	}
	ft.closed = true
	s.Closed()
	if len(h.offline) != 1 || len(h.offline[0]) != 1 || h.offline[0][0] != "b" {
		t.Fatalf("offline unacked %v, want [b]", h.offline)
	}
	if env.Registry.Len() != 0 {
		t.Fatal("session still registered")
	}
}

// A subscription is in force when its SUBACK leaves, and gone when its
// UNSUBACK does: the hooks that route messages run before either is
// written, and Online before the CONNACK.
func TestSubscriptionHooksBeforeAck(t *testing.T) {
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		env := newTestEnv(t, &clock{now: time.Now()})
		h := new(recordingHooks)
		env.Hooks = h
		s, ft := newConnected(t, env, registry.ModePlain, version, fmt.Sprintf("sub-v%d", version))
		if h.online != 1 || h.onlineAfter != 0 {
			t.Fatalf("v%d: Online called %d times, after %d bytes of CONNACK", version, h.online, h.onlineAfter)
		}
		s.Feed(mqttcodec.AppendSubscribe(nil, version, &mqttcodec.Subscribe{PacketID: 1,
			Subscriptions: []mqttcodec.Subscription{{Filter: []byte("a/#"), QoS: 1}, {Filter: []byte("b/+"), QoS: 0}}}))
		if ps := ft.packets(t, version); len(ps) != 1 || ps[0].Type != mqttcodec.SUBACK || len(ps[0].Suback.ReasonCodes) != 2 {
			t.Fatalf("v%d: want one SUBACK with two codes, got %+v", version, ps)
		}
		if want := []string{"a/# after 0 bytes", "b/+ after 0 bytes"}; !slices.Equal(h.subscribed, want) {
			t.Fatalf("v%d: subscribed hooks %q, want %q", version, h.subscribed, want)
		}
		s.Feed(mqttcodec.AppendUnsubscribe(nil, version, &mqttcodec.Unsubscribe{PacketID: 2, Filters: [][]byte{[]byte("a/#")}}))
		if ps := ft.packets(t, version); len(ps) != 1 || ps[0].Type != mqttcodec.UNSUBACK {
			t.Fatalf("v%d: want one UNSUBACK, got %+v", version, ps)
		}
		if want := []string{"a/# after 0 bytes"}; !slices.Equal(h.unsubscribed, want) {
			t.Fatalf("v%d: unsubscribed hooks %q, want %q", version, h.unsubscribed, want)
		}
	}
}

func TestInstruct(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)

	// MQTT 5: DISCONNECT 0x9C with the Server Reference, and close.
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "v5dev")
	if err := s.Instruct(control.ModePlain, "gw:1883", "secure-idle"); !errors.Is(err, ErrDowngradeOnPlain) {
		t.Fatalf("plain instruction over plain: %v", err)
	}
	if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
		t.Fatal(err)
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.DISCONNECT || ps[0].Disconnect.ReasonCode != mqttcodec.UseAnotherServer ||
		string(ps[0].Disconnect.Properties.ServerReference) != "tls://gw:8883" {
		t.Fatalf("v5 instruction %+v", ps)
	}
	if !ft.closed {
		t.Fatal("v5 connection not closed after the instruction")
	}

	// 3.1.1: PUBLISH QoS 1 on $dualgate/control, closed after the grace.
	s, ft = newConnected(t, env, registry.ModePlain, mqttcodec.V311, "v3dev")
	if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
		t.Fatal(err)
	}
	if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); !errors.Is(err, ErrInstructed) {
		t.Fatalf("second instruction: %v", err)
	}
	ps = ft.packets(t, mqttcodec.V311)
	if len(ps) != 1 || ps[0].Type != mqttcodec.PUBLISH || string(ps[0].Publish.Topic) != control.ControlTopic || ps[0].Publish.QoS != 1 || ps[0].Publish.Retain {
		t.Fatalf("3.1.1 instruction %+v", ps)
	}
	in, err := control.ParseInstruction(ps[0].Publish.Payload)
	if err != nil || in.Mode != control.ModeTLS || in.Addr != "gw:8883" {
		t.Fatalf("instruction payload %s: %v", ps[0].Publish.Payload, err)
	}
	s.Feed(mqttcodec.AppendPingreq(nil)) // activity does not extend the grace
	ft.packets(t, mqttcodec.V311)
	clk.now = clk.now.Add(4 * time.Second)
	if s.Tick(clk.now) {
		t.Fatal("closed before the grace period")
	}
	clk.now = clk.now.Add(2 * time.Second)
	if !s.Tick(clk.now) || !ft.closed {
		t.Fatal("not closed after the grace period")
	}
}

func TestTopicAliases(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)
	sink := env.Sink.(*recordingSink)
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "alias")
	first := mqttcodec.Publish{Topic: []byte("tele/1"), Payload: []byte("a")}
	first.Properties.SetTopicAlias(3)
	second := mqttcodec.Publish{Payload: []byte("b")}
	second.Properties.SetTopicAlias(3)
	b := mqttcodec.AppendPublish(nil, 5, &first)
	b = mqttcodec.AppendPublish(b, 5, &second)
	if n, closeConn := s.Feed(b); n != len(b) || closeConn {
		t.Fatalf("Feed = %d %v", n, closeConn)
	}
	if len(sink.msgs) != 2 || sink.msgs[1].Topic != "tele/1" {
		t.Fatalf("sink got %+v", sink.msgs)
	}
	bad := mqttcodec.Publish{Payload: []byte("c")}
	bad.Properties.SetTopicAlias(99)
	if _, closeConn := s.Feed(mqttcodec.AppendPublish(nil, 5, &bad)); !closeConn {
		t.Fatal("alias over the maximum accepted")
	}
	ps := ft.packets(t, 5)
	if len(ps) != 1 || ps[0].Disconnect.ReasonCode != mqttcodec.TopicAliasInvalid {
		t.Fatalf("want DISCONNECT 0x94, got %+v", ps)
	}
}

// A whole packet split at every byte boundary decodes the same.
func TestFeedPartial(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)
	b := connectBytes(mqttcodec.V311, "split", 30)
	b = mqttcodec.AppendPingreq(b)
	for cut := 1; cut < len(b); cut++ {
		ft := &fakeTransport{}
		var s Session
		s.Init(env, ft)
		n, closeConn := s.Feed(b[:cut])
		if closeConn {
			t.Fatalf("cut %d: closed", cut)
		}
		rest := append(append([]byte(nil), b[n:cut]...), b[cut:]...)
		if m, closeConn := s.Feed(rest); closeConn || m != len(rest) {
			t.Fatalf("cut %d: second Feed = %d %v", cut, m, closeConn)
		}
		ps := ft.packets(t, mqttcodec.V311)
		if len(ps) != 2 || ps[0].Type != mqttcodec.CONNACK || ps[1].Type != mqttcodec.PINGRESP {
			t.Fatalf("cut %d: %+v", cut, ps)
		}
		ft.closed = true
		s.Closed()
	}
}

// refusingSink refuses every message, as a full upstream buffer does.
type refusingSink struct{}

func (refusingSink) Publish(_ *Message, ack func(mqttcodec.ReasonCode)) {
	if ack != nil {
		ack(mqttcodec.QuotaExceeded)
	}
}

// A refused QoS 1 message gets a negative PUBACK in MQTT 5; a 3.1.1 device,
// whose PUBACK cannot say no, is disconnected instead of being told the
// message was taken.
func TestRefusedPublish(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)
	env.Sink = refusingSink{}
	s, ft := newConnected(t, env, registry.ModePlain, mqttcodec.V5, "v5pub")
	s.Feed(mqttcodec.AppendPublish(nil, 5, &mqttcodec.Publish{Topic: []byte("t"), QoS: 1, PacketID: 4}))
	ps := ft.packets(t, 5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.PUBACK || ps[0].Ack.ReasonCode != mqttcodec.QuotaExceeded {
		t.Fatalf("want PUBACK 0x97, got %+v", ps)
	}
	s, ft = newConnected(t, env, registry.ModePlain, mqttcodec.V311, "v3pub")
	if _, closeConn := s.Feed(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{Topic: []byte("t"), QoS: 1, PacketID: 4})); !closeConn {
		t.Fatal("3.1.1 connection kept after a refused publish")
	}
	if ps := ft.packets(t, 4); len(ps) != 0 {
		t.Fatalf("3.1.1 device was acknowledged: %+v", ps)
	}
}

// An MQTT 5 device's own limits bound what the gateway sends it: its
// Receive Maximum (deliveries unacknowledged at once) and its Maximum
// Packet Size [MQTT-3.1.2-24]. A device that sets neither gets neither
// bound and keeps no extra state.
func TestDeviceLimits(t *testing.T) {
	env := newTestEnv(t, &clock{now: time.Now()})
	ft := &fakeTransport{mode: registry.ModeTLS}
	s := new(Session)
	s.Init(env, ft)
	c := &mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, KeepAlive: 60, ClientID: []byte("small-dev")}
	c.Properties.SetReceiveMaximum(1)
	c.Properties.SetMaximumPacketSize(64)
	s.Feed(mqttcodec.AppendConnect(nil, c))
	if ps := ft.packets(t, mqttcodec.V5); len(ps) != 1 || ps[0].Connack.ReasonCode != 0 {
		t.Fatalf("CONNACK %+v", ps)
	}
	d := func(tok string, n int) *Delivery {
		return &Delivery{Topic: "c", Payload: make([]byte, n), QoS: 1, Secure: true, Token: tok}
	}
	if err := s.Deliver(d("big", 100)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a 100-byte payload to a 64-byte device: %v", err)
	}
	if err := s.Deliver(d("first", 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(d("second", 10)); !errors.Is(err, ErrInflightFull) {
		t.Fatalf("a second delivery before the PUBACK: %v", err)
	}
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.PUBLISH {
		t.Fatalf("written %+v, want the one PUBLISH that fits", ps)
	}
	s.Feed(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: ps[0].Publish.PacketID}))
	if err := s.Deliver(d("second", 10)); err != nil {
		t.Fatalf("after the PUBACK: %v", err)
	}
	// A write that fails is not a packet too large: the dispatcher gives
	// up a command too large, and writes one not written again later
	// (found by the dispatcher's simulation, where a connection that
	// failed under a small command made it fail as too large).
	s.Feed(mqttcodec.AppendAck(nil, mqttcodec.V5, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: ft.packets(t, mqttcodec.V5)[0].Publish.PacketID}))
	ft.closed = true
	if err := s.Deliver(d("third", 10)); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("a small delivery on a connection whose write fails: %v, want ErrNotConnected", err)
	}

	free, _ := newConnected(t, env, registry.ModeTLS, mqttcodec.V5, "no-limits")
	if free.rare != nil {
		t.Fatal("rare state allocated at CONNECT for a device without limits")
	}
	for i := range 3 {
		if err := free.Deliver(d("x", 1000)); err != nil {
			t.Fatalf("delivery %d to a device without limits: %v", i, err)
		}
	}
	if free.rare != nil && (free.rare.recvMax != 0 || free.rare.maxPacket != 0) {
		t.Fatalf("limits kept for a device that set none: %+v", free.rare)
	}
}

// A device that stops reading is disconnected once its queue passes the
// bound, and its unacknowledged deliveries are handed back.
func TestSlowReaderDisconnected(t *testing.T) {
	clk := &clock{now: time.Now()}
	env := newTestEnv(t, clk)
	env.MaxOutbound = 4096
	s, ft := newConnected(t, env, registry.ModeTLS, mqttcodec.V311, "slow")
	ft.out = nil
	ft.stalled = true
	payload := make([]byte, 1000)
	for i := 0; ; i++ {
		err := s.Deliver(&Delivery{Topic: "t", Payload: payload, QoS: 1, Token: fmt.Sprint("c", i)})
		if ft.closed {
			break
		}
		if err != nil || i > 10 {
			t.Fatalf("delivery %d: %v, closed %v", i, err, ft.closed)
		}
	}
	if n := env.Stats.SlowReaderClosed.Load(); n != 1 {
		t.Fatalf("SlowReaderClosed = %d", n)
	}
	if len(ft.out) > 4096+1100 {
		t.Fatalf("%d bytes queued for a device that does not read, bound 4096", len(ft.out))
	}
	if err := s.Deliver(&Delivery{Topic: "t", Payload: payload, QoS: 1, Token: "late"}); err == nil {
		t.Fatal("delivered to a disconnected slow reader")
	}
}

// Client ids: every id valid as one topic level is accepted, spaces
// included; what cannot be substituted into a topic template is refused.
func TestCheckClientID(t *testing.T) {
	for _, id := range []string{"car-7", "car 7", " leading and trailing ", "voiture-é", "a\u00a0b", "x.y:z@w"} {
		if err := CheckClientID(id, 128); err != nil {
			t.Errorf("CheckClientID(%q) = %v, want accepted", id, err)
		}
	}
	for _, id := range []string{"", "a/b", "a+b", "a#b", "a\x00b", "a\tb", "a\nb", "a\x7fb", "a\u0085b", string([]byte{'a', 0xff}), strings.Repeat("x", 129)} {
		if err := CheckClientID(id, 128); err == nil {
			t.Errorf("CheckClientID(%q) accepted", id)
		}
	}
}
