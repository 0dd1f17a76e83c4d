package auth

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dualgate/dualgate/internal/control"
)

const (
	hexA = "00112233445566778899aabbccddeeff"                                 // 16 bytes
	hexB = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F" // 32 bytes, upper case
)

func TestParseSecrets(t *testing.T) {
	type lineErr struct {
		line int
		text string // substring of the error
	}
	tests := []struct {
		name    string
		input   string
		want    map[string]string // client id -> secret in lowercase hex
		wantErr []lineErr
	}{
		{name: "empty file", input: "", want: map[string]string{}},
		{name: "comments and blank lines only", input: "# fleet A\n\n   \t\n  # indented comment\n", want: map[string]string{}},
		{
			name:  "two devices",
			input: "car-1 " + hexA + "\ncar-2\t" + hexB + "\n",
			want:  map[string]string{"car-1": hexA, "car-2": strings.ToLower(hexB)},
		},
		{
			name:  "trailing comment, CRLF, BOM, no final newline",
			input: "\uFEFFcar-1 " + hexA + "   # kitchen\r\n\r\n# x\r\ncar-2 " + hexB,
			want:  map[string]string{"car-1": hexA, "car-2": strings.ToLower(hexB)},
		},
		{
			name:  "unicode client id",
			input: "zähler-7 " + hexA + "\n",
			want:  map[string]string{"zähler-7": hexA},
		},
		{
			name:    "client id without secret",
			input:   "# header\ncar-1\n",
			wantErr: []lineErr{{line: 2, text: `client id "car-1" has no secret`}},
		},
		{
			name:    "secret not hex",
			input:   "car-1 " + hexA[:4] + "zz" + hexA[6:] + "\n",
			wantErr: []lineErr{{line: 1, text: `client id "car-1": secret is not hex: character 5 is not a hex digit`}},
		},
		{
			name:    "secret in base64",
			input:   "car-1 ABEiM0RVZneImaq7zN3u/w==\n",
			wantErr: []lineErr{{line: 1, text: "secret is not hex"}},
		},
		{
			name:    "odd number of digits",
			input:   "car-1 " + hexA + "0\n",
			wantErr: []lineErr{{line: 1, text: "odd number of hex digits (33)"}},
		},
		{
			name:    "secret too short",
			input:   "car-1 00112233\n",
			wantErr: []lineErr{{line: 1, text: "secret is 4 bytes, want at least 16"}},
		},
		{
			name:    "text after the secret",
			input:   "car-1 " + hexA + " extra\n",
			wantErr: []lineErr{{line: 1, text: "unexpected text after the secret"}},
		},
		{
			name:    "duplicate client id",
			input:   "car-1 " + hexA + "\ncar-2 " + hexA + "\n\ncar-1 " + hexB + "\n",
			wantErr: []lineErr{{line: 4, text: `client id "car-1" already defined on line 1`}},
		},
		{
			name:    "invalid UTF-8",
			input:   "car-\xff " + hexA + "\n",
			wantErr: []lineErr{{line: 1, text: "not valid UTF-8"}},
		},
		{
			name:    "control character",
			input:   "car-\x011 " + hexA + "\n",
			wantErr: []lineErr{{line: 1, text: "control character at byte 4"}},
		},
		{
			name:  "every bad line is reported",
			input: "car-1 xyz\ncar-2 " + hexA + "\ncar-3\ncar-4 " + hexA + " junk\n",
			wantErr: []lineErr{
				{line: 1, text: "secret is not hex"},
				{line: 3, text: "has no secret"},
				{line: 4, text: "unexpected text"},
			},
		},
		{
			name:    "line too long",
			input:   "car-1 " + strings.Repeat("a", maxSecretsLine) + "\n",
			wantErr: []lineErr{{line: 1, text: "line longer than"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSecrets(strings.NewReader(tt.input), "secrets.txt")
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("ParseSecrets() error = %v", err)
				}
				gotHex := make(map[string]string, len(got))
				for id, s := range got {
					gotHex[id] = hex.EncodeToString(s)
				}
				if !maps.Equal(gotHex, tt.want) {
					t.Fatalf("ParseSecrets() = %v, want %v", gotHex, tt.want)
				}
				return
			}
			if err == nil || got != nil {
				t.Fatalf("ParseSecrets() = %v, %v; want nil and an error", got, err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.wantErr) {
				t.Fatalf("ParseSecrets() error has %d lines, want %d:\n%v", len(lines), len(tt.wantErr), err)
			}
			for i, w := range tt.wantErr {
				prefix := "secrets.txt:" + strconv.Itoa(w.line) + ": "
				if !strings.HasPrefix(lines[i], prefix) || !strings.Contains(lines[i], w.text) {
					t.Errorf("error line %d = %q, want prefix %q and %q", i, lines[i], prefix, w.text)
				}
			}
			var le *LineError
			if !errors.As(err, &le) || le.File != "secrets.txt" || le.Line != tt.wantErr[0].line {
				t.Fatalf("errors.As(*LineError) = %+v", le)
			}
			// No error quotes a secret.
			for _, s := range []string{hexA, hexB, hexA[:16], strings.ToLower(hexB)[:16]} {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error quotes secret material %q: %v", s, err)
				}
			}
		})
	}
}

func TestParseSecretsTooManyErrors(t *testing.T) {
	input := strings.Repeat("bad-line\n", 3*maxLineErrors)
	_, err := ParseSecrets(strings.NewReader(input), "big.txt")
	if !errors.Is(err, ErrTooManyErrors) {
		t.Fatalf("error = %v, want ErrTooManyErrors among them", err)
	}
	if n := strings.Count(err.Error(), "big.txt:"); n != maxLineErrors {
		t.Fatalf("%d line errors reported, want %d", n, maxLineErrors)
	}
}

func TestLoadSecretsFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "secrets")
	if err := os.WriteFile(good, []byte("# fleet\nmeter-1 "+hexA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("meter-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		want    map[string]string
		wantErr func(error) bool
	}{
		{name: "good file", path: good, want: map[string]string{"meter-1": hexA}},
		{name: "missing file", path: filepath.Join(dir, "nope"), wantErr: func(err error) bool { return errors.Is(err, fs.ErrNotExist) }},
		{name: "bad file names its path", path: bad, wantErr: func(err error) bool {
			var le *LineError
			return errors.As(err, &le) && le.File == bad && le.Line == 1
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadSecretsFile(tt.path)
			if tt.wantErr != nil {
				if err == nil || !tt.wantErr(err) {
					t.Fatalf("LoadSecretsFile() error = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) || hex.EncodeToString(got["meter-1"]) != tt.want["meter-1"] {
				t.Fatalf("LoadSecretsFile() = %v", got)
			}
		})
	}

	// A loaded file drives Tokens end to end.
	secrets, err := LoadSecretsFile(good)
	if err != nil {
		t.Fatal(err)
	}
	tk := newTestTokens(t, TokenConfig{Secrets: secrets, Clock: newTestClock(epoch).now})
	res := tk.Authenticate(&Request{ClientID: "meter-1", Username: "meter-1", Password: []byte(control.MakeToken(mustHex(t, hexA), "meter-1", epoch, "fromfile01"))})
	if !res.OK {
		t.Fatalf("token from the file's secret refused: %+v", res)
	}
}
