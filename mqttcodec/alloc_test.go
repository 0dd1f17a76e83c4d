package mqttcodec

import (
	"testing"
)

// Decoding PINGREQ, PUBACK and PUBLISH allocates nothing: the Packet holds
// views into the buffer. A partial packet allocates nothing either.
func TestDecodeAllocs(t *testing.T) {
	pub5 := cat("32 38 00 03", txt("a/b"), "00 05 2e",
		"01 01 02 00 00 00 3c 03 00 04", txt("json"), "08 00 03", txt("r/1"),
		"09 00 01 ff 0b 05 0b 80 01 23 00 02",
		"26 00 01", txt("a"), "00 01", txt("b"), "26 00 01", txt("a"), "00 01", txt("c"), txt("{}"))
	tests := []struct {
		name    string
		version byte
		raw     []byte
	}{
		{"PINGREQ", V311, cat("c0 00")},
		{"PUBACK 3.1.1", V311, cat("40 02 00 01")},
		{"PUBACK 5.0 with Reason String", V5, cat("40 09 00 01 80 05 1f 00 02", txt("no"))},
		{"PUBLISH 3.1.1", V311, cat("32 09 00 03", txt("a/b"), "00 07", txt("on"))},
		{"PUBLISH 5.0 every property", V5, pub5},
		{"need more", V5, cat("30 e8 07 00 03")},
		{"SUBSCRIBE into a used Packet", V5, cat("82 18 00 0a 02 0b 07 00 03", txt("a/+"), "1d 00 0a", txt("$share/g/x"), "22")},
		{"DISCONNECT 5.0", V5, cat("e0 23 9c 21 1c 00 0d", txt("tls://gw:8883"), "1f 00 0e", txt("secure-command"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			allocs := testing.AllocsPerRun(100, func() {
				if _, err := Decode(tc.raw, tc.version, 0, &p); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Fatalf("Decode allocates %.1f times", allocs)
			}
		})
	}
}

// Every encoder into a buffer with room allocates nothing.
func TestEncodeAllocs(t *testing.T) {
	for _, version := range []byte{V311, V5} {
		for _, pkt := range benchPackets(version) {
			t.Run(versionName(version)+"/"+pkt.Type.String(), func(t *testing.T) {
				buf := make([]byte, 0, 512)
				allocs := testing.AllocsPerRun(100, func() {
					buf = Append(buf[:0], version, &pkt)
				})
				if allocs != 0 {
					t.Fatalf("Append allocates %.1f times", allocs)
				}
			})
		}
	}
	buf := make([]byte, 0, 16)
	for name, enc := range map[string]func(){
		"AppendPingreq":  func() { buf = AppendPingreq(buf[:0]) },
		"AppendPingresp": func() { buf = AppendPingresp(buf[:0]) },
		"AppendAck":      func() { buf = AppendAck(buf[:0], V5, PUBREL, &Ack{PacketID: 9, ReasonCode: PacketIdentifierNotFound}) },
		"AppendAuth":     func() { buf = AppendAuth(buf[:0], &Auth{ReasonCode: ReAuthenticate}) },
	} {
		if allocs := testing.AllocsPerRun(100, enc); allocs != 0 {
			t.Errorf("%s allocates %.1f times", name, allocs)
		}
	}
}

func TestTopicAllocs(t *testing.T) {
	filter, topic := []byte("devices/+/commands/#"), []byte("devices/d1/commands/open")
	shared := []byte("$share/g/devices/+/commands/#")
	allocs := testing.AllocsPerRun(100, func() {
		if !MatchTopic(filter, topic) {
			t.Fatal("no match")
		}
		if ValidTopicName(topic) != nil || ValidTopicFilter(shared) != nil {
			t.Fatal("invalid")
		}
		if _, _, ok, err := ParseShared(shared); !ok || err != nil {
			t.Fatal("not shared")
		}
	})
	if allocs != 0 {
		t.Fatalf("topic helpers allocate %.1f times", allocs)
	}
}
