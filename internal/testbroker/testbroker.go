// Package testbroker runs a real Mosquitto broker for the project's tests:
// on a free loopback port, with its own configuration and persistence in a
// test's temporary directory, stopped by its PID when the test ends.
package testbroker

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testutil"
)

// Broker is one Mosquitto process, which can be stopped and started again
// on the same port and persistence directory.
type Broker struct {
	t    testing.TB
	bin  string
	conf string
	dir  string
	// Port is the loopback port the broker listens on.
	Port int

	mu   sync.Mutex // guards proc
	proc *testutil.Process
}

// Bin finds the mosquitto program; the tests need it and say so.
func Bin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("these tests need the mosquitto broker (not found in PATH or /usr/sbin): install it, e.g. apt-get install mosquitto")
	return ""
}

// New prepares a broker on a free port without starting it; extra lines go
// to its configuration after the listener's. It is stopped when t ends.
func New(t testing.TB, extra ...string) *Broker {
	t.Helper()
	b := &Broker{t: t, bin: Bin(t), Port: testutil.FreePort(t), dir: t.TempDir()}
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", b.Port),
		"allow_anonymous true",
		"persistence true",
		"persistence_location " + b.dir + "/",
		"autosave_interval 0",
		"max_queued_messages 100000",
		"max_inflight_messages 100",
		"set_tcp_nodelay true",
		"sys_interval 1",
		"log_dest file " + filepath.Join(b.dir, "mosquitto.log"),
	}
	if u, err := user.Current(); err == nil && os.Geteuid() == 0 {
		// As root, mosquitto drops to user "mosquitto" unless told to stay.
		lines = append(lines, "user "+u.Username)
	}
	lines = append(lines, extra...)
	if err := os.WriteFile(b.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("write mosquitto.conf: %v", err)
	}
	t.Cleanup(b.Stop)
	return b
}

// Start returns a running broker.
func Start(t testing.TB, extra ...string) *Broker {
	t.Helper()
	b := New(t, extra...)
	b.Start()
	return b
}

// URL is tcp://127.0.0.1:PORT.
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// Addr is 127.0.0.1:PORT.
func (b *Broker) Addr() string { return "127.0.0.1:" + strconv.Itoa(b.Port) }

// Start runs mosquitto and waits until it accepts connections.
func (b *Broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc != nil {
		b.t.Fatalf("broker already running")
	}
	ready := func() error {
		c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	b.proc = testutil.StartProcess(b.t, filepath.Join(b.dir, "stderr.log"),
		[]string{filepath.Join(b.dir, "mosquitto.log")}, ready, b.bin, "-c", b.conf)
}

// Stop ends the broker gracefully (SIGTERM: it saves its persistence file),
// by its PID, and kills it if it does not leave.
func (b *Broker) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc == nil {
		return
	}
	b.proc.Stop()
	b.proc = nil
}
