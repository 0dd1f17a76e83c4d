package mqttcodec

func (k *Disconnect) reset() {
	props := k.Properties
	props.Reset()
	*k = Disconnect{Properties: props}
}

// decodeDisconnect decodes a DISCONNECT: empty in 3.1.1; in MQTT 5 the reason
// code and the properties may be left out (then NormalDisconnection, none).
func decodeDisconnect(c *cursor, k *Disconnect) error {
	k.reset()
	if c.version != V5 || c.empty() {
		return nil // 3.1.1: Decode refuses any content as left over
	}
	var rc byte
	c.readByte(&rc)
	k.ReasonCode = ReasonCode(rc)
	if !validReason(DISCONNECT, k.ReasonCode) { // [MQTT-3.14.2-1]
		return protocolErr("MQTT-3.14.2-1", k.ReasonCode.String()+" is not a DISCONNECT reason code")
	}
	if c.empty() {
		return nil
	}
	return decodeProps(c, DISCONNECT, &k.Properties)
}

func (k *Auth) reset() {
	props := k.Properties
	props.Reset()
	*k = Auth{Properties: props}
}

// decodeAuth decodes an MQTT 5 AUTH. The specification lets an AUTH leave
// out its reason code and properties, yet makes omitting the Authentication
// Method a Protocol Error (5.0 section 3.15.2.2.2): an AUTH without one is
// refused, whatever its form.
func decodeAuth(c *cursor, k *Auth) error {
	k.reset()
	if !c.empty() {
		var rc byte
		c.readByte(&rc)
		k.ReasonCode = ReasonCode(rc)
		if !validReason(AUTH, k.ReasonCode) { // [MQTT-3.15.2-1]
			return protocolErr("MQTT-3.15.2-1", k.ReasonCode.String()+" is not an AUTH reason code")
		}
	}
	if !c.empty() {
		if err := decodeProps(c, AUTH, &k.Properties); err != nil {
			return err
		}
	}
	if !k.Properties.Has(PropAuthMethod) {
		return protocolErr(ruleAuthMethod, "AUTH has no Authentication Method")
	}
	return nil
}
