package mqttcodec

import (
	"bytes"
	"strconv"
)

func (k *Subscribe) reset() {
	props, subs := k.Properties, k.Subscriptions
	props.Reset()
	clear(subs)
	*k = Subscribe{Properties: props, Subscriptions: subs[:0]}
}

// decodeSubscribe decodes a SUBSCRIBE. The Subscriptions slice is reused;
// it grows (and allocates) only past its capacity.
func decodeSubscribe(c *cursor, k *Subscribe) error {
	k.reset()
	if err := readPacketID(c, SUBSCRIBE, &k.PacketID); err != nil {
		return err
	}
	if c.version == V5 {
		if err := decodeProps(c, SUBSCRIBE, &k.Properties); err != nil {
			return err
		}
	}
	if c.empty() { // [MQTT-3.8.3-3] / [MQTT-3.8.3-2]
		return protocolErr(tag(c.version, "MQTT-3.8.3-3", "MQTT-3.8.3-2"), "SUBSCRIBE has no topic filter")
	}
	for !c.empty() {
		var s Subscription
		if err := c.readString(&s.Filter, "topic filter"); err != nil { // [MQTT-3.8.3-1]
			return err
		}
		if e := validTopicFilter(s.Filter, c.version); e != nil {
			return e
		}
		var opts byte
		if !c.readByte(&opts) {
			return errTruncated("subscription options")
		}
		if err := decodeSubOptions(c.version, opts, &s); err != nil {
			return err
		}
		k.Subscriptions = append(k.Subscriptions, s)
	}
	return nil
}

// decodeSubOptions reads the Requested QoS byte (3.1.1) or the Subscription
// Options (5.0).
func decodeSubOptions(version, opts byte, s *Subscription) error {
	s.QoS = opts & 0x03
	if version != V5 {
		if opts&0xFC != 0 || s.QoS == 3 { // [MQTT-3.8.3-4]
			return malformed("MQTT-3.8.3-4", "requested QoS byte is "+strconv.Itoa(int(opts)))
		}
		return nil
	}
	if opts&0xC0 != 0 { // [MQTT-3.8.3-5]
		return malformed("MQTT-3.8.3-5", "reserved subscription option bits are set")
	}
	if s.QoS == 3 { // 5.0 section 3.8.3.1
		return protocolErr("subscription-qos", "subscription Maximum QoS is 3")
	}
	s.NoLocal = opts&0x04 != 0
	s.RetainAsPublished = opts&0x08 != 0
	s.RetainHandling = opts >> 4 & 0x03
	if s.RetainHandling == 3 { // 5.0 section 3.8.3.1
		return protocolErr("retain-handling", "Retain Handling is 3")
	}
	if s.NoLocal && bytes.HasPrefix(s.Filter, []byte(sharePrefix)) { // [MQTT-3.8.3-4]
		return protocolErr("MQTT-3.8.3-4", "No Local is set on a shared subscription")
	}
	return nil
}

func (k *Suback) reset() {
	props, codes := k.Properties, k.ReasonCodes
	props.Reset()
	*k = Suback{Properties: props, ReasonCodes: codes[:0]}
}

func decodeSuback(c *cursor, k *Suback) error {
	k.reset()
	if err := readPacketID(c, SUBACK, &k.PacketID); err != nil {
		return err
	}
	if c.version == V5 {
		if err := decodeProps(c, SUBACK, &k.Properties); err != nil {
			return err
		}
	}
	if c.empty() { // [MQTT-3.8.4-5] / [MQTT-3.8.4-6] one return code per topic filter
		return protocolErr(tag(c.version, "MQTT-3.8.4-5", "MQTT-3.8.4-6"), "SUBACK has no return code")
	}
	for !c.empty() {
		var b byte
		c.readByte(&b)
		rc := ReasonCode(b)
		if c.version != V5 {
			if rc != GrantedQoS0 && rc != GrantedQoS1 && rc != GrantedQoS2 && rc != UnspecifiedError { // [MQTT-3.9.3-2]
				return protocolErr("MQTT-3.9.3-2", "SUBACK return code 0x"+strconv.FormatUint(uint64(b), 16)+" is reserved")
			}
		} else if !validReason(SUBACK, rc) { // [MQTT-3.9.3-2]
			return protocolErr("MQTT-3.9.3-2", rc.String()+" is not a SUBACK reason code")
		}
		k.ReasonCodes = append(k.ReasonCodes, rc)
	}
	return nil
}

func (k *Unsubscribe) reset() {
	props, filters := k.Properties, k.Filters
	props.Reset()
	clear(filters)
	*k = Unsubscribe{Properties: props, Filters: filters[:0]}
}

func decodeUnsubscribe(c *cursor, k *Unsubscribe) error {
	k.reset()
	if err := readPacketID(c, UNSUBSCRIBE, &k.PacketID); err != nil {
		return err
	}
	if c.version == V5 {
		if err := decodeProps(c, UNSUBSCRIBE, &k.Properties); err != nil {
			return err
		}
	}
	if c.empty() { // [MQTT-3.10.3-2]
		return protocolErr("MQTT-3.10.3-2", "UNSUBSCRIBE has no topic filter")
	}
	for !c.empty() {
		var f []byte
		if err := c.readString(&f, "topic filter"); err != nil { // [MQTT-3.10.3-1]
			return err
		}
		if e := validTopicFilter(f, c.version); e != nil {
			return e
		}
		k.Filters = append(k.Filters, f)
	}
	return nil
}

func (k *Unsuback) reset() {
	props, codes := k.Properties, k.ReasonCodes
	props.Reset()
	*k = Unsuback{Properties: props, ReasonCodes: codes[:0]}
}

// decodeUnsuback decodes an UNSUBACK: in 3.1.1 only a packet identifier.
func decodeUnsuback(c *cursor, k *Unsuback) error {
	k.reset()
	if err := readPacketID(c, UNSUBACK, &k.PacketID); err != nil {
		return err
	}
	if c.version != V5 {
		return nil
	}
	if err := decodeProps(c, UNSUBACK, &k.Properties); err != nil {
		return err
	}
	if c.empty() { // 5.0 section 3.11.3: one reason code per topic filter
		return protocolErr("unsuback-reason-codes", "UNSUBACK has no reason code")
	}
	for !c.empty() {
		var b byte
		c.readByte(&b)
		rc := ReasonCode(b)
		if !validReason(UNSUBACK, rc) { // [MQTT-3.11.3-2]
			return protocolErr("MQTT-3.11.3-2", rc.String()+" is not an UNSUBACK reason code")
		}
		k.ReasonCodes = append(k.ReasonCodes, rc)
	}
	return nil
}
