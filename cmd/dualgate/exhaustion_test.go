package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testutil"
)

// The gateway runs out of descriptors (ulimit -n 256) twice: first by
// devices, which the descriptor budget sheds while the API keeps its
// reserve; then by idle API connections, which leave nothing for accept(2)
// at all. Each time it keeps serving: once descriptors free up, a new
// plain device is accepted, /healthz stays honest, and the figures say
// what happened.
func TestDescriptorExhaustion(t *testing.T) {
	plain, tlsAddr, api := testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)
	cmd := exec.Command("sh", "-c", `ulimit -n 256 && exec "$0" "$@"`, binary, "serve",
		"--plain", plain, "--tls", tlsAddr, "--api", api, "--data", t.TempDir(), "--log-format", "json",
		"--connect-burst", "1000")
	logs := new(testutil.Buffer)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	waitHTTP(t, "http://"+api+"/readyz", http.StatusOK, logs)

	// Devices alone: more than the budget (256 less a reserve of 64).
	var devices []net.Conn
	accepted := 0
	for i := range 240 {
		c, ok := connectPlain(t, plain, fmt.Sprintf("fd-%d", i))
		if c != nil {
			devices = append(devices, c)
		}
		if ok {
			accepted++
		}
	}
	if accepted == 0 || accepted > 256-64 {
		t.Fatalf("%d of 240 devices connected; want some, and at most the budget of 192", accepted)
	}
	// The reserve kept the API usable while devices took their budget.
	if shed := metric(t, api, "dualgate_connections_shed_total"); shed == 0 {
		t.Fatalf("devices over the budget were not shed and counted (accepted %d)", accepted)
	}
	for _, c := range devices {
		_ = c.Close()
	}
	waitPlainConnect(t, plain, "after-budget", logs)

	// Now idle connections to the API take every descriptor left.
	var hogs []net.Conn
	for range 300 {
		c, err := net.Dial("tcp", api)
		if err != nil {
			break
		}
		hogs = append(hogs, c)
	}
	// Every descriptor is taken once the API cannot accept any more.
	waitLog(t, logs, "too many open files")
	// A device arrives while accept(2) fails: it waits in the kernel's
	// queue, the plain listener backs off and keeps running.
	waiting, err := net.Dial("tcp", plain)
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	if _, err := waiting.Write(connectPacket("waiting")); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "accept failed; backing off and accepting again")
	for _, c := range hogs {
		_ = c.Close()
	}
	// Descriptors free again: the waiting device gets its CONNACK.
	_ = waiting.SetReadDeadline(time.Now().Add(20 * time.Second))
	var ack [4]byte
	if _, err := io.ReadFull(waiting, ack[:]); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("device waiting during the exhaustion: CONNACK % x, %v; logs:\n%s", ack, err, logs.String())
	}
	waitHTTP(t, "http://"+api+"/healthz", http.StatusOK, logs)
	if n := metric(t, api, "dualgate_accept_errors_total"); n == 0 {
		t.Fatalf("accept errors were not counted; logs:\n%s", logs.String())
	}
	waitPlainConnect(t, plain, "after-exhaustion", logs)
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the gateway exited: %v", err)
	}
}

// connectPacket is an MQTT 3.1.1 CONNECT with clean session and no keepalive.
func connectPacket(id string) []byte {
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, 0, byte(len(id))}
	body = append(body, id...)
	return append([]byte{0x10, byte(len(body))}, body...)
}

// connectPlain opens a plain connection and sends CONNECT; ok reports a
// CONNACK accepted. The connection is returned open unless it failed.
func connectPlain(t *testing.T, addr, id string) (net.Conn, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, false
	}
	if _, err := c.Write(connectPacket(id)); err != nil {
		_ = c.Close()
		return nil, false
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		_ = c.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
			return nil, false
		}
		t.Fatalf("device %s: %v", id, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, ack[0] == 0x20 && ack[3] == 0
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "read"
}

// waitPlainConnect waits until a new device is accepted: closed
// connections free their descriptors asynchronously.
func waitPlainConnect(t *testing.T, addr, id string, logs *testutil.Buffer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, ok := connectPlain(t, addr, id)
		if c != nil {
			_ = c.Close()
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no plain device accepted after descriptors freed; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitHTTP(t *testing.T, url string, want int, logs *testutil.Buffer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d (last: %v); logs:\n%s", url, want, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var metricLine = regexp.MustCompile(`(?m)^(\w+) ([0-9.e+]+)$`)

// metric reads one unlabelled figure from /metrics.
func metric(t *testing.T, api, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := metricLine.FindStringSubmatch(sc.Text()); m != nil && m[1] == name {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
