package registry

import (
	"strconv"
	"sync/atomic"
	"time"
)

// Mode is the transport a device is connected over.
//
// The zero value is ModePlain, the mode on which nothing secret may be
// written: an Entry whose Mode was forgotten is treated as the less trusted
// transport, never the more trusted one.
type Mode uint8

// The transport modes.
const (
	ModePlain Mode = iota // plain TCP
	ModeTLS               // TLS
)

// numModes is the number of valid modes; valid modes are 0..numModes-1.
const numModes = 2

// String returns "plain" or "tls", or "Mode(n)" for a value that is neither.
func (m Mode) String() string {
	switch m {
	case ModePlain:
		return "plain"
	case ModeTLS:
		return "tls"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// Valid reports whether m is ModePlain or ModeTLS.
func (m Mode) Valid() bool { return m < numModes }

// Entry is what the registry knows of one live connection. It lives inside
// the connection's own state (see [Item]), so registering costs no
// allocation.
//
// All exported fields are set before [Registry.Register] and never changed
// afterwards; readers on any goroutine may use them without locking. Only the
// last-activity time changes, through [Entry.Touch]. An Entry must not be
// copied after first use.
type Entry struct {
	ClientID string
	// ConnectedAt is when the connection was accepted (CONNECT), in Unix
	// nanoseconds.
	ConnectedAt int64
	// lastActive is in Unix seconds (0 until the first Touch): the
	// keepalive granularity, in half the space of nanoseconds.
	lastActive atomic.Uint32
	Mode       Mode
	Protocol   byte // MQTT protocol level: 4 (3.1.1) or 5
}

// RegistryEntry returns e: an *Entry is an [Item] of its own.
func (e *Entry) RegistryEntry() *Entry { return e }

// Since returns ConnectedAt as a time.
func (e *Entry) Since() time.Time { return time.Unix(0, e.ConnectedAt) }

// Touch records now as the time of the connection's last activity, to the
// second. It is safe to call from any goroutine; the last call wins.
func (e *Entry) Touch(now time.Time) { e.lastActive.Store(uint32(now.Unix())) }

// LastActive returns the time given to the last Touch, truncated to the
// second, or Since if Touch was never called. The result carries no
// monotonic clock reading.
func (e *Entry) LastActive() time.Time {
	n := e.lastActive.Load()
	if n == 0 {
		return e.Since()
	}
	return time.Unix(int64(n), 0)
}
