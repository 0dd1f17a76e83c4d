// Package control holds the constants and message shapes of dualgate's device
// control protocol, shared by the gateway, the device SDK and the bench tool.
// docs/protocol.md is the normative text; this package is its Go form.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Topics the gateway reserves. A device never needs to subscribe to them.
const (
	// ControlTopic carries reconnect instructions to MQTT 3.1.1 devices
	// (PUBLISH QoS 1, retain 0, JSON payload Instruction).
	ControlTopic = "$dualgate/control"
	// QueryTopic is where a device publishes (QoS 1) after connecting to ask
	// for its pending commands. The payload is ignored.
	QueryTopic = "$dualgate/query"
	// ReservedPrefix is the prefix of every topic the gateway reserves.
	ReservedPrefix = "$dualgate/"
)

// Version is the value of the "v" field of every control message.
const Version = 1

// OpReconnect is the only operation of version 1.
const OpReconnect = "reconnect"

// Mode is the transport a device is told to use.
type Mode string

// The two transports.
const (
	ModePlain Mode = "plain"
	ModeTLS   Mode = "tls"
)

// Reasons the gateway puts into instructions.
const (
	ReasonSecureCommand = "secure-command"
	ReasonSecureIdle    = "secure-idle"
	ReasonDrain         = "drain"
)

// Instruction is the JSON payload of a PUBLISH on ControlTopic.
type Instruction struct {
	V      int    `json:"v"`
	Op     string `json:"op"`
	Mode   Mode   `json:"mode"`
	Addr   string `json:"addr"`
	Reason string `json:"reason,omitempty"`
}

// Marshal encodes the instruction as compact JSON.
func (in Instruction) Marshal() []byte {
	b, err := json.Marshal(in)
	if err != nil {
		// Every field is a plain string or int: Marshal cannot fail.
		panic(fmt.Sprintf("control: marshal instruction: %v", err))
	}
	return b
}

// ErrBadInstruction reports a control message that a device must ignore.
var ErrBadInstruction = errors.New("control: bad instruction")

// ParseInstruction decodes and validates a control message payload.
func ParseInstruction(b []byte) (Instruction, error) {
	var in Instruction
	if err := json.Unmarshal(b, &in); err != nil {
		return in, fmt.Errorf("%w: %w", ErrBadInstruction, err)
	}
	if in.V != Version {
		return in, fmt.Errorf("%w: unsupported version %d", ErrBadInstruction, in.V)
	}
	if in.Op != OpReconnect {
		return in, fmt.Errorf("%w: unknown op %q", ErrBadInstruction, in.Op)
	}
	if in.Mode != ModePlain && in.Mode != ModeTLS {
		return in, fmt.Errorf("%w: unknown mode %q", ErrBadInstruction, in.Mode)
	}
	if _, _, err := net.SplitHostPort(in.Addr); err != nil {
		return in, fmt.Errorf("%w: addr: %w", ErrBadInstruction, err)
	}
	return in, nil
}

// ServerReference is the MQTT 5 Server Reference for a mode and address:
// "tls://host:port" or "tcp://host:port".
func ServerReference(m Mode, addr string) string {
	if m == ModeTLS {
		return "tls://" + addr
	}
	return "tcp://" + addr
}

// ParseServerReference is the inverse of ServerReference.
func ParseServerReference(ref string) (Mode, string, error) {
	var m Mode
	var addr string
	switch {
	case strings.HasPrefix(ref, "tls://"):
		m, addr = ModeTLS, ref[len("tls://"):]
	case strings.HasPrefix(ref, "tcp://"):
		m, addr = ModePlain, ref[len("tcp://"):]
	default:
		return "", "", fmt.Errorf("%w: server reference %q: want tls:// or tcp://", ErrBadInstruction, ref)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("%w: server reference %q: %w", ErrBadInstruction, ref, err)
	}
	return m, addr, nil
}
