package mqttcodec

import (
	"testing"
)

// malformedCase is a packet that breaks a rule, and the error it must give.
type malformedCase struct {
	name    string
	version byte // the session's protocol level; 0 before CONNECT
	raw     []byte
	rule    string
	reason  ReasonCode
}

func malformedHeaderCases() []malformedCase {
	return []malformedCase{
		{"remaining length in five bytes", V311, cat("30 ff ff ff ff 7f"), ruleVarint, MalformedPacket},
		{"remaining length not shortest", V5, cat("c0 80 00"), "MQTT-1.5.5-1", MalformedPacket},
		{"reserved packet type 0", V311, cat("00 00"), rulePacketType, MalformedPacket},
		{"AUTH in 3.1.1", V311, cat("f0 00"), rulePacketType, MalformedPacket},
		{"first packet not CONNECT", 0, cat("c0 00"), "MQTT-3.1.0-1", ProtocolError},
		{"session version 3", 3, cat("c0 00"), ruleVersion, UnsupportedProtocolVersion},
		{"PUBREL flags 0000", V311, cat("60 02 00 01"), "MQTT-3.6.1-1", MalformedPacket},
		{"SUBSCRIBE flags 0000", V5, cat("80 08 00 01 00 00 01 61 00"), "MQTT-3.8.1-1", MalformedPacket},
		{"UNSUBSCRIBE flags 0011", V311, cat("a3 05 00 01 00 01 61"), "MQTT-3.10.1-1", MalformedPacket},
		{"PINGREQ flags 0001 (3.1.1)", V311, cat("c1 00"), "MQTT-2.2.2-1", MalformedPacket},
		{"PINGREQ flags 0001 (5.0)", V5, cat("c1 00"), "MQTT-2.1.3-1", MalformedPacket},
		{"CONNECT flags 1000", 0, cat("18 00"), "MQTT-2.2.2-1", MalformedPacket},
		{"DISCONNECT flags 0100", V5, cat("e4 00"), "MQTT-3.14.1-1", MalformedPacket},
		{"AUTH flags 0001", V5, cat("f1 00"), "MQTT-3.15.1-1", MalformedPacket},
		{"PUBLISH QoS 3", V311, cat("36 07 00 03", txt("a/b"), "00 01"), "MQTT-3.3.1-4", MalformedPacket},
		{"PUBLISH DUP with QoS 0", V5, cat("38 06 00 03", txt("a/b"), "00"), "MQTT-3.3.1-2", MalformedPacket},
		{"PINGREQ with content", V311, cat("c0 01 00"), ruleRemainingLength, MalformedPacket},
		{"DISCONNECT with content (3.1.1)", V311, cat("e0 01 00"), ruleRemainingLength, MalformedPacket},
		{"PUBACK too long (3.1.1)", V311, cat("40 03 00 01 00"), ruleRemainingLength, MalformedPacket},
		{"PUBACK too short", V311, cat("40 01 00"), ruleTruncated, MalformedPacket},
		{"UNSUBACK with payload (3.1.1)", V311, cat("b0 03 00 01 00"), ruleRemainingLength, MalformedPacket},
	}
}

// connect311 and connect5 frame a CONNECT body (after the protocol name).
func connect311(body ...any) []byte {
	return frame(0x10, append([]any{"00 04", txt("MQTT"), "04"}, body...)...)
}

func connect5(body ...any) []byte {
	return frame(0x10, append([]any{"00 04", txt("MQTT"), "05"}, body...)...)
}

// frame puts a fixed header with the right remaining length on a body.
func frame(first byte, body ...any) []byte {
	b := cat(body...)
	return append(appendVarint([]byte{first}, len(b)), b...)
}

func malformedConnectCases() []malformedCase {
	return []malformedCase{
		{"protocol name MQIsdp", 0, frame(0x10, "00 06", txt("MQIsdp"), "03 02 00 3c 00 01", txt("a")), "MQTT-3.1.2-1", UnsupportedProtocolVersion},
		{"protocol level 3", 0, frame(0x10, "00 04", txt("MQTT"), "03 02 00 3c 00 01", txt("a")), "MQTT-3.1.2-2", UnsupportedProtocolVersion},
		{"protocol level 6", 0, frame(0x10, "00 04", txt("MQTT"), "06 02 00 3c 00 01", txt("a")), "MQTT-3.1.2-2", UnsupportedProtocolVersion},
		{"protocol name cut", 0, cat("10 03 00 04 4d"), ruleTruncated, MalformedPacket},
		{"reserved connect flag", 0, connect311("03 00 3c 00 01", txt("a")), "MQTT-3.1.2-3", MalformedPacket},
		{"will QoS without will (3.1.1)", 0, connect311("0a 00 3c 00 01", txt("a")), "MQTT-3.1.2-13", MalformedPacket},
		{"will QoS without will (5.0)", 0, connect5("0a 00 3c 00 00 01", txt("a")), "MQTT-3.1.2-11", MalformedPacket},
		{"will retain without will (3.1.1)", 0, connect311("22 00 3c 00 01", txt("a")), "MQTT-3.1.2-15", MalformedPacket},
		{"will retain without will (5.0)", 0, connect5("22 00 3c 00 00 01", txt("a")), "MQTT-3.1.2-13", MalformedPacket},
		{"will QoS 3 (3.1.1)", 0, connect311("1e 00 3c 00 01", txt("a"), "00 01", txt("t"), "00 00"), "MQTT-3.1.2-14", MalformedPacket},
		{"will QoS 3 (5.0)", 0, connect5("1e 00 3c 00 00 01", txt("a"), "00 00 01", txt("t"), "00 00"), "MQTT-3.1.2-12", MalformedPacket},
		{"password without user name (3.1.1)", 0, connect311("42 00 3c 00 01", txt("a"), "00 01 70"), "MQTT-3.1.2-22", MalformedPacket},
		{"empty client id without clean session", 0, connect311("00 00 3c 00 00"), "MQTT-3.1.3-8", ClientIdentifierNotValid},
		{"client id not UTF-8 (3.1.1)", 0, connect311("02 00 3c 00 02 c3 28"), "MQTT-1.5.3-1", MalformedPacket},
		{"client id surrogate (5.0)", 0, connect5("02 00 3c 00 00 03 ed a0 80"), "MQTT-1.5.4-1", MalformedPacket},
		{"client id U+0000 (3.1.1)", 0, connect311("02 00 3c 00 02 61 00"), "MQTT-1.5.3-2", MalformedPacket},
		{"client id U+0000 (5.0)", 0, connect5("02 00 3c 00 00 02 61 00"), "MQTT-1.5.4-2", MalformedPacket},
		{"client id missing", 0, connect311("02 00 3c"), ruleTruncated, MalformedPacket},
		{"will topic with wildcard", 0, connect311("06 00 3c 00 01", txt("a"), "00 03", txt("a/#"), "00 00"), "MQTT-3.3.2-2", TopicNameInvalid},
		{"will topic empty", 0, connect311("06 00 3c 00 01", txt("a"), "00 00 00 00"), "MQTT-4.7.3-1", TopicNameInvalid},
		{"will payload missing", 0, connect311("06 00 3c 00 01", txt("a"), "00 01", txt("t")), ruleTruncated, MalformedPacket},
		{"user name missing", 0, connect311("82 00 3c 00 01", txt("a")), ruleTruncated, MalformedPacket},
		{"user name not UTF-8", 0, connect5("82 00 3c 00 00 01", txt("a"), "00 01 ff"), "MQTT-1.5.4-1", MalformedPacket},
		{"password missing", 0, connect5("42 00 3c 00 00 01", txt("a")), ruleTruncated, MalformedPacket},
		{"bytes after password", 0, connect311("c2 00 3c 00 01", txt("a"), "00 01", txt("u"), "00 01", txt("p"), "00"), ruleRemainingLength, MalformedPacket},
		{"Topic Alias in CONNECT", 0, connect5("02 00 3c 03 23 00 01 00 01", txt("a")), rulePropAllowed, MalformedPacket},
		{"unknown property 0x04", 0, connect5("02 00 3c 02 04 00 00 01", txt("a")), rulePropAllowed, MalformedPacket},
		{"property identifier 0x80", 0, connect5("02 00 3c 02 80 01 00 01", txt("a")), rulePropAllowed, MalformedPacket},
		{"Session Expiry twice", 0, connect5("02 00 3c 0a 11 00 00 00 01 11 00 00 00 02 00 01", txt("a")), rulePropRepeated, ProtocolError},
		{"Receive Maximum 0", 0, connect5("02 00 3c 03 21 00 00 00 01", txt("a")), rulePropValue, ProtocolError},
		{"Maximum Packet Size 0", 0, connect5("02 00 3c 05 27 00 00 00 00 00 01", txt("a")), rulePropValue, ProtocolError},
		{"Request Problem Information 2", 0, connect5("02 00 3c 02 17 02 00 01", txt("a")), rulePropValue, ProtocolError},
		{"Request Response Information 2", 0, connect5("02 00 3c 02 19 02 00 01", txt("a")), rulePropValue, ProtocolError},
		{"Authentication Data without Method", 0, connect5("02 00 3c 04 16 00 01 00 00 01", txt("a")), rulePropValue, ProtocolError},
		{"property length past the end", 0, connect5("02 00 3c 09 11 00 00"), ruleTruncated, MalformedPacket},
		{"property value past its block", 0, connect5("02 00 3c 02 11 00 00 00 00 00 00 01", txt("a")), ruleTruncated, MalformedPacket},
		{"property length in five bytes", 0, connect5("02 00 3c ff ff ff ff 7f"), ruleVarint, MalformedPacket},
		{"property length not shortest", 0, connect5("02 00 3c 80 00 00 01", txt("a")), "MQTT-1.5.5-1", MalformedPacket},
		{"Session Expiry in will properties", 0, connect5("06 00 3c 00 00 01", txt("a"), "05 11 00 00 00 01 00 01", txt("t"), "00 00"), rulePropAllowed, MalformedPacket},
		{"Payload Format 2 in will", 0, connect5("06 00 3c 00 00 01", txt("a"), "02 01 02 00 01", txt("t"), "00 00"), rulePropValue, ProtocolError},
		{"User Property name not UTF-8", 0, connect5("02 00 3c 07 26 00 01 ff 00 01 61 00 01", txt("a")), "MQTT-1.5.4-1", MalformedPacket},
		{"User Property value U+0000", 0, connect5("02 00 3c 07 26 00 01 61 00 01 00 00 01", txt("a")), "MQTT-1.5.4-2", MalformedPacket},
	}
}

func malformedPacketCases() []malformedCase {
	return []malformedCase{
		// CONNACK
		{"CONNACK return code 6", V311, cat("20 02 00 06"), ruleReturnCode, MalformedPacket},
		{"CONNACK reserved flags (3.1.1)", V311, cat("20 02 02 00"), ruleConnackFlags, MalformedPacket},
		{"CONNACK reserved flags (5.0)", V5, cat("20 03 80 00 00"), "MQTT-3.2.2-1", MalformedPacket},
		{"CONNACK session present with refusal (3.1.1)", V311, cat("20 02 01 05"), "MQTT-3.2.2-4", ProtocolError},
		{"CONNACK session present with refusal (5.0)", V5, cat("20 03 01 87 00"), "MQTT-3.2.2-6", ProtocolError},
		{"CONNACK reason code 0x10", V5, cat("20 03 00 10 00"), "MQTT-3.2.2-8", ProtocolError},
		{"CONNACK Maximum QoS 2", V5, cat("20 05 00 00 02 24 02"), rulePropValue, ProtocolError},
		{"CONNACK Retain Available 2", V5, cat("20 05 00 00 02 25 02"), rulePropValue, ProtocolError},
		{"CONNACK Wildcard Subscription Available 2", V5, cat("20 05 00 00 02 28 02"), rulePropValue, ProtocolError},
		{"CONNACK Subscription Identifier Available 2", V5, cat("20 05 00 00 02 29 02"), rulePropValue, ProtocolError},
		{"CONNACK Shared Subscription Available 2", V5, cat("20 05 00 00 02 2a 02"), rulePropValue, ProtocolError},
		{"CONNACK Request Problem Information", V5, cat("20 05 00 00 02 17 01"), rulePropAllowed, MalformedPacket},
		{"CONNACK without property length", V5, cat("20 02 00 00"), ruleTruncated, MalformedPacket},
		// PUBLISH
		{"PUBLISH empty topic (3.1.1)", V311, cat("30 03 00 00 61"), "MQTT-4.7.3-1", ProtocolError},
		{"PUBLISH empty topic without alias (5.0)", V5, cat("30 03 00 00 00"), "MQTT-4.7.3-1", ProtocolError},
		{"PUBLISH topic with +", V311, cat("30 05 00 03", txt("a/+")), "MQTT-3.3.2-2", TopicNameInvalid},
		{"PUBLISH topic with #", V5, cat("30 04 00 01", txt("#"), "00"), "MQTT-3.3.2-2", TopicNameInvalid},
		{"PUBLISH topic U+0000", V311, cat("30 05 00 03 61 00 62"), "MQTT-4.7.3-2", MalformedPacket},
		{"PUBLISH topic not UTF-8", V5, cat("30 05 00 02 c0 af 00"), "MQTT-1.5.4-1", MalformedPacket},
		{"PUBLISH topic past the end", V311, cat("30 03 00 05 61"), ruleTruncated, MalformedPacket},
		{"PUBLISH QoS 1 packet id 0 (3.1.1)", V311, cat("32 05 00 01 61 00 00"), "MQTT-2.3.1-1", ProtocolError},
		{"PUBLISH QoS 2 packet id 0 (5.0)", V5, cat("34 06 00 01 61 00 00 00"), "MQTT-2.2.1-3", ProtocolError},
		{"PUBLISH QoS 1 packet id missing", V311, cat("32 04 00 01 61 00"), ruleTruncated, MalformedPacket},
		{"PUBLISH without property length", V5, cat("30 03 00 01 61"), ruleTruncated, MalformedPacket},
		{"PUBLISH Topic Alias 0", V5, cat("30 07 00 01 61 03 23 00 00"), "MQTT-3.3.2-8", TopicAliasInvalid},
		{"PUBLISH Topic Alias twice", V5, cat("30 0a 00 01 61 06 23 00 01 23 00 02"), rulePropRepeated, ProtocolError},
		{"PUBLISH Payload Format 2", V5, cat("30 06 00 01 61 02 01 02"), rulePropValue, ProtocolError},
		{"PUBLISH Payload Format twice", V5, cat("30 08 00 01 61 04 01 00 01 01"), rulePropRepeated, ProtocolError},
		{"PUBLISH Subscription Identifier 0", V5, cat("30 06 00 01 61 02 0b 00"), rulePropValue, ProtocolError},
		{"PUBLISH Subscription Identifier in five bytes", V5, cat("30 0a 00 01 61 06 0b ff ff ff ff 7f"), ruleVarint, MalformedPacket},
		{"PUBLISH Response Topic with wildcard", V5, cat("30 0a 00 01 61 06 08 00 03", txt("r/#")), "MQTT-3.3.2-14", TopicNameInvalid},
		{"PUBLISH Content Type not UTF-8", V5, cat("30 09 00 01 61 05 03 00 02 ed bf"), "MQTT-1.5.4-1", MalformedPacket},
		{"PUBLISH Session Expiry", V5, cat("30 09 00 01 61 05 11 00 00 00 01"), rulePropAllowed, MalformedPacket},
		{"PUBLISH Correlation Data cut", V5, cat("30 08 00 01 61 04 09 00 05 01"), ruleTruncated, MalformedPacket},
		// acknowledgements
		{"PUBACK packet id 0", V311, cat("40 02 00 00"), rulePacketID, ProtocolError},
		{"PUBACK reason 0x04", V5, cat("40 03 00 01 04"), "MQTT-3.4.2-1", ProtocolError},
		{"PUBREC reason 0x92", V5, cat("50 03 00 01 92"), "MQTT-3.5.2-1", ProtocolError},
		{"PUBREL reason 0x10", V5, cat("62 03 00 01 10"), "MQTT-3.6.2-1", ProtocolError},
		{"PUBCOMP reason 0x80", V5, cat("70 03 00 01 80"), "MQTT-3.7.2-1", ProtocolError},
		{"PUBACK Reason String twice", V5, cat("40 0c 00 01 00 08 1f 00 01 61 1f 00 01 62"), rulePropRepeated, ProtocolError},
		{"PUBACK Content Type", V5, cat("40 09 00 01 00 05 03 00 02 61 62"), rulePropAllowed, MalformedPacket},
		{"PUBACK property length past the end", V5, cat("40 04 00 01 00 05"), ruleTruncated, MalformedPacket},
		// SUBSCRIBE
		{"SUBSCRIBE no filter (3.1.1)", V311, cat("82 02 00 01"), "MQTT-3.8.3-3", ProtocolError},
		{"SUBSCRIBE no filter (5.0)", V5, cat("82 03 00 01 00"), "MQTT-3.8.3-2", ProtocolError},
		{"SUBSCRIBE packet id 0", V311, cat("82 06 00 00 00 01 61 00"), "MQTT-2.3.1-1", ProtocolError},
		{"SUBSCRIBE QoS 3 (3.1.1)", V311, cat("82 06 00 01 00 01 61 03"), "MQTT-3.8.3-4", MalformedPacket},
		{"SUBSCRIBE reserved bits (3.1.1)", V311, cat("82 06 00 01 00 01 61 04"), "MQTT-3.8.3-4", MalformedPacket},
		{"SUBSCRIBE reserved bits (5.0)", V5, cat("82 07 00 01 00 00 01 61 40"), "MQTT-3.8.3-5", MalformedPacket},
		{"SUBSCRIBE QoS 3 (5.0)", V5, cat("82 07 00 01 00 00 01 61 03"), "subscription-qos", ProtocolError},
		{"SUBSCRIBE Retain Handling 3", V5, cat("82 07 00 01 00 00 01 61 30"), "retain-handling", ProtocolError},
		{"SUBSCRIBE No Local on shared", V5, cat("82 10 00 01 00 00 0a", txt("$share/g/a"), "04"), "MQTT-3.8.3-4", ProtocolError},
		{"SUBSCRIBE options missing", V311, cat("82 05 00 01 00 01 61"), ruleTruncated, MalformedPacket},
		{"SUBSCRIBE # not last (3.1.1)", V311, cat("82 0a 00 01 00 05", txt("a/#/b"), "00"), "MQTT-4.7.1-2", TopicFilterInvalid},
		{"SUBSCRIBE # not last (5.0)", V5, cat("82 0b 00 01 00 00 05", txt("a/#/b"), "00"), "MQTT-4.7.1-1", TopicFilterInvalid},
		{"SUBSCRIBE a# (5.0)", V5, cat("82 08 00 01 00 00 02", txt("a#"), "00"), "MQTT-4.7.1-1", TopicFilterInvalid},
		{"SUBSCRIBE a+ (3.1.1)", V311, cat("82 07 00 01 00 02", txt("a+"), "00"), "MQTT-4.7.1-3", TopicFilterInvalid},
		{"SUBSCRIBE +a (5.0)", V5, cat("82 08 00 01 00 00 02", txt("+a"), "00"), "MQTT-4.7.1-2", TopicFilterInvalid},
		{"SUBSCRIBE empty filter", V311, cat("82 05 00 01 00 00 00"), "MQTT-4.7.3-1", TopicFilterInvalid},
		{"SUBSCRIBE filter not UTF-8", V311, cat("82 06 00 01 00 01 80 00"), "MQTT-1.5.3-1", MalformedPacket},
		{"SUBSCRIBE empty share name", V5, cat("82 10 00 01 00 00 0a", txt("$share//a/b"), "00"), "MQTT-4.8.2-1", TopicFilterInvalid},
		{"SUBSCRIBE share name with +", V5, cat("82 10 00 01 00 00 0a", txt("$share/+/a"), "00"), "MQTT-4.8.2-2", TopicFilterInvalid},
		{"SUBSCRIBE share without filter", V5, cat("82 0e 00 01 00 00 08", txt("$share/g"), "00"), "MQTT-4.8.2-2", TopicFilterInvalid},
		{"SUBSCRIBE share with empty filter", V5, cat("82 0f 00 01 00 00 09", txt("$share/g/"), "00"), "MQTT-4.8.2-2", TopicFilterInvalid},
		{"SUBSCRIBE two Subscription Identifiers", V5, cat("82 0b 00 01 04 0b 01 0b 02 00 01 61 00"), rulePropRepeated, ProtocolError},
		{"SUBSCRIBE Subscription Identifier 0", V5, cat("82 09 00 01 02 0b 00 00 01 61 00"), rulePropValue, ProtocolError},
		{"SUBSCRIBE Topic Alias", V5, cat("82 0a 00 01 03 23 00 01 00 01 61 00"), rulePropAllowed, MalformedPacket},
		// SUBACK
		{"SUBACK return code 3", V311, cat("90 03 00 01 03"), "MQTT-3.9.3-2", ProtocolError},
		{"SUBACK reason 0x8b", V5, cat("90 04 00 01 00 8b"), "MQTT-3.9.3-2", ProtocolError},
		{"SUBACK no return code (3.1.1)", V311, cat("90 02 00 01"), "MQTT-3.8.4-5", ProtocolError},
		{"SUBACK no reason code (5.0)", V5, cat("90 03 00 01 00"), "MQTT-3.8.4-6", ProtocolError},
		{"SUBACK packet id 0", V311, cat("90 03 00 00 00"), rulePacketID, ProtocolError},
		// UNSUBSCRIBE, UNSUBACK
		{"UNSUBSCRIBE no filter", V311, cat("a2 02 00 01"), "MQTT-3.10.3-2", ProtocolError},
		{"UNSUBSCRIBE packet id 0", V5, cat("a2 06 00 00 00 00 01 61"), "MQTT-2.2.1-3", ProtocolError},
		{"UNSUBSCRIBE bad filter", V5, cat("a2 07 00 01 00 00 02", txt("#a")), "MQTT-4.7.1-1", TopicFilterInvalid},
		{"UNSUBSCRIBE filter cut", V311, cat("a2 05 00 01 00 05 61"), ruleTruncated, MalformedPacket},
		{"UNSUBACK reason 0x04", V5, cat("b0 04 00 01 00 04"), "MQTT-3.11.3-2", ProtocolError},
		{"UNSUBACK no reason code", V5, cat("b0 03 00 01 00"), "unsuback-reason-codes", ProtocolError},
		{"UNSUBACK packet id 0", V5, cat("b0 04 00 00 00 00"), rulePacketID, ProtocolError},
		// DISCONNECT, AUTH
		{"DISCONNECT reason 0x10", V5, cat("e0 01 10"), "MQTT-3.14.2-1", ProtocolError},
		{"DISCONNECT Topic Alias", V5, cat("e0 05 00 03 23 00 01"), rulePropAllowed, MalformedPacket},
		{"DISCONNECT Server Reference twice", V5, cat("e0 0a 9c 08 1c 00 01 61 1c 00 01 62"), rulePropRepeated, ProtocolError},
		{"AUTH reason 0x01", V5, cat("f0 01 01"), "MQTT-3.15.2-1", ProtocolError},
		{"AUTH empty (no Authentication Method)", V5, cat("f0 00"), ruleAuthMethod, ProtocolError},
		{"AUTH reason code only", V5, cat("f0 01 18"), ruleAuthMethod, ProtocolError},
		{"AUTH without Authentication Method", V5, cat("f0 07 19 05 1f 00 02", txt("re")), ruleAuthMethod, ProtocolError},
		{"AUTH Authentication Data without Method", V5, cat("f0 06 18 04 16 00 01 00"), rulePropValue, ProtocolError},
		{"AUTH Session Expiry", V5, cat("f0 07 18 05 11 00 00 00 01"), rulePropAllowed, MalformedPacket},
	}
}

func TestMalformed(t *testing.T) {
	groups := map[string][]malformedCase{
		"header":  malformedHeaderCases(),
		"connect": malformedConnectCases(),
		"packets": malformedPacketCases(),
	}
	for group, cases := range groups {
		for _, tc := range cases {
			t.Run(group+"/"+tc.name, func(t *testing.T) {
				var p Packet
				n, err := Decode(tc.raw, tc.version, 0, &p)
				if err == nil {
					t.Fatalf("Decode = %d, nil; want %s (%v)", n, tc.rule, tc.reason)
				}
				e := codecErr(t, err)
				if e.Rule != tc.rule || e.Reason != tc.reason {
					t.Fatalf("Decode error %v; want rule %s reason %v", err, tc.rule, tc.reason)
				}
				if p.Type != Type(tc.raw[0]>>4) {
					t.Fatalf("p.Type = %v after the error, want %v", p.Type, Type(tc.raw[0]>>4))
				}
				checkPrefixes(t, tc.raw, tc.version)
			})
		}
	}
}
