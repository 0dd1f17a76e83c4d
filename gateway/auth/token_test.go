package auth

import (
	"cmp"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// Worked example quoted in the package documentation and in
// docs/protocol.md, checked independently with
//
//	printf 'v1\ncar-0042\n1767225600\nk3Jd9QxA2mPz' |
//	    openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1e1f
const (
	vectorSecretHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	vectorClientID  = "car-0042"
	vectorUnix      = 1767225600 // 2026-01-01T00:00:00Z
	vectorNonce     = "k3Jd9QxA2mPz"
	vectorToken     = "v1.1767225600.k3Jd9QxA2mPz.b565bfeea5a5a11a2e5e8815cee73d678c25fb0ecbc56231df292852069efbf2"

	// The bound (v2) example: the same secret, client id, time and nonce on
	// a TLS connection whose exporter is the bytes a0 a1 ... bf, checked
	// with
	//
	//	(printf 'v2\ncar-0042\n1767225600\nk3Jd9QxA2mPz\n'; printf a0a1...bf | xxd -r -p) |
	//	    openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1e1f
	vectorExporterHex = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
	vectorBoundToken  = "v2.1767225600.k3Jd9QxA2mPz.ed1880c72e5d776853fc39b1ebb8a22149e8b01fe3c82710360070131e7ac16b"

	vectorMasterHex  = "6d61737465722d6b65792d666f722d746573742d766563746f72732d30303031" // "master-key-for-test-vectors-0001"
	vectorDerivedHex = "18501038028d11fc36623049168f8d1e57ba1e443adb3ad8b46857a9d8718dd6"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMakeTokenVector(t *testing.T) {
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if ts.Unix() != vectorUnix {
		t.Fatalf("vector time is %d, want %d", ts.Unix(), vectorUnix)
	}
	tests := []struct {
		name string
		ts   time.Time
	}{
		{name: "UTC", ts: ts},
		{name: "other zone, same instant", ts: ts.In(time.FixedZone("CET", 3600))},
		{name: "sub-second part truncated", ts: ts.Add(999 * time.Millisecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := control.MakeToken(mustHex(t, vectorSecretHex), vectorClientID, tt.ts, vectorNonce); got != vectorToken {
				t.Fatalf("control.MakeToken() = %s\nwant          %s", got, vectorToken)
			}
		})
	}
}

func TestMakeBoundTokenVector(t *testing.T) {
	got := control.MakeBoundToken(mustHex(t, vectorSecretHex), vectorClientID, time.Unix(vectorUnix, 0), vectorNonce, mustHex(t, vectorExporterHex))
	if got != vectorBoundToken {
		t.Fatalf("control.MakeBoundToken() = %s\nwant                 %s", got, vectorBoundToken)
	}
	// The vector verifies on a TLS request carrying that exporter, and is
	// Proven; on another exporter it does not.
	tk := newTestTokens(t, TokenConfig{Secrets: map[string][]byte{vectorClientID: mustHex(t, vectorSecretHex)}, Clock: func() time.Time { return time.Unix(vectorUnix, 0) }})
	res := tk.Authenticate(&Request{ClientID: vectorClientID, Password: []byte(vectorBoundToken), TLS: true, ChannelBinding: mustHex(t, vectorExporterHex)})
	if want := (Result{OK: true, Msg: msgOKBound, Proven: true}); res != want {
		t.Fatalf("Authenticate(vector) = %+v, want %+v", res, want)
	}
	other := mustHex(t, vectorExporterHex)
	other[31] ^= 1
	res = tk.Authenticate(&Request{ClientID: vectorClientID, Password: []byte(vectorBoundToken), TLS: true, ChannelBinding: other})
	if want := (Result{Reason: ReasonBadUserNameOrPassword, Msg: msgBadMAC}); res != want {
		t.Fatalf("Authenticate(vector, other exporter) = %+v, want %+v", res, want)
	}
}

func TestDeriveSecretVector(t *testing.T) {
	master := mustHex(t, vectorMasterHex)
	if string(master) != "master-key-for-test-vectors-0001" {
		t.Fatalf("master key vector decodes to %q", master)
	}
	got := hex.EncodeToString(control.DeriveSecret(master, vectorClientID))
	if got != vectorDerivedHex {
		t.Fatalf("control.DeriveSecret() = %s, want %s", got, vectorDerivedHex)
	}
	if other := hex.EncodeToString(control.DeriveSecret(master, "car-0043")); other == got {
		t.Fatal("two client ids derived the same secret")
	}
}

func TestParseToken(t *testing.T) {
	mac := strings.Repeat("ab", 32)
	tests := []struct {
		name      string
		password  string
		wantErr   error
		wantTS    int64
		wantNonce string
		// wantVersion is TokenVersion when empty.
		wantVersion string
	}{
		{name: "vector", password: vectorToken, wantTS: vectorUnix, wantNonce: vectorNonce},
		{name: "shortest nonce", password: "v1.1.abcdefgh." + mac, wantTS: 1, wantNonce: "abcdefgh"},
		{name: "longest nonce and time", password: "v1.999999999999." + strings.Repeat("Z9", 16) + "." + mac, wantTS: 999999999999, wantNonce: strings.Repeat("Z9", 16)},

		{name: "empty", password: "", wantErr: errTokenShape},
		{name: "plain password", password: "hunter2", wantErr: errTokenShape},
		{name: "three fields", password: "v1.1767225600." + mac, wantErr: errTokenShape},
		{name: "five fields", password: vectorToken + ".x", wantErr: errTokenShape},
		{name: "trailing dot", password: vectorToken + ".", wantErr: errTokenShape},
		{name: "longer than any token", password: "v1.1767225600." + strings.Repeat("a", 40) + "." + mac, wantErr: errTokenShape},

		{name: "bound vector", password: vectorBoundToken, wantTS: vectorUnix, wantNonce: vectorNonce, wantVersion: TokenVersionBound},
		{name: "version v3", password: "v3.1767225600.k3Jd9QxA2mPz." + mac, wantErr: errTokenVersion},
		{name: "version upper case", password: "V1.1767225600.k3Jd9QxA2mPz." + mac, wantErr: errTokenVersion},
		{name: "version empty", password: ".1767225600.k3Jd9QxA2mPz." + mac, wantErr: errTokenVersion},

		{name: "time empty", password: "v1..k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time leading zero", password: "v1.01767225600.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time zero", password: "v1.0.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time with plus sign", password: "v1.+1767225600.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time negative", password: "v1.-1767225600.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time hex", password: "v1.0x69556d00.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time with space", password: "v1.17672 5600.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},
		{name: "time 13 digits", password: "v1.1767225600000.k3Jd9QxA2mPz." + mac, wantErr: errTokenTimestamp},

		{name: "nonce empty", password: "v1.1767225600.." + mac, wantErr: errTokenNonce},
		{name: "nonce 7 characters", password: "v1.1767225600.abcdefg." + mac, wantErr: errTokenNonce},
		{name: "nonce 33 characters", password: "v1.1767225600." + strings.Repeat("a", 33) + "." + mac, wantErr: errTokenNonce},
		{name: "nonce with dash", password: "v1.1767225600.k3Jd9Qx-2mPz." + mac, wantErr: errTokenNonce},
		{name: "nonce with underscore", password: "v1.1767225600.k3Jd9Qx_2mPz." + mac, wantErr: errTokenNonce},
		{name: "nonce with non-ASCII", password: "v1.1767225600.k3Jd9Qxé2mPz." + mac, wantErr: errTokenNonce},

		{name: "mac empty", password: "v1.1767225600.k3Jd9QxA2mPz.", wantErr: errTokenMAC},
		{name: "mac 63 digits", password: "v1.1767225600.k3Jd9QxA2mPz." + mac[:63], wantErr: errTokenMAC},
		{name: "mac 65 digits", password: "v1.1767225600.k3Jd9QxA2mPz." + mac + "a", wantErr: errTokenMAC},
		{name: "mac upper case", password: "v1.1767225600.k3Jd9QxA2mPz." + strings.ToUpper(mac), wantErr: errTokenMAC},
		{name: "mac not hex", password: "v1.1767225600.k3Jd9QxA2mPz." + mac[:62] + "ag", wantErr: errTokenMAC},
		{name: "mac base64", password: "v1.1767225600.k3Jd9QxA2mPz." + strings.Repeat("A", 43) + "=", wantErr: errTokenMAC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := parseToken([]byte(tt.password))
			if err != tt.wantErr {
				t.Fatalf("parseToken(%q) error = %v, want %v", tt.password, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if tok.ts != tt.wantTS || tok.nonce != tt.wantNonce || tok.tsText != tt.password[3:3+len(tok.tsText)] {
				t.Fatalf("parseToken(%q) = ts %d (%q), nonce %q; want ts %d, nonce %q",
					tt.password, tok.ts, tok.tsText, tok.nonce, tt.wantTS, tt.wantNonce)
			}
			if want := cmp.Or(tt.wantVersion, TokenVersion); tok.version != want {
				t.Fatalf("parseToken(%q) version = %q, want %q", tt.password, tok.version, want)
			}
			if got := hex.EncodeToString(tok.mac[:]); got != tt.password[len(tt.password)-64:] {
				t.Fatalf("parseToken(%q) mac = %s", tt.password, got)
			}
		})
	}
}

// TestParseTokenCopies proves that a parsed token does not alias the
// password buffer, which may be a view of a connection's read buffer.
func TestParseTokenCopies(t *testing.T) {
	buf := []byte(vectorToken)
	tok, err := parseToken(buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = 'x'
	}
	if tok.nonce != vectorNonce || tok.tsText != "1767225600" {
		t.Fatalf("token changed with its buffer: nonce %q, ts %q", tok.nonce, tok.tsText)
	}
}

func TestMakeTokenRoundTrip(t *testing.T) {
	secret := mustHex(t, vectorSecretHex)
	tests := []struct {
		clientID string
		ts       time.Time
		nonce    string
	}{
		{clientID: "a", ts: time.Unix(1, 0), nonce: "AAAAAAAA"},
		{clientID: "client with spaces and ünïcode", ts: time.Unix(4102444800, 0), nonce: "0123456789abcdefABCDEF0123456789"},
		{clientID: strings.Repeat("x", 300), ts: time.Unix(vectorUnix, 0), nonce: "Q2VJ7X4MZ5ABCDEFGHJKLMNPQR"},
	}
	for _, tt := range tests {
		tok, err := parseToken([]byte(control.MakeToken(secret, tt.clientID, tt.ts, tt.nonce)))
		if err != nil {
			t.Fatalf("token for %q does not parse: %v", tt.clientID, err)
		}
		if tok.ts != tt.ts.Unix() || tok.nonce != tt.nonce {
			t.Fatalf("round trip of %q: ts %d nonce %q", tt.clientID, tok.ts, tok.nonce)
		}
	}
}
