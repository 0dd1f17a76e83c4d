package auth

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// fakeShared answers every claim with answer, recording what was claimed;
// later true keeps the answer for the test to give (from another
// goroutine).
type fakeShared struct {
	mu     sync.Mutex
	answer ReplayClaim
	later  bool
	claims []sharedClaim
	held   []func(ReplayClaim)
}

type sharedClaim struct {
	id          string
	key         [16]byte
	expiry, now int64
}

func (f *fakeShared) Claim(id string, key [16]byte, expiry, now int64, done func(ReplayClaim)) {
	f.mu.Lock()
	f.claims = append(f.claims, sharedClaim{id, key, expiry, now})
	later, answer := f.later, f.answer
	if later {
		f.held = append(f.held, done)
	}
	f.mu.Unlock()
	if !later {
		done(answer)
	}
}

// verdict waits for a Pending result.
func verdict(t *testing.T, res Result) Result {
	t.Helper()
	if res.Pending == nil {
		t.Fatalf("verdict %+v is not pending", res)
	}
	ch := make(chan Result, 1)
	res.Pending.Then(func(r Result) { ch <- r })
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no verdict")
	}
	return Result{}
}

// With a shared replay memory, an unbound token the local cache takes is
// claimed there and its verdict is the memory's answer; a replay on this
// gateway is refused without asking; bound tokens, certificates and
// refusals are never asked about and never pending.
func TestSharedReplay(t *testing.T) {
	clk := newTestClock(epoch)
	tk := newTestTokens(t, TokenConfig{Secrets: map[string][]byte{"a": secretA}, Clock: clk.now, AcceptClientCert: true})
	shared := &fakeShared{}
	tk.ShareReplay(shared)
	plain := func(nonce string) *Request {
		return &Request{ClientID: "a", Password: []byte(control.MakeToken(secretA, "a", epoch, nonce))}
	}
	for _, c := range []struct {
		answer ReplayClaim
		ok     bool
		reason byte
	}{
		{ClaimNew, true, ReasonSuccess},
		{ClaimReplayed, false, ReasonNotAuthorized},
		{ClaimDeviceFull, false, ReasonServerBusy},
		{ClaimBusy, false, ReasonServerBusy},
		{ClaimUnavailable, false, ReasonServerUnavailable},
	} {
		shared.answer = c.answer
		nonce := "nonceX" + string(rune('a'+c.answer)) + "00"
		got := verdict(t, tk.Authenticate(plain(nonce)))
		if got.OK != c.ok || got.Reason != c.reason || got.Msg == "" {
			t.Errorf("answer %d: verdict %+v, want ok %v reason 0x%02x", c.answer, got, c.ok, c.reason)
		}
	}
	last := shared.claims[len(shared.claims)-1]
	if last.id != "a" || last.now != epoch.Unix() || last.expiry != epoch.Unix()+int64(DefaultWindow/time.Second) {
		t.Fatalf("claim %+v", last)
	}
	asked := len(shared.claims)

	// A replay on this gateway: refused at once, the memory not asked.
	if res := tk.Authenticate(plain("nonceXa00")); res.Pending != nil || res.OK || res.Reason != ReasonNotAuthorized {
		t.Fatalf("local replay: %+v", res)
	}
	// A bound token over TLS, a certificate, a bad token: not asked.
	exp := make([]byte, control.ExporterLen)
	bound := control.MakeBoundToken(secretA, "a", epoch, "nonceB001", exp)
	for name, req := range map[string]*Request{
		"bound":       {ClientID: "a", TLS: true, ChannelBinding: exp, Password: []byte(bound)},
		"certificate": {ClientID: "a", TLS: true, PeerIdentity: []string{"a"}},
		"bad mac":     {ClientID: "a", Password: []byte(control.MakeToken(secretB, "a", epoch, "nonceC001"))},
	} {
		if res := tk.Authenticate(req); res.Pending != nil {
			t.Errorf("%s: pending", name)
		}
	}
	if len(shared.claims) != asked {
		t.Fatalf("the memory was asked %d more times", len(shared.claims)-asked)
	}

	// An answer from another goroutine, after Then.
	shared.later = true
	res := tk.Authenticate(plain("nonceD001"))
	got := make(chan Result, 1)
	res.Pending.Then(func(r Result) { got <- r })
	go shared.held[0](ClaimNew)
	if r := <-got; !r.OK {
		t.Fatalf("late answer: %+v", r)
	}
	shared.held[0](ClaimReplayed) // a second answer is ignored

	// Unchecked tokens on the local cache's word, when so configured;
	// every other answer as before.
	loc := newTestTokens(t, TokenConfig{Secrets: map[string][]byte{"a": secretA}, Clock: clk.now, ReplayUnavailableLocal: true})
	locShared := &fakeShared{}
	loc.ShareReplay(locShared)
	for i, c := range []struct {
		answer ReplayClaim
		ok     bool
	}{{ClaimUnavailable, true}, {ClaimReplayed, false}, {ClaimBusy, false}, {ClaimNew, true}} {
		locShared.answer = c.answer
		got := verdict(t, loc.Authenticate(plain(fmt.Sprintf("nonceL%03d", i))))
		if got.OK != c.ok {
			t.Errorf("local when unavailable, answer %d: %+v", c.answer, got)
		}
	}
	locShared.answer = ClaimUnavailable
	if res := loc.Authenticate(plain("nonceL000")); res.Pending != nil || res.OK {
		t.Fatalf("a replay on this gateway, local when unavailable: %+v", res)
	}

	// Sharing stopped: the verdict is at once again.
	tk.ShareReplay(nil)
	if res := tk.Authenticate(plain("nonceE001")); res.Pending != nil || !res.OK {
		t.Fatalf("without sharing: %+v", res)
	}
}
