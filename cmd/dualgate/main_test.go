package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/dualgate/dualgate/internal/testutil"
)

// binary is the dualgate command built once for the tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dualgate-cmd")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "dualgate")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "dualgate ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

func TestCertsInit(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(binary, "certs", "init", "--dir", dir, "--hosts", "gw.example.com,10.1.2.3").CombinedOutput()
	if err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	for _, f := range []string{"ca.pem", "server.pem", "server-key.pem", "dev-client.pem", "dev-client-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%s missing: %v", f, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("gw.example.com"); err != nil {
		t.Fatalf("server certificate: %v", err)
	}
	if err := leaf.VerifyHostname("10.1.2.3"); err != nil {
		t.Fatalf("server certificate: %v", err)
	}
}

func TestCertsClient(t *testing.T) {
	dir := t.TempDir()
	// No CA yet: a clear error that says how to make one.
	out, err := exec.Command(binary, "certs", "client", "--dir", dir, "car-1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no CA") || !strings.Contains(string(out), "certs init") {
		t.Fatalf("certs client without a CA: %v\n%s", err, out)
	}
	if out, err := exec.Command(binary, "certs", "init", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "certs", "client", "--dir", dir, "car-1", "lock-2").CombinedOutput()
	if err != nil {
		t.Fatalf("certs client: %v\n%s", err, out)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("CA: %v", err)
	}
	for _, id := range []string{"car-1", "lock-2"} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem"))
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if leaf.Subject.CommonName != id || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:dualgate:client:"+id {
			t.Fatalf("%s: CN %q, URIs %v", id, leaf.Subject.CommonName, leaf.URIs)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"certs", "client", "--dir", dir}, "at least one client id"},
		{[]string{"certs", "client", "--dir", dir, "a/b"}, "bad client id"},
		{[]string{"certs", "client", "--dir", dir, "car-1"}, "--force"},
		{[]string{"certs", "client", "car-3", "--dir", dir}, "give flags first"},
	} {
		out, err := exec.Command(binary, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: %v\n%s; want an error saying %q", tc.args, err, out, tc.want)
		}
	}
	if out, err := exec.Command(binary, "certs", "client", "--dir", dir, "--force", "car-1").CombinedOutput(); err != nil {
		t.Fatalf("certs client --force: %v\n%s", err, out)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--plain", "nonsense"},
		{"serve", "--auth", "maybe"},
		{"serve", "--no-such-flag"},
		{"frobnicate"},
	} {
		cmd := exec.Command(binary, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Fatalf("%v: %v, want exit 2", args, err)
		}
		if stderr.Len() == 0 {
			t.Fatalf("%v: no message", args)
		}
	}
}

// serve with configuration from a YAML file, an environment variable and
// flags; a device connects over TLS with the generated CA; SIGTERM closes
// it with DISCONNECT 0x8B and the process exits 0.
func TestServeAndSIGTERM(t *testing.T) {
	data := t.TempDir()
	plain, tlsAddr, api := testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)
	conf := filepath.Join(t.TempDir(), "dualgate.yaml")
	if err := os.WriteFile(conf, []byte("plain: "+plain+"\nsecure-idle: 45s\napi: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "--config", conf, "--tls", tlsAddr, "--api", api, "--log-format", "json")
	cmd.Env = append(os.Environ(), "DUALGATE_DATA="+data)
	logs := new(testutil.Buffer)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()

	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), filepath.Join(data, "certs", "ca.pem")) {
		t.Fatalf("the log does not say where the CA is:\n%s", logs.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("--log-format json wrote a non-JSON line: %q", line)
		}
	}

	ca, err := os.ReadFile(filepath.Join(data, "certs", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	disc := make(chan *paho.Disconnect, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnServerDisconnect: func(d *paho.Disconnect) { disc <- d }, OnClientError: func(error) {}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "cli-dev", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	pc, err := net.Dial("tcp", plain)
	if err != nil {
		t.Fatalf("plain listener from the YAML file: %v", err)
	}
	pc.Close()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-disc:
		if d.ReasonCode != 0x8B {
			t.Fatalf("DISCONNECT %#x, want 0x8B", d.ReasonCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no DISCONNECT after SIGTERM")
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("did not exit after SIGTERM")
	}
}

// startServe runs `dualgate serve` with args and waits until it is ready.
func startServe(t *testing.T, args ...string) (*exec.Cmd, *testutil.Buffer, string) {
	t.Helper()
	api := ""
	for i, a := range args {
		if a == "--api" {
			api = args[i+1]
		}
	}
	cmd := exec.Command(binary, append([]string{"serve"}, args...)...)
	logs := new(testutil.Buffer)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cmd, logs, api
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill -9 with commands pending, a restart on the same data dir and the
// same ports at once (SO_REUSEADDR): nothing is lost, and the device gets
// every command over TLS.
func TestKill9KeepsCommands(t *testing.T) {
	data := t.TempDir()
	args := []string{"--plain", testutil.FreeAddr(t), "--tls", testutil.FreeAddr(t), "--api", testutil.FreeAddr(t), "--data", data}
	cmd, _, api := startServe(t, args...)

	var ids []string
	for i := range 3 {
		body := fmt.Sprintf(`{"topic":"devices/parked/commands/c%d","payload":"secret-%d"}`, i, i)
		resp, err := http.Post("http://"+api+"/v1/clients/parked/commands", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || out["status"] != "pending" {
			t.Fatalf("POST: %d %v", resp.StatusCode, out)
		}
		ids = append(ids, out["id"])
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = cmd.Process.Wait()

	_, logs, api := startServe(t, args...)
	tlsAddr := args[3]
	ca, err := os.ReadFile(filepath.Join(data, "certs", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	// The device proves its client id with a certificate from the
	// gateway's CA (--secure-identity cert), issued as an operator would.
	certDir := filepath.Join(data, "certs")
	if out, err := exec.Command(binary, "certs", "client", "--dir", certDir, "parked").CombinedOutput(); err != nil {
		t.Fatalf("certs client: %v\n%s", err, out)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(certDir, "parked.pem"), filepath.Join(certDir, "parked-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn), OnClientError: func(error) {},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- string(pr.Packet.Payload)
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "parked", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Disconnect(&paho.Disconnect{}) }()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "$dualgate/query", QoS: 1, Payload: []byte(`{"v":1}`)}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		select {
		case p := <-got:
			if p != fmt.Sprintf("secret-%d", i) {
				t.Fatalf("command %d: %q", i, p)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("command %d lost across kill -9; logs:\n%s", i, logs.String())
		}
	}
	for _, id := range ids {
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get("http://" + api + "/v1/commands/" + id)
			if err != nil {
				t.Fatal(err)
			}
			var v struct{ Status string }
			_ = json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			if v.Status == "delivered" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("command %s: %s", id, v.Status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// The demo moved to its own command; the gateway binary links neither
// the device SDK nor the bench.
func TestDemoMovedOut(t *testing.T) {
	var errOut bytes.Buffer
	cmd := exec.Command(binary, "demo")
	cmd.Stderr = &errOut
	if err := cmd.Run(); err == nil || !strings.Contains(errOut.String(), "cmd/dualdemo") {
		t.Fatalf("dualgate demo: %v %q, want a pointer to cmd/dualdemo", err, errOut.String())
	}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "github.com/dualgate/dualgate/bench") || strings.HasPrefix(pkg, "github.com/dualgate/dualgate/device") {
			t.Errorf("the gateway links %s", pkg)
		}
	}
}

// Settings that would open the gateway to anyone who reaches it stop
// `dualgate serve` before it binds anything, with exit status 2 and a
// message that says what to do.
func TestServeRefusesOpenSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--api", ":8080"}, want: "--api-token"},
		{args: []string{"--api", "0.0.0.0:8080"}, want: "--api-insecure"},
		{args: []string{"--api", "127.0.0.1:0"}, env: "DUALGATE_API=[::]:8080", want: "loopback"},
		{args: []string{"--api", "127.0.0.1:0", "--pprof"}, want: "--pprof needs --api-token"},
		{args: []string{"--api", "127.0.0.1:0", "--proxy-protocol", "optional"}, want: "--proxy-trusted"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		args := append([]string{"serve", "--data", t.TempDir(), "--plain", "127.0.0.1:0", "--tls", "127.0.0.1:0"}, tc.args...)
		if tc.env != "" {
			// The flag would win over the environment: drop it.
			args = args[:len(args)-2]
		}
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Env = append(os.Environ(), tc.env)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Fatalf("%v %s: %v, want exit 2\n%s", tc.args, tc.env, err, stderr.String())
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Fatalf("%v %s: message %q lacks %q", tc.args, tc.env, stderr.String(), tc.want)
		}
	}
}
