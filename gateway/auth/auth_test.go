package auth

import (
	"testing"
	"time"
)

func TestAllowAll(t *testing.T) {
	tests := []struct {
		name string
		req  Request
	}{
		{name: "empty request", req: Request{}},
		{name: "plain with password", req: Request{ClientID: "dev-1", Username: "u", Password: []byte("p"), Peer: fixedPeer("192.0.2.1:5000")}},
		{name: "tls with certificate", req: Request{ClientID: "dev-1", TLS: true, PeerIdentity: []string{"other"}, Now: time.Unix(1, 0)}},
		{name: "garbage token", req: Request{ClientID: "dev-1", Password: []byte("v1.x.y.z")}},
	}
	a := AllowAll()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := a.Authenticate(&tt.req)
			if !got.OK || got.Reason != ReasonSuccess || got.Msg == "" {
				t.Fatalf("AllowAll().Authenticate() = %+v, want OK with reason 0 and a message", got)
			}
		})
	}
}

func TestAuthenticatorFunc(t *testing.T) {
	var seen *Request
	f := AuthenticatorFunc(func(req *Request) Result {
		seen = req
		return Result{Reason: ReasonNotAuthorized, Msg: "no"}
	})
	req := &Request{ClientID: "dev-1"}
	var a Authenticator = f
	if got := a.Authenticate(req); got.OK || got.Reason != ReasonNotAuthorized || got.Msg != "no" {
		t.Fatalf("Authenticate() = %+v", got)
	}
	if seen != req {
		t.Fatal("the function did not receive the request")
	}
}

type fixedPeer string

func (p fixedPeer) Remote() string { return string(p) }

// countingPeer counts the times its address is asked.
type countingPeer struct{ asked int }

func (p *countingPeer) Remote() string { p.asked++; return "192.0.2.1:5000" }

// The device's address is read only when an Authenticator asks for it.
func TestRequestRemote(t *testing.T) {
	if got := (&Request{}).Remote(); got != "" {
		t.Fatalf("Remote() without a Peer = %q, want \"\"", got)
	}
	p := &countingPeer{}
	req := &Request{Peer: p}
	if p.asked != 0 {
		t.Fatal("the address was read before Remote")
	}
	if got := req.Remote(); got != "192.0.2.1:5000" || p.asked != 1 {
		t.Fatalf("Remote() = %q after %d reads, want 192.0.2.1:5000 after 1", got, p.asked)
	}
}
