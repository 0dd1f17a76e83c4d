package mqttcodec

import (
	"bytes"
	"fmt"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang/packets"
)

// to311 converts a packet to its paho.mqtt.golang form.
func to311(p *Packet) paho.ControlPacket {
	cp := paho.NewControlPacket(byte(p.Type))
	switch x := cp.(type) {
	case *paho.ConnectPacket:
		c := &p.Connect
		x.ProtocolName, x.ProtocolVersion = string(c.ProtocolName), c.ProtocolVersion
		x.CleanSession, x.Keepalive, x.ClientIdentifier = c.CleanStart, c.KeepAlive, string(c.ClientID)
		x.WillFlag, x.WillQos, x.WillRetain = c.WillFlag, c.WillQoS, c.WillRetain
		x.WillTopic, x.WillMessage = string(c.WillTopic), c.WillPayload
		x.UsernameFlag, x.Username = c.UsernameFlag, string(c.Username)
		x.PasswordFlag, x.Password = c.PasswordFlag, c.Password
	case *paho.ConnackPacket:
		x.SessionPresent, x.ReturnCode = p.Connack.SessionPresent, byte(p.Connack.ReasonCode)
	case *paho.PublishPacket:
		k := &p.Publish
		x.Dup, x.Qos, x.Retain = k.Dup, k.QoS, k.Retain
		x.TopicName, x.MessageID, x.Payload = string(k.Topic), k.PacketID, k.Payload
	case *paho.PubackPacket:
		x.MessageID = p.Ack.PacketID
	case *paho.PubrecPacket:
		x.MessageID = p.Ack.PacketID
	case *paho.PubrelPacket:
		x.MessageID = p.Ack.PacketID
	case *paho.PubcompPacket:
		x.MessageID = p.Ack.PacketID
	case *paho.SubscribePacket:
		x.MessageID = p.Subscribe.PacketID
		for _, s := range p.Subscribe.Subscriptions {
			x.Topics = append(x.Topics, string(s.Filter))
			x.Qoss = append(x.Qoss, s.QoS)
		}
	case *paho.SubackPacket:
		x.MessageID = p.Suback.PacketID
		for _, rc := range p.Suback.ReasonCodes {
			x.ReturnCodes = append(x.ReturnCodes, byte(rc))
		}
	case *paho.UnsubscribePacket:
		x.MessageID = p.Unsubscribe.PacketID
		for _, f := range p.Unsubscribe.Filters {
			x.Topics = append(x.Topics, string(f))
		}
	case *paho.UnsubackPacket:
		x.MessageID = p.Unsuback.PacketID
	}
	return cp
}

// from311 converts a paho.mqtt.golang packet to ours.
func from311(cp paho.ControlPacket) Packet {
	var p Packet
	switch x := cp.(type) {
	case *paho.ConnectPacket:
		p.Type = CONNECT
		p.Connect = Connect{ProtocolName: []byte(x.ProtocolName), ProtocolVersion: x.ProtocolVersion,
			CleanStart: x.CleanSession, KeepAlive: x.Keepalive, ClientID: []byte(x.ClientIdentifier),
			WillFlag: x.WillFlag, WillQoS: x.WillQos, WillRetain: x.WillRetain,
			UsernameFlag: x.UsernameFlag, PasswordFlag: x.PasswordFlag, Password: x.Password}
		if x.WillFlag {
			p.Connect.WillTopic, p.Connect.WillPayload = []byte(x.WillTopic), x.WillMessage
		}
		if x.UsernameFlag {
			p.Connect.Username = []byte(x.Username)
		}
	case *paho.ConnackPacket:
		p.Type = CONNACK
		p.Connack = Connack{SessionPresent: x.SessionPresent, ReasonCode: ReasonCode(x.ReturnCode)}
	case *paho.PublishPacket:
		p.Type = PUBLISH
		p.Publish = Publish{Dup: x.Dup, QoS: x.Qos, Retain: x.Retain, Topic: []byte(x.TopicName),
			PacketID: x.MessageID, Payload: x.Payload}
	case *paho.PubackPacket:
		p.Type, p.Ack = PUBACK, Ack{PacketID: x.MessageID}
	case *paho.PubrecPacket:
		p.Type, p.Ack = PUBREC, Ack{PacketID: x.MessageID}
	case *paho.PubrelPacket:
		p.Type, p.Ack = PUBREL, Ack{PacketID: x.MessageID}
	case *paho.PubcompPacket:
		p.Type, p.Ack = PUBCOMP, Ack{PacketID: x.MessageID}
	case *paho.SubscribePacket:
		p.Type = SUBSCRIBE
		p.Subscribe.PacketID = x.MessageID
		for i, f := range x.Topics {
			p.Subscribe.Subscriptions = append(p.Subscribe.Subscriptions, Subscription{Filter: []byte(f), QoS: x.Qoss[i]})
		}
	case *paho.SubackPacket:
		p.Type = SUBACK
		p.Suback.PacketID = x.MessageID
		for _, rc := range x.ReturnCodes {
			p.Suback.ReasonCodes = append(p.Suback.ReasonCodes, ReasonCode(rc))
		}
	case *paho.UnsubscribePacket:
		p.Type = UNSUBSCRIBE
		p.Unsubscribe.PacketID = x.MessageID
		for _, f := range x.Topics {
			p.Unsubscribe.Filters = append(p.Unsubscribe.Filters, []byte(f))
		}
	case *paho.UnsubackPacket:
		p.Type, p.Unsuback = UNSUBACK, Unsuback{PacketID: x.MessageID}
	case *paho.PingreqPacket:
		p.Type = PINGREQ
	case *paho.PingrespPacket:
		p.Type = PINGRESP
	case *paho.DisconnectPacket:
		p.Type = DISCONNECT
	}
	return p
}

// interopRounds is how many random packets of each type cross each way.
const interopRounds = 300

// Every 3.1.1 packet type, both ways: paho.mqtt.golang writes what we write,
// byte for byte, we decode what it writes, and it decodes what we write.
func TestInterop311(t *testing.T) {
	g := newGen(311, false)
	for _, typ := range allTypes(V311) {
		t.Run(typ.String(), func(t *testing.T) {
			var got Packet
			for i := range interopRounds {
				want := g.packet(typ, V311)
				ours := Append(nil, V311, &want)

				var theirs bytes.Buffer
				if err := to311(&want).Write(&theirs); err != nil {
					t.Fatalf("round %d: paho Write: %v", i, err)
				}
				if !bytes.Equal(theirs.Bytes(), ours) {
					t.Fatalf("round %d: encodings differ\npaho % x\nours % x", i, head(theirs.Bytes()), head(ours))
				}
				n, err := Decode(theirs.Bytes(), sessionVersion(ours, V311), 0, &got)
				if err != nil || n != theirs.Len() {
					t.Fatalf("round %d: Decode(paho) n=%d err=%v", i, n, err)
				}
				if !samePacket(&got, &want) {
					t.Fatalf("round %d: Decode(paho)\n got %s\nwant %s", i, brief(&got), brief(&want))
				}

				cp, err := paho.ReadPacket(bytes.NewReader(ours))
				if err != nil {
					t.Fatalf("round %d: paho ReadPacket: %v", i, err)
				}
				if back := from311(cp); !samePacket(&back, &want) {
					t.Fatalf("round %d: paho read\n got %s\nwant %s", i, brief(&back), brief(&want))
				}
			}
		})
	}
}

// head shortens a long packet for a failure message.
func head(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

func brief(p *Packet) string {
	s := fmt.Sprintf("%+v", part(p))
	if len(s) > 600 {
		s = s[:600] + "..."
	}
	return p.Type.String() + " " + s
}
