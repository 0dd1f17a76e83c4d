package device

import (
	"crypto/tls"
	"strconv"
	"time"

	"github.com/dualgate/dualgate/internal/control"
)

// Mode is a transport: ModePlain or ModeTLS, and ModeOffline for no
// connection.
type Mode = control.Mode

// The modes.
const (
	ModePlain   = control.ModePlain
	ModeTLS     = control.ModeTLS
	ModeOffline = Mode("offline")
)

// ReasonSensitivePublish is the reason OnModeChange is given when the
// device moved to TLS by itself, for PublishSensitive.
const ReasonSensitivePublish = "sensitive-publish"

// Command is a message the gateway delivered to the device.
type Command struct {
	Topic   string
	Payload []byte
	QoS     byte
	// OverTLS tells whether it arrived on a TLS connection.
	OverTLS bool
	// Dup is the MQTT DUP flag: the gateway may have delivered it before
	// (a connection was lost before the acknowledgement).
	Dup bool
}

// EventKind says what an Event reports.
type EventKind int

// The events.
const (
	// EventConnected: a connection is up (Mode, Addr; TLS for TLS).
	EventConnected EventKind = iota + 1
	// EventConnectFailed: an attempt failed (Mode, Addr, Err); the next one
	// follows after Delay.
	EventConnectFailed
	// EventConnectionLost: the connection ended unasked (Mode, Err); the
	// Device reconnects in the same mode after Delay.
	EventConnectionLost
	// EventInstruction: a reconnect instruction is being obeyed (Mode,
	// Addr, Reason).
	EventInstruction
	// EventDowngradeIgnored: an instruction to use plain arrived over plain
	// and was not obeyed (Addr, Reason as received).
	EventDowngradeIgnored
	// EventBadInstruction: a control message could not be understood (Err).
	EventBadInstruction
	// EventSubscribeFailed: subscribing after a connect failed (Err).
	EventSubscribeFailed
	// EventQueryFailed: the query after a connect failed (Err).
	EventQueryFailed
)

// String names the kind, e.g. "connected".
func (k EventKind) String() string {
	switch k {
	case EventConnected:
		return "connected"
	case EventConnectFailed:
		return "connect-failed"
	case EventConnectionLost:
		return "connection-lost"
	case EventInstruction:
		return "instruction"
	case EventDowngradeIgnored:
		return "downgrade-ignored"
	case EventBadInstruction:
		return "bad-instruction"
	case EventSubscribeFailed:
		return "subscribe-failed"
	case EventQueryFailed:
		return "query-failed"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event is something that happened to the Device's connection. Which
// fields are set depends on Kind.
type Event struct {
	Kind   EventKind
	Mode   Mode
	Addr   string
	Reason string
	Err    error
	// Delay is the wait before the next connection attempt.
	Delay time.Duration
	// TLS is the state of a new TLS connection (handshake, resumption,
	// key exchange group).
	TLS *tls.ConnectionState
}
