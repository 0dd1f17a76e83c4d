package control

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"time"
)

// Token versions, the first field of every device token.
const (
	// TokenVersion marks an unbound token: it proves the secret, but a copy
	// works on any connection. The gateway takes it on plain TCP only.
	TokenVersion = "v1"
	// TokenVersionBound marks a token bound to the TLS connection it is
	// sent on (its HMAC also covers the connection's exported keying
	// material). The gateway takes it over TLS only.
	TokenVersionBound = "v2"
)

// ExporterLabel and ExporterLen name the keying material a device and the
// gateway export from their TLS connection (RFC 5705, RFC 8446 section
// 7.5; no context) to bind a token to that connection, so that a token
// captured anywhere else cannot open it. docs/protocol.md specifies it.
const (
	ExporterLabel = "EXPORTER-dualgate-token"
	ExporterLen   = 32
)

// MakeToken returns the unbound (v1) MQTT password that proves knowledge
// of a device's secret for clientID at time ts (truncated to whole
// seconds), with the given nonce:
//
//	v1.<ts>.<nonce>.<hex(HMAC-SHA256(secret, "v1\n" + clientID + "\n" + ts + "\n" + nonce))>
//
// The nonce must be 8 to 32 characters of [A-Za-z0-9] and new for each
// connection (crypto/rand.Text returns one); the gateway refuses a token
// it has seen, or one whose time is too far from its own. Use it on plain
// TCP only: over TLS the gateway wants MakeBoundToken. docs/protocol.md
// specifies the format for device makers.
func MakeToken(secret []byte, clientID string, ts time.Time, nonce string) string {
	return makeToken(TokenVersion, secret, clientID, ts, nonce, nil)
}

// MakeBoundToken returns the bound (v2) MQTT password for a TLS connection
// whose exported keying material (ExporterLabel, no context, ExporterLen
// bytes) is exporter:
//
//	v2.<ts>.<nonce>.<hex(HMAC-SHA256(secret, "v2\n" + clientID + "\n" + ts + "\n" + nonce + "\n" + exporter))>
//
// exporter is the 32 raw bytes. The token opens only the connection it was
// made for: a copy sent on any other connection fails its HMAC there.
func MakeBoundToken(secret []byte, clientID string, ts time.Time, nonce string, exporter []byte) string {
	return makeToken(TokenVersionBound, secret, clientID, ts, nonce, exporter)
}

func makeToken(version string, secret []byte, clientID string, ts time.Time, nonce string, exporter []byte) string {
	tsText := strconv.FormatInt(ts.Unix(), 10)
	var sum [sha256.Size]byte
	TokenMAC(hmac.New(sha256.New, secret), version, clientID, tsText, nonce, exporter, sum[:0])
	return version + "." + tsText + "." + nonce + "." + hex.EncodeToString(sum[:])
}

// DeriveSecret returns the device secret of clientID under a fleet master
// key: HMAC-SHA256(master, clientID), 32 bytes. Provisioning writes it into
// the device; the gateway derives it again at CONNECT.
func DeriveSecret(master []byte, clientID string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte(clientID))
	return m.Sum(nil)
}

// TokenMAC appends the token HMAC to dst, h being a fresh HMAC-SHA256 keyed
// with the device secret:
//
//	v1: HMAC(version + "\n" + clientID + "\n" + ts + "\n" + nonce)
//	v2: HMAC(version + "\n" + clientID + "\n" + ts + "\n" + nonce + "\n" + exporter)
//
// exporter is used for TokenVersionBound only.
func TokenMAC(h hash.Hash, version, clientID, ts, nonce string, exporter []byte, dst []byte) []byte {
	h.Write([]byte(version))
	h.Write([]byte{'\n'})
	h.Write([]byte(clientID))
	h.Write([]byte{'\n'})
	h.Write([]byte(ts))
	h.Write([]byte{'\n'})
	h.Write([]byte(nonce))
	if version == TokenVersionBound {
		h.Write([]byte{'\n'})
		h.Write(exporter)
	}
	return h.Sum(dst)
}
