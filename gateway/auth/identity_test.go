package auth

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/dualgate/dualgate/certs"
)

func TestParseIdentityPolicy(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    IdentityPolicy
		wantErr bool
	}{
		{in: "cert", want: IdentityCert},
		{in: "token", want: IdentityToken},
		{in: "cert,token", want: IdentityCert | IdentityToken},
		{in: "token,cert", want: IdentityCert | IdentityToken},
		{in: " cert , token ", want: IdentityCert | IdentityToken},
		{in: "none", want: IdentityNone},
		{in: "", wantErr: true},
		{in: "Cert", wantErr: true},
		{in: "cert,cert", wantErr: true},
		{in: "cert,", wantErr: true},
		{in: "cert,none", wantErr: true},
		{in: "password", wantErr: true},
	} {
		got, err := ParseIdentityPolicy(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("ParseIdentityPolicy(%q) error %v, want error %v", tc.in, err, tc.wantErr)
		}
		if err == nil && got != tc.want {
			t.Fatalf("ParseIdentityPolicy(%q) = %v, want %v", tc.in, got, tc.want)
		}
		if err == nil {
			// String gives back a value that parses to the same policy.
			if again, err := ParseIdentityPolicy(got.String()); err != nil || again != got {
				t.Fatalf("%q -> %v -> %q -> %v, %v", tc.in, got, got.String(), again, err)
			}
		}
	}
}

// TestIdentityDecide runs every policy through every kind of TLS CONNECT
// an honest device or an impostor can make.
func TestIdentityDecide(t *testing.T) {
	okToken := Result{OK: true, Reason: ReasonSuccess, Msg: msgOKToken, Proven: true}
	okPlainToken := Result{OK: true, Reason: ReasonSuccess, Msg: msgOKToken} // a token not bound to this channel
	okAny := Result{OK: true, Reason: ReasonSuccess, Msg: "allow-all"}
	const (
		proven   = "proven"
		unproven = "unproven"
		refused  = "refused"
	)
	cases := []struct {
		name string
		req  Request
		res  Result
		// want by policy: none, cert, token, cert,token
		want [4]string
	}{
		{
			name: "no certificate, no token",
			req:  Request{ClientID: "car-1", TLS: true},
			res:  okAny,
			want: [4]string{proven, unproven, unproven, unproven},
		},
		{
			name: "certificate naming the client id",
			req:  Request{ClientID: "car-1", TLS: true, PeerIdentity: []string{"car-1"}},
			res:  okAny,
			want: [4]string{proven, proven, unproven, proven},
		},
		{
			name: "certificate naming it among others",
			req:  Request{ClientID: "car-1", TLS: true, PeerIdentity: []string{"fleet-a", "car-1"}},
			res:  okAny,
			want: [4]string{proven, proven, unproven, proven},
		},
		{
			name: "certificate of another device",
			req:  Request{ClientID: "car-1", TLS: true, PeerIdentity: []string{"car-2"}},
			res:  okAny,
			want: [4]string{proven, refused, refused, refused},
		},
		{
			name: "certificate of another device, with a channel-bound token",
			req:  Request{ClientID: "car-1", TLS: true, PeerIdentity: []string{"car-2"}},
			res:  okToken,
			want: [4]string{proven, refused, refused, refused},
		},
		{
			name: "channel-bound token, no certificate",
			req:  Request{ClientID: "car-1", TLS: true},
			res:  okToken,
			want: [4]string{proven, unproven, proven, proven},
		},
		{
			name: "token not bound to the channel",
			req:  Request{ClientID: "car-1", TLS: true},
			res:  okPlainToken,
			want: [4]string{proven, unproven, unproven, unproven},
		},
		{
			name: "certificate and channel-bound token",
			req:  Request{ClientID: "car-1", TLS: true, PeerIdentity: []string{"car-1"}},
			res:  okToken,
			want: [4]string{proven, proven, proven, proven},
		},
		{
			name: "certificate names nobody (no CN, no dualgate URI)",
			req:  Request{ClientID: "car-1", TLS: true, PeerIdentity: []string{}},
			res:  okAny,
			want: [4]string{proven, unproven, unproven, unproven},
		},
		{
			name: "empty client id against a certificate",
			req:  Request{ClientID: "", TLS: true, PeerIdentity: []string{"car-1"}},
			res:  okAny,
			want: [4]string{proven, refused, refused, refused},
		},
		{
			name: "identity claimed off TLS is never trusted",
			req:  Request{ClientID: "car-1", PeerIdentity: []string{"car-1"}},
			res:  okToken,
			want: [4]string{proven, unproven, unproven, unproven},
		},
	}
	policies := [4]IdentityPolicy{IdentityNone, IdentityCert, IdentityToken, IdentityCert | IdentityToken}
	for _, tc := range cases {
		for i, p := range policies {
			t.Run(tc.name+"/"+p.String(), func(t *testing.T) {
				isProven, refusal, ok := p.Decide(&tc.req, tc.res)
				got := unproven
				switch {
				case !ok:
					got = refused
					if refusal.OK || refusal.Reason != ReasonNotAuthorized || refusal.Msg == "" {
						t.Fatalf("refusal %+v, want not OK, reason 0x87 and a message", refusal)
					}
					if isProven {
						t.Fatal("refused and proven at once")
					}
				case isProven:
					got = proven
				}
				if got != tc.want[i] {
					t.Fatalf("%s, want %s", got, tc.want[i])
				}
			})
		}
	}
}

func TestCertNamesClient(t *testing.T) {
	for _, tc := range []struct {
		ids  []string
		id   string
		want bool
	}{
		{ids: []string{"car-1"}, id: "car-1", want: true},
		{ids: []string{"car-1"}, id: "car-10"},
		{ids: []string{"car-1"}, id: "CAR-1"},
		{ids: nil, id: "car-1"},
		{ids: []string{""}, id: ""},
	} {
		if got := CertNamesClient(tc.ids, tc.id); got != tc.want {
			t.Errorf("CertNamesClient(%q, %q) = %v", tc.ids, tc.id, got)
		}
	}
}

// BenchmarkIdentity measures what --secure-identity cert costs the gateway
// on a TLS CONNECT: "decide" is the policy itself (per CONNECT, resumed or
// not); "certificate" adds what crypto/tls does on a full handshake when a
// device presents its certificate (parse it, verify its chain to the
// client CA, verify its CertificateVerify signature), which a resumed
// handshake skips.
func BenchmarkIdentity(b *testing.B) {
	pki, err := certs.NewTestPKI()
	if err != nil {
		b.Fatal(err)
	}
	cert, err := pki.ClientCert("car-0042")
	if err != nil {
		b.Fatal(err)
	}
	req := Request{ClientID: "car-0042", TLS: true, PeerIdentity: []string{"car-0042"}}
	res := Result{OK: true, Reason: ReasonSuccess}
	policy := IdentityCert | IdentityToken

	b.Run("decide", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if proven, _, ok := policy.Decide(&req, res); !proven || !ok {
				b.Fatal("not proven")
			}
		}
	})

	b.Run("certificate", func(b *testing.B) {
		key := cert.PrivateKey.(*ecdsa.PrivateKey)
		transcript := sha256.Sum256([]byte("handshake transcript"))
		sig, err := ecdsa.SignASN1(rand.Reader, key, transcript[:])
		if err != nil {
			b.Fatal(err)
		}
		opts := x509.VerifyOptions{Roots: pki.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		b.ReportAllocs()
		for b.Loop() {
			leaf, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				b.Fatal(err)
			}
			if _, err := leaf.Verify(opts); err != nil {
				b.Fatal(err)
			}
			if !ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), transcript[:], sig) {
				b.Fatal("signature")
			}
			ids := []string{leaf.Subject.CommonName}
			r := req
			r.PeerIdentity = ids
			if proven, _, ok := policy.Decide(&r, res); !proven || !ok {
				b.Fatal("not proven")
			}
		}
	})
}
