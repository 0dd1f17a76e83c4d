package session

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/acl"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/mqttcodec"
)

func withACL(t *testing.T, env *Env, file string) {
	t.Helper()
	cfg := acl.Config{}
	if file != "" {
		cfg.File = filepath.Join(t.TempDir(), "acl")
		if err := os.WriteFile(cfg.File, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, err := acl.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.ACL = a
}

// A Will on another device's command topic refuses the CONNECT: MQTT 5
// CONNACK 0x87, 3.1.1 0x05. Nothing is registered and no Will is kept.
func TestWillRefused(t *testing.T) {
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
		withACL(t, env, "")
		ft := &fakeTransport{mode: registry.ModePlain}
		var s Session
		s.Init(env, ft)
		s.Feed(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: version, CleanStart: true, KeepAlive: 30,
			ClientID: []byte("rogue"), WillFlag: true, WillQoS: 1, WillTopic: []byte("devices/victim/commands/open"), WillPayload: []byte("x")}))
		ps := ft.packets(t, version)
		want := mqttcodec.NotAuthorized
		if version == mqttcodec.V311 {
			want = 0x05
		}
		if len(ps) != 1 || ps[0].Type != mqttcodec.CONNACK || ps[0].Connack.ReasonCode != want || !ft.closed {
			t.Fatalf("v%d: %+v closed=%v, want CONNACK %#x and closed", version, ps, ft.closed, want)
		}
		if env.Registry.Len() != 0 || env.Stats.WillRefused.Load() != 1 {
			t.Fatalf("v%d: registered %d, wills refused %d", version, env.Registry.Len(), env.Stats.WillRefused.Load())
		}
	}
}

// The user name is kept only while an acl file is in force, and costs a
// flag when it is the client id.
func TestUsernameKeptForTheACLFileOnly(t *testing.T) {
	for _, tc := range []struct {
		file, user, want string
		rare             bool
	}{
		{file: "", user: "alice", want: ""},
		{file: "topic readwrite #\n", user: "alice", want: "alice", rare: true},
		{file: "topic readwrite #\n", user: "car1", want: "car1"},
		{file: "topic readwrite #\n", user: "", want: ""},
	} {
		env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
		withACL(t, env, tc.file)
		ft := &fakeTransport{mode: registry.ModePlain}
		s := new(Session)
		s.Init(env, ft)
		s.Feed(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, CleanStart: true, KeepAlive: 30,
			ClientID: []byte("car1"), Username: []byte(tc.user), UsernameFlag: tc.user != ""}))
		if !s.Connected() {
			t.Fatalf("%+v: not connected", tc)
		}
		if got := s.Username(); got != tc.want {
			t.Errorf("%+v: Username %q", tc, got)
		}
		if (s.rare != nil) != tc.rare {
			t.Errorf("%+v: rare state allocated: %v", tc, s.rare != nil)
		}
	}
}

// A refused subscription gets its failure code; the others in the packet
// are granted.
func TestSubscribeRefused(t *testing.T) {
	env := newTestEnv(t, &clock{now: time.Unix(1_700_000_000, 0)})
	withACL(t, env, "")
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		s, ft := newConnected(t, env, registry.ModePlain, version, "car1")
		s.Feed(mqttcodec.AppendSubscribe(nil, version, &mqttcodec.Subscribe{PacketID: 3, Subscriptions: []mqttcodec.Subscription{
			{Filter: []byte("devices/car2/commands/#"), QoS: 1},
			{Filter: []byte("devices/car1/commands/#"), QoS: 1},
			{Filter: []byte("#"), QoS: 0},
		}}))
		ps := ft.packets(t, version)
		fail := mqttcodec.ReasonCode(0x80)
		if version == mqttcodec.V5 {
			fail = mqttcodec.NotAuthorized
		}
		if len(ps) != 1 || ps[0].Type != mqttcodec.SUBACK {
			t.Fatalf("v%d: %+v", version, ps)
		}
		if got := ps[0].Suback.ReasonCodes; len(got) != 3 || got[0] != fail || got[1] != 1 || got[2] != 0 {
			t.Fatalf("v%d: SUBACK %v", version, got)
		}
		if subs := s.Subscriptions(); len(subs) != 2 {
			t.Fatalf("v%d: subscriptions %v", version, subs)
		}
	}
}
