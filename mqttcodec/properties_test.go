package mqttcodec

import (
	"bytes"
	"strings"
	"testing"
)

// allowedIn is Table 2-4 of MQTT 5.0 (section 2.2.2.2), written out
// independently of the codec: where each property may appear.
func allowedIn() map[PropID][]Type {
	acks := []Type{PUBACK, PUBREC, PUBREL, PUBCOMP}
	return map[PropID][]Type{
		PropPayloadFormat:        {PUBLISH, willProps},
		PropMessageExpiry:        {PUBLISH, willProps},
		PropContentType:          {PUBLISH, willProps},
		PropResponseTopic:        {PUBLISH, willProps},
		PropCorrelationData:      {PUBLISH, willProps},
		PropSubscriptionID:       {PUBLISH, SUBSCRIBE},
		PropSessionExpiry:        {CONNECT, CONNACK, DISCONNECT},
		PropAssignedClientID:     {CONNACK},
		PropServerKeepAlive:      {CONNACK},
		PropAuthMethod:           {CONNECT, CONNACK, AUTH},
		PropAuthData:             {CONNECT, CONNACK, AUTH},
		PropRequestProblemInfo:   {CONNECT},
		PropWillDelay:            {willProps},
		PropRequestResponseInfo:  {CONNECT},
		PropResponseInfo:         {CONNACK},
		PropServerReference:      {CONNACK, DISCONNECT},
		PropReasonString:         append([]Type{CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH}, acks...),
		PropReceiveMaximum:       {CONNECT, CONNACK},
		PropTopicAliasMaximum:    {CONNECT, CONNACK},
		PropTopicAlias:           {PUBLISH},
		PropMaximumQoS:           {CONNACK},
		PropRetainAvailable:      {CONNACK},
		PropUserProperty:         append([]Type{willProps, CONNECT, CONNACK, PUBLISH, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH}, acks...),
		PropMaximumPacketSize:    {CONNECT, CONNACK},
		PropWildcardSubAvailable: {CONNACK},
		PropSubIDAvailable:       {CONNACK},
		PropSharedSubAvailable:   {CONNACK},
	}
}

// setValid sets property id to a valid value.
func setValid(p *Properties, id PropID) {
	switch id {
	case PropPayloadFormat:
		p.SetPayloadFormat(1)
	case PropMessageExpiry:
		p.SetMessageExpiry(3600)
	case PropContentType:
		p.SetContentType([]byte("application/json"))
	case PropResponseTopic:
		p.SetResponseTopic([]byte("reply/here"))
	case PropCorrelationData:
		p.SetCorrelationData([]byte{0, 1, 2})
	case PropSubscriptionID:
		p.AddSubscriptionID(268_435_455)
	case PropSessionExpiry:
		p.SetSessionExpiry(0xFFFFFFFF)
	case PropAssignedClientID:
		p.SetAssignedClientID([]byte("auto-1"))
	case PropServerKeepAlive:
		p.SetServerKeepAlive(120)
	case PropAuthMethod:
		p.SetAuthMethod([]byte("SCRAM-SHA-256"))
	case PropAuthData:
		p.SetAuthMethod([]byte("SCRAM-SHA-256"))
		p.SetAuthData([]byte("nonce"))
	case PropRequestProblemInfo:
		p.SetRequestProblemInfo(0)
	case PropWillDelay:
		p.SetWillDelay(10)
	case PropRequestResponseInfo:
		p.SetRequestResponseInfo(1)
	case PropResponseInfo:
		p.SetResponseInfo([]byte("resp/"))
	case PropServerReference:
		p.SetServerReference([]byte("tcp://gw:1883"))
	case PropReasonString:
		p.SetReasonString([]byte("because"))
	case PropReceiveMaximum:
		p.SetReceiveMaximum(65535)
	case PropTopicAliasMaximum:
		p.SetTopicAliasMaximum(0)
	case PropTopicAlias:
		p.SetTopicAlias(65535)
	case PropMaximumQoS:
		p.SetMaximumQoS(0)
	case PropRetainAvailable:
		p.SetRetainAvailable(1)
	case PropUserProperty:
		p.AddUserProperty([]byte("name"), []byte("value"))
		p.AddUserProperty([]byte("name"), []byte(""))
	case PropMaximumPacketSize:
		p.SetMaximumPacketSize(1)
	case PropWildcardSubAvailable:
		p.SetWildcardSubAvailable(1)
	case PropSubIDAvailable:
		p.SetSubIDAvailable(0)
	case PropSharedSubAvailable:
		p.SetSharedSubAvailable(1)
	}
}

// withProps builds a valid MQTT 5 packet of type t (willProps: a CONNECT
// with a Will) that carries pr.
func withProps(t Type, pr Properties) Packet {
	sub := []Subscription{{Filter: []byte("t")}}
	switch t {
	case willProps:
		return Packet{Type: CONNECT, Connect: Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: V5, CleanStart: true,
			ClientID: []byte{}, WillFlag: true, WillTopic: []byte("t"), WillPayload: []byte{}, WillProperties: pr}}
	case CONNECT:
		return Packet{Type: CONNECT, Connect: Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: V5, CleanStart: true,
			ClientID: []byte{}, Properties: pr}}
	case CONNACK:
		return Packet{Type: CONNACK, Connack: Connack{Properties: pr}}
	case PUBLISH:
		return Packet{Type: PUBLISH, Publish: Publish{Topic: []byte("t"), Properties: pr, Payload: []byte{}}}
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		return Packet{Type: t, Ack: Ack{PacketID: 1, Properties: pr}}
	case SUBSCRIBE:
		return Packet{Type: SUBSCRIBE, Subscribe: Subscribe{PacketID: 1, Properties: pr, Subscriptions: sub}}
	case SUBACK:
		return Packet{Type: SUBACK, Suback: Suback{PacketID: 1, Properties: pr, ReasonCodes: []ReasonCode{0}}}
	case UNSUBSCRIBE:
		return Packet{Type: UNSUBSCRIBE, Unsubscribe: Unsubscribe{PacketID: 1, Properties: pr, Filters: [][]byte{[]byte("t")}}}
	case UNSUBACK:
		return Packet{Type: UNSUBACK, Unsuback: Unsuback{PacketID: 1, Properties: pr, ReasonCodes: []ReasonCode{0}}}
	case DISCONNECT:
		return Packet{Type: DISCONNECT, Disconnect: Disconnect{Properties: pr}}
	case AUTH: // every AUTH carries an Authentication Method
		if !pr.Has(PropAuthMethod) {
			pr.SetAuthMethod([]byte("m"))
		}
		return Packet{Type: AUTH, Auth: Auth{Properties: pr}}
	}
	panic("withProps: " + t.String())
}

// Every property in every packet type: accepted and round-tripped where the
// specification allows it, a Malformed Packet everywhere else.
func TestPropertyPlacement(t *testing.T) {
	contexts := []Type{willProps, CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP,
		SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH}
	for id, where := range allowedIn() {
		for _, ctx := range contexts {
			allowed := false
			for _, w := range where {
				allowed = allowed || w == ctx
			}
			var pr Properties
			setValid(&pr, id)
			pkt := withProps(ctx, pr)
			raw := Append(nil, V5, &pkt)
			var got Packet
			n, err := Decode(raw, sessionVersion(raw, V5), 0, &got)
			if !allowed {
				if err == nil {
					t.Errorf("%v in %v: accepted, want Malformed Packet", id, contextName(ctx))
				} else if e := codecErr(t, err); e.Rule != rulePropAllowed || e.Reason != MalformedPacket {
					t.Errorf("%v in %v: %v, want %s", id, contextName(ctx), err, rulePropAllowed)
				}
				continue
			}
			if err != nil || n != len(raw) {
				t.Errorf("%v in %v: n=%d err=%v", id, contextName(ctx), n, err)
				continue
			}
			if !samePacket(&got, &pkt) {
				t.Errorf("%v in %v: round trip\n got %+v\nwant %+v", id, contextName(ctx), part(&got), part(&pkt))
			}
		}
	}
}

// Every property at once, in the packet types that take the most.
func TestPropertiesAllAtOnce(t *testing.T) {
	for _, ctx := range []Type{willProps, CONNECT, CONNACK, PUBLISH} {
		var pr Properties
		for id, where := range allowedIn() {
			for _, w := range where {
				if w == ctx {
					setValid(&pr, id)
				}
			}
		}
		pkt := withProps(ctx, pr)
		raw := Append(nil, V5, &pkt)
		var got Packet
		if _, err := Decode(raw, sessionVersion(raw, V5), 0, &got); err != nil {
			t.Fatalf("%v: %v", contextName(ctx), err)
		}
		if !samePacket(&got, &pkt) {
			t.Fatalf("%v: round trip\n got %+v\nwant %+v", contextName(ctx), part(&got), part(&pkt))
		}
		if again := Append(nil, V5, &got); !bytes.Equal(again, raw) {
			t.Fatalf("%v: re-encoding differs", contextName(ctx))
		}
	}
}

func TestPropertiesHasResetClear(t *testing.T) {
	var p Properties
	p.SetTopicAlias(3)
	p.AddUserProperty([]byte("a"), []byte("b"))
	p.AddSubscriptionID(9)
	for _, id := range []PropID{PropTopicAlias, PropUserProperty, PropSubscriptionID} {
		if !p.Has(id) {
			t.Fatalf("Has(%v) = false", id)
		}
	}
	if p.Has(PropSessionExpiry) || p.Has(PropID(200)) {
		t.Fatal("Has reports an absent property")
	}
	p.Clear(PropUserProperty)
	if p.Has(PropUserProperty) || len(p.UserProperties) != 0 {
		t.Fatal("Clear(UserProperty) left it")
	}
	p.Clear(PropTopicAlias)
	if p.Has(PropTopicAlias) {
		t.Fatal("Clear(TopicAlias) left it")
	}
	p.Clear(PropID(100)) // out of range: no effect, no panic
	p.AddUserProperty([]byte("a"), []byte("b"))
	userCap, idCap := cap(p.UserProperties), cap(p.SubscriptionIDs)
	p.Reset()
	if p.Present != 0 || len(p.UserProperties) != 0 || len(p.SubscriptionIDs) != 0 {
		t.Fatalf("Reset left %+v", p)
	}
	if cap(p.UserProperties) != userCap || cap(p.SubscriptionIDs) != idCap {
		t.Fatal("Reset dropped the lists' capacity")
	}
	// The lists are written when non-empty even without their Present bit.
	q := Properties{UserProperties: []UserProperty{{Key: []byte("k"), Value: []byte("v")}}}
	if got := propsSize(&q); got != 7 {
		t.Fatalf("propsSize = %d, want 7", got)
	}
}

func TestPropIDString(t *testing.T) {
	for id := range allowedIn() {
		if s := id.String(); s == "" || strings.HasPrefix(s, "PropID(") {
			t.Errorf("PropID(%d).String() = %q", id, s)
		}
	}
	if s := PropID(0x7f).String(); s != "PropID(0x7f)" {
		t.Errorf("unknown PropID String = %q", s)
	}
}
