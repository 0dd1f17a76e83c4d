package mqttcodec

import (
	"bytes"
	"math/rand/v2"
)

// gen makes random valid packets for the interop tests. With paho set, it
// keeps to what paho.golang can write: one Subscription Identifier, no empty
// string or binary property (paho writes those only when non-empty), and
// Will Properties limited to Will Delay and User Properties (paho packs Will
// Properties with the CONNECT filter, which drops the PUBLISH ones).
type gen struct {
	r    *rand.Rand
	paho bool
}

func newGen(seed uint64, paho bool) *gen {
	return &gen{r: rand.New(rand.NewPCG(seed, 0x6475616c67617465)), paho: paho}
}

func (g *gen) coin() bool { return g.r.IntN(2) == 0 }

// size picks a length in [lo, hi]: often the extremes, else small.
func (g *gen) size(lo, hi int) int {
	switch n := g.r.IntN(20); {
	case n == 0:
		return lo
	case n == 1:
		return hi
	}
	return lo + g.r.IntN(min(hi-lo, 40)+1)
}

// text returns exactly n bytes of valid UTF-8 without U+0000, '/', '+',
// '#' or '$', with multi-byte characters mixed in.
func (g *gen) text(n int) []byte {
	const pieces = "abcdefXYZ019-_. ~" // ASCII alphabet
	multi := []string{"é", "世", "🚀", "\ufeff", "ß"}
	b := make([]byte, 0, n)
	for len(b) < n {
		if m := multi[g.r.IntN(len(multi))]; n-len(b) >= len(m) && g.r.IntN(4) == 0 {
			b = append(b, m...)
			continue
		}
		b = append(b, pieces[g.r.IntN(len(pieces))])
	}
	return b
}

func (g *gen) str(lo, hi int) []byte { return g.text(g.size(lo, hi)) }

func (g *gen) bin(lo, hi int) []byte {
	b := make([]byte, g.size(lo, hi))
	for i := range b {
		b[i] = byte(g.r.UintN(256))
	}
	return b
}

// topic returns a valid topic name, sometimes of the maximum length.
func (g *gen) topic() []byte {
	if g.r.IntN(40) == 0 {
		return bytes.Repeat([]byte("t"), maxTopicLen)
	}
	var b []byte
	if g.r.IntN(8) == 0 {
		b = append(b, "$SYS/"...)
	}
	levels := 1 + g.r.IntN(4)
	for i := range levels {
		if i > 0 {
			b = append(b, '/')
		}
		b = append(b, g.text(g.r.IntN(8))...)
	}
	if len(b) == 0 {
		b = append(b, 'x')
	}
	return b
}

// filter returns a valid topic filter: levels of text or '+', maybe a last '#'.
func (g *gen) filter(version byte) []byte {
	var b []byte
	if version == V5 && g.r.IntN(6) == 0 {
		b = append(b, "$share/"...)
		b = append(b, g.text(1+g.r.IntN(5))...)
		b = append(b, '/')
	}
	levels := 1 + g.r.IntN(4)
	for i := range levels {
		if i > 0 {
			b = append(b, '/')
		}
		switch {
		case i == levels-1 && g.r.IntN(4) == 0:
			b = append(b, '#')
		case g.r.IntN(4) == 0:
			b = append(b, '+')
		default:
			b = append(b, g.text(g.r.IntN(6))...)
		}
	}
	if len(b) == 0 || b[len(b)-1] == '/' && bytes.HasPrefix(b, []byte(sharePrefix)) {
		b = append(b, 'x')
	}
	return b
}

// reasons lists the reason codes packet type t allows.
func reasons(t Type) []ReasonCode {
	var rcs []ReasonCode
	for v := range 256 {
		if validReason(t, ReasonCode(v)) {
			rcs = append(rcs, ReasonCode(v))
		}
	}
	return rcs
}

func (g *gen) reason(t Type) ReasonCode {
	rcs := reasons(t)
	return rcs[g.r.IntN(len(rcs))]
}

// props returns random valid properties for packet type t (willProps: a Will).
func (g *gen) props(t Type) Properties {
	var p Properties
	lo := 0
	if g.paho {
		lo = 1
	}
	for _, id := range sortedIDs() {
		allowed := false
		for _, w := range allowedIn()[id] {
			allowed = allowed || w == t
		}
		if !allowed || !g.coin() {
			continue
		}
		if g.paho && t == willProps && id != PropWillDelay && id != PropUserProperty {
			continue
		}
		switch id {
		case PropPayloadFormat:
			p.SetPayloadFormat(byte(g.r.IntN(2)))
		case PropMessageExpiry:
			p.SetMessageExpiry(g.r.Uint32())
		case PropContentType:
			p.SetContentType(g.str(lo, 100))
		case PropResponseTopic:
			p.SetResponseTopic(g.topic())
		case PropCorrelationData:
			p.SetCorrelationData(g.bin(lo, 100))
		case PropSubscriptionID:
			n := 1
			if t == PUBLISH && !g.paho {
				n += g.r.IntN(3)
			}
			for range n {
				p.AddSubscriptionID(1 + g.r.Uint32N(MaxRemainingLength))
			}
		case PropSessionExpiry:
			p.SetSessionExpiry(g.r.Uint32())
		case PropAssignedClientID:
			p.SetAssignedClientID(g.str(lo, 64))
		case PropServerKeepAlive:
			p.SetServerKeepAlive(uint16(g.r.UintN(1 << 16)))
		case PropAuthMethod:
			p.SetAuthMethod(g.str(lo, 30))
		case PropAuthData:
			if !p.Has(PropAuthMethod) {
				p.SetAuthMethod(g.str(1, 30))
			}
			p.SetAuthData(g.bin(lo, 100))
		case PropRequestProblemInfo:
			p.SetRequestProblemInfo(byte(g.r.IntN(2)))
		case PropWillDelay:
			p.SetWillDelay(g.r.Uint32())
		case PropRequestResponseInfo:
			p.SetRequestResponseInfo(byte(g.r.IntN(2)))
		case PropResponseInfo:
			p.SetResponseInfo(g.str(lo, 30))
		case PropServerReference:
			p.SetServerReference(g.str(lo, 30))
		case PropReasonString:
			p.SetReasonString(g.str(lo, 80))
		case PropReceiveMaximum:
			p.SetReceiveMaximum(uint16(1 + g.r.UintN(65535)))
		case PropTopicAliasMaximum:
			p.SetTopicAliasMaximum(uint16(g.r.UintN(1 << 16)))
		case PropTopicAlias:
			p.SetTopicAlias(uint16(1 + g.r.UintN(65535)))
		case PropMaximumQoS:
			p.SetMaximumQoS(byte(g.r.IntN(2)))
		case PropRetainAvailable:
			p.SetRetainAvailable(byte(g.r.IntN(2)))
		case PropUserProperty:
			for range 1 + g.r.IntN(3) {
				p.AddUserProperty(g.str(0, 20), g.str(0, 20))
			}
		case PropMaximumPacketSize:
			p.SetMaximumPacketSize(1 + g.r.Uint32N(1<<31))
		case PropWildcardSubAvailable:
			p.SetWildcardSubAvailable(byte(g.r.IntN(2)))
		case PropSubIDAvailable:
			p.SetSubIDAvailable(byte(g.r.IntN(2)))
		case PropSharedSubAvailable:
			p.SetSharedSubAvailable(byte(g.r.IntN(2)))
		}
	}
	return p
}

// sortedIDs is every property identifier in ascending order, so that a
// seed always gives the same values.
func sortedIDs() []PropID {
	var ids []PropID
	for id := PropID(0); id < 64; id++ {
		if kind, _ := propSpec(id); kind != 0 {
			ids = append(ids, id)
		}
	}
	return ids
}

// packet returns a random valid packet of type t.
func (g *gen) packet(t Type, version byte) Packet {
	v5 := version == V5
	p := Packet{Type: t}
	switch t {
	case CONNECT:
		c := &p.Connect
		c.ProtocolName, c.ProtocolVersion = []byte("MQTT"), version
		c.CleanStart, c.KeepAlive = g.coin(), uint16(g.r.UintN(1<<16))
		c.ClientID = g.str(0, 65535)
		if !v5 && len(c.ClientID) == 0 {
			c.CleanStart = true
		}
		if c.WillFlag = g.coin(); c.WillFlag {
			c.WillQoS, c.WillRetain = byte(g.r.IntN(3)), g.coin()
			c.WillTopic, c.WillPayload = g.topic(), g.bin(0, 65535)
			if v5 {
				c.WillProperties = g.props(willProps)
			}
		}
		if c.UsernameFlag = g.coin(); c.UsernameFlag {
			c.Username = g.str(0, 65535)
		}
		if c.PasswordFlag = g.coin() && (v5 || c.UsernameFlag); c.PasswordFlag {
			c.Password = g.bin(0, 65535)
		}
		if v5 {
			c.Properties = g.props(CONNECT)
		}
	case CONNACK:
		if v5 {
			p.Connack.ReasonCode = g.reason(CONNACK)
			p.Connack.Properties = g.props(CONNACK)
		} else {
			p.Connack.ReasonCode = ReasonCode(g.r.IntN(6))
		}
		p.Connack.SessionPresent = p.Connack.ReasonCode == 0 && g.coin()
	case PUBLISH:
		k := &p.Publish
		k.QoS, k.Retain = byte(g.r.IntN(3)), g.coin()
		if k.QoS > 0 {
			k.Dup, k.PacketID = g.coin(), uint16(1+g.r.UintN(65535))
		}
		k.Topic = g.topic()
		if v5 {
			k.Properties = g.props(PUBLISH)
			if g.r.IntN(5) == 0 {
				k.Topic = []byte{}
				k.Properties.SetTopicAlias(uint16(1 + g.r.UintN(65535)))
			}
		}
		k.Payload = g.bin(0, 4096)
		if g.r.IntN(100) == 0 {
			k.Payload = g.bin(100_000, 100_000)
		}
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		p.Ack.PacketID = uint16(1 + g.r.UintN(65535))
		if v5 {
			p.Ack.ReasonCode, p.Ack.Properties = g.reason(t), g.props(t)
		}
	case SUBSCRIBE:
		k := &p.Subscribe
		k.PacketID = uint16(1 + g.r.UintN(65535))
		if v5 {
			k.Properties = g.props(SUBSCRIBE)
		}
		for range 1 + g.r.IntN(5) {
			s := Subscription{Filter: g.filter(version), QoS: byte(g.r.IntN(3))}
			if v5 {
				s.NoLocal = g.coin() && !bytes.HasPrefix(s.Filter, []byte(sharePrefix))
				s.RetainAsPublished, s.RetainHandling = g.coin(), byte(g.r.IntN(3))
			}
			k.Subscriptions = append(k.Subscriptions, s)
		}
	case SUBACK:
		p.Suback.PacketID = uint16(1 + g.r.UintN(65535))
		if v5 {
			p.Suback.Properties = g.props(SUBACK)
		}
		for range 1 + g.r.IntN(5) {
			rc := []ReasonCode{GrantedQoS0, GrantedQoS1, GrantedQoS2, UnspecifiedError}[g.r.IntN(4)]
			if v5 {
				rc = g.reason(SUBACK)
			}
			p.Suback.ReasonCodes = append(p.Suback.ReasonCodes, rc)
		}
	case UNSUBSCRIBE:
		p.Unsubscribe.PacketID = uint16(1 + g.r.UintN(65535))
		if v5 {
			p.Unsubscribe.Properties = g.props(UNSUBSCRIBE)
		}
		for range 1 + g.r.IntN(5) {
			p.Unsubscribe.Filters = append(p.Unsubscribe.Filters, g.filter(version))
		}
	case UNSUBACK:
		p.Unsuback.PacketID = uint16(1 + g.r.UintN(65535))
		if v5 {
			p.Unsuback.Properties = g.props(UNSUBACK)
			for range 1 + g.r.IntN(5) {
				p.Unsuback.ReasonCodes = append(p.Unsuback.ReasonCodes, g.reason(UNSUBACK))
			}
		}
	case DISCONNECT:
		if v5 {
			p.Disconnect.ReasonCode, p.Disconnect.Properties = g.reason(DISCONNECT), g.props(DISCONNECT)
		}
	case AUTH:
		p.Auth.ReasonCode, p.Auth.Properties = g.reason(AUTH), g.props(AUTH)
		if !p.Auth.Properties.Has(PropAuthMethod) {
			p.Auth.Properties.SetAuthMethod(g.str(1, 30))
		}
	}
	return p
}

// allTypes lists the packet types of a version.
func allTypes(version byte) []Type {
	ts := []Type{CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK,
		UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT}
	if version == V5 {
		ts = append(ts, AUTH)
	}
	return ts
}
