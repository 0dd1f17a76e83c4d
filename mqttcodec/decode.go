package mqttcodec

import "strconv"

// PacketLen reports the total length (fixed header plus remaining length) of
// the packet at the front of b. total == 0 with a nil error means the fixed
// header itself is incomplete: at most 5 bytes are needed to learn the
// length. It refuses a remaining length encoded in more than four bytes or
// not in its shortest form (MalformedPacket), and a total over maxSize
// (0 means MaxPacketSize) with PacketTooLarge, before any more bytes are
// waited for. When len(b) < total, total-len(b) more bytes are needed.
func PacketLen(b []byte, maxSize uint32) (total int, err error) {
	total, _, err = packetLen(b, maxSize)
	return total, err
}

// packetLen is PacketLen that also returns the size of the fixed header.
func packetLen(b []byte, maxSize uint32) (total, hdr int, err error) {
	if len(b) < 2 {
		return 0, 0, nil
	}
	rl, n, err := decodeVarint(b[1:])
	if err != nil {
		return 0, 0, err
	}
	if n == 0 {
		return 0, 0, nil
	}
	total = 1 + n + int(rl)
	if maxSize != 0 && uint64(total) > uint64(maxSize) {
		return 0, 0, newError(rulePacketTooLarge, PacketTooLarge,
			"packet of "+strconv.Itoa(total)+" bytes is larger than the maximum of "+
				strconv.FormatUint(uint64(maxSize), 10))
	}
	return total, 1 + n, nil
}

// Decode decodes the packet at the front of b into p.
//
// version is the session's protocol level, V311 or V5. Before the CONNECT,
// pass 0: then only a CONNECT is accepted [MQTT-3.1.0-1]. A CONNECT is always
// decoded by the level it carries; one arriving on an established session is
// decoded too, and the session refuses it [MQTT-3.1.0-2]. maxSize caps the
// whole packet (0 means MaxPacketSize).
//
// n == 0 with a nil error means b does not hold a whole packet yet; nothing
// was copied or allocated, and PacketLen tells how many bytes are missing.
// Otherwise n bytes were used. Every []byte field of p is then a view into
// b[:n]: copy what must outlive b.
//
// A malformed packet gives an *Error naming the rule and the reason code.
// The first byte and the length are checked as soon as they arrive, before
// the rest of the packet is waited for. On an error p.Type is the type of the
// offending packet; for a CONNECT, p.Connect.ProtocolVersion holds the level
// read (0 if it was not reached), so a server knows which CONNACK to answer
// with. n is then the length of the packet when it is known. Decode never
// panics, whatever b holds.
func Decode(b []byte, version byte, maxSize uint32, p *Packet) (n int, err error) {
	if len(b) == 0 {
		return 0, nil
	}
	t, flags := Type(b[0]>>4), b[0]&0x0f
	if err := checkFirstByte(t, flags, version); err != nil {
		p.Type, p.Flags = t, flags
		if t == CONNECT {
			p.Connect.ProtocolVersion = 0
		}
		return 0, err
	}
	total, hdr, err := packetLen(b, maxSize)
	if err != nil {
		p.Type, p.Flags = t, flags
		return 0, err
	}
	if total == 0 || len(b) < total {
		return 0, nil
	}
	p.Type, p.Flags = t, flags
	c := cursor{b: b[hdr:total], version: version}
	switch t {
	case CONNECT:
		err = decodeConnect(&c, &p.Connect)
	case CONNACK:
		err = decodeConnack(&c, &p.Connack)
	case PUBLISH:
		err = decodePublish(&c, flags, &p.Publish)
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		err = decodeAck(&c, t, &p.Ack)
	case SUBSCRIBE:
		err = decodeSubscribe(&c, &p.Subscribe)
	case SUBACK:
		err = decodeSuback(&c, &p.Suback)
	case UNSUBSCRIBE:
		err = decodeUnsubscribe(&c, &p.Unsubscribe)
	case UNSUBACK:
		err = decodeUnsuback(&c, &p.Unsuback)
	case DISCONNECT:
		err = decodeDisconnect(&c, &p.Disconnect)
	case AUTH:
		err = decodeAuth(&c, &p.Auth)
	}
	// PINGREQ and PINGRESP have no content: anything is left over.
	if err == nil && !c.empty() {
		err = malformed(ruleRemainingLength,
			strconv.Itoa(len(c.b))+" bytes left over at the end of the "+t.String())
	}
	return total, err
}

// checkFirstByte checks the packet type and the fixed-header flags against
// the protocol version.
func checkFirstByte(t Type, flags byte, version byte) error {
	switch version {
	case 0:
		if t != CONNECT { // [MQTT-3.1.0-1]
			return protocolErr("MQTT-3.1.0-1", "the first packet is "+t.String()+", not CONNECT")
		}
	case V311:
		if t == AUTH {
			return malformed(rulePacketType, "packet type 15 (AUTH) does not exist in MQTT 3.1.1")
		}
	case V5:
	default:
		return newError(ruleVersion, UnsupportedProtocolVersion,
			"protocol version "+strconv.Itoa(int(version))+" is neither 4 nor 5")
	}
	switch t {
	case 0:
		return malformed(rulePacketType, "packet type 0 is reserved")
	case PUBLISH:
		qos := flags >> 1 & 3
		if qos == 3 { // [MQTT-3.3.1-4]
			return malformed("MQTT-3.3.1-4", "PUBLISH has QoS 3")
		}
		if qos == 0 && flags&0x08 != 0 { // [MQTT-3.3.1-2]
			return malformed("MQTT-3.3.1-2", "PUBLISH has DUP set with QoS 0")
		}
		return nil
	case PUBREL, SUBSCRIBE, UNSUBSCRIBE:
		if flags != 0x02 { // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
			rule := "MQTT-3.6.1-1"
			switch t {
			case SUBSCRIBE:
				rule = "MQTT-3.8.1-1"
			case UNSUBSCRIBE:
				rule = "MQTT-3.10.1-1"
			}
			return malformed(rule, t.String()+" fixed-header flags are "+flagBits(flags)+", not 0010")
		}
		return nil
	}
	if flags != 0 {
		rule := tag(version, "MQTT-2.2.2-1", "MQTT-2.1.3-1") // [MQTT-2.2.2-1] / [MQTT-2.1.3-1]
		switch {
		case t == DISCONNECT && version == V5:
			rule = "MQTT-3.14.1-1"
		case t == AUTH:
			rule = "MQTT-3.15.1-1"
		}
		return malformed(rule, t.String()+" fixed-header flags are "+flagBits(flags)+", not 0000")
	}
	return nil
}

func flagBits(f byte) string {
	s := strconv.FormatUint(uint64(f), 2)
	return "0000"[len(s):] + s
}

// checkPacketID refuses packet identifier 0 [MQTT-2.3.1-1] / [MQTT-2.2.1-3].
func checkPacketID(c *cursor, id uint16, t Type) error {
	if id != 0 {
		return nil
	}
	rule := rulePacketID
	if t == PUBLISH || t == SUBSCRIBE || t == UNSUBSCRIBE {
		rule = tag(c.version, "MQTT-2.3.1-1", "MQTT-2.2.1-3")
	}
	return protocolErr(rule, t.String()+" has packet identifier 0")
}

// readPacketID reads a two-byte packet identifier and refuses 0.
func readPacketID(c *cursor, t Type, id *uint16) error {
	if !c.readUint16(id) {
		return errTruncated("packet identifier")
	}
	return checkPacketID(c, *id, t)
}
