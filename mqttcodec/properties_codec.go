package mqttcodec

import (
	"encoding/binary"
	"math/bits"
	"strconv"
)

// propKind is the data type of a property's value.
type propKind uint8

const (
	kindByte propKind = iota + 1
	kindUint16
	kindUint32
	kindVarint
	kindString // UTF-8 Encoded String
	kindBinary // Binary Data
	kindPair   // UTF-8 String Pair
)

// willProps stands for the Will Properties of a CONNECT in the masks of
// where a property is allowed (packet type 0 is reserved, so its bit is free).
const willProps Type = 0

// listProps are the properties that may repeat and live in slices.
const listProps = 1<<PropSubscriptionID | 1<<PropUserProperty

// propSpec returns the data type of property id and the set of packet types
// (bit 1<<Type, bit 0 for the Will) it may appear in; kind 0 for an unknown id.
func propSpec(id PropID) (kind propKind, allowed uint32) {
	const (
		will       = 1 << willProps
		connect    = 1 << CONNECT
		connack    = 1 << CONNACK
		publish    = 1 << PUBLISH
		acks       = 1<<PUBACK | 1<<PUBREC | 1<<PUBREL | 1<<PUBCOMP
		subscribe  = 1 << SUBSCRIBE
		suback     = 1 << SUBACK
		unsuback   = 1 << UNSUBACK
		disconnect = 1 << DISCONNECT
		auth       = 1 << AUTH
		all        = will | connect | connack | publish | acks | subscribe | suback |
			1<<UNSUBSCRIBE | unsuback | disconnect | auth
	)
	switch id {
	case PropPayloadFormat:
		return kindByte, publish | will
	case PropMessageExpiry:
		return kindUint32, publish | will
	case PropContentType, PropResponseTopic:
		return kindString, publish | will
	case PropCorrelationData:
		return kindBinary, publish | will
	case PropSubscriptionID:
		return kindVarint, publish | subscribe
	case PropSessionExpiry:
		return kindUint32, connect | connack | disconnect
	case PropAssignedClientID, PropResponseInfo:
		return kindString, connack
	case PropServerKeepAlive:
		return kindUint16, connack
	case PropAuthMethod:
		return kindString, connect | connack | auth
	case PropAuthData:
		return kindBinary, connect | connack | auth
	case PropRequestProblemInfo, PropRequestResponseInfo:
		return kindByte, connect
	case PropWillDelay:
		return kindUint32, will
	case PropServerReference:
		return kindString, connack | disconnect
	case PropReasonString:
		return kindString, connack | acks | suback | unsuback | disconnect | auth
	case PropReceiveMaximum, PropTopicAliasMaximum:
		return kindUint16, connect | connack
	case PropTopicAlias:
		return kindUint16, publish
	case PropMaximumQoS, PropRetainAvailable, PropWildcardSubAvailable, PropSubIDAvailable,
		PropSharedSubAvailable:
		return kindByte, connack
	case PropUserProperty:
		return kindPair, all
	case PropMaximumPacketSize:
		return kindUint32, connect | connack
	}
	return 0, 0
}

// scalar returns the value of a byte, integer or variable byte integer property.
func (p *Properties) scalar(id PropID) uint32 {
	switch id {
	case PropPayloadFormat:
		return uint32(p.PayloadFormat)
	case PropMessageExpiry:
		return p.MessageExpiry
	case PropSessionExpiry:
		return p.SessionExpiry
	case PropServerKeepAlive:
		return uint32(p.ServerKeepAlive)
	case PropRequestProblemInfo:
		return uint32(p.RequestProblemInfo)
	case PropWillDelay:
		return p.WillDelay
	case PropRequestResponseInfo:
		return uint32(p.RequestResponseInfo)
	case PropReceiveMaximum:
		return uint32(p.ReceiveMaximum)
	case PropTopicAliasMaximum:
		return uint32(p.TopicAliasMaximum)
	case PropTopicAlias:
		return uint32(p.TopicAlias)
	case PropMaximumQoS:
		return uint32(p.MaximumQoS)
	case PropRetainAvailable:
		return uint32(p.RetainAvailable)
	case PropMaximumPacketSize:
		return p.MaximumPacketSize
	case PropWildcardSubAvailable:
		return uint32(p.WildcardSubAvailable)
	case PropSubIDAvailable:
		return uint32(p.SubIDAvailable)
	case PropSharedSubAvailable:
		return uint32(p.SharedSubAvailable)
	}
	return 0
}

// setScalar stores a value read for a byte, integer or variable byte integer
// property; the caller has checked that it fits.
func (p *Properties) setScalar(id PropID, v uint32) {
	switch id {
	case PropPayloadFormat:
		p.PayloadFormat = byte(v)
	case PropMessageExpiry:
		p.MessageExpiry = v
	case PropSubscriptionID:
		p.SubscriptionIDs = append(p.SubscriptionIDs, v)
	case PropSessionExpiry:
		p.SessionExpiry = v
	case PropServerKeepAlive:
		p.ServerKeepAlive = uint16(v)
	case PropRequestProblemInfo:
		p.RequestProblemInfo = byte(v)
	case PropWillDelay:
		p.WillDelay = v
	case PropRequestResponseInfo:
		p.RequestResponseInfo = byte(v)
	case PropReceiveMaximum:
		p.ReceiveMaximum = uint16(v)
	case PropTopicAliasMaximum:
		p.TopicAliasMaximum = uint16(v)
	case PropTopicAlias:
		p.TopicAlias = uint16(v)
	case PropMaximumQoS:
		p.MaximumQoS = byte(v)
	case PropRetainAvailable:
		p.RetainAvailable = byte(v)
	case PropMaximumPacketSize:
		p.MaximumPacketSize = v
	case PropWildcardSubAvailable:
		p.WildcardSubAvailable = byte(v)
	case PropSubIDAvailable:
		p.SubIDAvailable = byte(v)
	case PropSharedSubAvailable:
		p.SharedSubAvailable = byte(v)
	}
}

// field returns a pointer to the field of a string or binary property.
func (p *Properties) field(id PropID) *[]byte {
	switch id {
	case PropContentType:
		return &p.ContentType
	case PropResponseTopic:
		return &p.ResponseTopic
	case PropCorrelationData:
		return &p.CorrelationData
	case PropAssignedClientID:
		return &p.AssignedClientID
	case PropAuthMethod:
		return &p.AuthMethod
	case PropAuthData:
		return &p.AuthData
	case PropResponseInfo:
		return &p.ResponseInfo
	case PropServerReference:
		return &p.ServerReference
	case PropReasonString:
		return &p.ReasonString
	}
	return nil
}

// Short rule names for property checks the specifications do not number.
const (
	rulePropAllowed  = "property-allowed"  // [2.2.2.2] unknown or not valid for the packet type: Malformed Packet
	rulePropRepeated = "property-repeated" // included more than once: Protocol Error
	rulePropValue    = "property-value"    // a value outside its range: Protocol Error
)

func contextName(t Type) string {
	if t == willProps {
		return "Will Properties"
	}
	return t.String()
}

// decodeProps reads a property length and the properties that follow into
// p, which the caller has reset. t is the packet type, or willProps.
func decodeProps(c *cursor, t Type, p *Properties) error {
	var n uint32
	if err := c.readVarint(&n); err != nil {
		return err
	}
	var block []byte
	if !c.readBytes(int(n), &block) {
		return errTruncated("property length")
	}
	pc := cursor{b: block, version: c.version}
	for !pc.empty() {
		var b byte
		pc.readByte(&b)
		id := PropID(b)
		kind, allowed := propSpec(id)
		if kind == 0 || allowed&(1<<t) == 0 {
			return malformed(rulePropAllowed,
				"property 0x"+strconv.FormatUint(uint64(b), 16)+" ("+id.String()+") is not valid in "+contextName(t))
		}
		if p.Has(id) && id != PropUserProperty && (id != PropSubscriptionID || t != PUBLISH) {
			return protocolErr(rulePropRepeated, id.String()+" appears more than once in "+contextName(t))
		}
		if err := decodeProp(&pc, id, kind, p); err != nil {
			return err
		}
		p.set(id)
	}
	if p.Has(PropAuthData) && !p.Has(PropAuthMethod) {
		return protocolErr(rulePropValue, "Authentication Data without Authentication Method")
	}
	return nil
}

// decodeProp reads the value of one property and checks its range.
func decodeProp(c *cursor, id PropID, kind propKind, p *Properties) error {
	var v uint32
	switch kind {
	case kindByte:
		var b byte
		if !c.readByte(&b) {
			return errTruncated(id.String())
		}
		v = uint32(b)
	case kindUint16:
		var u uint16
		if !c.readUint16(&u) {
			return errTruncated(id.String())
		}
		v = uint32(u)
	case kindUint32:
		if !c.readUint32(&v) {
			return errTruncated(id.String())
		}
	case kindVarint:
		if err := c.readVarint(&v); err != nil {
			return err
		}
	case kindString:
		f := p.field(id)
		if err := c.readString(f, id.String()); err != nil {
			return err
		}
		if id == PropResponseTopic {
			if e := validTopicName(*f, c.version); e != nil {
				if e.Rule == "MQTT-3.3.2-2" {
					e.Rule = "MQTT-3.3.2-14" // [MQTT-3.3.2-14] no wildcards in a Response Topic
				}
				e.Msg = "Response Topic: " + e.Msg
				return e
			}
		}
		return nil
	case kindBinary:
		if !c.readBinary(p.field(id)) {
			return errTruncated(id.String())
		}
		return nil
	case kindPair:
		var u UserProperty
		if err := c.readString(&u.Key, "User Property name"); err != nil {
			return err
		}
		if err := c.readString(&u.Value, "User Property value"); err != nil {
			return err
		}
		p.UserProperties = append(p.UserProperties, u)
		return nil
	}
	switch id {
	case PropPayloadFormat, PropRequestProblemInfo, PropRequestResponseInfo, PropMaximumQoS,
		PropRetainAvailable, PropWildcardSubAvailable, PropSubIDAvailable, PropSharedSubAvailable:
		if v > 1 {
			return protocolErr(rulePropValue, id.String()+" is "+strconv.Itoa(int(v))+", not 0 or 1")
		}
	case PropTopicAlias:
		if v == 0 { // [MQTT-3.3.2-8]
			return newError("MQTT-3.3.2-8", TopicAliasInvalid, "Topic Alias is 0")
		}
	case PropReceiveMaximum, PropMaximumPacketSize, PropSubscriptionID:
		if v == 0 {
			return protocolErr(rulePropValue, id.String()+" is 0")
		}
	}
	p.setScalar(id, v)
	return nil
}

// propsMask is the set of properties an encoder writes: the present scalars
// plus the non-empty lists.
func propsMask(p *Properties) uint64 {
	m := p.Present &^ listProps
	if len(p.SubscriptionIDs) > 0 {
		m |= 1 << PropSubscriptionID
	}
	if len(p.UserProperties) > 0 {
		m |= 1 << PropUserProperty
	}
	return m
}

// propsSize is the encoded size of p's properties, without the property length.
func propsSize(p *Properties) int {
	m := propsMask(p)
	if m == 0 {
		return 0
	}
	n := 0
	for ; m != 0; m &= m - 1 {
		id := PropID(bits.TrailingZeros64(m))
		kind, _ := propSpec(id)
		switch kind {
		case kindByte:
			n += 2
		case kindUint16:
			n += 3
		case kindUint32:
			n += 5
		case kindVarint:
			for _, v := range p.SubscriptionIDs {
				n += 1 + varintLen(int(v))
			}
		case kindString, kindBinary:
			n += 3 + len(*p.field(id))
		case kindPair:
			for _, u := range p.UserProperties {
				n += 5 + len(u.Key) + len(u.Value)
			}
		}
	}
	return n
}

// appendProps writes the property length size (from propsSize) and p's
// properties in identifier order.
func appendProps(dst []byte, p *Properties, size int) []byte {
	dst = appendVarint(dst, size)
	for m := propsMask(p); m != 0; m &= m - 1 {
		id := PropID(bits.TrailingZeros64(m))
		kind, _ := propSpec(id)
		switch kind {
		case kindByte:
			dst = append(dst, byte(id), byte(p.scalar(id)))
		case kindUint16:
			dst = binary.BigEndian.AppendUint16(append(dst, byte(id)), uint16(p.scalar(id)))
		case kindUint32:
			dst = binary.BigEndian.AppendUint32(append(dst, byte(id)), p.scalar(id))
		case kindVarint:
			for _, v := range p.SubscriptionIDs {
				dst = appendVarint(append(dst, byte(id)), int(v))
			}
		case kindString, kindBinary:
			dst = appendBinary(append(dst, byte(id)), *p.field(id))
		case kindPair:
			for _, u := range p.UserProperties {
				dst = appendBinary(appendBinary(append(dst, byte(id)), u.Key), u.Value)
			}
		}
	}
	return dst
}
