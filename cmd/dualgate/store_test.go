package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/testutil"
)

// writeStore makes a data directory whose command store holds n commands
// for three devices, the odd ones delivered.
func writeStore(t *testing.T, n int) string {
	t.Helper()
	data := t.TempDir()
	s, err := store.OpenBolt(filepath.Join(data, store.FileName), store.Options{Limit: n})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range n {
		client := fmt.Sprintf("dev-%d", i%3)
		c := &store.Command{ID: fmt.Sprintf("c%04d", i), ClientID: client, Topic: "devices/" + client + "/commands/x",
			Payload: bytes.Repeat([]byte{'p'}, 512), QoS: 1, Secure: true, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := s.Put(c); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			for _, st := range []store.Status{store.StatusSent, store.StatusDelivered} {
				if _, err := s.Transition(c.ID, st, now, "test"); err != nil {
					t.Fatal(err)
				}
			}
		}
		if i%10 == 0 {
			if _, err := s.Transition(c.ID, store.StatusCancelled, now, "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return data
}

func storeCheck(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(append([]string{"store", "check"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestStoreCheckHealthy(t *testing.T) {
	data := writeStore(t, 60)
	code, out, errOut := storeCheck("--data", data)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	fi, err := os.Stat(filepath.Join(data, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		filepath.Join(data, store.FileName),
		fmt.Sprintf("size:     %d bytes", fi.Size()),
		"24 pending, 0 upgrading, 0 sent, 30 delivered, 0 expired, 0 failed, 6 cancelled",
		"3 with undelivered commands",
		"status:   ok",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The environment names the data directory when --data does not.
	t.Setenv("DUALGATE_DATA", data)
	if code, out, errOut := storeCheck(); code != 0 {
		t.Fatalf("with DUALGATE_DATA: exit %d\n%s%s", code, out, errOut)
	}
}

func TestStoreCheckTruncated(t *testing.T) {
	data := writeStore(t, 60)
	path := filepath.Join(data, store.FileName)
	if err := os.Truncate(path, 8<<10); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := storeCheck("--data", data)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "DAMAGED") || !strings.Contains(out, "cut short") {
		t.Errorf("output:\n%s", out)
	}
	if !strings.Contains(errOut, "mv "+path+" "+path+".damaged") {
		t.Errorf("stderr does not say what to do:\n%s", errOut)
	}
}

func TestStoreCheckEmptyAndMissing(t *testing.T) {
	data := t.TempDir()
	code, _, errOut := storeCheck("--data", data)
	if code != 1 || !strings.Contains(errOut, "no command store at "+filepath.Join(data, store.FileName)) {
		t.Fatalf("missing store: exit %d, %q", code, errOut)
	}
	if err := os.WriteFile(filepath.Join(data, store.FileName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ := storeCheck("--data", data)
	if code != 1 || !strings.Contains(out, "0 bytes") {
		t.Fatalf("empty store: exit %d\n%s", code, out)
	}
	if code, _, _ := storeCheck("--data", data, "extra"); code != 2 {
		t.Fatalf("extra argument: exit %d, want 2", code)
	}
	if code, _, _ := storeCheck("--nonsense"); code != 2 {
		t.Fatalf("bad flag: exit %d, want 2", code)
	}
}

// A store held by a running gateway is reported as such, not as damage.
func TestStoreCheckLocked(t *testing.T) {
	data := writeStore(t, 2)
	s, err := store.OpenBolt(filepath.Join(data, store.FileName), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	code, out, errOut := storeCheck("--data", data)
	if code != 1 || !strings.Contains(errOut, "another gateway") || strings.Contains(out, "DAMAGED") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
}

// `dualgate serve` on a damaged store exits 1 with one clear line naming
// the file and what to do: no SIGBUS, no stack trace, no empty store made.
func TestServeRefusesDamagedStore(t *testing.T) {
	cases := []struct {
		name  string
		size  int64
		words []string
	}{
		{name: "truncated to 8 KiB", size: 8 << 10, words: []string{"cut short", "backup", ".damaged", "store check"}},
		{name: "zero length", size: 0, words: []string{"0 bytes", "backup", "rm "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := writeStore(t, 60)
			path := filepath.Join(data, store.FileName)
			if err := os.Truncate(path, tc.size); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(binary, "serve", "--data", data, "--plain", testutil.FreeAddr(t),
				"--tls", testutil.FreeAddr(t), "--api", testutil.FreeAddr(t))
			var logs bytes.Buffer
			cmd.Stdout, cmd.Stderr = &logs, &logs
			err := cmd.Run()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Fatalf("serve: %v, want exit 1\n%s", err, logs.String())
			}
			text := logs.String()
			for _, bad := range []string{"SIGBUS", "goroutine ", "panic"} {
				if strings.Contains(text, bad) {
					t.Fatalf("the log holds %q:\n%s", bad, text)
				}
			}
			for _, w := range append([]string{path}, tc.words...) {
				if !strings.Contains(text, w) {
					t.Errorf("the log lacks %q:\n%s", w, text)
				}
			}
			if fi, err := os.Stat(path); err != nil || fi.Size() != tc.size {
				t.Fatalf("the damaged file was changed: %v %v", fi, err)
			}
		})
	}
}
