package mqttcodec

import "strconv"

// Protocol levels carried in CONNECT.
const (
	V311 byte = 4 // MQTT 3.1.1
	V5   byte = 5 // MQTT 5.0
)

// MaxRemainingLength is the largest remaining length a fixed header can carry
// (four bytes of variable byte integer).
const MaxRemainingLength = 268_435_455

// MaxPacketSize is the largest whole packet: a one-byte type, four bytes of
// remaining length and MaxRemainingLength bytes.
const MaxPacketSize = 1 + 4 + MaxRemainingLength

// Type is an MQTT control packet type (the high nibble of the first byte).
type Type byte

// Control packet types. AUTH exists only in MQTT 5.
const (
	CONNECT     Type = 1
	CONNACK     Type = 2
	PUBLISH     Type = 3
	PUBACK      Type = 4
	PUBREC      Type = 5
	PUBREL      Type = 6
	PUBCOMP     Type = 7
	SUBSCRIBE   Type = 8
	SUBACK      Type = 9
	UNSUBSCRIBE Type = 10
	UNSUBACK    Type = 11
	PINGREQ     Type = 12
	PINGRESP    Type = 13
	DISCONNECT  Type = 14
	AUTH        Type = 15
)

// String returns the packet type's name, e.g. "PUBLISH".
func (t Type) String() string {
	switch t {
	case CONNECT:
		return "CONNECT"
	case CONNACK:
		return "CONNACK"
	case PUBLISH:
		return "PUBLISH"
	case PUBACK:
		return "PUBACK"
	case PUBREC:
		return "PUBREC"
	case PUBREL:
		return "PUBREL"
	case PUBCOMP:
		return "PUBCOMP"
	case SUBSCRIBE:
		return "SUBSCRIBE"
	case SUBACK:
		return "SUBACK"
	case UNSUBSCRIBE:
		return "UNSUBSCRIBE"
	case UNSUBACK:
		return "UNSUBACK"
	case PINGREQ:
		return "PINGREQ"
	case PINGRESP:
		return "PINGRESP"
	case DISCONNECT:
		return "DISCONNECT"
	case AUTH:
		return "AUTH"
	}
	return "Type(" + strconv.Itoa(int(t)) + ")"
}

// Connect is a CONNECT packet. ProtocolVersion is the level on the wire (V311
// or V5); Properties and WillProperties are MQTT 5 only. The flags say which of
// the optional payload fields are present; encoders write a field only when
// its flag is set.
type Connect struct {
	ProtocolName    []byte // "MQTT"; encoders write "MQTT" when empty
	ProtocolVersion byte
	CleanStart      bool // Clean Session in 3.1.1
	KeepAlive       uint16
	Properties      Properties

	ClientID []byte

	UsernameFlag bool
	Username     []byte
	PasswordFlag bool
	Password     []byte

	WillFlag       bool
	WillQoS        byte
	WillRetain     bool
	WillProperties Properties
	WillTopic      []byte
	WillPayload    []byte
}

// Connack is a CONNACK packet. In 3.1.1 ReasonCode holds the return code
// (Accepted .. RefusedNotAuthorized) and Properties is unused.
type Connack struct {
	SessionPresent bool
	ReasonCode     ReasonCode
	Properties     Properties
}

// Publish is a PUBLISH packet. PacketID is present on the wire only when
// QoS > 0. Properties are MQTT 5 only.
type Publish struct {
	Dup        bool
	QoS        byte
	Retain     bool
	Topic      []byte
	PacketID   uint16
	Properties Properties
	Payload    []byte
}

// Ack is a PUBACK, PUBREC, PUBREL or PUBCOMP packet; the type is the Packet's
// (or the encoder's argument). ReasonCode and Properties are MQTT 5 only.
type Ack struct {
	PacketID   uint16
	ReasonCode ReasonCode
	Properties Properties
}

// Subscription is one topic filter of a SUBSCRIBE with its options. NoLocal,
// RetainAsPublished and RetainHandling are MQTT 5 only.
type Subscription struct {
	Filter            []byte
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
}

// Subscribe is a SUBSCRIBE packet.
type Subscribe struct {
	PacketID      uint16
	Properties    Properties
	Subscriptions []Subscription
}

// Suback is a SUBACK packet. The 3.1.1 return codes 0, 1, 2 and 0x80 are the
// ReasonCode values GrantedQoS0/1/2 and UnspecifiedError.
type Suback struct {
	PacketID    uint16
	Properties  Properties
	ReasonCodes []ReasonCode
}

// Unsubscribe is an UNSUBSCRIBE packet.
type Unsubscribe struct {
	PacketID   uint16
	Properties Properties
	Filters    [][]byte
}

// Unsuback is an UNSUBACK packet. In 3.1.1 it has no payload: ReasonCodes
// and Properties are unused.
type Unsuback struct {
	PacketID    uint16
	Properties  Properties
	ReasonCodes []ReasonCode
}

// Disconnect is a DISCONNECT packet. In 3.1.1 it has no content.
type Disconnect struct {
	ReasonCode ReasonCode
	Properties Properties
}

// Auth is an MQTT 5 AUTH packet.
type Auth struct {
	ReasonCode ReasonCode
	Properties Properties
}

// Packet is a reusable union of all control packets. Decode sets Type and
// Flags (the low nibble of the first byte) and fills the one field that
// matches Type, reusing the capacity of its slices; the other fields keep
// whatever they held. PINGREQ and PINGRESP have no field.
type Packet struct {
	Type  Type
	Flags byte

	Connect     Connect
	Connack     Connack
	Publish     Publish
	Ack         Ack // PUBACK, PUBREC, PUBREL, PUBCOMP
	Subscribe   Subscribe
	Suback      Suback
	Unsubscribe Unsubscribe
	Unsuback    Unsuback
	Disconnect  Disconnect
	Auth        Auth
}
