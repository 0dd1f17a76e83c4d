package control

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"time"
)

// TokenVersion is the first field of every device token.
const TokenVersion = "v1"

// ExporterLabel and ExporterLen name the keying material a device and the
// gateway export from their TLS connection (RFC 5705, RFC 8446 section
// 7.5; no context) to bind a token to that connection, so that a token
// captured anywhere else cannot open it. docs/protocol.md specifies it.
const (
	ExporterLabel = "EXPORTER-dualgate-token"
	ExporterLen   = 32
)

// MakeToken returns the MQTT password that proves knowledge of a device's
// secret for clientID at time ts (truncated to whole seconds), with the
// given nonce:
//
//	v1.<ts>.<nonce>.<hex(HMAC-SHA256(secret, "v1\n" + clientID + "\n" + ts + "\n" + nonce))>
//
// The nonce must be 8 to 32 characters of [A-Za-z0-9] and new for each
// connection (crypto/rand.Text returns one); the gateway refuses a token
// it has seen, or one whose time is too far from its own. docs/protocol.md
// specifies the format for device makers.
func MakeToken(secret []byte, clientID string, ts time.Time, nonce string) string {
	tsText := strconv.FormatInt(ts.Unix(), 10)
	var sum [sha256.Size]byte
	TokenMAC(hmac.New(sha256.New, secret), clientID, tsText, nonce, sum[:0])
	return TokenVersion + "." + tsText + "." + nonce + "." + hex.EncodeToString(sum[:])
}

// DeriveSecret returns the device secret of clientID under a fleet master
// key: HMAC-SHA256(master, clientID), 32 bytes. Provisioning writes it into
// the device; the gateway derives it again at CONNECT.
func DeriveSecret(master []byte, clientID string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte(clientID))
	return m.Sum(nil)
}

// TokenMAC appends HMAC(secret, "v1\n" + clientID + "\n" + ts + "\n" + nonce)
// to dst, h being a fresh HMAC-SHA256 keyed with the secret.
func TokenMAC(h hash.Hash, clientID, ts, nonce string, dst []byte) []byte {
	h.Write([]byte(TokenVersion + "\n"))
	h.Write([]byte(clientID))
	h.Write([]byte{'\n'})
	h.Write([]byte(ts))
	h.Write([]byte{'\n'})
	h.Write([]byte(nonce))
	return h.Sum(dst)
}
