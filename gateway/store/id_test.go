package store

import (
	"encoding/base32"
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

func TestNewID(t *testing.T) {
	hex := base32.HexEncoding.WithPadding(base32.NoPadding)
	cases := []struct {
		name string
		now  time.Time
	}{
		{name: "epoch", now: time.Unix(0, 0)},
		{name: "now", now: time.Now()},
		{name: "test clock", now: at(0)},
		{name: "far future", now: time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := NewID(tc.now)
			if len(id) != IDLen || strings.Trim(id, idAlphabet) != "" {
				t.Fatalf("NewID = %q: want %d characters of %q", id, IDLen, idAlphabet)
			}
			raw, err := hex.DecodeString(strings.ToUpper(id))
			if err != nil || len(raw) != 16 {
				t.Fatalf("%q is not 16 bytes of base32hex: %v", id, err)
			}
			ms := binary.BigEndian.Uint64(append([]byte{0, 0}, raw[:6]...))
			if want := uint64(tc.now.UnixMilli()); ms != want {
				t.Fatalf("timestamp %d, want %d", ms, want)
			}
			if NewID(tc.now) == id {
				t.Fatal("two ids for the same instant are equal")
			}
		})
	}
}

func TestNewIDOrder(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for i := range 2000 {
		id := NewID(at(time.Duration(i) * time.Millisecond))
		if id <= prev {
			t.Fatalf("id %d %q does not sort after %q", i, id, prev)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
		prev = id
	}
}
