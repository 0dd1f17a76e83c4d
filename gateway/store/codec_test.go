package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func codecCases() []struct {
	name string
	cmd  *Command
} {
	full := &Command{
		ID:          "01jc5m4a8s7b3k9x2q6w0e1r5t",
		ClientID:    "car-42",
		Topic:       "devices/car-42/commands/unlock",
		Payload:     []byte{0, 1, 2, 0xff},
		QoS:         1,
		Secure:      true,
		CreatedAt:   at(0),
		ExpiresAt:   at(time.Hour),
		DeliveredAt: at(time.Minute),
		Status:      StatusDelivered,
		Attempts:    2,
		History: []Transition{
			{Status: StatusPending, At: at(0)},
			{Status: StatusSent, At: at(time.Second), Note: "written on tls"},
			{Status: StatusDelivered, At: at(time.Minute), Note: "puback"},
		},
	}
	return []struct {
		name string
		cmd  *Command
	}{
		{name: "full", cmd: full},
		{name: "minimal", cmd: &Command{ID: "a", ClientID: "b", Topic: "c", CreatedAt: at(0), Status: StatusPending}},
		{name: "before 1970", cmd: &Command{ID: "a", ClientID: "b", Topic: "c", CreatedAt: time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC), Status: StatusFailed}},
		{name: "unicode and long payload", cmd: &Command{
			ID: "ü", ClientID: "機器-1", Topic: "devices/機器-1/commands/ö",
			Payload: bytes.Repeat([]byte{0xa5}, 3000), CreatedAt: at(1), Status: StatusUpgrading,
			Attempts: 300, History: []Transition{{Status: StatusUpgrading, At: at(1), Note: strings.Repeat("n", 200)}},
		}},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, tc := range codecCases() {
		t.Run(tc.name, func(t *testing.T) {
			rec := appendCommand(nil, tc.cmd)
			if len(rec) > recordSize(tc.cmd) {
				t.Errorf("record is %d bytes, recordSize said at most %d", len(rec), recordSize(tc.cmd))
			}
			got, err := decodeCommand(rec)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.cmd) {
				t.Fatalf("round trip\n got %+v\nwant %+v", got, tc.cmd)
			}
			// The decoded command does not alias the record.
			if len(got.Payload) > 0 {
				got.Payload[0] ^= 0xff
				if again, _ := decodeCommand(rec); !reflect.DeepEqual(again, tc.cmd) {
					t.Fatal("decoded payload aliases the record")
				}
			}
			// No shorter prefix decodes.
			for n := range len(rec) {
				if _, err := decodeCommand(rec[:n]); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("prefix of %d/%d bytes: %v, want ErrCorrupt", n, len(rec), err)
				}
			}
			// Appending reuses the room in dst.
			dst := make([]byte, 3, 3+recordSize(tc.cmd))
			if out := appendCommand(dst, tc.cmd); &out[0] != &dst[0] || !bytes.Equal(out[3:], rec) {
				t.Fatal("appendCommand did not append into dst")
			}
		})
	}
}

func TestRecordCorrupt(t *testing.T) {
	good := appendCommand(nil, codecCases()[1].cmd) // minimal: version, 3 strings, payload, qos, flags, 3 times, status, attempts, history
	patch := func(i int, b byte) []byte {
		r := bytes.Clone(good)
		r[i] = b
		return r
	}
	// Offsets in the minimal record: 0 version; 1-2 id; 3-4 client;
	// 5-6 topic; 7 payload length; 8 qos; 9 flags; 10-18 created;
	// 19 expires; 20 delivered; 21 status; 22 attempts; 23 history count.
	cases := []struct {
		name string
		rec  []byte
	}{
		{name: "empty", rec: nil},
		{name: "version 2", rec: patch(0, 2)},
		{name: "string past the end", rec: patch(1, 100)},
		{name: "bad flags", rec: patch(9, 0x82)},
		{name: "bad time marker", rec: patch(19, 7)},
		{name: "no status", rec: patch(21, 0)},
		{name: "unknown status", rec: patch(21, 9)},
		{name: "trailing byte", rec: append(bytes.Clone(good), 0)},
		{name: "huge history count", rec: append(good[:23:23], binary.AppendUvarint(nil, 1<<40)...)},
		{name: "history count beyond the bytes", rec: append(good[:23:23], 5, 1, 0)},
		{name: "overlong varint", rec: append(good[:22:22], bytes.Repeat([]byte{0xff}, 11)...)},
		{name: "non-canonical varint", rec: append(good[:22:22], 0x80, 0x00, 0x00)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeCommand(tc.rec); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode: %v, want ErrCorrupt", err)
			}
		})
	}
	if _, err := decodeCommand(good); err != nil {
		t.Fatalf("the unpatched record fails: %v", err)
	}
}

func TestTimeKeyOrder(t *testing.T) {
	times := []time.Time{
		time.Date(1678, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Unix(0, 0),
		time.Unix(0, 1),
		at(0),
		at(1),
		time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for i := 1; i < len(times); i++ {
		a, b := appendTimeKey(nil, times[i-1]), appendTimeKey(nil, times[i])
		if bytes.Compare(a, b) >= 0 {
			t.Errorf("key of %s does not sort before key of %s", times[i-1], times[i])
		}
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, tc := range codecCases() {
		if rec := appendCommand(nil, tc.cmd); len(rec) < 1024 { // big seeds only slow the fuzzer
			f.Add(rec)
		}
	}
	f.Add([]byte{recordVersion})
	f.Fuzz(func(t *testing.T, rec []byte) {
		c, err := decodeCommand(rec)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		// Whatever decodes encodes back to the same bytes.
		if again := appendCommand(nil, c); !bytes.Equal(again, rec) {
			t.Fatalf("re-encoding differs:\n%x\n%x", rec, again)
		}
	})
}
