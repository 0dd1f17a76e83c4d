package auth

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

var (
	secretA = []byte("0123456789abcdef-secret-of-dev-a")
	secretB = []byte("0123456789abcdef-secret-of-dev-b")
	master  = []byte("fleet-master-key-0123456789abcdef")
	epoch   = time.Unix(vectorUnix, 0)
)

// testClock is a settable clock for Tokens.
type testClock struct{ ns atomic.Int64 }

func newTestClock(t time.Time) *testClock {
	c := &testClock{}
	c.set(t)
	return c
}

func (c *testClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *testClock) set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *testClock) add(d time.Duration) { c.ns.Add(int64(d)) }

func newTestTokens(t *testing.T, cfg TokenConfig) *Tokens {
	t.Helper()
	tk, err := NewTokens(cfg)
	if err != nil {
		t.Fatalf("NewTokens: %v", err)
	}
	return tk
}

func TestNewTokensConfig(t *testing.T) {
	tests := []struct {
		name       string
		cfg        TokenConfig
		wantErr    string
		wantWindow time.Duration
	}{
		{name: "secrets only", cfg: TokenConfig{Secrets: map[string][]byte{"a": secretA}}, wantWindow: DefaultWindow},
		{name: "master key only", cfg: TokenConfig{MasterKey: master}, wantWindow: DefaultWindow},
		{name: "client certificates only", cfg: TokenConfig{AcceptClientCert: true}, wantWindow: DefaultWindow},
		{name: "window rounded up to seconds", cfg: TokenConfig{MasterKey: master, Window: 1500 * time.Millisecond}, wantWindow: 2 * time.Second},
		{name: "window of one minute", cfg: TokenConfig{MasterKey: master, Window: time.Minute}, wantWindow: time.Minute},
		{name: "nothing to authenticate with", cfg: TokenConfig{}, wantErr: "no device could connect"},
		{name: "empty secrets map", cfg: TokenConfig{Secrets: map[string][]byte{}}, wantErr: "no device could connect"},
		{name: "negative window", cfg: TokenConfig{MasterKey: master, Window: -time.Second}, wantErr: "negative"},
		{name: "negative replay capacity", cfg: TokenConfig{MasterKey: master, ReplayCapacity: -1}, wantErr: "negative"},
		{name: "short master key", cfg: TokenConfig{MasterKey: []byte("short")}, wantErr: "master key is 5 bytes"},
		{name: "empty master key", cfg: TokenConfig{MasterKey: []byte{}}, wantErr: "master key is 0 bytes"},
		{name: "short device secret", cfg: TokenConfig{Secrets: map[string][]byte{"a": secretA, "b": []byte("tiny")}}, wantErr: `secret of "b" is 4 bytes`},
		{name: "empty client id", cfg: TokenConfig{Secrets: map[string][]byte{"": secretA}}, wantErr: "empty client id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk, err := NewTokens(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewTokens() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewTokens() error = %v", err)
			}
			if tk.Window() != tt.wantWindow {
				t.Fatalf("Window() = %v, want %v", tk.Window(), tt.wantWindow)
			}
		})
	}
}

// TestAuthenticate runs each case against a fresh Tokens whose clock reads
// epoch, with secrets for dev-a and dev-b.
func TestAuthenticate(t *testing.T) {
	const w = DefaultWindow
	tok := func(secret []byte, id string, ts time.Time, nonce string) []byte {
		return []byte(control.MakeToken(secret, id, ts, nonce))
	}
	bound := func(secret []byte, id string, ts time.Time, nonce string, exporter []byte) []byte {
		return []byte(control.MakeBoundToken(secret, id, ts, nonce, exporter))
	}
	exporterA := []byte("exporter-of-connection-A-32bytes")
	exporterB := []byte("exporter-of-connection-B-32bytes")
	tests := []struct {
		name       string
		acceptCert bool
		req        Request
		wantReason byte
		wantMsg    string
	}{
		{name: "valid token", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", epoch, "nonce0001")},
			wantReason: ReasonSuccess, wantMsg: msgOKToken},
		{name: "valid token with user name = client id", req: Request{ClientID: "dev-a", Username: "dev-a", Password: tok(secretA, "dev-a", epoch, "nonce0001")},
			wantReason: ReasonSuccess, wantMsg: msgOKToken},
		{name: "token at the far edge of the window", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", epoch.Add(-w), "nonce0001")},
			wantReason: ReasonSuccess, wantMsg: msgOKToken},
		{name: "token at the near edge of the window", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", epoch.Add(w), "nonce0001")},
			wantReason: ReasonSuccess, wantMsg: msgOKToken},
		{name: "request time overrides the clock", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", epoch.Add(time.Hour), "nonce0001"), Now: epoch.Add(time.Hour)},
			wantReason: ReasonSuccess, wantMsg: msgOKToken},

		{name: "empty client id", req: Request{Password: tok(secretA, "", epoch, "nonce0001")},
			wantReason: ReasonClientIDNotValid, wantMsg: msgEmptyClientID},
		{name: "user name of another client", req: Request{ClientID: "dev-a", Username: "dev-b", Password: tok(secretA, "dev-a", epoch, "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgUsername},
		{name: "no password", req: Request{ClientID: "dev-a"},
			wantReason: ReasonNotAuthorized, wantMsg: msgNoPassword},
		{name: "wrong secret", req: Request{ClientID: "dev-a", Password: tok(secretB, "dev-a", epoch, "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "token of another client", req: Request{ClientID: "dev-a", Password: tok(secretB, "dev-b", epoch, "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "unknown client", req: Request{ClientID: "dev-z", Password: tok(secretA, "dev-z", epoch, "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgUnknownClient},
		{name: "expired", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", epoch.Add(-w-time.Second), "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgExpired},
		{name: "long expired", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", time.Unix(1, 0), "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgExpired},
		{name: "dated beyond the window", req: Request{ClientID: "dev-a", Password: tok(secretA, "dev-a", epoch.Add(w+time.Second), "nonce0001")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgFuture},
		{name: "malformed token", req: Request{ClientID: "dev-a", Password: []byte("v1.1767225600.short.00")},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: errTokenNonce.Error()},
		{name: "mac altered", req: Request{ClientID: "dev-a", Password: append(tok(secretA, "dev-a", epoch, "nonce0001")[:len("v1.1767225600.nonce0001.")], strings.Repeat("0", 64)...)},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "time altered", req: Request{ClientID: "dev-a", Password: []byte(strings.Replace(string(tok(secretA, "dev-a", epoch, "nonce0001")), "1767225600", "1767225601", 1))},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "nonce altered", req: Request{ClientID: "dev-a", Password: []byte(strings.Replace(string(tok(secretA, "dev-a", epoch, "nonce0001")), "nonce0001", "nonce0002", 1))},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},

		{name: "client certificate", acceptCert: true, req: Request{ClientID: "dev-a", TLS: true, PeerIdentity: []string{"gw-ops", "dev-a"}},
			wantReason: ReasonSuccess, wantMsg: msgOKCert},
		{name: "client certificate accepted for a client without secret", acceptCert: true, req: Request{ClientID: "dev-z", TLS: true, PeerIdentity: []string{"dev-z"}},
			wantReason: ReasonSuccess, wantMsg: msgOKCert},
		{name: "client certificate ignores a bad password", acceptCert: true, req: Request{ClientID: "dev-a", TLS: true, PeerIdentity: []string{"dev-a"}, Password: []byte("junk")},
			wantReason: ReasonSuccess, wantMsg: msgOKCert},
		{name: "client certificate not accepted by configuration", req: Request{ClientID: "dev-a", TLS: true, PeerIdentity: []string{"dev-a"}},
			wantReason: ReasonNotAuthorized, wantMsg: msgNoPassword},
		{name: "client certificate of another client", acceptCert: true, req: Request{ClientID: "dev-a", TLS: true, PeerIdentity: []string{"dev-b"}},
			wantReason: ReasonNotAuthorized, wantMsg: msgNoPassword},
		{name: "client certificate of another client, with a bound token", acceptCert: true, req: Request{ClientID: "dev-a", TLS: true, PeerIdentity: []string{"dev-b"}, ChannelBinding: exporterA, Password: bound(secretA, "dev-a", epoch, "nonce0001", exporterA)},
			wantReason: ReasonSuccess, wantMsg: msgOKBound},

		{name: "bound token over TLS", req: Request{ClientID: "dev-a", TLS: true, ChannelBinding: exporterA, Password: bound(secretA, "dev-a", epoch, "nonce0001", exporterA)},
			wantReason: ReasonSuccess, wantMsg: msgOKBound},
		{name: "bound token of another connection", req: Request{ClientID: "dev-a", TLS: true, ChannelBinding: exporterB, Password: bound(secretA, "dev-a", epoch, "nonce0001", exporterA)},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "bound token with the wrong secret", req: Request{ClientID: "dev-a", TLS: true, ChannelBinding: exporterA, Password: bound(secretB, "dev-a", epoch, "nonce0001", exporterA)},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "bound token re-labelled v1 on plain", req: Request{ClientID: "dev-a", Password: []byte("v1" + string(bound(secretA, "dev-a", epoch, "nonce0001", exporterA)[2:]))},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgBadMAC},
		{name: "bound token beyond the window", req: Request{ClientID: "dev-a", TLS: true, ChannelBinding: exporterA, Password: bound(secretA, "dev-a", epoch.Add(w+time.Second), "nonce0001", exporterA)},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgFuture},
		{name: "bound token on TLS without exporter (TLS 1.2 without EMS)", req: Request{ClientID: "dev-a", TLS: true, Password: bound(secretA, "dev-a", epoch, "nonce0001", exporterA)},
			wantReason: ReasonNotAuthorized, wantMsg: msgNoExporter},
		{name: "bound token on plain", req: Request{ClientID: "dev-a", Password: bound(secretA, "dev-a", epoch, "nonce0001", exporterA)},
			wantReason: ReasonNotAuthorized, wantMsg: msgBoundPlain},
		{name: "unbound token over TLS", req: Request{ClientID: "dev-a", TLS: true, ChannelBinding: exporterA, Password: tok(secretA, "dev-a", epoch, "nonce0001")},
			wantReason: ReasonNotAuthorized, wantMsg: msgUnboundTLS},
		{name: "unbound token over TLS, client certificate of another client", acceptCert: true, req: Request{ClientID: "dev-a", TLS: true, PeerIdentity: []string{"dev-b"}, ChannelBinding: exporterA, Password: tok(secretA, "dev-a", epoch, "nonce0001")},
			wantReason: ReasonNotAuthorized, wantMsg: msgUnboundTLS},
		{name: "identity without TLS is not trusted", acceptCert: true, req: Request{ClientID: "dev-a", PeerIdentity: []string{"dev-a"}},
			wantReason: ReasonNotAuthorized, wantMsg: msgNoPassword},
		{name: "client certificate with a foreign user name", acceptCert: true, req: Request{ClientID: "dev-a", Username: "admin", TLS: true, PeerIdentity: []string{"dev-a"}},
			wantReason: ReasonBadUserNameOrPassword, wantMsg: msgUsername},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newTestClock(epoch)
			tk := newTestTokens(t, TokenConfig{
				Secrets:          map[string][]byte{"dev-a": secretA, "dev-b": secretB},
				AcceptClientCert: tt.acceptCert,
				Clock:            clock.now,
			})
			got := tk.Authenticate(&tt.req)
			want := Result{OK: tt.wantReason == ReasonSuccess, Reason: tt.wantReason, Msg: tt.wantMsg, Proven: tt.wantMsg == msgOKBound}
			if got != want {
				t.Fatalf("Authenticate() = %+v, want %+v", got, want)
			}
			// Exactly the accepted tokens are remembered; nothing else is.
			wantLen := 0
			if got.Msg == msgOKToken {
				wantLen = 1
			}
			if n := tk.ReplayLen(); n != wantLen {
				t.Fatalf("ReplayLen() = %d, want %d", n, wantLen)
			}
			for _, secret := range [][]byte{secretA, secretB} {
				if strings.Contains(got.Msg, string(secret)) {
					t.Fatalf("result message holds a secret: %q", got.Msg)
				}
			}
		})
	}
}

func TestReplay(t *testing.T) {
	clock := newTestClock(epoch)
	tk := newTestTokens(t, TokenConfig{Secrets: map[string][]byte{"dev-a": secretA, "dev-b": secretB}, Clock: clock.now})
	password := []byte(control.MakeToken(secretA, "dev-a", epoch, "replay0001"))
	steps := []struct {
		name     string
		advance  time.Duration
		clientID string
		password []byte
		want     Result
	}{
		{name: "first use", clientID: "dev-a", password: password, want: Result{OK: true, Msg: msgOKToken}},
		{name: "immediate replay", clientID: "dev-a", password: password, want: Result{Reason: ReasonNotAuthorized, Msg: msgReplayed}},
		{name: "same time and client, new nonce", clientID: "dev-a", password: []byte(control.MakeToken(secretA, "dev-a", epoch, "replay0002")), want: Result{OK: true, Msg: msgOKToken}},
		{name: "same nonce and time, other client", clientID: "dev-b", password: []byte(control.MakeToken(secretB, "dev-b", epoch, "replay0001")), want: Result{OK: true, Msg: msgOKToken}},
		{name: "same nonce, next second", clientID: "dev-a", password: []byte(control.MakeToken(secretA, "dev-a", epoch.Add(time.Second), "replay0001")), want: Result{OK: true, Msg: msgOKToken}},
		{name: "replay at the end of the window", advance: DefaultWindow, clientID: "dev-a", password: password, want: Result{Reason: ReasonNotAuthorized, Msg: msgReplayed}},
		{name: "replay after the window", advance: time.Second, clientID: "dev-a", password: password, want: Result{Reason: ReasonBadUserNameOrPassword, Msg: msgExpired}},
	}
	for _, s := range steps {
		clock.add(s.advance)
		got := tk.Authenticate(&Request{ClientID: s.clientID, Password: s.password})
		if got != s.want {
			t.Fatalf("%s: Authenticate() = %+v, want %+v", s.name, got, s.want)
		}
	}
	// Everything remembered has expired: memory is given back.
	clock.add(3 * DefaultWindow)
	tk.Authenticate(&Request{ClientID: "dev-a", Password: []byte(control.MakeToken(secretA, "dev-a", clock.now(), "later0001"))})
	if n := tk.ReplayLen(); n != 1 {
		t.Fatalf("ReplayLen() = %d after the old tokens expired, want 1", n)
	}
}

// TestReplayConcurrent presents one token on many connections at once: exactly
// one is accepted.
func TestReplayConcurrent(t *testing.T) {
	tk := newTestTokens(t, TokenConfig{Secrets: map[string][]byte{"dev-a": secretA}, Clock: newTestClock(epoch).now})
	const rounds, conns = 20, 8
	for r := range rounds {
		password := []byte(control.MakeToken(secretA, "dev-a", epoch, fmt.Sprintf("concurrent%04d", r)))
		var ok, replayed atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				switch res := tk.Authenticate(&Request{ClientID: "dev-a", Password: password}); {
				case res.OK:
					ok.Add(1)
				case res.Msg == msgReplayed:
					replayed.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if ok.Load() != 1 || replayed.Load() != conns-1 {
			t.Fatalf("round %d: %d accepted, %d refused as replays; want 1 and %d", r, ok.Load(), replayed.Load(), conns-1)
		}
	}
}

func TestMasterKey(t *testing.T) {
	clock := newTestClock(epoch)
	tk := newTestTokens(t, TokenConfig{
		Secrets:   map[string][]byte{"dev-a": secretA},
		MasterKey: master,
		Clock:     clock.now,
	})
	tests := []struct {
		name     string
		clientID string
		secret   []byte
		want     Result
	}{
		{name: "derived secret", clientID: "meter-17", secret: control.DeriveSecret(master, "meter-17"), want: Result{OK: true, Msg: msgOKToken}},
		{name: "derived secret of another id", clientID: "meter-17", secret: control.DeriveSecret(master, "meter-18"), want: Result{Reason: ReasonBadUserNameOrPassword, Msg: msgBadMAC}},
		{name: "the master key itself is not a device secret", clientID: "meter-17", secret: master, want: Result{Reason: ReasonBadUserNameOrPassword, Msg: msgBadMAC}},
		{name: "file secret wins", clientID: "dev-a", secret: secretA, want: Result{OK: true, Msg: msgOKToken}},
		{name: "derived secret refused where the file has one", clientID: "dev-a", secret: control.DeriveSecret(master, "dev-a"), want: Result{Reason: ReasonBadUserNameOrPassword, Msg: msgBadMAC}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			password := control.MakeToken(tt.secret, tt.clientID, epoch, fmt.Sprintf("master%04d", i))
			if got := tk.Authenticate(&Request{ClientID: tt.clientID, Password: []byte(password)}); got != tt.want {
				t.Fatalf("Authenticate() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSetSecrets(t *testing.T) {
	clock := newTestClock(epoch)
	secrets := map[string][]byte{"dev-a": slices.Clone(secretA)}
	tk := newTestTokens(t, TokenConfig{Secrets: secrets, Clock: clock.now})
	// NewTokens copied the map and the secret: changing them changes nothing.
	secrets["dev-b"] = secretB
	secrets["dev-a"][0] ^= 0xff

	auth := func(id string, secret []byte, nonce string) Result {
		return tk.Authenticate(&Request{ClientID: id, Password: []byte(control.MakeToken(secret, id, clock.now(), nonce))})
	}
	if got := auth("dev-a", secretA, "before0001"); !got.OK {
		t.Fatalf("token of dev-a refused after the caller changed its map: %+v", got)
	}
	if got := auth("dev-b", secretB, "before0002"); got.Msg != msgUnknownClient {
		t.Fatalf("dev-b, added to the caller's map only: %+v", got)
	}
	replayA := control.MakeToken(secretA, "dev-a", clock.now(), "before0001")

	rotated := []byte("rotated-secret-of-dev-a-01234567")
	if err := tk.SetSecrets(map[string][]byte{"dev-a": rotated, "dev-b": secretB}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		id     string
		secret []byte
		want   string
	}{
		{name: "old secret refused", id: "dev-a", secret: secretA, want: msgBadMAC},
		{name: "new secret accepted", id: "dev-a", secret: rotated, want: msgOKToken},
		{name: "added client accepted", id: "dev-b", secret: secretB, want: msgOKToken},
	}
	for i, tt := range tests {
		if got := auth(tt.id, tt.secret, fmt.Sprintf("after%04d", i)); got.Msg != tt.want {
			t.Fatalf("%s: Authenticate() = %+v, want message %q", tt.name, got, tt.want)
		}
	}
	// A token accepted before the reload is still remembered. (Its secret
	// was rotated, so it fails on its mac first; put the old secret back to
	// reach the replay check.)
	if err := tk.SetSecrets(map[string][]byte{"dev-a": secretA}); err != nil {
		t.Fatal(err)
	}
	if got := tk.Authenticate(&Request{ClientID: "dev-a", Password: []byte(replayA)}); got.Msg != msgReplayed {
		t.Fatalf("replay after two reloads: %+v", got)
	}
	// A bad reload changes nothing.
	if err := tk.SetSecrets(map[string][]byte{"dev-a": rotated, "dev-c": []byte("short")}); err == nil {
		t.Fatal("SetSecrets accepted a short secret")
	}
	if got := auth("dev-a", secretA, "after9999"); !got.OK {
		t.Fatalf("after a refused reload the previous secrets should hold: %+v", got)
	}
}

func TestReplayCapacity(t *testing.T) {
	clock := newTestClock(epoch)
	tk := newTestTokens(t, TokenConfig{
		MasterKey:      master,
		Window:         time.Minute,
		ReplayCapacity: 1,
		Clock:          clock.now,
	})
	auth := func(nonce string) Result {
		return tk.Authenticate(&Request{ClientID: "dev-a", Password: []byte(control.MakeToken(control.DeriveSecret(master, "dev-a"), "dev-a", clock.now(), nonce))})
	}
	if got := auth("first0001"); !got.OK {
		t.Fatalf("first token: %+v", got)
	}
	// Full: a new valid token is refused, not let in by forgetting the first.
	if got := auth("second001"); got.OK || got.Reason != ReasonServerBusy || got.Msg != msgReplayFull {
		t.Fatalf("token beyond the capacity: %+v, want server busy", got)
	}
	// Once the first token can no longer be used, there is room again.
	clock.add(3 * time.Minute)
	if got := auth("third0001"); !got.OK {
		t.Fatalf("token after the remembered one expired: %+v", got)
	}
}

// BenchmarkTokensAuthenticate is the cost of checking an unbound token on
// plain: parse, window, two HMAC-SHA256 (master-key mode), the replay
// cache. The tokens spread over 4,096 client ids, 16 each.
func BenchmarkTokensAuthenticate(b *testing.B) {
	tk, err := NewTokens(TokenConfig{MasterKey: master, ReplayCapacity: 1 << 22, Clock: func() time.Time { return epoch }})
	if err != nil {
		b.Fatal(err)
	}
	const n, ids = 1 << 16, 1 << 12
	reqs := make([]Request, n)
	for i := range reqs {
		id := fmt.Sprintf("dev-%04d", i%ids)
		reqs[i] = Request{ClientID: id, Now: epoch,
			Password: []byte(control.MakeToken(control.DeriveSecret(master, id), id, epoch, fmt.Sprintf("bench%08d", i)))}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// Past n every token is a replay: the cost is the same checks.
		if res := tk.Authenticate(&reqs[i%n]); !res.OK && res.Msg != msgReplayed {
			b.Fatal(res)
		}
		i++
	}
}

// BenchmarkTokensAuthenticateBound is the cost of checking a bound token
// on a TLS CONNECT: parse, window, one HMAC-SHA256 over the exporter (two
// in master-key mode, which derives the secret first), no replay memory.
func BenchmarkTokensAuthenticateBound(b *testing.B) {
	for _, mode := range []string{"secrets file", "master key"} {
		b.Run(mode, func(b *testing.B) {
			cfg := TokenConfig{Secrets: map[string][]byte{"dev-a": secretA}, Clock: func() time.Time { return epoch }}
			secret := secretA
			if mode == "master key" {
				cfg = TokenConfig{MasterKey: master, Clock: cfg.Clock}
				secret = control.DeriveSecret(master, "dev-a")
			}
			tk, err := NewTokens(cfg)
			if err != nil {
				b.Fatal(err)
			}
			exporter := []byte("exporter-of-connection-A-32bytes")
			req := Request{ClientID: "dev-a", TLS: true, ChannelBinding: exporter, Now: epoch,
				Password: []byte(control.MakeBoundToken(secret, "dev-a", epoch, "bench0001", exporter))}
			b.ReportAllocs()
			for b.Loop() {
				if res := tk.Authenticate(&req); !res.Proven {
					b.Fatal(res)
				}
			}
		})
	}
}
