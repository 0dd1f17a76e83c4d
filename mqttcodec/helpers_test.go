package mqttcodec

import (
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// txt is literal text inside a cat() fixture.
type txt string

// cat builds raw bytes from hex strings (spaces allowed) and txt literals.
func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			x, err := hex.DecodeString(strings.ReplaceAll(v, " ", ""))
			if err != nil {
				panic(fmt.Sprintf("bad hex %q: %v", v, err))
			}
			b = append(b, x...)
		case txt:
			b = append(b, v...)
		default:
			panic(fmt.Sprintf("cat: %T", p))
		}
	}
	return b
}

// props builds a Properties with the setters.
func props(set func(p *Properties)) Properties {
	var p Properties
	set(&p)
	return p
}

// same reports whether a and b are deeply equal, taking a nil slice and an
// empty one as equal (decoders return empty views where a literal has nil).
func same(a, b any) bool { return sameValue(reflect.ValueOf(a), reflect.ValueOf(b)) }

func sameValue(a, b reflect.Value) bool {
	if a.Kind() != b.Kind() {
		return false
	}
	switch a.Kind() {
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Struct:
		for i := range a.NumField() {
			if !sameValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Pointer:
		return sameValue(a.Elem(), b.Elem())
	}
	return a.Equal(b)
}

// part returns the field of p that its Type selects.
func part(p *Packet) any {
	switch p.Type {
	case CONNECT:
		return p.Connect
	case CONNACK:
		return p.Connack
	case PUBLISH:
		return p.Publish
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		return p.Ack
	case SUBSCRIBE:
		return p.Subscribe
	case SUBACK:
		return p.Suback
	case UNSUBSCRIBE:
		return p.Unsubscribe
	case UNSUBACK:
		return p.Unsuback
	case DISCONNECT:
		return p.Disconnect
	case AUTH:
		return p.Auth
	}
	return nil
}

// samePacket compares the type and the selected field of two packets.
func samePacket(a, b *Packet) bool {
	return a.Type == b.Type && same(part(a), part(b))
}

// codecErr returns err as an *Error, failing the test if it is not one.
func codecErr(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	return e
}

// sessionVersion is the version a session passes to Decode for a packet.
func sessionVersion(raw []byte, version byte) byte {
	if len(raw) > 0 && Type(raw[0]>>4) == CONNECT {
		return 0
	}
	return version
}

// checkPrefixes decodes every strict prefix of raw: each must be "need
// more" or an error, never a packet.
func checkPrefixes(t *testing.T, raw []byte, version byte) {
	t.Helper()
	var p Packet
	for i := range len(raw) {
		n, err := Decode(raw[:i], version, 0, &p)
		if err == nil && n != 0 {
			t.Fatalf("prefix of %d/%d bytes decoded as %v (n=%d)", i, len(raw), p.Type, n)
		}
		if n > i {
			t.Fatalf("prefix of %d bytes: n=%d", i, n)
		}
	}
}

// The comparison the tests rely on must see differences.
func TestSameSeesDifferences(t *testing.T) {
	base := func() Packet {
		p := Packet{Type: PUBLISH, Publish: Publish{QoS: 1, PacketID: 1, Topic: []byte("a"), Payload: []byte{}}}
		p.Publish.Properties.AddUserProperty([]byte("k"), []byte("v"))
		return p
	}
	a := base()
	tests := []struct {
		name   string
		change func(p *Packet)
		same   bool
	}{
		{"identical", func(*Packet) {}, true},
		{"nil payload equals empty", func(p *Packet) { p.Publish.Payload = nil }, true},
		{"topic", func(p *Packet) { p.Publish.Topic = []byte("b") }, false},
		{"packet id", func(p *Packet) { p.Publish.PacketID = 2 }, false},
		{"user property value", func(p *Packet) { p.Publish.Properties.UserProperties[0].Value = []byte("w") }, false},
		{"present bit", func(p *Packet) { p.Publish.Properties.SetTopicAlias(0) }, false},
		{"type", func(p *Packet) { p.Type = PUBACK }, false},
		{"other field ignored", func(p *Packet) { p.Ack.PacketID = 9 }, true},
	}
	for _, tc := range tests {
		b := base()
		tc.change(&b)
		if got := samePacket(&a, &b); got != tc.same {
			t.Errorf("%s: samePacket = %v, want %v", tc.name, got, tc.same)
		}
	}
	one, two := uint16(1), uint16(2)
	if same(&one, &two) || !same(&one, &one) || same((*uint16)(nil), &one) || !same((*uint16)(nil), (*uint16)(nil)) {
		t.Error("same compares pointers wrongly")
	}
}
