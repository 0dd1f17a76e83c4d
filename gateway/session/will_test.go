package session

import (
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// connectWithWill connects a device with a will (and, for MQTT 5, a Will
// Delay Interval and session expiry).
func connectWithWill(t *testing.T, env *Env, mode registry.Mode, version byte, id string, delay, expiry uint32) (*Session, *fakeTransport) {
	t.Helper()
	ft := &fakeTransport{mode: mode}
	s := new(Session)
	s.Init(env, ft)
	k := &mqttcodec.Connect{ProtocolVersion: version, CleanStart: true, KeepAlive: 60, ClientID: []byte(id),
		WillFlag: true, WillTopic: []byte("devices/" + id + "/status"), WillPayload: []byte("offline"), WillQoS: 1}
	if version == mqttcodec.V5 {
		if delay > 0 {
			k.WillProperties.SetWillDelay(delay)
		}
		if expiry > 0 {
			k.Properties.SetSessionExpiry(expiry)
		}
	}
	b := mqttcodec.AppendConnect(nil, k)
	if n, closeConn := s.Feed(b); n != len(b) || closeConn {
		t.Fatalf("Feed(CONNECT) = %d, %v", n, closeConn)
	}
	ft.packets(t, version)
	return s, ft
}

func wills(env *Env) int {
	r := env.Sink.(*recordingSink)
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// When the gateway closes a connection to move the device, the will is
// held for MoveGrace: dropped when the device connects again in time (any
// Clean Start), published when it does not. A connection lost otherwise
// publishes the will at once, as before.
func TestMoveHoldsWill(t *testing.T) {
	type move struct {
		name    string
		version byte
		// end makes the gateway end the session.
		end func(clk *clock, env *Env, s *Session, ft *fakeTransport)
	}
	moves := []move{
		{"3.1.1 instruction not obeyed, closed after the grace", mqttcodec.V311, func(clk *clock, env *Env, s *Session, ft *fakeTransport) {
			if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
				panic(err)
			}
			clk.now = clk.now.Add(env.ControlGrace)
			s.Tick(clk.now)
		}},
		{"MQTT 5 instruction (DISCONNECT 0x9C)", mqttcodec.V5, func(clk *clock, env *Env, s *Session, ft *fakeTransport) {
			if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
				panic(err)
			}
		}},
		{"3.1.1 drain", mqttcodec.V311, func(clk *clock, env *Env, s *Session, ft *fakeTransport) { s.Drain("") }},
		{"MQTT 5 drain to another gateway", mqttcodec.V5, func(clk *clock, env *Env, s *Session, ft *fakeTransport) { s.Drain("tcp://gw2:1883") }},
	}
	for _, mv := range moves {
		for _, back := range []bool{true, false} {
			name := mv.name + ", not back"
			if back {
				name = mv.name + ", back in time"
			}
			t.Run(name, func(t *testing.T) {
				clk := &clock{now: time.Unix(1_700_000_000, 0)}
				env := newTestEnv(t, clk)
				env.MoveGrace = 30 * time.Second
				s, ft := connectWithWill(t, env, registry.ModePlain, mv.version, "car", 0, 0)
				mv.end(clk, env, s, ft)
				if !ft.closed {
					t.Fatal("the gateway did not close the connection")
				}
				s.Closed()
				if n := wills(env); n != 0 {
					t.Fatalf("will published at the move (%d)", n)
				}
				clk.now = clk.now.Add(29 * time.Second)
				env.Sessions.Sweep(clk.now)
				if back {
					newConnected(t, env, registry.ModeTLS, mv.version, "car") // Clean Start 1
				}
				clk.now = clk.now.Add(time.Hour)
				env.Sessions.Sweep(clk.now)
				want := 1
				if back {
					want = 0
				}
				if n := wills(env); n != want {
					t.Fatalf("wills published: %d, want %d", n, want)
				}
			})
		}
	}
}

// A connection lost without a move publishes the will at once.
func TestLostConnectionPublishesWill(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := connectWithWill(t, env, registry.ModePlain, mqttcodec.V311, "car", 0, 0)
	ft.closed = true
	s.Closed()
	if n := wills(env); n != 1 {
		t.Fatalf("wills published: %d, want 1", n)
	}
}

// MQTT 5: a Will Delay Interval longer than MoveGrace (within the session
// expiry) is kept; the move grace is a floor, not a replacement.
func TestMoveKeepsLongerWillDelay(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	env.MoveGrace = 30 * time.Second
	s, ft := connectWithWill(t, env, registry.ModePlain, mqttcodec.V5, "car", 120, 600)
	if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
		t.Fatal(err)
	}
	if !ft.closed {
		t.Fatal("not closed")
	}
	s.Closed()
	clk.now = clk.now.Add(119 * time.Second)
	env.Sessions.Sweep(clk.now)
	if n := wills(env); n != 0 {
		t.Fatalf("will published before its delay (%d)", n)
	}
	clk.now = clk.now.Add(time.Second)
	env.Sessions.Sweep(clk.now)
	if n := wills(env); n != 1 {
		t.Fatalf("wills published: %d, want 1 after the delay", n)
	}
}

// A device that obeys a 3.1.1 instruction with DISCONNECT discards its
// will, as any normal DISCONNECT does [MQTT-3.1.2-10].
func TestObeyedInstructionDiscardsWill(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := connectWithWill(t, env, registry.ModePlain, mqttcodec.V311, "car", 0, 0)
	if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
		t.Fatal(err)
	}
	s.Feed(mqttcodec.AppendDisconnect(nil, mqttcodec.V311, &mqttcodec.Disconnect{}))
	if !ft.closed {
		t.Fatal("not closed")
	}
	s.Closed()
	clk.now = clk.now.Add(time.Hour)
	env.Sessions.Sweep(clk.now)
	if n := wills(env); n != 0 {
		t.Fatalf("wills published: %d, want 0", n)
	}
}

// A device moved by the gateway that is back before the gateway handled
// the old connection's end fires no will: the new session already owns
// the client id.
func TestMovedDeviceBackBeforeCloseHandled(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	s, ft := connectWithWill(t, env, registry.ModePlain, mqttcodec.V5, "car", 0, 0)
	if err := s.Instruct(control.ModeTLS, "gw:8883", control.ReasonSecureCommand); err != nil {
		t.Fatal(err)
	}
	if !ft.closed {
		t.Fatal("not closed")
	}
	// The device is back on TLS; the old session's Closed comes after.
	// (Its Kick runs at once here: the fake transport's Exec is
	// synchronous, so reset the flag it set to model the other order.)
	newConnected(t, env, registry.ModeTLS, mqttcodec.V5, "car")
	s.flags &^= flagGracefulEnd
	s.Closed()
	clk.now = clk.now.Add(time.Hour)
	env.Sessions.Sweep(clk.now)
	if n := wills(env); n != 0 {
		t.Fatalf("wills published: %d, want 0", n)
	}
}
