package mqttcodec

import "strconv"

// Error is a decoding failure: the input breaks a rule of the MQTT
// specification. Decoders return it as an error; match it with errors.As.
// A server sends Reason in its CONNACK or DISCONNECT (MQTT 5), or
// ConnackCode311(Reason) in a CONNACK to a 3.1.1 client, and then closes the
// connection.
type Error struct {
	// Rule is the specification's statement, e.g. "MQTT-3.3.2-2", or a short
	// rule name where the specification numbers none, e.g. "remaining-length".
	Rule string
	// Reason is the MQTT 5 reason code that answers the failure.
	Reason ReasonCode
	// Msg says what is wrong.
	Msg string
}

// Error says which rule is broken, what is wrong, and the reason code.
func (e *Error) Error() string {
	return "mqttcodec: " + e.Rule + ": " + e.Msg +
		" (reason 0x" + strconv.FormatUint(uint64(e.Reason), 16) + " " + e.Reason.String() + ")"
}

// Short rule names for checks the specifications do not number.
const (
	ruleRemainingLength = "remaining-length"    // the content does not fill the remaining length exactly
	ruleVarint          = "variable-byte-int"   // a variable byte integer longer than four bytes
	ruleTruncated       = "truncated"           // a field runs past the end of the packet
	rulePacketType      = "packet-type"         // a reserved packet type
	rulePacketTooLarge  = "maximum-packet-size" // larger than the receiver's maximum packet size
	ruleVersion         = "protocol-version"    // the session's protocol version is neither 4 nor 5
	rulePacketID        = "packet-id-nonzero"   // an acknowledgement with packet identifier 0
	ruleReturnCode      = "return-code"         // a 3.1.1 return code the specification reserves
	ruleConnackFlags    = "connack-flags"       // reserved CONNACK flag bits set (3.1.1)
	ruleAuthMethod      = "auth-method"         // an AUTH without Authentication Method (5.0 section 3.15.2.2.2)
)

func newError(rule string, rc ReasonCode, msg string) error {
	return &Error{Rule: rule, Reason: rc, Msg: msg}
}

func malformed(rule, msg string) error { return newError(rule, MalformedPacket, msg) }

func protocolErr(rule, msg string) error { return newError(rule, ProtocolError, msg) }

// tag picks the statement id of the protocol version in use.
func tag(version byte, v311, v5 string) string {
	if version == V5 {
		return v5
	}
	return v311
}
