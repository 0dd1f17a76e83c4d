package mqttcodec

import (
	"bytes"
	"testing"
)

// benchPackets returns one typical packet of every type the version has.
func benchPackets(version byte) []Packet {
	payload := bytes.Repeat([]byte("x"), 64)
	pr := func(set func(p *Properties)) Properties {
		if version != V5 {
			return Properties{}
		}
		return props(set)
	}
	pkts := []Packet{
		{Type: CONNECT, Connect: Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: version, CleanStart: true,
			KeepAlive: 60, ClientID: []byte("device-000001"), UsernameFlag: true, Username: []byte("device-000001"),
			PasswordFlag: true, Password: []byte("token-0123456789abcdef"),
			Properties: pr(func(p *Properties) { p.SetSessionExpiry(300); p.SetReceiveMaximum(32) })}},
		{Type: CONNACK, Connack: Connack{Properties: pr(func(p *Properties) { p.SetTopicAliasMaximum(10); p.SetMaximumQoS(1) })}},
		{Type: PUBLISH, Publish: Publish{QoS: 1, PacketID: 42, Topic: []byte("devices/device-000001/commands/unlock"),
			Properties: pr(func(p *Properties) { p.SetMessageExpiry(60) }), Payload: payload}},
		{Type: PUBACK, Ack: Ack{PacketID: 42}},
		{Type: PUBREC, Ack: Ack{PacketID: 42}},
		{Type: PUBREL, Ack: Ack{PacketID: 42}},
		{Type: PUBCOMP, Ack: Ack{PacketID: 42}},
		{Type: SUBSCRIBE, Subscribe: Subscribe{PacketID: 1, Subscriptions: []Subscription{
			{Filter: []byte("devices/device-000001/commands/#"), QoS: 1}}}},
		{Type: SUBACK, Suback: Suback{PacketID: 1, ReasonCodes: []ReasonCode{GrantedQoS1}}},
		{Type: UNSUBSCRIBE, Unsubscribe: Unsubscribe{PacketID: 2, Filters: [][]byte{[]byte("devices/device-000001/commands/#")}}},
		{Type: UNSUBACK, Unsuback: Unsuback{PacketID: 2, ReasonCodes: []ReasonCode{Success}}},
		{Type: PINGREQ},
		{Type: PINGRESP},
		{Type: DISCONNECT, Disconnect: Disconnect{ReasonCode: UseAnotherServer, Properties: pr(func(p *Properties) {
			p.SetServerReference([]byte("tls://gw.example.com:8883"))
		})}},
	}
	if version == V5 {
		pkts = append(pkts, Packet{Type: AUTH, Auth: Auth{ReasonCode: ContinueAuthentication, Properties: props(func(p *Properties) {
			p.SetAuthMethod([]byte("SCRAM-SHA-256"))
			p.SetAuthData(bytes.Repeat([]byte{7}, 32))
		})}})
	}
	return pkts
}

func versionName(v byte) string {
	if v == V5 {
		return "v5"
	}
	return "v311"
}

func BenchmarkDecode(b *testing.B) {
	for _, version := range []byte{V311, V5} {
		for _, pkt := range benchPackets(version) {
			raw := Append(nil, version, &pkt)
			session := sessionVersion(raw, version)
			b.Run(versionName(version)+"/"+pkt.Type.String(), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(raw)))
				var p Packet
				for b.Loop() {
					if _, err := Decode(raw, session, 0, &p); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, version := range []byte{V311, V5} {
		for _, pkt := range benchPackets(version) {
			buf := make([]byte, 0, 512)
			size := len(Append(nil, version, &pkt))
			b.Run(versionName(version)+"/"+pkt.Type.String(), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for b.Loop() {
					buf = Append(buf[:0], version, &pkt)
				}
			})
		}
	}
}

func BenchmarkMatchTopic(b *testing.B) {
	filter := []byte("devices/+/commands/#")
	topic := []byte("devices/device-000001/commands/unlock")
	b.ReportAllocs()
	for b.Loop() {
		if !MatchTopic(filter, topic) {
			b.Fatal("no match")
		}
	}
}
