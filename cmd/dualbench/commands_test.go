package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/bench"
)

func TestParseTraffic(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "dualgate")
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(trafficCmd) error
	}{
		{
			name: "defaults start a dualgate",
			args: []string{"--dualgate", fake},
			check: func(c trafficCmd) error {
				g := c.cfg.Gateway.Spawn
				if g == nil || g.Binary != fake || g.SecureIdle != 3*time.Second || g.SecureIdleFixed ||
					fmt.Sprint(c.cfg.MQTTVersions) != "[4 5]" || strings.Join(c.cfg.Kex, ",") != "default,x25519" ||
					c.cfg.KeepAlive != time.Minute || fmt.Sprint(c.cfg.DayKeepAlives) != "[1m0s 5m0s]" || c.cfg.Cycles != 5 ||
					c.cfg.PayloadSize != 100 || c.maxDuration != 15*time.Minute {
					return fmt.Errorf("config %+v, gateway %+v", c.cfg, g)
				}
				return nil
			},
		},
		{
			name: "a running gateway",
			args: strings.Fields("--api http://127.0.0.1:8080 --host 10.0.0.1 --port 1884 --tls-port 8884 --ca ca.pem --mqtt 5 --kex x25519+p256"),
			check: func(c trafficCmd) error {
				g := c.cfg.Gateway
				if g.Spawn != nil || g.Plain != "10.0.0.1:1884" || g.TLS != "10.0.0.1:8884" || g.API != "http://127.0.0.1:8080" ||
					g.CAFile != "ca.pem" || fmt.Sprint(c.cfg.MQTTVersions) != "[5]" || c.cfg.Kex[0] != "x25519,p256" {
					return fmt.Errorf("gateway %+v, kex %v", g, c.cfg.Kex)
				}
				return nil
			},
		},
		{name: "running gateway without its CA", args: strings.Fields("--api http://x:1"), wantErr: "--api needs --ca"},
		{name: "address without --api", args: []string{"--dualgate", fake, "--port", "1"}, wantErr: "give --api too"},
		{name: "start flag with --api", args: strings.Fields("--api http://x:1 --ca c --secure-idle 5s"), wantErr: "not with --api"},
		{name: "bad kex", args: []string{"--dualgate", fake, "--kex", "rsa"}, wantErr: "key exchange"},
		{name: "bad version", args: []string{"--dualgate", fake, "--mqtt", "3"}, wantErr: "--mqtt"},
		{name: "bad cycles", args: []string{"--dualgate", fake, "--cycles", "0"}, wantErr: "--cycles"},
		{name: "bad day keepalive", args: []string{"--dualgate", fake, "--day-keepalives", "60,x"}, wantErr: "--day-keepalives"},
		{name: "short quiet period", args: []string{"--dualgate", fake, "--secure-idle", "10ms"}, wantErr: "--secure-idle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseTraffic(tt.args, io.Discard)
			checkParse(t, err, tt.wantErr, func() error { return tt.check(c) })
		})
	}
}

func TestParseUpgrade(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "dualgate")
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(upgradeCmd) error
	}{
		{
			name: "one device, 200 rounds",
			args: []string{"--dualgate", fake, "-c", "1", "--rounds", "200", "--mqtt", "5", "--kex", "x25519", "--out", "o"},
			check: func(c upgradeCmd) error {
				g := c.cfg.Gateway.Spawn
				if g == nil || !g.SecureIdleFixed || g.SecureIdle != 500*time.Millisecond || c.cfg.Fleet.Count != 1 || c.cfg.Rounds != 200 ||
					c.cfg.Fleet.Client.MQTTVersion != 5 || c.cfg.Kex != "x25519" || !c.cfg.Resume || c.cfg.Rate != 0 || c.cfg.OutDir != "o" ||
					c.cfg.Fleet.Client.Rate != 1000 || c.cfg.Fleet.Client.KeepAlive != time.Minute {
					return fmt.Errorf("config %+v", c.cfg)
				}
				return nil
			},
		},
		{
			name: "1000 at a rate, no resumption",
			args: []string{"--dualgate", fake, "--devices", "1000", "--rate", "500", "--no-resume", "--conn-rate", "0", "--workers", "2"},
			check: func(c upgradeCmd) error {
				if c.cfg.Fleet.Count != 1000 || c.cfg.Rate != 500 || c.cfg.Resume || c.cfg.Fleet.Client.Rate != 0 || c.cfg.Fleet.Workers != 2 {
					return fmt.Errorf("config %+v", c.cfg)
				}
				return nil
			},
		},
		{name: "no devices", args: []string{"--dualgate", fake, "-c", "0"}, wantErr: "-c 0"},
		{name: "no rounds", args: []string{"--dualgate", fake, "--rounds", "0"}, wantErr: "--rounds"},
		{name: "payload shorter than the stamp", args: []string{"--dualgate", fake, "--payload", "10"}, wantErr: "--payload"},
		{name: "bad kex", args: []string{"--dualgate", fake, "--kex", "dh"}, wantErr: "key exchange"},
		{name: "negative rate", args: []string{"--dualgate", fake, "--rate", "-1"}, wantErr: "--rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseUpgrade(tt.args, io.Discard)
			checkParse(t, err, tt.wantErr, func() error { return tt.check(c) })
		})
	}
}

func TestParseSavings(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "dualgate")
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(savingsCmd) error
	}{
		{
			name: "the headline",
			args: []string{"--dualgate", fake, "--devices", "15000", "--secure-fraction", "0.01", "--out", "r"},
			check: func(c savingsCmd) error {
				cfg := c.cfg
				if cfg.Devices != 15000 || cfg.SecureFraction != 0.01 || cfg.OutDir != "r" || cfg.Dualgate != fake || cfg.SecureIdle != 30*time.Second ||
					cfg.NoPeer || cfg.Peer != "" || !cfg.Resume || cfg.Fleet.Client.Rate != 2000 || cfg.Settle != bench.DefaultSettle() ||
					cfg.CommandsPerDay != 1 || c.maxDuration != time.Hour {
					return fmt.Errorf("config %+v", cfg)
				}
				return nil
			},
		},
		{
			name: "a peer command and gateway flags",
			args: []string{"--dualgate", fake, "--peer-cmd", "broker --port {port}", "--gateway-arg=--tls-curves=x25519", "--gateway-arg=--gc-percent=50", "--mqtt", "5"},
			check: func(c savingsCmd) error {
				if c.cfg.PeerCmd != "broker --port {port}" || strings.Join(c.cfg.Args, " ") != "--tls-curves=x25519 --gc-percent=50" || c.cfg.Fleet.Client.MQTTVersion != 5 {
					return fmt.Errorf("config %+v", c.cfg)
				}
				return nil
			},
		},
		{name: "no peer", args: []string{"--dualgate", fake, "--no-peer"}, check: func(c savingsCmd) error {
			if !c.cfg.NoPeer {
				return errors.New("NoPeer not set")
			}
			return nil
		}},
		{name: "no peer with a peer", args: []string{"--dualgate", fake, "--no-peer", "--peer", "m"}, wantErr: "--no-peer"},
		{name: "fraction above 1", args: []string{"--dualgate", fake, "--secure-fraction", "1.5"}, wantErr: "--secure-fraction"},
		{name: "no devices", args: []string{"--dualgate", fake, "--devices", "0"}, wantErr: "--devices"},
		{name: "short quiet period", args: []string{"--dualgate", fake, "--secure-idle", "1ms"}, wantErr: "--secure-idle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseSavings(tt.args, io.Discard)
			checkParse(t, err, tt.wantErr, func() error { return tt.check(c) })
		})
	}
}

func checkParse(t *testing.T, err error, wantErr string, check func() error) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) || !errors.As(err, new(usageError)) {
			t.Fatalf("err = %v, want a usage error with %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}
}

// gatewayBinary is the dualgate executable of the end-to-end tests:
// DUALBENCH_TEST_DUALGATE, or built once from ./cmd/dualgate.
type gatewayBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func (b *gatewayBinary) get(t *testing.T) string {
	t.Helper()
	b.once.Do(func() {
		if p := os.Getenv("DUALBENCH_TEST_DUALGATE"); p != "" {
			b.path = p
			return
		}
		if b.dir, b.err = os.MkdirTemp("", "dualbench-dualgate-"); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "dualgate")
		cmd := exec.Command("go", "build", "-o", b.path, "./cmd/dualgate")
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/dualgate: %w\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func TestUpgradeCommandEndToEnd(t *testing.T) {
	var gw gatewayBinary
	bin := gw.get(t)
	if gw.dir != "" {
		t.Cleanup(func() { _ = os.RemoveAll(gw.dir) })
	}
	dir := t.TempDir()
	cmd, out := dualbench("upgrade", "--dualgate", bin, "-c", "3", "--rounds", "2", "--secure-idle", "300ms", "--kex", "x25519", "--out", dir, "--max-duration", "60s")
	if err := cmd.Run(); err != nil {
		t.Fatalf("dualbench upgrade: %v\n%s", err, out.String())
	}
	for _, want := range []string{"round 2/2", "commands      6 sent, 6 accepted, 6 acknowledged, 6 delivered (gateway)", "latency       p50 "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.UpgradeReport
	if err := json.Unmarshal(raw, &rep); err != nil || rep.Acked != 6 || rep.Upgrades != 6 {
		t.Fatalf("report: %v %+v", err, rep)
	}
	for _, f := range []string{"report.md", "latency.png", "tls-sessions.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

func TestParsePub(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "dualgate")
	c, err := parsePub(strings.Fields("--port 1884 --sub-port 1885 -c 2 -n 10 --qos 2 --rate 50"), io.Discard)
	if err != nil || c.cfg.PubAddr != "127.0.0.1:1884" || c.cfg.SubAddr != "127.0.0.1:1885" || c.cfg.QoS != 2 || c.spawn != nil ||
		c.cfg.Publishers != 2 || c.cfg.Count != 10 || c.cfg.Rate != 50 {
		t.Fatalf("%+v %v", c.cfg, err)
	}
	c, err = parsePub([]string{"--through-dualgate", "--dualgate", fake, "--upstream", "tcp://127.0.0.1:1999"}, io.Discard)
	if err != nil || c.spawn == nil || c.spawn.Binary != fake || strings.Join(c.spawn.Args, " ") != "--upstream tcp://127.0.0.1:1999" ||
		c.cfg.SubAddr != "127.0.0.1:1999" || c.subToGateway || c.cfg.Label != "dualgate -> 127.0.0.1:1999" {
		t.Fatalf("%+v %+v %v", c.cfg, c.spawn, err)
	}
	c, err = parsePub([]string{"--through-dualgate", "--dualgate", fake}, io.Discard)
	if err != nil || !c.subToGateway {
		t.Fatalf("local routing: %+v %v", c, err)
	}
	for args, want := range map[string]string{
		"--qos 3":                     "--qos",
		"--payload 8":                 "--payload",
		"--upstream tcp://x:1":        "--through-dualgate",
		"--through-dualgate --port 1": "--port",
		"--through-dualgate --dualgate " + fake + " --upstream http://x": "--upstream",
		"-n 0": "-n 0",
	} {
		if _, err := parsePub(strings.Fields(args), io.Discard); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error about %s", args, err, want)
		}
	}
}

// Every sub-command's -h has a description, an example and a run time.
func TestHelpHasExampleAndRunTime(t *testing.T) {
	for _, name := range []string{"conn", "mem", "traffic", "upgrade", "savings", "pub"} {
		var out strings.Builder
		if code := run([]string{name, "-h"}, &out, &out); code != 0 {
			t.Fatalf("%s -h: exit %d", name, code)
		}
		for _, want := range []string{"usage: dualbench " + name, "example", "run time:", "flags:"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s -h lacks %q:\n%s", name, want, out.String())
			}
		}
	}
}

// dualbench pub through a started dualgate, routed locally, and straight
// to Mosquitto.
func TestPubCommandEndToEnd(t *testing.T) {
	var gw gatewayBinary
	bin := gw.get(t)
	if gw.dir != "" {
		t.Cleanup(func() { _ = os.RemoveAll(gw.dir) })
	}
	dir := t.TempDir()
	cmd, out := dualbench("pub", "--through-dualgate", "--dualgate", bin, "-c", "2", "-n", "200", "--qos", "1", "--out", dir, "--max-duration", "60s")
	if err := cmd.Run(); err != nil {
		t.Fatalf("dualbench pub: %v\n%s", err, out.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.PubReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 400 || rep.Acked != 400 || rep.Received != 400 || !rep.Complete || rep.Label != "dualgate" ||
		rep.EndToEnd.P50 > rep.EndToEnd.P99 || rep.EndToEnd.P99 > rep.EndToEnd.Max {
		t.Fatalf("report %+v\n%s", rep, out.String())
	}

	port, _ := mosquitto(t, true)
	cmd, out = dualbench("pub", "--port", strconv.Itoa(port), "-c", "2", "-n", "200", "--qos", "0", "--mqtt", "5")
	if err := cmd.Run(); err != nil {
		t.Fatalf("dualbench pub: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "sent 400") {
		t.Fatalf("output:\n%s", out.String())
	}
}
