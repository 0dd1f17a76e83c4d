package mqttcodec

import (
	"testing"
)

func TestPacketLen(t *testing.T) {
	tests := []struct {
		name    string
		b       []byte
		maxSize uint32
		total   int
		rule    string
		reason  ReasonCode
	}{
		{"empty", nil, 0, 0, "", 0},
		{"first byte only", cat("30"), 0, 0, "", 0},
		{"length continues", cat("30 80"), 0, 0, "", 0},
		{"length continues thrice", cat("30 ff ff ff"), 0, 0, "", 0},
		{"zero length", cat("c0 00"), 0, 2, "", 0},
		{"short length", cat("30 05"), 0, 7, "", 0},
		{"short length, content present", cat("30 02 00 00"), 0, 4, "", 0},
		{"two-byte length", cat("30 80 01"), 0, 131, "", 0},
		{"largest length", cat("30 ff ff ff 7f"), 0, MaxPacketSize, "", 0},
		{"at the maximum", cat("30 05"), 7, 7, "", 0},
		{"over the maximum", cat("30 05"), 6, 0, rulePacketTooLarge, PacketTooLarge},
		{"huge header, small maximum", cat("30 ff ff ff 7f"), 1 << 20, 0, rulePacketTooLarge, PacketTooLarge},
		{"five-byte length", cat("30 ff ff ff ff"), 0, 0, ruleVarint, MalformedPacket},
		{"five-byte length, more after", cat("30 80 80 80 80 01"), 0, 0, ruleVarint, MalformedPacket},
		{"non-shortest length", cat("30 85 00"), 0, 0, "MQTT-1.5.5-1", MalformedPacket},
		{"non-shortest zero", cat("c0 80 80 00"), 0, 0, "MQTT-1.5.5-1", MalformedPacket},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			total, err := PacketLen(tc.b, tc.maxSize)
			checkRule(t, err, tc.rule, tc.reason)
			if total != tc.total {
				t.Fatalf("PacketLen = %d, want %d", total, tc.total)
			}
		})
	}
}

func TestDecodeNeedMore(t *testing.T) {
	var p Packet
	big := cat("30 e8 07", "00 03", txt("a/b")) // PUBLISH of 1000 bytes, 5 present
	for _, b := range [][]byte{nil, {}, cat("30"), cat("30 e8"), big} {
		n, err := Decode(b, V311, 0, &p)
		if n != 0 || err != nil {
			t.Fatalf("Decode(% x) = %d, %v; want need more", b, n, err)
		}
	}
	total, _ := PacketLen(big, 0)
	if total != 1003 {
		t.Fatalf("PacketLen = %d, want 1003", total)
	}
	// Over the maximum: refused at once, nothing waited for.
	_, err := Decode(big, V311, 512, &p)
	checkRule(t, err, rulePacketTooLarge, PacketTooLarge)
	// A bad first byte is refused before the length is known.
	_, err = Decode(cat("60"), V311, 0, &p)
	checkRule(t, err, "MQTT-3.6.1-1", MalformedPacket)
	_, err = Decode(cat("36"), V5, 0, &p)
	checkRule(t, err, "MQTT-3.3.1-4", MalformedPacket)
}

// Packets back to back decode one at a time, and a stream fed a byte at a
// time yields the same packets.
func TestDecodeStream(t *testing.T) {
	for _, set := range []struct {
		version  byte
		fixtures []fixture
	}{{V311, validFixtures311()}, {V5, validFixtures5()}} {
		var stream []byte
		var sizes []int
		var types []Type
		for _, f := range set.fixtures {
			if f.want.Type == CONNECT {
				continue // only the first packet of a session is a CONNECT
			}
			stream = append(stream, f.raw...)
			sizes = append(sizes, len(f.raw))
			types = append(types, f.want.Type)
		}
		var p Packet
		rest := stream
		for i, size := range sizes {
			n, err := Decode(rest, set.version, 0, &p)
			if err != nil || n != size || p.Type != types[i] {
				t.Fatalf("v%d packet %d: n=%d err=%v type=%v; want %d, %v", set.version, i, n, err, p.Type, size, types[i])
			}
			rest = rest[n:]
		}
		if len(rest) != 0 {
			t.Fatalf("v%d: %d bytes left", set.version, len(rest))
		}

		var got []Type
		var buf []byte
		for _, b := range stream {
			buf = append(buf, b)
			for {
				n, err := Decode(buf, set.version, 0, &p)
				if err != nil {
					t.Fatalf("v%d byte stream: %v", set.version, err)
				}
				if n == 0 {
					break
				}
				got = append(got, p.Type)
				buf = buf[n:]
			}
		}
		if len(got) != len(types) || len(buf) != 0 {
			t.Fatalf("v%d byte stream gave %d packets (%d bytes left), want %d", set.version, len(got), len(buf), len(types))
		}
		for i := range got {
			if got[i] != types[i] {
				t.Fatalf("v%d byte stream packet %d is %v, want %v", set.version, i, got[i], types[i])
			}
		}
	}
}

// Decoding into a used Packet leaves nothing of the previous packet behind.
func TestDecodeReuse(t *testing.T) {
	var p Packet
	var first fixture
	for _, f := range validFixtures5() {
		if f.name == "PUBLISH every PUBLISH property" {
			first = f
		}
	}
	if _, err := Decode(first.raw, V5, 0, &p); err != nil {
		t.Fatal(err)
	}
	second := cat("30 07 00 03", txt("a/b"), "00", txt("z"))
	if _, err := Decode(second, V5, 0, &p); err != nil {
		t.Fatal(err)
	}
	want := Publish{Topic: []byte("a/b"), Payload: []byte("z")}
	if !same(p.Publish, want) {
		t.Fatalf("reused Publish = %+v, want %+v", p.Publish, want)
	}
	if cap(p.Publish.Properties.UserProperties) == 0 || cap(p.Publish.Properties.SubscriptionIDs) == 0 {
		t.Fatal("Decode dropped the capacity of the property lists")
	}
}
