package mqttcodec

import "strconv"

func (k *Connect) reset() {
	props, will := k.Properties, k.WillProperties
	props.Reset()
	will.Reset()
	*k = Connect{Properties: props, WillProperties: will}
}

// decodeConnect decodes a CONNECT by the protocol level it carries.
func decodeConnect(c *cursor, k *Connect) error {
	k.reset()
	if !c.readBinary(&k.ProtocolName) {
		return errTruncated("protocol name")
	}
	if !c.readByte(&k.ProtocolVersion) {
		return errTruncated("protocol level")
	}
	if string(k.ProtocolName) != "MQTT" { // [MQTT-3.1.2-1]
		return newError("MQTT-3.1.2-1", UnsupportedProtocolVersion,
			"protocol name is "+strconv.Quote(string(k.ProtocolName))+", not \"MQTT\"")
	}
	v := k.ProtocolVersion
	if v != V311 && v != V5 { // [MQTT-3.1.2-2]
		return newError("MQTT-3.1.2-2", UnsupportedProtocolVersion,
			"protocol level "+strconv.Itoa(int(v))+" is neither 4 nor 5")
	}
	c.version = v
	var flags byte
	if !c.readByte(&flags) {
		return errTruncated("connect flags")
	}
	if flags&0x01 != 0 { // [MQTT-3.1.2-3]
		return malformed("MQTT-3.1.2-3", "the reserved connect flag is set")
	}
	k.CleanStart = flags&0x02 != 0
	k.WillFlag = flags&0x04 != 0
	k.WillQoS = flags >> 3 & 3
	k.WillRetain = flags&0x20 != 0
	k.PasswordFlag = flags&0x40 != 0
	k.UsernameFlag = flags&0x80 != 0
	switch {
	case !k.WillFlag && k.WillQoS != 0: // [MQTT-3.1.2-13] / [MQTT-3.1.2-11]
		return malformed(tag(v, "MQTT-3.1.2-13", "MQTT-3.1.2-11"), "Will QoS is set without the Will Flag")
	case !k.WillFlag && k.WillRetain: // [MQTT-3.1.2-15] / [MQTT-3.1.2-13]
		return malformed(tag(v, "MQTT-3.1.2-15", "MQTT-3.1.2-13"), "Will Retain is set without the Will Flag")
	case k.WillQoS == 3: // [MQTT-3.1.2-14] / [MQTT-3.1.2-12]
		return malformed(tag(v, "MQTT-3.1.2-14", "MQTT-3.1.2-12"), "Will QoS is 3")
	case v == V311 && k.PasswordFlag && !k.UsernameFlag: // [MQTT-3.1.2-22]
		return malformed("MQTT-3.1.2-22", "Password Flag is set without the User Name Flag")
	}
	if !c.readUint16(&k.KeepAlive) {
		return errTruncated("keep alive")
	}
	if v == V5 {
		if err := decodeProps(c, CONNECT, &k.Properties); err != nil {
			return err
		}
	}
	// [MQTT-3.1.3-1] payload order: Client Identifier, Will Properties, Will
	// Topic, Will Payload, User Name, Password.
	if err := c.readString(&k.ClientID, "client identifier"); err != nil { // [MQTT-3.1.3-4]
		return err
	}
	if v == V311 && len(k.ClientID) == 0 && !k.CleanStart { // [MQTT-3.1.3-8]
		return newError("MQTT-3.1.3-8", ClientIdentifierNotValid,
			"empty client identifier without Clean Session")
	}
	if k.WillFlag { // [MQTT-3.1.2-9]
		if v == V5 {
			if err := decodeProps(c, willProps, &k.WillProperties); err != nil {
				return err
			}
		}
		if !c.readBinary(&k.WillTopic) {
			return errTruncated("Will Topic")
		}
		if e := validTopicName(k.WillTopic, v); e != nil { // [MQTT-3.1.3-11] / 3.1.1 [MQTT-3.1.3-10]
			e.Msg = "Will Topic: " + e.Msg
			return e
		}
		if !c.readBinary(&k.WillPayload) {
			return errTruncated("Will Payload")
		}
	}
	if k.UsernameFlag { // [MQTT-3.1.2-17] / 3.1.1 [MQTT-3.1.2-19]
		if err := c.readString(&k.Username, "user name"); err != nil { // [MQTT-3.1.3-12] / 3.1.1 [MQTT-3.1.3-11]
			return err
		}
	}
	if k.PasswordFlag { // [MQTT-3.1.2-19] / 3.1.1 [MQTT-3.1.2-21]
		if !c.readBinary(&k.Password) {
			return errTruncated("password")
		}
	}
	return nil
}

func (k *Connack) reset() {
	props := k.Properties
	props.Reset()
	*k = Connack{Properties: props}
}

func decodeConnack(c *cursor, k *Connack) error {
	k.reset()
	var flags, rc byte
	if !c.readByte(&flags) || !c.readByte(&rc) {
		return errTruncated("CONNACK variable header")
	}
	if flags&0xFE != 0 { // [MQTT-3.2.2-1]
		return malformed(tag(c.version, ruleConnackFlags, "MQTT-3.2.2-1"), "reserved CONNACK flag bits are set")
	}
	k.SessionPresent = flags&0x01 != 0
	k.ReasonCode = ReasonCode(rc)
	if c.version != V5 {
		if rc > RefusedNotAuthorized {
			return malformed(ruleReturnCode, "CONNACK return code "+strconv.Itoa(int(rc))+" is reserved")
		}
		if k.SessionPresent && rc != Accepted { // [MQTT-3.2.2-4]
			return protocolErr("MQTT-3.2.2-4", "Session Present is set in a refusing CONNACK")
		}
		return nil
	}
	if !validReason(CONNACK, k.ReasonCode) { // [MQTT-3.2.2-8]
		return protocolErr("MQTT-3.2.2-8", k.ReasonCode.String()+" is not a CONNACK reason code")
	}
	if k.SessionPresent && k.ReasonCode.IsError() { // [MQTT-3.2.2-6]
		return protocolErr("MQTT-3.2.2-6", "Session Present is set in a refusing CONNACK")
	}
	return decodeProps(c, CONNACK, &k.Properties)
}
