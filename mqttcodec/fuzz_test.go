package mqttcodec

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the seed corpus under testdata/fuzz")

// The seeds are the files under testdata/fuzz (TestSeedCorpus keeps them in
// step with the fixtures).
func FuzzDecode311(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDecode(t, data, V311) })
}

func FuzzDecode5(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDecode(t, data, V5) })
}

// fuzzDecode decodes data as a stream of packets of a session at version.
// Every packet decoded must re-encode and decode to the same packet, every
// failure must be an *Error, and the input cut in two must give, for its
// first half, either "need more" or exactly what the whole gives.
func fuzzDecode(t *testing.T, data []byte, version byte) {
	rest := data
	for len(rest) > 0 {
		v := sessionVersion(rest, version)
		var p Packet
		n, err := Decode(rest, v, 0, &p)
		checkSplits(t, rest, v, n, err, &p)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Rule == "" || e.Msg == "" {
				t.Fatalf("Decode error %v (%T) is not a complete *Error", err, err)
			}
			return
		}
		if n == 0 {
			return
		}
		if n < 2 || n > len(rest) {
			t.Fatalf("Decode used %d of %d bytes", n, len(rest))
		}
		roundTrip(t, &p, version)
		rest = rest[n:]
	}
}

// checkSplits decodes two strict prefixes of b (half of it, and a cut that
// depends on the input) and compares with the result (n, err, p) for all of b.
func checkSplits(t *testing.T, b []byte, version byte, n int, err error, p *Packet) {
	cuts := []int{len(b) / 2, int(b[0]) % len(b)}
	for _, k := range cuts {
		var q Packet
		m, perr := Decode(b[:k], version, 0, &q)
		switch {
		case m == 0 && perr == nil:
			// need more
		case perr != nil:
			if err == nil || perr.Error() != err.Error() {
				t.Fatalf("prefix of %d/%d bytes: error %v; whole: n=%d err=%v", k, len(b), perr, n, err)
			}
		default:
			if err != nil || m != n || !samePacket(&q, p) {
				t.Fatalf("prefix of %d/%d bytes decoded a packet (n=%d); whole: n=%d err=%v", k, len(b), m, n, err)
			}
		}
	}
}

// roundTrip encodes p and decodes it again.
func roundTrip(t *testing.T, p *Packet, version byte) {
	if p.Type == CONNECT {
		version = p.Connect.ProtocolVersion
	}
	enc := Append(nil, version, p)
	var q Packet
	n, err := Decode(enc, sessionVersion(enc, version), 0, &q)
	if err != nil || n != len(enc) {
		t.Fatalf("re-decoding %v (% x): n=%d/%d err=%v", p.Type, head(enc), n, len(enc), err)
	}
	if !samePacket(&q, p) {
		t.Fatalf("round trip of %v differs\n got %s\nwant %s", p.Type, brief(&q), brief(p))
	}
	if again := Append(nil, version, &q); string(again) != string(enc) {
		t.Fatalf("second encoding of %v differs", p.Type)
	}
}

// seeds returns the fixtures and malformed cases of a version, plus two
// packets back to back.
func seeds(version byte) [][]byte {
	var out [][]byte
	fixtures := validFixtures311()
	if version == V5 {
		fixtures = validFixtures5()
	}
	for _, f := range fixtures {
		out = append(out, f.raw)
	}
	for _, group := range [][]malformedCase{malformedHeaderCases(), malformedConnectCases(), malformedPacketCases()} {
		for _, c := range group {
			if c.version == version || c.version == 0 {
				out = append(out, c.raw)
			}
		}
	}
	return append(out, append(append([]byte{}, fixtures[0].raw...), fixtures[len(fixtures)-1].raw...))
}

// The seed corpus under testdata/fuzz holds the seeds in the go test fuzz
// format, so that `go test -fuzz` starts from them; -update rewrites it.
func TestSeedCorpus(t *testing.T) {
	for name, version := range map[string]byte{"FuzzDecode311": V311, "FuzzDecode5": V5} {
		dir := filepath.Join("testdata", "fuzz", name)
		for i, raw := range seeds(version) {
			path := filepath.Join(dir, fmt.Sprintf("seed-%03d", i))
			content := "go test fuzz v1\n[]byte(" + goQuote(raw) + ")\n"
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != content {
				t.Fatalf("%s is missing or stale (err %v): run go test -run TestSeedCorpus -update", path, err)
			}
		}
	}
}

// goQuote quotes b as a Go string literal with \x escapes for non-ASCII.
func goQuote(b []byte) string {
	var s strings.Builder
	s.WriteByte('"')
	for _, c := range b {
		switch {
		case c == '"' || c == '\\':
			s.WriteByte('\\')
			s.WriteByte(c)
		case c >= 0x20 && c < 0x7f:
			s.WriteByte(c)
		default:
			fmt.Fprintf(&s, "\\x%02x", c)
		}
	}
	s.WriteByte('"')
	return s.String()
}
