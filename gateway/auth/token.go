package auth

import (
	"crypto/sha256"
	"errors"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// Token format constants; doc.go is the specification.
const (
	// TokenVersion is the first field of an unbound token, taken on plain
	// TCP only.
	TokenVersion = control.TokenVersion
	// TokenVersionBound is the first field of a token bound to its TLS
	// connection, taken over TLS only.
	TokenVersionBound = control.TokenVersionBound
	// MinNonceLen and MaxNonceLen bound the nonce's length in characters.
	MinNonceLen = 8
	MaxNonceLen = 32
	// MinSecretLen is the shortest device secret or master key accepted,
	// in bytes.
	MinSecretLen = 16
	// DefaultWindow is how far a token's time may be from the gateway's.
	DefaultWindow = 60 * time.Second

	maxTimestampDigits = 12
	macHexLen          = 2 * sha256.Size
	// maxTokenLen is the longest well-formed token:
	// "v1" or "v2" "." 12 digits "." 32 nonce characters "." 64 hex digits.
	maxTokenLen = len(TokenVersion) + 1 + maxTimestampDigits + 1 + MaxNonceLen + 1 + macHexLen
)

// Why a password is not a well-formed token. The texts are Result.Msg values.
var (
	errTokenShape     = errors.New("password is not a token: want v1 or v2.<unix-seconds>.<nonce>.<hex hmac>")
	errTokenVersion   = errors.New("token version is neither v1 nor v2")
	errTokenTimestamp = errors.New("token time is not a decimal number of seconds (1 to 12 digits, no sign, no leading zero)")
	errTokenNonce     = errors.New("token nonce is not 8 to 32 characters of [A-Za-z0-9]")
	errTokenMAC       = errors.New("token hmac is not 64 lowercase hex digits")
)

// token is a parsed password.
type token struct {
	version string // TokenVersion or TokenVersionBound
	ts      int64
	tsText  string // the digits as sent; they are what the hmac covers
	nonce   string
	mac     [sha256.Size]byte
}

// parseToken checks the syntax of a password and splits it. It copies what it
// keeps, so p may be a view of a read buffer.
func parseToken(p []byte) (token, error) {
	var t token
	if len(p) > maxTokenLen {
		return t, errTokenShape
	}
	var fields [4][]byte
	n := 0
	start := 0
	for i := 0; i <= len(p); i++ {
		if i < len(p) && p[i] != '.' {
			continue
		}
		if n == len(fields) {
			return t, errTokenShape
		}
		fields[n] = p[start:i]
		n++
		start = i + 1
	}
	if n != len(fields) {
		return t, errTokenShape
	}
	switch string(fields[0]) {
	case TokenVersion:
		t.version = TokenVersion
	case TokenVersionBound:
		t.version = TokenVersionBound
	default:
		return t, errTokenVersion
	}

	ts := fields[1]
	if len(ts) == 0 || len(ts) > maxTimestampDigits || ts[0] == '0' {
		return t, errTokenTimestamp
	}
	for _, c := range ts {
		if c < '0' || c > '9' {
			return t, errTokenTimestamp
		}
		t.ts = t.ts*10 + int64(c-'0') // at most 12 digits: no overflow
	}

	nonce := fields[2]
	if len(nonce) < MinNonceLen || len(nonce) > MaxNonceLen {
		return t, errTokenNonce
	}
	for _, c := range nonce {
		if !isAlnum(c) {
			return t, errTokenNonce
		}
	}

	mac := fields[3]
	if len(mac) != macHexLen {
		return t, errTokenMAC
	}
	for i := range t.mac {
		hi, ok1 := lowerHexValue(mac[2*i])
		lo, ok2 := lowerHexValue(mac[2*i+1])
		if !ok1 || !ok2 {
			return t, errTokenMAC
		}
		t.mac[i] = hi<<4 | lo
	}

	t.tsText = string(ts)
	t.nonce = string(nonce)
	return t, nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// lowerHexValue decodes one lowercase hex digit.
func lowerHexValue(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
