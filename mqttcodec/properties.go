package mqttcodec

import "strconv"

// PropID is an MQTT 5 property identifier.
type PropID byte

// MQTT 5 property identifiers (specification section 2.2.2.2).
const (
	PropPayloadFormat        PropID = 0x01 // byte, PUBLISH and Will
	PropMessageExpiry        PropID = 0x02 // four-byte integer, PUBLISH and Will
	PropContentType          PropID = 0x03 // UTF-8 string, PUBLISH and Will
	PropResponseTopic        PropID = 0x08 // UTF-8 string, PUBLISH and Will
	PropCorrelationData      PropID = 0x09 // binary data, PUBLISH and Will
	PropSubscriptionID       PropID = 0x0B // variable byte integer, PUBLISH and SUBSCRIBE
	PropSessionExpiry        PropID = 0x11 // four-byte integer, CONNECT, CONNACK, DISCONNECT
	PropAssignedClientID     PropID = 0x12 // UTF-8 string, CONNACK
	PropServerKeepAlive      PropID = 0x13 // two-byte integer, CONNACK
	PropAuthMethod           PropID = 0x15 // UTF-8 string, CONNECT, CONNACK, AUTH
	PropAuthData             PropID = 0x16 // binary data, CONNECT, CONNACK, AUTH
	PropRequestProblemInfo   PropID = 0x17 // byte, CONNECT
	PropWillDelay            PropID = 0x18 // four-byte integer, Will
	PropRequestResponseInfo  PropID = 0x19 // byte, CONNECT
	PropResponseInfo         PropID = 0x1A // UTF-8 string, CONNACK
	PropServerReference      PropID = 0x1C // UTF-8 string, CONNACK, DISCONNECT
	PropReasonString         PropID = 0x1F // UTF-8 string, acknowledgements, DISCONNECT, AUTH
	PropReceiveMaximum       PropID = 0x21 // two-byte integer, CONNECT, CONNACK
	PropTopicAliasMaximum    PropID = 0x22 // two-byte integer, CONNECT, CONNACK
	PropTopicAlias           PropID = 0x23 // two-byte integer, PUBLISH
	PropMaximumQoS           PropID = 0x24 // byte, CONNACK
	PropRetainAvailable      PropID = 0x25 // byte, CONNACK
	PropUserProperty         PropID = 0x26 // UTF-8 string pair, every packet with properties
	PropMaximumPacketSize    PropID = 0x27 // four-byte integer, CONNECT, CONNACK
	PropWildcardSubAvailable PropID = 0x28 // byte, CONNACK
	PropSubIDAvailable       PropID = 0x29 // byte, CONNACK
	PropSharedSubAvailable   PropID = 0x2A // byte, CONNACK
)

// String returns the property's name as the specification writes it.
func (id PropID) String() string {
	switch id {
	case PropPayloadFormat:
		return "Payload Format Indicator"
	case PropMessageExpiry:
		return "Message Expiry Interval"
	case PropContentType:
		return "Content Type"
	case PropResponseTopic:
		return "Response Topic"
	case PropCorrelationData:
		return "Correlation Data"
	case PropSubscriptionID:
		return "Subscription Identifier"
	case PropSessionExpiry:
		return "Session Expiry Interval"
	case PropAssignedClientID:
		return "Assigned Client Identifier"
	case PropServerKeepAlive:
		return "Server Keep Alive"
	case PropAuthMethod:
		return "Authentication Method"
	case PropAuthData:
		return "Authentication Data"
	case PropRequestProblemInfo:
		return "Request Problem Information"
	case PropWillDelay:
		return "Will Delay Interval"
	case PropRequestResponseInfo:
		return "Request Response Information"
	case PropResponseInfo:
		return "Response Information"
	case PropServerReference:
		return "Server Reference"
	case PropReasonString:
		return "Reason String"
	case PropReceiveMaximum:
		return "Receive Maximum"
	case PropTopicAliasMaximum:
		return "Topic Alias Maximum"
	case PropTopicAlias:
		return "Topic Alias"
	case PropMaximumQoS:
		return "Maximum QoS"
	case PropRetainAvailable:
		return "Retain Available"
	case PropUserProperty:
		return "User Property"
	case PropMaximumPacketSize:
		return "Maximum Packet Size"
	case PropWildcardSubAvailable:
		return "Wildcard Subscription Available"
	case PropSubIDAvailable:
		return "Subscription Identifier Available"
	case PropSharedSubAvailable:
		return "Shared Subscription Available"
	}
	return "PropID(0x" + strconv.FormatUint(uint64(id), 16) + ")"
}

// UserProperty is one User Property: a UTF-8 string pair. Names may repeat.
type UserProperty struct{ Key, Value []byte }

// Properties holds the MQTT 5 properties of a packet (or of a Will). A
// scalar property counts only when its bit (1<<id) is set in Present: the
// setters set it, decoders set it for what they read, and encoders write
// exactly the properties present. The two lists, SubscriptionIDs and
// UserProperties, are written whenever they are non-empty, in order.
// Byte-slice values from a decoder are views into the decoded buffer.
type Properties struct {
	Present uint64

	PayloadFormat   byte
	MessageExpiry   uint32
	ContentType     []byte
	ResponseTopic   []byte
	CorrelationData []byte
	SubscriptionIDs []uint32 // PUBLISH may carry several; SUBSCRIBE at most one

	SessionExpiry       uint32
	AssignedClientID    []byte
	ServerKeepAlive     uint16
	AuthMethod          []byte
	AuthData            []byte
	RequestProblemInfo  byte
	WillDelay           uint32
	RequestResponseInfo byte
	ResponseInfo        []byte
	ServerReference     []byte
	ReasonString        []byte

	ReceiveMaximum    uint16
	TopicAliasMaximum uint16
	TopicAlias        uint16
	MaximumQoS        byte
	RetainAvailable   byte

	UserProperties       []UserProperty
	MaximumPacketSize    uint32
	WildcardSubAvailable byte
	SubIDAvailable       byte
	SharedSubAvailable   byte
}

// Has reports whether property id is present.
func (p *Properties) Has(id PropID) bool { return id < 64 && p.Present&(1<<id) != 0 }

// Reset empties p, keeping the capacity of its two lists.
func (p *Properties) Reset() {
	subIDs, users := p.SubscriptionIDs[:0], p.UserProperties[:0]
	clear(users[:cap(users)]) // drop references to old buffers
	*p = Properties{SubscriptionIDs: subIDs, UserProperties: users}
}

// Clear removes property id (for the lists: every entry).
func (p *Properties) Clear(id PropID) {
	if id >= 64 {
		return
	}
	p.Present &^= 1 << id
	switch id {
	case PropSubscriptionID:
		p.SubscriptionIDs = p.SubscriptionIDs[:0]
	case PropUserProperty:
		p.UserProperties = p.UserProperties[:0]
	}
}

func (p *Properties) set(id PropID) { p.Present |= 1 << id }

// SetPayloadFormat sets the Payload Format Indicator (0 bytes, 1 UTF-8).
func (p *Properties) SetPayloadFormat(v byte) {
	p.PayloadFormat = v
	p.set(PropPayloadFormat)
}

// SetMessageExpiry sets the Message Expiry Interval in seconds.
func (p *Properties) SetMessageExpiry(v uint32) {
	p.MessageExpiry = v
	p.set(PropMessageExpiry)
}

// SetContentType sets the Content Type.
func (p *Properties) SetContentType(b []byte) {
	p.ContentType = b
	p.set(PropContentType)
}

// SetResponseTopic sets the Response Topic.
func (p *Properties) SetResponseTopic(b []byte) {
	p.ResponseTopic = b
	p.set(PropResponseTopic)
}

// SetCorrelationData sets the Correlation Data.
func (p *Properties) SetCorrelationData(b []byte) {
	p.CorrelationData = b
	p.set(PropCorrelationData)
}

// AddSubscriptionID appends a Subscription Identifier (1 .. 268,435,455).
func (p *Properties) AddSubscriptionID(v uint32) {
	p.SubscriptionIDs = append(p.SubscriptionIDs, v)
	p.set(PropSubscriptionID)
}

// SetSessionExpiry sets the Session Expiry Interval in seconds.
func (p *Properties) SetSessionExpiry(v uint32) {
	p.SessionExpiry = v
	p.set(PropSessionExpiry)
}

// SetAssignedClientID sets the Assigned Client Identifier.
func (p *Properties) SetAssignedClientID(b []byte) {
	p.AssignedClientID = b
	p.set(PropAssignedClientID)
}

// SetServerKeepAlive sets the Server Keep Alive in seconds.
func (p *Properties) SetServerKeepAlive(v uint16) {
	p.ServerKeepAlive = v
	p.set(PropServerKeepAlive)
}

// SetAuthMethod sets the Authentication Method.
func (p *Properties) SetAuthMethod(b []byte) {
	p.AuthMethod = b
	p.set(PropAuthMethod)
}

// SetAuthData sets the Authentication Data.
func (p *Properties) SetAuthData(b []byte) {
	p.AuthData = b
	p.set(PropAuthData)
}

// SetRequestProblemInfo sets Request Problem Information (0 or 1).
func (p *Properties) SetRequestProblemInfo(v byte) {
	p.RequestProblemInfo = v
	p.set(PropRequestProblemInfo)
}

// SetWillDelay sets the Will Delay Interval in seconds.
func (p *Properties) SetWillDelay(v uint32) {
	p.WillDelay = v
	p.set(PropWillDelay)
}

// SetRequestResponseInfo sets Request Response Information (0 or 1).
func (p *Properties) SetRequestResponseInfo(v byte) {
	p.RequestResponseInfo = v
	p.set(PropRequestResponseInfo)
}

// SetResponseInfo sets the Response Information.
func (p *Properties) SetResponseInfo(b []byte) {
	p.ResponseInfo = b
	p.set(PropResponseInfo)
}

// SetServerReference sets the Server Reference.
func (p *Properties) SetServerReference(b []byte) {
	p.ServerReference = b
	p.set(PropServerReference)
}

// SetReasonString sets the Reason String.
func (p *Properties) SetReasonString(b []byte) {
	p.ReasonString = b
	p.set(PropReasonString)
}

// SetReceiveMaximum sets the Receive Maximum (1 .. 65,535).
func (p *Properties) SetReceiveMaximum(v uint16) {
	p.ReceiveMaximum = v
	p.set(PropReceiveMaximum)
}

// SetTopicAliasMaximum sets the Topic Alias Maximum.
func (p *Properties) SetTopicAliasMaximum(v uint16) {
	p.TopicAliasMaximum = v
	p.set(PropTopicAliasMaximum)
}

// SetTopicAlias sets the Topic Alias (1 .. 65,535).
func (p *Properties) SetTopicAlias(v uint16) {
	p.TopicAlias = v
	p.set(PropTopicAlias)
}

// SetMaximumQoS sets the Maximum QoS (0 or 1).
func (p *Properties) SetMaximumQoS(v byte) {
	p.MaximumQoS = v
	p.set(PropMaximumQoS)
}

// SetRetainAvailable sets Retain Available (0 or 1).
func (p *Properties) SetRetainAvailable(v byte) {
	p.RetainAvailable = v
	p.set(PropRetainAvailable)
}

// AddUserProperty appends a User Property.
func (p *Properties) AddUserProperty(key, value []byte) {
	p.UserProperties = append(p.UserProperties, UserProperty{Key: key, Value: value})
	p.set(PropUserProperty)
}

// SetMaximumPacketSize sets the Maximum Packet Size in bytes (at least 1).
func (p *Properties) SetMaximumPacketSize(v uint32) {
	p.MaximumPacketSize = v
	p.set(PropMaximumPacketSize)
}

// SetWildcardSubAvailable sets Wildcard Subscription Available (0 or 1).
func (p *Properties) SetWildcardSubAvailable(v byte) {
	p.WildcardSubAvailable = v
	p.set(PropWildcardSubAvailable)
}

// SetSubIDAvailable sets Subscription Identifier Available (0 or 1).
func (p *Properties) SetSubIDAvailable(v byte) {
	p.SubIDAvailable = v
	p.set(PropSubIDAvailable)
}

// SetSharedSubAvailable sets Shared Subscription Available (0 or 1).
func (p *Properties) SetSharedSubAvailable(v byte) {
	p.SharedSubAvailable = v
	p.set(PropSharedSubAvailable)
}
