package mqttcodec

import (
	"bytes"
	"testing"
)

// fixture is a raw packet and what it decodes to.
type fixture struct {
	name    string
	version byte   // the session's protocol level (a CONNECT carries its own)
	raw     []byte // the bytes on the wire
	want    Packet
	encoded []byte // the canonical encoding, when it is not raw
}

func validFixtures311() []fixture {
	return []fixture{
		{name: "CONNECT minimal", version: V311, raw: cat(
			"10 0c",              // CONNECT, remaining length 12
			"00 04", txt("MQTT"), // protocol name
			"04",    // level 4
			"02",    // flags: Clean Session
			"00 3c", // keep alive 60
			"00 00", // client identifier "" (allowed with Clean Session)
		), want: Packet{Type: CONNECT, Connect: Connect{
			ProtocolName: []byte("MQTT"), ProtocolVersion: V311, CleanStart: true, KeepAlive: 60,
			ClientID: []byte{},
		}}},
		{name: "CONNECT will, user name, password", version: V311, raw: cat(
			"10 22",              // CONNECT, remaining length 34
			"00 04", txt("MQTT"), // protocol name
			"04",               // level 4
			"ee",               // flags: user name, password, will retain, will QoS 1, will, clean
			"00 3c",            // keep alive 60
			"00 02", txt("d1"), // client identifier
			"00 03", txt("w/t"), // will topic
			"00 03", txt("bye"), // will payload
			"00 04", txt("user"), // user name
			"00 02 01 02", // password (binary)
		), want: Packet{Type: CONNECT, Connect: Connect{
			ProtocolName: []byte("MQTT"), ProtocolVersion: V311, CleanStart: true, KeepAlive: 60,
			ClientID: []byte("d1"), WillFlag: true, WillQoS: 1, WillRetain: true,
			WillTopic: []byte("w/t"), WillPayload: []byte("bye"),
			UsernameFlag: true, Username: []byte("user"), PasswordFlag: true, Password: []byte{1, 2},
		}}},
		{name: "CONNECT client id, no clean session", version: V311, raw: cat(
			"10 0e",              // CONNECT, remaining length 14
			"00 04", txt("MQTT"), // protocol name
			"04",               // level 4
			"00",               // flags: none
			"00 00",            // keep alive 0
			"00 02", txt("d2"), // client identifier
		), want: Packet{Type: CONNECT, Connect: Connect{
			ProtocolName: []byte("MQTT"), ProtocolVersion: V311, ClientID: []byte("d2"),
		}}},
		{name: "CONNACK session present", version: V311, raw: cat(
			"20 02", // CONNACK, remaining length 2
			"01",    // Session Present
			"00",    // Accepted
		), want: Packet{Type: CONNACK, Connack: Connack{SessionPresent: true, ReasonCode: Accepted}}},
		{name: "CONNACK not authorized", version: V311, raw: cat(
			"20 02", // CONNACK, remaining length 2
			"00",    // no session
			"05",    // RefusedNotAuthorized
		), want: Packet{Type: CONNACK, Connack: Connack{ReasonCode: RefusedNotAuthorized}}},
		{name: "PUBLISH QoS 0 retained", version: V311, raw: cat(
			"31 07",             // PUBLISH, RETAIN, remaining length 7
			"00 03", txt("a/b"), // topic
			txt("hi"), // payload
		), want: Packet{Type: PUBLISH, Publish: Publish{Retain: true, Topic: []byte("a/b"), Payload: []byte("hi")}}},
		{name: "PUBLISH QoS 1 DUP", version: V311, raw: cat(
			"3a 09",             // PUBLISH, DUP, QoS 1, remaining length 9
			"00 03", txt("a/b"), // topic
			"00 07",   // packet identifier 7
			txt("on"), // payload
		), want: Packet{Type: PUBLISH, Publish: Publish{Dup: true, QoS: 1, Topic: []byte("a/b"), PacketID: 7, Payload: []byte("on")}}},
		{name: "PUBLISH QoS 2 empty payload", version: V311, raw: cat(
			"34 07",             // PUBLISH, QoS 2, remaining length 7
			"00 03", txt("a/b"), // topic
			"01 02", // packet identifier 258
		), want: Packet{Type: PUBLISH, Publish: Publish{QoS: 2, Topic: []byte("a/b"), PacketID: 258}}},
		{name: "PUBLISH to a $SYS topic", version: V311, raw: cat(
			"30 0a",                  // PUBLISH, remaining length 10
			"00 08", txt("$SYS/up1"), // topic
		), want: Packet{Type: PUBLISH, Publish: Publish{Topic: []byte("$SYS/up1")}}},
		{name: "PUBACK", version: V311, raw: cat("40 02", "00 01"), // PUBACK, packet identifier 1
			want: Packet{Type: PUBACK, Ack: Ack{PacketID: 1}}},
		{name: "PUBREC", version: V311, raw: cat("50 02", "00 02"), // PUBREC, packet identifier 2
			want: Packet{Type: PUBREC, Ack: Ack{PacketID: 2}}},
		{name: "PUBREL", version: V311, raw: cat("62 02", "00 03"), // PUBREL (flags 0010), packet identifier 3
			want: Packet{Type: PUBREL, Ack: Ack{PacketID: 3}}},
		{name: "PUBCOMP", version: V311, raw: cat("70 02", "ff ff"), // PUBCOMP, packet identifier 65535
			want: Packet{Type: PUBCOMP, Ack: Ack{PacketID: 65535}}},
		{name: "SUBSCRIBE two filters", version: V311, raw: cat(
			"82 0c",             // SUBSCRIBE (flags 0010), remaining length 12
			"00 0a",             // packet identifier 10
			"00 03", txt("a/+"), // filter
			"01",              // QoS 1
			"00 01", txt("#"), // filter
			"02", // QoS 2
		), want: Packet{Type: SUBSCRIBE, Subscribe: Subscribe{PacketID: 10, Subscriptions: []Subscription{
			{Filter: []byte("a/+"), QoS: 1}, {Filter: []byte("#"), QoS: 2},
		}}}},
		{name: "SUBSCRIBE $share is an ordinary filter", version: V311, raw: cat(
			"82 0f",                    // SUBSCRIBE, remaining length 15
			"00 01",                    // packet identifier 1
			"00 0a", txt("$share/+/x"), // filter: '+' fills the level
			"00", // QoS 0
		), want: Packet{Type: SUBSCRIBE, Subscribe: Subscribe{PacketID: 1, Subscriptions: []Subscription{
			{Filter: []byte("$share/+/x")},
		}}}},
		{name: "SUBACK", version: V311, raw: cat(
			"90 06",       // SUBACK, remaining length 6
			"00 0a",       // packet identifier 10
			"00 01 02 80", // granted QoS 0, 1, 2, failure
		), want: Packet{Type: SUBACK, Suback: Suback{PacketID: 10, ReasonCodes: []ReasonCode{GrantedQoS0, GrantedQoS1, GrantedQoS2, UnspecifiedError}}}},
		{name: "UNSUBSCRIBE", version: V311, raw: cat(
			"a2 0a",             // UNSUBSCRIBE (flags 0010), remaining length 10
			"00 0b",             // packet identifier 11
			"00 03", txt("a/+"), // filter
			"00 01", txt("#"), // filter
		), want: Packet{Type: UNSUBSCRIBE, Unsubscribe: Unsubscribe{PacketID: 11, Filters: [][]byte{[]byte("a/+"), []byte("#")}}}},
		{name: "UNSUBACK", version: V311, raw: cat("b0 02", "00 0b"), // UNSUBACK, packet identifier 11
			want: Packet{Type: UNSUBACK, Unsuback: Unsuback{PacketID: 11}}},
		{name: "PINGREQ", version: V311, raw: cat("c0 00"), want: Packet{Type: PINGREQ}},
		{name: "PINGRESP", version: V311, raw: cat("d0 00"), want: Packet{Type: PINGRESP}},
		{name: "DISCONNECT", version: V311, raw: cat("e0 00"), want: Packet{Type: DISCONNECT}},
	}
}

func validFixtures5() []fixture {
	return []fixture{
		{name: "CONNECT properties and will", version: V5, raw: cat(
			"10 5f",              // CONNECT, remaining length 95
			"00 04", txt("MQTT"), // protocol name
			"05",                                    // level 5
			"c6",                                    // flags: user name, password, will (QoS 0), clean start
			"00 1e",                                 // keep alive 30
			"1b",                                    // property length 27
			"11 00 00 0e 10",                        // Session Expiry Interval 3600
			"17 01",                                 // Request Problem Information 1
			"19 01",                                 // Request Response Information 1
			"21 00 14",                              // Receive Maximum 20
			"22 00 0a",                              // Topic Alias Maximum 10
			"26 00 01", txt("k"), "00 01", txt("v"), // User Property k=v
			"27 00 01 00 00",   // Maximum Packet Size 65536
			"00 02", txt("d5"), // client identifier
			"1e",                    // will property length 30
			"01 01",                 // Payload Format Indicator 1
			"02 00 00 00 3c",        // Message Expiry Interval 60
			"03 00 04", txt("text"), // Content Type
			"08 00 03", txt("r/t"), // Response Topic
			"09 00 02 0a 0b",    // Correlation Data
			"18 00 00 00 05",    // Will Delay Interval 5
			"00 03", txt("w/t"), // will topic
			"00 03", txt("bye"), // will payload
			"00 04", txt("user"), // user name
			"00 04", txt("pass"), // password
		), want: Packet{Type: CONNECT, Connect: Connect{
			ProtocolName: []byte("MQTT"), ProtocolVersion: V5, CleanStart: true, KeepAlive: 30,
			Properties: props(func(p *Properties) {
				p.SetSessionExpiry(3600)
				p.SetRequestProblemInfo(1)
				p.SetRequestResponseInfo(1)
				p.SetReceiveMaximum(20)
				p.SetTopicAliasMaximum(10)
				p.AddUserProperty([]byte("k"), []byte("v"))
				p.SetMaximumPacketSize(65536)
			}),
			ClientID: []byte("d5"), WillFlag: true,
			WillProperties: props(func(p *Properties) {
				p.SetPayloadFormat(1)
				p.SetMessageExpiry(60)
				p.SetContentType([]byte("text"))
				p.SetResponseTopic([]byte("r/t"))
				p.SetCorrelationData([]byte{0x0a, 0x0b})
				p.SetWillDelay(5)
			}),
			WillTopic: []byte("w/t"), WillPayload: []byte("bye"),
			UsernameFlag: true, Username: []byte("user"), PasswordFlag: true, Password: []byte("pass"),
		}}},
		{name: "CONNECT authentication, password without user name", version: V5, raw: cat(
			"10 1b",              // CONNECT, remaining length 27
			"00 04", txt("MQTT"), // protocol name
			"05",                  // level 5
			"42",                  // flags: password, clean start
			"00 00",               // keep alive 0
			"0a",                  // property length 10
			"15 00 02", txt("pw"), // Authentication Method
			"16 00 02 01 02", // Authentication Data
			"00 00",          // client identifier "" (the server assigns one)
			"00 02 ab cd",    // password
		), want: Packet{Type: CONNECT, Connect: Connect{
			ProtocolName: []byte("MQTT"), ProtocolVersion: V5, CleanStart: true,
			Properties: props(func(p *Properties) {
				p.SetAuthMethod([]byte("pw"))
				p.SetAuthData([]byte{1, 2})
			}),
			ClientID: []byte{}, PasswordFlag: true, Password: []byte{0xab, 0xcd},
		}}},
		{name: "CONNACK every CONNACK property", version: V5, raw: cat(
			"20 30",                // CONNACK, remaining length 48
			"01",                   // Session Present
			"00",                   // Success
			"2d",                   // property length 45
			"11 00 00 00 78",       // Session Expiry Interval 120
			"12 00 03", txt("cid"), // Assigned Client Identifier
			"13 00 3c",            // Server Keep Alive 60
			"1a 00 02", txt("ri"), // Response Information
			"1f 00 02", txt("ok"), // Reason String
			"21 00 0a",       // Receive Maximum 10
			"22 00 05",       // Topic Alias Maximum 5
			"24 01",          // Maximum QoS 1
			"25 00",          // Retain Available 0
			"27 00 00 10 00", // Maximum Packet Size 4096
			"28 00",          // Wildcard Subscription Available 0
			"29 01",          // Subscription Identifier Available 1
			"2a 00",          // Shared Subscription Available 0
		), want: Packet{Type: CONNACK, Connack: Connack{SessionPresent: true, Properties: props(func(p *Properties) {
			p.SetSessionExpiry(120)
			p.SetAssignedClientID([]byte("cid"))
			p.SetServerKeepAlive(60)
			p.SetResponseInfo([]byte("ri"))
			p.SetReasonString([]byte("ok"))
			p.SetReceiveMaximum(10)
			p.SetTopicAliasMaximum(5)
			p.SetMaximumQoS(1)
			p.SetRetainAvailable(0)
			p.SetMaximumPacketSize(4096)
			p.SetWildcardSubAvailable(0)
			p.SetSubIDAvailable(1)
			p.SetSharedSubAvailable(0)
		})}}},
		{name: "CONNACK use another server", version: V5, raw: cat(
			"20 13",                          // CONNACK, remaining length 19
			"00",                             // no session
			"9c",                             // Use another server
			"10",                             // property length 16
			"1c 00 0d", txt("tls://gw:8883"), // Server Reference
		), want: Packet{Type: CONNACK, Connack: Connack{ReasonCode: UseAnotherServer, Properties: props(func(p *Properties) {
			p.SetServerReference([]byte("tls://gw:8883"))
		})}}},
		{name: "PUBLISH every PUBLISH property", version: V5, raw: cat(
			"32 38",             // PUBLISH, QoS 1, remaining length 56
			"00 03", txt("a/b"), // topic
			"00 05",                 // packet identifier 5
			"2e",                    // property length 46
			"01 01",                 // Payload Format Indicator 1
			"02 00 00 00 3c",        // Message Expiry Interval 60
			"03 00 04", txt("json"), // Content Type
			"08 00 03", txt("r/1"), // Response Topic
			"09 00 01 ff",                           // Correlation Data
			"0b 05",                                 // Subscription Identifier 5
			"0b 80 01",                              // Subscription Identifier 128
			"23 00 02",                              // Topic Alias 2
			"26 00 01", txt("a"), "00 01", txt("b"), // User Property a=b
			"26 00 01", txt("a"), "00 01", txt("c"), // User Property a=c (names repeat)
			txt("{}"), // payload
		), want: Packet{Type: PUBLISH, Publish: Publish{QoS: 1, Topic: []byte("a/b"), PacketID: 5,
			Properties: props(func(p *Properties) {
				p.SetPayloadFormat(1)
				p.SetMessageExpiry(60)
				p.SetContentType([]byte("json"))
				p.SetResponseTopic([]byte("r/1"))
				p.SetCorrelationData([]byte{0xff})
				p.AddSubscriptionID(5)
				p.AddSubscriptionID(128)
				p.SetTopicAlias(2)
				p.AddUserProperty([]byte("a"), []byte("b"))
				p.AddUserProperty([]byte("a"), []byte("c"))
			}), Payload: []byte("{}")}}},
		{name: "PUBLISH empty topic with Topic Alias", version: V5, raw: cat(
			"30 07",    // PUBLISH, remaining length 7
			"00 00",    // topic "" (the alias stands for it)
			"03",       // property length 3
			"23 00 02", // Topic Alias 2
			txt("x"),   // payload
		), want: Packet{Type: PUBLISH, Publish: Publish{Topic: []byte{}, Properties: props(func(p *Properties) {
			p.SetTopicAlias(2)
		}), Payload: []byte("x")}}},
		{name: "PUBLISH no properties", version: V5, raw: cat(
			"30 07",             // PUBLISH, remaining length 7
			"00 03", txt("a/b"), // topic
			"00",     // property length 0
			txt("z"), // payload
		), want: Packet{Type: PUBLISH, Publish: Publish{Topic: []byte("a/b"), Payload: []byte("z")}}},
		{name: "PUBACK short form", version: V5, raw: cat("40 02", "00 01"), // PUBACK, packet identifier 1, Success implied
			want: Packet{Type: PUBACK, Ack: Ack{PacketID: 1}}},
		{name: "PUBACK reason code only", version: V5, raw: cat(
			"40 03", // PUBACK, remaining length 3
			"00 01", // packet identifier 1
			"10",    // No matching subscribers
		), want: Packet{Type: PUBACK, Ack: Ack{PacketID: 1, ReasonCode: NoMatchingSubscribers}}},
		{name: "PUBACK explicit Success and empty properties", version: V5, raw: cat(
			"40 04", // PUBACK, remaining length 4
			"00 01", // packet identifier 1
			"00",    // Success
			"00",    // property length 0
		), want: Packet{Type: PUBACK, Ack: Ack{PacketID: 1}}, encoded: cat("40 02 00 01")},
		{name: "PUBREC with Reason String", version: V5, raw: cat(
			"50 0b",                 // PUBREC, remaining length 11
			"00 02",                 // packet identifier 2
			"80",                    // Unspecified error
			"07",                    // property length 7
			"1f 00 04", txt("full"), // Reason String
		), want: Packet{Type: PUBREC, Ack: Ack{PacketID: 2, ReasonCode: UnspecifiedError, Properties: props(func(p *Properties) {
			p.SetReasonString([]byte("full"))
		})}}},
		{name: "PUBREL not found", version: V5, raw: cat(
			"62 03", // PUBREL (flags 0010), remaining length 3
			"00 03", // packet identifier 3
			"92",    // Packet Identifier not found
		), want: Packet{Type: PUBREL, Ack: Ack{PacketID: 3, ReasonCode: PacketIdentifierNotFound}}},
		{name: "PUBCOMP short form", version: V5, raw: cat("70 02", "00 04"),
			want: Packet{Type: PUBCOMP, Ack: Ack{PacketID: 4}}},
		{name: "SUBSCRIBE options and Subscription Identifier", version: V5, raw: cat(
			"82 18",             // SUBSCRIBE (flags 0010), remaining length 24
			"00 0a",             // packet identifier 10
			"02",                // property length 2
			"0b 07",             // Subscription Identifier 7
			"00 03", txt("a/+"), // filter
			"1d",                       // QoS 1, No Local, Retain As Published, Retain Handling 1
			"00 0a", txt("$share/g/x"), // shared subscription, group g
			"22", // QoS 2, Retain Handling 2
		), want: Packet{Type: SUBSCRIBE, Subscribe: Subscribe{PacketID: 10,
			Properties: props(func(p *Properties) { p.AddSubscriptionID(7) }),
			Subscriptions: []Subscription{
				{Filter: []byte("a/+"), QoS: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 1},
				{Filter: []byte("$share/g/x"), QoS: 2, RetainHandling: 2},
			}}}},
		{name: "SUBACK", version: V5, raw: cat(
			"90 0a",               // SUBACK, remaining length 10
			"00 0a",               // packet identifier 10
			"05",                  // property length 5
			"1f 00 02", txt("no"), // Reason String
			"01", // Granted QoS 1
			"a2", // Wildcard Subscriptions not supported
		), want: Packet{Type: SUBACK, Suback: Suback{PacketID: 10,
			Properties:  props(func(p *Properties) { p.SetReasonString([]byte("no")) }),
			ReasonCodes: []ReasonCode{GrantedQoS1, WildcardSubscriptionsNotSupported}}}},
		{name: "UNSUBSCRIBE with User Property", version: V5, raw: cat(
			"a2 0f",                                 // UNSUBSCRIBE (flags 0010), remaining length 15
			"00 0b",                                 // packet identifier 11
			"07",                                    // property length 7
			"26 00 01", txt("k"), "00 01", txt("v"), // User Property
			"00 03", txt("a/+"), // filter
		), want: Packet{Type: UNSUBSCRIBE, Unsubscribe: Unsubscribe{PacketID: 11,
			Properties: props(func(p *Properties) { p.AddUserProperty([]byte("k"), []byte("v")) }),
			Filters:    [][]byte{[]byte("a/+")}}}},
		{name: "UNSUBACK", version: V5, raw: cat(
			"b0 05", // UNSUBACK, remaining length 5
			"00 0b", // packet identifier 11
			"00",    // property length 0
			"00 11", // Success, No subscription existed
		), want: Packet{Type: UNSUBACK, Unsuback: Unsuback{PacketID: 11, ReasonCodes: []ReasonCode{Success, NoSubscriptionExisted}}}},
		{name: "PINGREQ", version: V5, raw: cat("c0 00"), want: Packet{Type: PINGREQ}},
		{name: "PINGRESP", version: V5, raw: cat("d0 00"), want: Packet{Type: PINGRESP}},
		{name: "DISCONNECT short form", version: V5, raw: cat("e0 00"), // DISCONNECT, Normal disconnection implied
			want: Packet{Type: DISCONNECT}, encoded: cat("e0 01 00")}, // written with its reason code
		{name: "DISCONNECT normal", version: V5, raw: cat(
			"e0 01", // DISCONNECT, remaining length 1
			"00",    // Normal disconnection
		), want: Packet{Type: DISCONNECT}},
		{name: "DISCONNECT with will", version: V5, raw: cat(
			"e0 01", // DISCONNECT, remaining length 1
			"04",    // Disconnect with Will Message
		), want: Packet{Type: DISCONNECT, Disconnect: Disconnect{ReasonCode: DisconnectWithWill}}},
		{name: "DISCONNECT reconnect instruction", version: V5, raw: cat(
			"e0 23",                          // DISCONNECT, remaining length 35
			"9c",                             // Use another server
			"21",                             // property length 33
			"1c 00 0d", txt("tls://gw:8883"), // Server Reference
			"1f 00 0e", txt("secure-command"), // Reason String
		), want: Packet{Type: DISCONNECT, Disconnect: Disconnect{ReasonCode: UseAnotherServer, Properties: props(func(p *Properties) {
			p.SetServerReference([]byte("tls://gw:8883"))
			p.SetReasonString([]byte("secure-command"))
		})}}},
		{name: "DISCONNECT with Session Expiry", version: V5, raw: cat(
			"e0 07",          // DISCONNECT, remaining length 7
			"00",             // Normal disconnection
			"05",             // property length 5
			"11 00 00 00 00", // Session Expiry Interval 0
		), want: Packet{Type: DISCONNECT, Disconnect: Disconnect{Properties: props(func(p *Properties) { p.SetSessionExpiry(0) })}}},
		{name: "AUTH continue", version: V5, raw: cat(
			"f0 10",                  // AUTH, remaining length 16
			"18",                     // Continue authentication
			"0e",                     // property length 14
			"15 00 05", txt("SCRAM"), // Authentication Method
			"16 00 03 01 02 03", // Authentication Data
		), want: Packet{Type: AUTH, Auth: Auth{ReasonCode: ContinueAuthentication, Properties: props(func(p *Properties) {
			p.SetAuthMethod([]byte("SCRAM"))
			p.SetAuthData([]byte{1, 2, 3})
		})}}},
		{name: "AUTH success", version: V5, raw: cat(
			"f0 0a",                  // AUTH, remaining length 10
			"00",                     // Success
			"08",                     // property length 8
			"15 00 05", txt("SCRAM"), // Authentication Method
		), want: Packet{Type: AUTH, Auth: Auth{Properties: props(func(p *Properties) {
			p.SetAuthMethod([]byte("SCRAM"))
		})}}},
	}
}

func runFixtures(t *testing.T, fixtures []fixture) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			version := sessionVersion(f.raw, f.version)
			var p Packet
			n, err := Decode(f.raw, version, 0, &p)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if n != len(f.raw) {
				t.Fatalf("Decode used %d of %d bytes", n, len(f.raw))
			}
			if !samePacket(&p, &f.want) {
				t.Fatalf("Decode:\n got %+v\nwant %+v", part(&p), part(&f.want))
			}
			want := f.encoded
			if want == nil {
				want = f.raw
			}
			if got := Append(nil, f.version, &f.want); !bytes.Equal(got, want) {
				t.Fatalf("Append:\n got % x\nwant % x", got, want)
			}
			checkPrefixes(t, f.raw, version)
			// The same bytes followed by another packet decode the same way.
			twice := append(append([]byte{}, f.raw...), 0xc0, 0x00)
			if n, err := Decode(twice, version, 0, &p); err != nil || n != len(f.raw) {
				t.Fatalf("Decode with a packet behind: n=%d err=%v", n, err)
			}
		})
	}
}

func TestFixtures311(t *testing.T) { runFixtures(t, validFixtures311()) }

func TestFixtures5(t *testing.T) { runFixtures(t, validFixtures5()) }
