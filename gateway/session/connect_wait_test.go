package session

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// heldReplay is a shared replay memory that answers when the test says:
// at once (now set) or later (release).
type heldReplay struct {
	mu    sync.Mutex
	now   *auth.ReplayClaim // answer inside Claim
	held  []func(auth.ReplayClaim)
	asked []string
}

func (h *heldReplay) Claim(id string, _ [16]byte, _, _ int64, done func(auth.ReplayClaim)) {
	h.mu.Lock()
	h.asked = append(h.asked, id)
	now := h.now
	if now == nil {
		h.held = append(h.held, done)
	}
	h.mu.Unlock()
	if now != nil {
		done(*now)
	}
}

// release answers the oldest held claim from another goroutine, as Redis'
// writer would, and returns once the answer was handled.
func (h *heldReplay) release(a auth.ReplayClaim) {
	h.mu.Lock()
	done := h.held[0]
	h.held = h.held[1:]
	h.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		done(a)
	}()
	wg.Wait()
}

var waitSecret = []byte("wait-secret-0123456789abcdef!!!!")

func tokenEnv(t *testing.T, clk *clock, shared auth.SharedReplay) *Env {
	t.Helper()
	env := newTestEnv(t, clk)
	tokens, err := auth.NewTokens(auth.TokenConfig{Secrets: map[string][]byte{"dev": waitSecret}, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tokens.ShareReplay(shared)
	env.Auth = tokens
	return env
}

func tokenConnect(version byte, clk *clock, nonce string) []byte {
	tok := control.MakeToken(waitSecret, "dev", clk.now, nonce)
	return mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: version, CleanStart: true, KeepAlive: 30,
		ClientID: []byte("dev"), UsernameFlag: true, Username: []byte("dev"), PasswordFlag: true, Password: []byte(tok)})
}

// A CONNECT whose token the cluster's replay memory must check waits
// without its owner waiting: nothing more is read from the device, and
// the CONNACK leaves when the answer comes, from another goroutine; then
// the packets the device sent behind its CONNECT are handled, in order.
// A refusal carries the reason of the answer; a session that ended
// before the answer writes nothing; an answer known at once is applied
// at once.
func TestConnectWaitsForReplayCheck(t *testing.T) {
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		t.Run(fmt.Sprint("v", version), func(t *testing.T) {
			clk := &clock{now: time.Unix(1_700_000_000, 0)}
			held := new(heldReplay)
			env := tokenEnv(t, clk, held)

			ft := &fakeTransport{mode: registry.ModePlain}
			s := new(Session)
			s.Init(env, ft)
			conn := tokenConnect(version, clk, "nonce0001")
			rest := mqttcodec.AppendPublish(nil, version, &mqttcodec.Publish{Topic: []byte("tele/dev"), QoS: 1, PacketID: 7, Payload: []byte("m1")})
			rest = mqttcodec.AppendPublish(rest, version, &mqttcodec.Publish{Topic: []byte("tele/dev"), QoS: 1, PacketID: 8, Payload: []byte("m2")})
			rest = mqttcodec.AppendPingreq(rest)
			b := append(append([]byte(nil), conn...), rest...)
			used, closeConn := s.Feed(b)
			if used != len(conn) || closeConn || !ft.paused || len(ft.out) != 0 {
				t.Fatalf("Feed while the check waits: used %d of %d (CONNECT %d), close %v, paused %v, wrote % x",
					used, len(b), len(conn), closeConn, ft.paused, ft.out)
			}
			if env.Stats.ConnectsWaited.Load() != 1 || len(held.asked) != 1 || held.asked[0] != "dev" {
				t.Fatalf("waited %d, asked %v", env.Stats.ConnectsWaited.Load(), held.asked)
			}
			clk.now = clk.now.Add(time.Second)
			held.release(auth.ClaimNew)
			ps := ft.packets(t, version)
			if len(ps) != 1 || ps[0].Type != mqttcodec.CONNACK || ps[0].Connack.ReasonCode != 0 || ft.paused || !s.Connected() {
				t.Fatalf("after the answer: %+v, paused %v, connected %v", ps, ft.paused, s.Connected())
			}
			if n, _ := s.Feed(b[used:]); n != len(b)-used {
				t.Fatalf("fed %d of the %d bytes behind the CONNECT", n, len(b)-used)
			}
			ps = ft.packets(t, version)
			if len(ps) != 3 || ps[0].Type != mqttcodec.PUBACK || ps[0].Ack.PacketID != 7 ||
				ps[1].Type != mqttcodec.PUBACK || ps[1].Ack.PacketID != 8 || ps[2].Type != mqttcodec.PINGRESP {
				t.Fatalf("packets behind the CONNECT answered %+v, want PUBACK 7, PUBACK 8, PINGRESP", ps)
			}
			if got := s.RegistryEntry().ConnectedAt; got != clk.now.UnixNano() {
				t.Fatalf("connected at %d, want the time of the answer %d", got, clk.now.UnixNano())
			}

			// Refusals: the reason of the answer, and the connection closes.
			for _, c := range []struct {
				answer  auth.ReplayClaim
				v5, v3  mqttcodec.ReasonCode
				counted mqttcodec.ReasonCode
			}{
				{auth.ClaimReplayed, mqttcodec.NotAuthorized, 0x05, mqttcodec.NotAuthorized},
				{auth.ClaimUnavailable, mqttcodec.ServerUnavailable, 0x03, mqttcodec.ServerUnavailable},
				{auth.ClaimDeviceFull, mqttcodec.ServerBusy, 0x03, mqttcodec.ServerBusy},
			} {
				ft := &fakeTransport{mode: registry.ModePlain}
				s := new(Session)
				s.Init(env, ft)
				before := env.Stats.Refused[c.counted].Load()
				s.Feed(tokenConnect(version, clk, fmt.Sprintf("nonce%04d", c.answer+10)))
				held.release(c.answer)
				ps := ft.packets(t, version)
				want := c.v5
				if version == mqttcodec.V311 {
					want = c.v3
				}
				if len(ps) != 1 || ps[0].Type != mqttcodec.CONNACK || ps[0].Connack.ReasonCode != want || !ft.closed {
					t.Fatalf("answer %d: %+v closed %v, want CONNACK 0x%02x and close", c.answer, ps, ft.closed, byte(want))
				}
				if env.Stats.Refused[c.counted].Load() != before+1 {
					t.Fatalf("answer %d: refusal not counted under 0x%02x", c.answer, byte(c.counted))
				}
			}

			// The CONNECT deadline passes before the answer: the
			// connection closes, and the late answer writes nothing.
			ft = &fakeTransport{mode: registry.ModePlain}
			s = new(Session)
			s.Init(env, ft)
			s.Feed(tokenConnect(version, clk, "nonce0100"))
			clk.now = clk.now.Add(env.ConnectTimeout + time.Second)
			if !s.Tick(clk.now) || !ft.closed {
				t.Fatal("a CONNECT waiting past its deadline is not closed")
			}
			s.Closed()
			held.release(auth.ClaimNew)
			if len(ft.out) != 0 || s.Connected() || env.Registry.Len() != 1 {
				t.Fatalf("a late answer wrote % x, connected %v, registered %d", ft.out, s.Connected(), env.Registry.Len())
			}

			// An answer known before Authenticate returns: no pause.
			ans := auth.ClaimNew
			held.now = &ans
			waited := env.Stats.ConnectsWaited.Load()
			s, ft = new(Session), &fakeTransport{mode: registry.ModePlain}
			s.Init(env, ft)
			s.Feed(tokenConnect(version, clk, "nonce0200"))
			if ps := ft.packets(t, version); len(ps) != 1 || ps[0].Connack.ReasonCode != 0 || ft.paused ||
				env.Stats.ConnectsWaited.Load() != waited {
				t.Fatalf("an answer at once: %+v, paused %v", ps, ft.paused)
			}
		})
	}
}

// Without a remote check, CONNECT allocates no more than before a verdict
// could wait: 6 allocations for a CONNECT and its end, measured on the
// code without the wait.
func TestConnectNoWaitAllocations(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	env := newTestEnv(t, clk)
	b := connectBytes(mqttcodec.V311, "dev", 30)
	allocs := testing.AllocsPerRun(200, func() {
		var s Session
		s.Init(env, &fakeTransport{mode: registry.ModePlain})
		s.Feed(b)
		s.Closed()
	})
	if env.Stats.ConnectsWaited.Load() != 0 {
		t.Fatal("a CONNECT waited without a remote check")
	}
	if allocs > 6 {
		t.Fatalf("%.0f allocations per CONNECT and close, want at most 6", allocs)
	}
}

// A CONNECT that waited for its verdict is held to --max-connections when
// the verdict comes: sessions that connected meanwhile count, so a burst
// of waiting CONNECTs cannot pass the limit.
func TestConnectWaitedCountsLimit(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	held := new(heldReplay)
	env := newTestEnv(t, clk)
	tokens, err := auth.NewTokens(auth.TokenConfig{Secrets: map[string][]byte{"dev": waitSecret, "other": waitSecret}, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tokens.ShareReplay(held)
	env.Auth = tokens
	env.MaxConnections = 1
	ft := &fakeTransport{mode: registry.ModePlain}
	s := new(Session)
	s.Init(env, ft)
	s.Feed(tokenConnect(mqttcodec.V5, clk, "nonce0300"))
	if !ft.paused {
		t.Fatal("the CONNECT did not wait")
	}
	// Another device takes the last place meanwhile.
	other := &fakeTransport{mode: registry.ModePlain}
	var o Session
	o.Init(env, other)
	tok := control.MakeToken(waitSecret, "other", clk.now, "nonce0301")
	o.Feed(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, KeepAlive: 30,
		ClientID: []byte("other"), UsernameFlag: true, Username: []byte("other"), PasswordFlag: true, Password: []byte(tok)}))
	// The other device's claim, asked second, is answered first.
	held.mu.Lock()
	held.held[0], held.held[1] = held.held[1], held.held[0]
	held.mu.Unlock()
	held.release(auth.ClaimNew)
	if !o.Connected() {
		t.Fatal("the other device was refused")
	}
	held.release(auth.ClaimNew)
	ps := ft.packets(t, mqttcodec.V5)
	if len(ps) != 1 || ps[0].Type != mqttcodec.CONNACK || ps[0].Connack.ReasonCode != mqttcodec.ServerBusy || !ft.closed || s.Connected() {
		t.Fatalf("after the verdict: %+v, closed %v, connected %v; want CONNACK 0x89 and close", ps, ft.closed, s.Connected())
	}
	if env.Registry.Len() != 1 {
		t.Fatalf("%d sessions registered, limit 1", env.Registry.Len())
	}
}
