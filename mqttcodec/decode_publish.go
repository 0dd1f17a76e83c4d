package mqttcodec

func (k *Publish) reset() {
	props := k.Properties
	props.Reset()
	*k = Publish{Properties: props}
}

// decodePublish decodes a PUBLISH whose fixed-header flags checkFirstByte
// has accepted. The topic and payload are views; nothing is allocated.
func decodePublish(c *cursor, flags byte, k *Publish) error {
	k.reset()
	k.Dup = flags&0x08 != 0
	k.QoS = flags >> 1 & 3
	k.Retain = flags&0x01 != 0
	if !c.readBinary(&k.Topic) { // [MQTT-3.3.2-1]
		return errTruncated("topic name")
	}
	if k.QoS > 0 {
		if err := readPacketID(c, PUBLISH, &k.PacketID); err != nil {
			return err
		}
	}
	if c.version == V5 {
		if err := decodeProps(c, PUBLISH, &k.Properties); err != nil {
			return err
		}
	}
	if len(k.Topic) == 0 {
		// 5.0 section 3.3.2.1: an empty Topic Name stands for the Topic Alias's topic.
		if c.version != V5 || !k.Properties.Has(PropTopicAlias) { // [MQTT-4.7.3-1]
			return protocolErr("MQTT-4.7.3-1", "PUBLISH has an empty topic name and no Topic Alias")
		}
	} else if e := validTopicName(k.Topic, c.version); e != nil { // [MQTT-3.3.2-1] [MQTT-3.3.2-2]
		return e
	}
	k.Payload = c.rest()
	return nil
}

func (k *Ack) reset() {
	props := k.Properties
	props.Reset()
	*k = Ack{Properties: props}
}

// decodeAck decodes PUBACK, PUBREC, PUBREL and PUBCOMP. In MQTT 5 the reason
// code and the properties may be left out (then Success, none).
func decodeAck(c *cursor, t Type, k *Ack) error {
	k.reset()
	if err := readPacketID(c, t, &k.PacketID); err != nil {
		return err
	}
	if c.version != V5 || c.empty() {
		return nil
	}
	var rc byte
	c.readByte(&rc)
	k.ReasonCode = ReasonCode(rc)
	if !validReason(t, k.ReasonCode) { // [MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]
		rule := "MQTT-3.4.2-1"
		switch t {
		case PUBREC:
			rule = "MQTT-3.5.2-1"
		case PUBREL:
			rule = "MQTT-3.6.2-1"
		case PUBCOMP:
			rule = "MQTT-3.7.2-1"
		}
		return protocolErr(rule, k.ReasonCode.String()+" is not a "+t.String()+" reason code")
	}
	if c.empty() {
		return nil
	}
	return decodeProps(c, t, &k.Properties)
}
