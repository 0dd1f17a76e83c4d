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

// Handle is the gateway's connection handle, stored in an Entry and never
// looked at by the registry.
type Handle any

// Entry is the live connection of one client.
//
// All exported fields are set before [Registry.Register] and never changed
// afterwards; readers on any goroutine may use them without locking. Only the
// last-activity time changes, through [Entry.Touch]. An Entry must not be
// copied after first use.
type Entry struct {
	ClientID string
	Mode     Mode
	Protocol byte      // MQTT protocol level: 4 (3.1.1) or 5
	Since    time.Time // when the connection was accepted (CONNECT)
	Remote   string    // the device's address, host:port (from the PROXY header behind a load balancer)
	Handle   Handle

	lastActive atomic.Int64 // unix nanoseconds; 0 until the first Touch
}

// Touch records now as the time of the connection's last activity. It is safe
// to call from any goroutine; the last call wins.
func (e *Entry) Touch(now time.Time) { e.lastActive.Store(now.UnixNano()) }

// LastActive returns the time given to the last Touch, or Since if Touch was
// never called. The result carries no monotonic clock reading.
func (e *Entry) LastActive() time.Time {
	n := e.lastActive.Load()
	if n == 0 {
		return e.Since
	}
	return time.Unix(0, n)
}
