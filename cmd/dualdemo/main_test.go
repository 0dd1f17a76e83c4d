package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// demoBinary is dualdemo, built once for the tests next to a dualgate
// executable, where it finds the gateway it starts.
var demoBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dualdemo-cmd")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	demoBinary = filepath.Join(dir, "dualdemo")
	out, err := exec.Command("go", "build", "-o", dir+string(filepath.Separator), ".", "../dualgate").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// The demo runs end to end by itself and shows every transition.
func TestDemo(t *testing.T) {
	cmd := exec.Command(demoBinary, "--idle-plain", "300", "--idle-tls", "30", "--timeout", "90s")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	text := out.String()
	for _, want := range []string{
		"meter-1  command devices/meter-1/commands/read \"report-now\" over plain",
		"car-2    plain -> tls (secure-command)",
		"car-2    command devices/car-2/commands/unlock \"door=driver\" over TLS",
		"car-3    plain -> tls (secure-command)",
		"lock-4   command devices/lock-4/commands/code \"confirm\" over TLS",
		"car-2    tls -> plain (secure-idle)",
		"car-3    tls -> plain (secure-idle)",
		"every device is back on plain",
		"idle plain connections",
		"memory per idle connection: plain",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if n := strings.Count(text, "delivered in"); n != 5 {
		t.Errorf("%d deliveries reported, want 5", n)
	}
	if strings.Contains(text, "meter-1  plain -> tls") {
		t.Error("the plain command caused an upgrade")
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}
