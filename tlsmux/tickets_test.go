package tlsmux

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dualgate/dualgate/certs"
)

const (
	keyA = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	keyB = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
)

func TestParseTicketKeys(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    string
		want    int // keys
		first   byte
		wantErr bool
	}{
		{name: "two keys", data: keyA + "\n" + keyB + "\n", want: 2, first: 0x00},
		{name: "comments, blanks, spaces, upper case", data: "# rotated 2026\n\n  " + strings.ToUpper(keyB) + "  \r\n" + keyA, want: 2, first: 0xff},
		{name: "empty", data: "", want: 0},
		{name: "short key", data: keyA[:62] + "\n", wantErr: true},
		{name: "long key", data: keyA + "00\n", wantErr: true},
		{name: "not hex", data: "zz" + keyA[2:] + "\n", wantErr: true},
		{name: "too many", data: strings.Repeat(keyA+"\n", MaxTicketKeys+1), wantErr: true},
		{name: "as many as allowed", data: strings.Repeat(keyA+"\n", MaxTicketKeys), want: MaxTicketKeys},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := parseTicketKeys([]byte(tc.data))
			if tc.wantErr {
				if !errors.Is(err, ErrBadTicketKeys) {
					t.Fatalf("err = %v, want ErrBadTicketKeys", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != tc.want {
				t.Fatalf("%d keys, want %d", len(keys), tc.want)
			}
			if tc.want > 0 && keys[0][0] != tc.first {
				t.Fatalf("first key starts %#x, want %#x", keys[0][0], tc.first)
			}
			back, err := parseTicketKeys(formatTicketKeys(keys))
			if err != nil || len(back) != len(keys) || (len(keys) > 0 && back[0] != keys[0]) {
				t.Fatalf("format/parse round trip: %v", err)
			}
		})
	}
}

func TestLoadTicketKeysRejects(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		data *string // nil: no file
	}{
		{name: "missing"},
		{name: "no keys", data: new("# nothing yet\n")},
		{name: "bad line", data: new(keyA + "\nxyz\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if tc.data != nil {
				writeAtomic(t, path, []byte(*tc.data))
			}
			if _, err := LoadTicketKeys(path, nil); err == nil {
				t.Fatal("LoadTicketKeys succeeded")
			}
		})
	}
}

func TestRotateTicketKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tickets.keys")
	var history [][32]byte // every key made, newest first
	for i := range 5 {
		keys, err := RotateTicketKeyFile(path, 3)
		if err != nil {
			t.Fatal(err)
		}
		history = append([][32]byte{keys[0]}, history...)
		want := history[:min(len(history), 3)]
		if len(keys) != len(want) {
			t.Fatalf("rotation %d: %d keys, want %d", i, len(keys), len(want))
		}
		for j := range want {
			if keys[j] != want[j] {
				t.Fatalf("rotation %d: key %d is not the expected one", i, j)
			}
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		onDisk, err := parseTicketKeys(data)
		if err != nil || len(onDisk) != len(keys) || onDisk[0] != keys[0] {
			t.Fatalf("rotation %d: file does not hold the returned keys (err %v)", i, err)
		}
	}
	if history[0] == history[1] {
		t.Fatal("rotation repeated a key")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}

	// A malformed file is left as it is.
	bad := []byte(keyA + "\nnot a key\n")
	writeAtomic(t, path, bad)
	if _, err := RotateTicketKeyFile(path, 3); !errors.Is(err, ErrBadTicketKeys) {
		t.Fatalf("rotating a malformed file: %v", err)
	}
	if data, _ := os.ReadFile(path); !bytes.Equal(data, bad) {
		t.Fatal("malformed file was changed")
	}
}

// ticketServer starts a Server whose session ticket keys come from path.
func ticketServer(t *testing.T, pki *certs.PKI, path string) (*TicketKeys, string) {
	t.Helper()
	keys, err := LoadTicketKeys(path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, Config{
		TLS:     serverTLS(t, pki, TLSOptions{TicketKeys: keys}),
		Handoff: echoHandoff(t, loopOpts{}),
	})
	return keys, addr
}

func TestTicketKeysResumeAcrossServers(t *testing.T) {
	for _, tc := range []struct {
		name        string
		version     uint16
		sameFile    bool
		wantResumed bool
	}{
		{name: "TLS 1.3, shared file", version: tls.VersionTLS13, sameFile: true, wantResumed: true},
		{name: "TLS 1.2, shared file", version: tls.VersionTLS12, sameFile: true, wantResumed: true},
		{name: "TLS 1.3, other keys", version: tls.VersionTLS13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			dir := t.TempDir()
			shared := filepath.Join(dir, "shared.keys")
			writeAtomic(t, shared, []byte(keyA+"\n"))
			secondFile := shared
			if !tc.sameFile {
				secondFile = filepath.Join(dir, "other.keys")
				writeAtomic(t, secondFile, []byte(keyB+"\n"))
			}
			_, addrA := ticketServer(t, pki, shared)
			_, addrB := ticketServer(t, pki, secondFile)

			ccfg := clientTLS(pki)
			ccfg.MaxVersion = tc.version
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			a, err := dialTLS(t, addrA, ccfg)
			if err != nil {
				t.Fatal(err)
			}
			_ = a.Close()
			if a.ConnectionState().DidResume {
				t.Fatal("first connection resumed")
			}
			b, err := dialTLS(t, addrB, ccfg)
			if err != nil {
				t.Fatal(err)
			}
			_ = b.Close()
			if got := b.ConnectionState().DidResume; got != tc.wantResumed {
				t.Fatalf("resumed on the second server: %v, want %v", got, tc.wantResumed)
			}
		})
	}
}

func TestTicketKeysRotationKeepsOlderTickets(t *testing.T) {
	for _, tc := range []struct {
		name        string
		keep        int
		wantResumed bool
	}{
		{name: "old key still in the file", keep: 2, wantResumed: true},
		{name: "old key dropped", keep: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			path := filepath.Join(t.TempDir(), "shared.keys")
			writeAtomic(t, path, []byte(keyA+"\n"))
			keysA, addrA := ticketServer(t, pki, path)
			keysB, addrB := ticketServer(t, pki, path)

			ccfg := clientTLS(pki)
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			c, err := dialTLS(t, addrA, ccfg) // the ticket is sealed with keyA
			if err != nil {
				t.Fatal(err)
			}
			_ = c.Close()

			// Gateway A rotates the shared file; gateway B re-reads it.
			if err := keysA.Rotate(tc.keep); err != nil {
				t.Fatal(err)
			}
			if err := keysB.Reload(); err != nil {
				t.Fatal(err)
			}
			if a, b := keysA.Keys(), keysB.Keys(); len(a) != tc.keep || len(b) != tc.keep || a[0] != b[0] {
				t.Fatalf("keys after rotation: A has %d, B has %d, want %d and the same first", len(a), len(b), tc.keep)
			}
			c, err = dialTLS(t, addrB, ccfg)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.Close()
			if got := c.ConnectionState().DidResume; got != tc.wantResumed {
				t.Fatalf("resumed after rotation: %v, want %v", got, tc.wantResumed)
			}
		})
	}
}

func TestTicketKeysRun(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		sch   TicketSchedule
		outer bool // someone else rotates the file
	}{
		{name: "follows an outside rotation", sch: TicketSchedule{Poll: 10 * time.Millisecond}, outer: true},
		{name: "rotates on schedule", sch: TicketSchedule{Poll: time.Hour, Rotate: 10 * time.Millisecond, Keep: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			writeAtomic(t, path, []byte(keyA+"\n"))
			k, err := LoadTicketKeys(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg := &tls.Config{}
			k.Apply(cfg)
			start := k.Keys()[0]

			ctx, cancel := context.WithCancel(context.Background())
			ran := make(chan struct{})
			go func() {
				defer close(ran)
				k.Run(ctx, tc.sch)
			}()
			var outside [32]byte
			if tc.outer {
				keys, err := RotateTicketKeyFile(path, 3)
				if err != nil {
					t.Fatal(err)
				}
				outside = keys[0]
			}
			eventually(t, "the keys to change", func() bool { return k.Keys()[0] != start })
			cancel()
			recv(t, ran)

			keys := k.Keys()
			if tc.outer && keys[0] != outside {
				t.Fatal("keys are not the ones the outside rotation wrote")
			}
			if !tc.outer && len(keys) != tc.sch.Keep {
				t.Fatalf("%d keys after scheduled rotations, want %d", len(keys), tc.sch.Keep)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			onDisk, err := parseTicketKeys(data)
			if err != nil || onDisk[0] != keys[0] {
				t.Fatalf("file and memory disagree (err %v)", err)
			}
		})
	}
}

func TestTicketKeysWarnsAboutReadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tickets.keys")
	if err := os.WriteFile(path, []byte(keyA+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	if _, err := LoadTicketKeys(path, zap.New(core)); err != nil {
		t.Fatal(err)
	}
	if logs.Len() != 1 {
		t.Fatalf("%d warnings for a 0644 key file, want 1", logs.Len())
	}
}
