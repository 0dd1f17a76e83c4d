package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dualgate/dualgate/bench"

	"github.com/dualgate/dualgate/internal/testutil"
)

// mainEnv, set to "1", makes the test binary behave as dualbench itself, so
// that the end-to-end tests run the real command line, workers included
// (they are started as this executable with "worker").
const mainEnv = "DUALBENCH_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m,
		// ants (under gnet) starts its default pool's housekeeping at
		// package initialisation; it lives as long as the process.
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
}

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{name: "no command", args: nil, code: 2, out: "Usage:"},
		{name: "unknown command", args: []string{"flood"}, code: 2, out: `unknown command "flood"`},
		{name: "help", args: []string{"help"}, code: 0, out: "dualbench conn"},
		{name: "conn -h", args: []string{"conn", "-h"}, code: 0, out: "-keepalive"},
		{name: "bad flag", args: []string{"conn", "--nope"}, code: 2, out: "flag provided but not defined"},
		{name: "bad count", args: []string{"conn", "-c", "0"}, code: 2, out: "-c 0"},
		{name: "mem needs a target", args: []string{"mem"}, code: 2, out: "exactly one of --target-pid and --spawn"},
		{name: "stray argument", args: []string{"mem", "--target-pid", "1", "extra"}, code: 2, out: `unexpected argument "extra"`},
		{name: "help lists savings", args: []string{"help"}, code: 0, out: "dualbench savings"},
		{name: "traffic -h", args: []string{"traffic", "-h"}, code: 0, out: "-day-keepalives"},
		{name: "upgrade -h", args: []string{"upgrade", "-h"}, code: 0, out: "-rounds"},
		{name: "savings -h", args: []string{"savings", "-h"}, code: 0, out: "-secure-fraction"},
		{name: "upgrade bad flag", args: []string{"upgrade", "--rounds", "x"}, code: 2, out: "invalid value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tt.args, &out, &out); code != tt.code {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out.String())
			}
			if !strings.Contains(out.String(), tt.out) {
				t.Fatalf("output lacks %q:\n%s", tt.out, out.String())
			}
		})
	}
}

func TestParseConn(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(bench.ConnConfig) error
	}{
		{
			name: "the example of the docs",
			args: strings.Fields("--host 127.0.0.1 --port 1883 -c 15000 --rate 2000 --keepalive 60 --hold 30s --mqtt 5 --workers auto"),
			check: func(c bench.ConnConfig) error {
				fc := c.Fleet
				if fc.Count != 15000 || fc.Client.Addr != "127.0.0.1:1883" || fc.Client.Rate != 2000 ||
					fc.Client.KeepAlive != time.Minute || fc.Client.MQTTVersion != 5 || fc.Workers != 0 ||
					c.Hold != 30*time.Second || fc.Client.TLS != nil || fc.PerWorker != bench.DefaultPerWorker {
					return fmt.Errorf("config %+v", c)
				}
				return nil
			},
		},
		{
			name: "TLS defaults to 8883",
			args: strings.Fields("--tls --ca ca.pem --resume -c 10 --workers 2 --ifaddr 127.0.0.2-127.0.0.4"),
			check: func(c bench.ConnConfig) error {
				s := c.Fleet.Client
				if s.Addr != "127.0.0.1:8883" || s.TLS == nil || s.TLS.CAFile != "ca.pem" || !s.TLS.Resume ||
					c.Fleet.Workers != 2 || strings.Join(s.SourceAddrs, ",") != "127.0.0.2,127.0.0.3,127.0.0.4" {
					return fmt.Errorf("config %+v, tls %+v", c, s.TLS)
				}
				return nil
			},
		},
		{
			name: "explicit port wins over the TLS default",
			args: strings.Fields("--tls --insecure --port 9000 --mqtt 3.1.1"),
			check: func(c bench.ConnConfig) error {
				if c.Fleet.Client.Addr != "127.0.0.1:9000" || c.Fleet.Client.MQTTVersion != 4 || !c.Fleet.Client.TLS.Insecure {
					return fmt.Errorf("config %+v", c.Fleet.Client)
				}
				return nil
			},
		},
		{name: "TLS flag without --tls", args: strings.Fields("--ca ca.pem"), wantErr: "need --tls"},
		{name: "MQTT 3", args: strings.Fields("--mqtt 3"), wantErr: "--mqtt"},
		{name: "keepalive too long", args: strings.Fields("--keepalive 70000"), wantErr: "--keepalive"},
		{name: "workers zero", args: strings.Fields("--workers 0"), wantErr: "--workers"},
		{name: "bad source range", args: strings.Fields("--ifaddr 127.0.0.9-127.0.0.2"), wantErr: "end before start"},
		{name: "negative hold", args: strings.Fields("--hold -1s"), wantErr: "--hold"},
		{name: "negative rate", args: strings.Fields("--rate -5"), wantErr: "--rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := parseConn(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, new(usageError)) {
					t.Fatalf("err = %v, want a usage error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.check(cfg); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseMem(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		sizes   []int
	}{
		{name: "pid", args: strings.Fields("--target-pid 42 --sizes 2000,5000,15000"), sizes: []int{2000, 5000, 15000}},
		{name: "spawn", args: []string{"--spawn", "mosquitto -c m.conf", "--sizes", "100, 200"}, sizes: []int{100, 200}},
		{name: "both", args: []string{"--spawn", "x", "--target-pid", "3"}, wantErr: "exactly one"},
		{name: "bad size", args: strings.Fields("--target-pid 1 --sizes 10,x"), wantErr: "--sizes"},
		{name: "zero size", args: strings.Fields("--target-pid 1 --sizes 0"), wantErr: "--sizes"},
		{name: "no size", args: strings.Fields("--target-pid 1 --sizes ,"), wantErr: "no size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := parseMem(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(cfg.Sizes) != fmt.Sprint(tt.sizes) {
				t.Fatalf("sizes = %v, want %v", cfg.Sizes, tt.sizes)
			}
			if cfg.Settle != bench.DefaultSettle() || cfg.MinR2 != bench.DefaultMinR2 {
				t.Fatalf("settle %+v, min R² %v", cfg.Settle, cfg.MinR2)
			}
		})
	}
}

// mosquitto starts Mosquitto on a free loopback port and returns the port
// and the config file; the server is stopped when the test ends. With
// spawn false it is only configured, for `mem --spawn`.
func mosquitto(t *testing.T, spawn bool) (port int, conf string) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
		if _, serr := os.Stat(bin); serr != nil {
			t.Fatal("mosquitto not found on PATH nor at /usr/sbin/mosquitto: install it (apt-get install mosquitto) to run the end-to-end tests")
		}
	}
	port = testutil.FreePort(t)
	conf = filepath.Join(t.TempDir(), "mosquitto.conf")
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n", port)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	conf = bin + " -c " + conf
	if !spawn {
		return port, conf
	}
	srv, err := bench.SpawnServer(conf, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(5 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bench.WaitListening(ctx, "127.0.0.1:"+strconv.Itoa(port), srv); err != nil {
		t.Fatal(err)
	}
	return port, conf
}

// dualbench runs this test binary as dualbench with args.
func dualbench(args ...string) (*exec.Cmd, *testutil.Buffer) {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	out := &testutil.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}

func TestConnCommandAgainstMosquitto(t *testing.T) {
	port, _ := mosquitto(t, true)
	cmd, out := dualbench("conn", "--port", strconv.Itoa(port), "-c", "200", "--workers", "2",
		"--rate", "2000", "--keepalive", "2", "--hold", "1500ms", "--mqtt", "5")
	if err := cmd.Run(); err != nil {
		t.Fatalf("dualbench conn: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"workers       2", "connected     200 / 200", "failed        0", "connect rate  ", "CONNACK       p50",
		"(n=200)", "dropped       0", "--- result",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}

func TestConnCommandStopsOnSIGTERM(t *testing.T) {
	port, _ := mosquitto(t, true)
	cmd, out := dualbench("conn", "--port", strconv.Itoa(port), "-c", "60", "--workers", "2", "--rate", "0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "connected     60 / 60") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("not connected in time:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("did not stop after SIGTERM:\n%s", out.String())
	}
	for _, want := range []string{"interrupted   yes", "connected     60 / 60", "dropped       0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestMemCommandSpawnsMosquitto(t *testing.T) {
	port, spawn := mosquitto(t, false)
	dir := t.TempDir()
	cmd, out := dualbench("mem", "--spawn", spawn, "--port", strconv.Itoa(port), "--sizes", "100,200",
		"--workers", "2", "--settle-interval", "200ms", "--settle-timeout", "5s", "--out", dir)
	if err := cmd.Run(); err != nil {
		t.Fatalf("dualbench mem: %v\n%s", err, out.String())
	}
	for _, want := range []string{"RSS before", "KiB/conn", "slope ", "linear: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.MemReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Points) != 2 || rep.Points[0].Connected != 100 || rep.Points[1].Connected != 200 || rep.Fit.Points != 3 {
		t.Fatalf("report = %+v", rep)
	}
	if _, err := os.Stat(filepath.Join(dir, "report.md")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(rep.PID, 0); err == nil {
		t.Fatalf("spawned server pid %d still running", rep.PID)
	}
}
