package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testutil"
)

// waitLog waits until the process has logged s.
func waitLog(t *testing.T, logs *testutil.Buffer, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the logs:\n%s", s, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A malformed --acl file keeps the gateway from starting, with the line at
// fault; a good one is re-read on SIGHUP, and a bad reload keeps the rules
// in force without stopping the gateway.
func TestACLFileAtStartAndSIGHUP(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("pattern readwrite devices/%c/#\ntopic sometimes x/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "--acl", acl, "--data", t.TempDir(),
		"--plain", testutil.FreeAddr(t), "--tls", testutil.FreeAddr(t), "--api", testutil.FreeAddr(t))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("serve with a malformed acl file: %v, want exit 1", err)
	}
	if !strings.Contains(stderr.String(), "line 2") || !strings.Contains(stderr.String(), "sometimes") {
		t.Fatalf("the error does not name the line and the word at fault:\n%s", stderr.String())
	}

	if err := os.WriteFile(acl, []byte("pattern readwrite devices/%c/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, logs, _ := startServe(t, "--acl", acl, "--data", t.TempDir(), "--log-format", "json", "--drain-delay", "10ms",
		"--plain", testutil.FreeAddr(t), "--tls", testutil.FreeAddr(t), "--api", testutil.FreeAddr(t))
	if err := os.WriteFile(acl, []byte("pattern readwrite devices/%c/#\ntopic read fleet/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, `"acl reloaded"`)
	if err := os.WriteFile(acl, []byte("user\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, `"acl reload failed; keeping the rules in force"`)
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.Wait(); err != nil {
		t.Fatalf("exit after a failed reload: %v\n%s", err, logs.String())
	}
}
