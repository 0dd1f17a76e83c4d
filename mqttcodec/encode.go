package mqttcodec

import "encoding/binary"

// The encoders append one packet to dst and return the extended slice. They
// allocate nothing when dst has the capacity, write what they are given
// without validating it (two-bit fields such as QoS are masked to two bits;
// a string longer than 65,535 bytes gets a wrong length prefix), and treat
// every version other than V5 as V311.

// Append encodes p by its Type (the matching field of p). A CONNECT is
// encoded by its own ProtocolVersion. An unknown Type leaves dst unchanged.
func Append(dst []byte, version byte, p *Packet) []byte {
	switch p.Type {
	case CONNECT:
		return AppendConnect(dst, &p.Connect)
	case CONNACK:
		return AppendConnack(dst, version, &p.Connack)
	case PUBLISH:
		return AppendPublish(dst, version, &p.Publish)
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		return AppendAck(dst, version, p.Type, &p.Ack)
	case SUBSCRIBE:
		return AppendSubscribe(dst, version, &p.Subscribe)
	case SUBACK:
		return AppendSuback(dst, version, &p.Suback)
	case UNSUBSCRIBE:
		return AppendUnsubscribe(dst, version, &p.Unsubscribe)
	case UNSUBACK:
		return AppendUnsuback(dst, version, &p.Unsuback)
	case PINGREQ:
		return AppendPingreq(dst)
	case PINGRESP:
		return AppendPingresp(dst)
	case DISCONNECT:
		return AppendDisconnect(dst, version, &p.Disconnect)
	case AUTH:
		return AppendAuth(dst, &p.Auth)
	}
	return dst
}

// appendHeader writes the fixed header: type and flags, remaining length.
func appendHeader(dst []byte, t Type, flags byte, remaining int) []byte {
	return appendVarint(append(dst, byte(t)<<4|flags), remaining)
}

// propsField is the size of a property block with its length prefix.
func propsField(size int) int { return varintLen(size) + size }

// AppendConnect appends a CONNECT, encoded by c.ProtocolVersion. A payload
// field is written only when its flag (WillFlag, UsernameFlag, PasswordFlag)
// is set.
func AppendConnect(dst []byte, c *Connect) []byte {
	v5 := c.ProtocolVersion == V5
	name := c.ProtocolName
	nameLen := len(name)
	if nameLen == 0 {
		nameLen = len("MQTT")
	}
	rl := 2 + nameLen + 1 + 1 + 2 + 2 + len(c.ClientID)
	var props, will int
	if v5 {
		props = propsSize(&c.Properties)
		rl += propsField(props)
	}
	var flags byte
	if c.CleanStart {
		flags |= 0x02
	}
	if c.WillFlag {
		flags |= 0x04 | (c.WillQoS&3)<<3
		if c.WillRetain {
			flags |= 0x20
		}
		if v5 {
			will = propsSize(&c.WillProperties)
			rl += propsField(will)
		}
		rl += 2 + len(c.WillTopic) + 2 + len(c.WillPayload)
	}
	if c.PasswordFlag {
		flags |= 0x40
		rl += 2 + len(c.Password)
	}
	if c.UsernameFlag {
		flags |= 0x80
		rl += 2 + len(c.Username)
	}
	dst = appendHeader(dst, CONNECT, 0, rl)
	if len(name) == 0 {
		dst = appendBinary(dst, "MQTT")
	} else {
		dst = appendBinary(dst, name)
	}
	dst = append(dst, c.ProtocolVersion, flags)
	dst = binary.BigEndian.AppendUint16(dst, c.KeepAlive)
	if v5 {
		dst = appendProps(dst, &c.Properties, props)
	}
	dst = appendBinary(dst, c.ClientID)
	if c.WillFlag {
		if v5 {
			dst = appendProps(dst, &c.WillProperties, will)
		}
		dst = appendBinary(dst, c.WillTopic)
		dst = appendBinary(dst, c.WillPayload)
	}
	if c.UsernameFlag {
		dst = appendBinary(dst, c.Username)
	}
	if c.PasswordFlag {
		dst = appendBinary(dst, c.Password)
	}
	return dst
}

// AppendConnack appends a CONNACK. In 3.1.1 c.ReasonCode is the return code
// and the properties are not written.
func AppendConnack(dst []byte, version byte, c *Connack) []byte {
	var flags byte
	if c.SessionPresent {
		flags = 0x01
	}
	if version != V5 {
		return append(dst, byte(CONNACK)<<4, 2, flags, byte(c.ReasonCode))
	}
	props := propsSize(&c.Properties)
	dst = appendHeader(dst, CONNACK, 0, 2+propsField(props))
	dst = append(dst, flags, byte(c.ReasonCode))
	return appendProps(dst, &c.Properties, props)
}

// AppendPublish appends a PUBLISH. The packet identifier is written only for
// QoS 1 and 2.
func AppendPublish(dst []byte, version byte, p *Publish) []byte {
	flags := (p.QoS & 3) << 1
	if p.Dup {
		flags |= 0x08
	}
	if p.Retain {
		flags |= 0x01
	}
	rl := 2 + len(p.Topic) + len(p.Payload)
	if p.QoS > 0 {
		rl += 2
	}
	props := 0
	if version == V5 {
		props = propsSize(&p.Properties)
		rl += propsField(props)
	}
	dst = appendHeader(dst, PUBLISH, flags, rl)
	dst = appendBinary(dst, p.Topic)
	if p.QoS > 0 {
		dst = binary.BigEndian.AppendUint16(dst, p.PacketID)
	}
	if version == V5 {
		dst = appendProps(dst, &p.Properties, props)
	}
	return append(dst, p.Payload...)
}

// AppendAck appends a PUBACK, PUBREC, PUBREL or PUBCOMP (t). In MQTT 5 it
// uses the short forms: no reason code and properties when the code is
// Success and there are none, no property length when there are none.
func AppendAck(dst []byte, version byte, t Type, a *Ack) []byte {
	var flags byte
	if t == PUBREL {
		flags = 0x02
	}
	if version != V5 {
		dst = append(dst, byte(t)<<4|flags, 2)
		return binary.BigEndian.AppendUint16(dst, a.PacketID)
	}
	props := propsSize(&a.Properties)
	rl := 2
	switch {
	case props > 0:
		rl += 1 + propsField(props)
	case a.ReasonCode != Success:
		rl++
	}
	dst = appendHeader(dst, t, flags, rl)
	dst = binary.BigEndian.AppendUint16(dst, a.PacketID)
	switch {
	case props > 0:
		dst = appendProps(append(dst, byte(a.ReasonCode)), &a.Properties, props)
	case a.ReasonCode != Success:
		dst = append(dst, byte(a.ReasonCode))
	}
	return dst
}

// AppendSubscribe appends a SUBSCRIBE. In 3.1.1 only each subscription's
// QoS is written in its options byte.
func AppendSubscribe(dst []byte, version byte, s *Subscribe) []byte {
	rl := 2
	props := 0
	if version == V5 {
		props = propsSize(&s.Properties)
		rl += propsField(props)
	}
	for i := range s.Subscriptions {
		rl += 2 + len(s.Subscriptions[i].Filter) + 1
	}
	dst = appendHeader(dst, SUBSCRIBE, 0x02, rl)
	dst = binary.BigEndian.AppendUint16(dst, s.PacketID)
	if version == V5 {
		dst = appendProps(dst, &s.Properties, props)
	}
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		opts := sub.QoS & 3
		if version == V5 {
			if sub.NoLocal {
				opts |= 0x04
			}
			if sub.RetainAsPublished {
				opts |= 0x08
			}
			opts |= (sub.RetainHandling & 3) << 4
		}
		dst = append(appendBinary(dst, sub.Filter), opts)
	}
	return dst
}

// AppendSuback appends a SUBACK.
func AppendSuback(dst []byte, version byte, s *Suback) []byte {
	rl := 2 + len(s.ReasonCodes)
	props := 0
	if version == V5 {
		props = propsSize(&s.Properties)
		rl += propsField(props)
	}
	dst = appendHeader(dst, SUBACK, 0, rl)
	dst = binary.BigEndian.AppendUint16(dst, s.PacketID)
	if version == V5 {
		dst = appendProps(dst, &s.Properties, props)
	}
	for _, rc := range s.ReasonCodes {
		dst = append(dst, byte(rc))
	}
	return dst
}

// AppendUnsubscribe appends an UNSUBSCRIBE.
func AppendUnsubscribe(dst []byte, version byte, u *Unsubscribe) []byte {
	rl := 2
	props := 0
	if version == V5 {
		props = propsSize(&u.Properties)
		rl += propsField(props)
	}
	for _, f := range u.Filters {
		rl += 2 + len(f)
	}
	dst = appendHeader(dst, UNSUBSCRIBE, 0x02, rl)
	dst = binary.BigEndian.AppendUint16(dst, u.PacketID)
	if version == V5 {
		dst = appendProps(dst, &u.Properties, props)
	}
	for _, f := range u.Filters {
		dst = appendBinary(dst, f)
	}
	return dst
}

// AppendUnsuback appends an UNSUBACK; in 3.1.1 only its packet identifier.
func AppendUnsuback(dst []byte, version byte, u *Unsuback) []byte {
	if version != V5 {
		dst = append(dst, byte(UNSUBACK)<<4, 2)
		return binary.BigEndian.AppendUint16(dst, u.PacketID)
	}
	props := propsSize(&u.Properties)
	dst = appendHeader(dst, UNSUBACK, 0, 2+propsField(props)+len(u.ReasonCodes))
	dst = binary.BigEndian.AppendUint16(dst, u.PacketID)
	dst = appendProps(dst, &u.Properties, props)
	for _, rc := range u.ReasonCodes {
		dst = append(dst, byte(rc))
	}
	return dst
}

// AppendPingreq appends a PINGREQ.
func AppendPingreq(dst []byte) []byte { return append(dst, byte(PINGREQ)<<4, 0) }

// AppendPingresp appends a PINGRESP.
func AppendPingresp(dst []byte) []byte { return append(dst, byte(PINGRESP)<<4, 0) }

// AppendDisconnect appends a DISCONNECT: in 3.1.1 the two-byte form; in
// MQTT 5 the reason code always (the specification lets a Normal
// disconnection without properties be empty, but paho.golang v0.23.0 and
// other clients fail to read that form), then the properties when there are
// any.
func AppendDisconnect(dst []byte, version byte, d *Disconnect) []byte {
	if version != V5 {
		return append(dst, byte(DISCONNECT)<<4, 0)
	}
	props := propsSize(&d.Properties)
	if props == 0 {
		return append(dst, byte(DISCONNECT)<<4, 1, byte(d.ReasonCode))
	}
	dst = appendHeader(dst, DISCONNECT, 0, 1+propsField(props))
	return appendProps(append(dst, byte(d.ReasonCode)), &d.Properties, props)
}

// AppendAuth appends an MQTT 5 AUTH, always with its reason code and
// properties: every AUTH carries an Authentication Method.
func AppendAuth(dst []byte, a *Auth) []byte {
	props := propsSize(&a.Properties)
	dst = appendHeader(dst, AUTH, 0, 1+propsField(props))
	return appendProps(append(dst, byte(a.ReasonCode)), &a.Properties, props)
}
