// Package testredis runs a real redis-server for the project's tests: on a
// free loopback port, with its own configuration, append-only file and data
// in a test's temporary directory, stopped by its PID when the test ends.
package testredis

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testutil"
)

// Server is one redis-server process, which can be stopped, killed, paused
// and started again on the same port and data directory.
type Server struct {
	t    testing.TB
	bin  string
	conf string
	dir  string
	// Port is the loopback port the server listens on.
	Port     int
	sentinel bool

	mu     sync.Mutex // guards proc and paused
	proc   *testutil.Process
	paused bool
}

// Bin finds the redis-server program; the tests need it and say so.
func Bin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("these tests need redis-server (not found in PATH or /usr/bin): install it, e.g. apt-get install redis-server")
	return ""
}

// New prepares a server on a free port without starting it: append-only
// file on with an fsync per write (appendfsync always), no RDB snapshots.
// Extra lines go to its configuration after these and win over them. It is
// stopped when t ends.
func New(t testing.TB, extra ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: Bin(t), Port: testutil.FreePort(t), dir: t.TempDir()}
	s.conf = filepath.Join(s.dir, "redis.conf")
	lines := []string{
		"port " + strconv.Itoa(s.Port),
		"bind 127.0.0.1",
		"daemonize no",
		"dir " + s.dir,
		"logfile " + filepath.Join(s.dir, "redis.log"),
		"save \"\"",
		"appendonly yes",
		"appendfsync always",
		"databases 4",
		// A replica's first sync starts at once, not after 5 s.
		"repl-diskless-sync-delay 0",
	}
	lines = append(lines, extra...)
	if err := os.WriteFile(s.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("write redis.conf: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartSentinel returns a running Redis Sentinel (redis-server
// --sentinel) that watches primary under the name master.
func StartSentinel(t testing.TB, primary *Server, master string) *Server {
	t.Helper()
	s := &Server{t: t, bin: Bin(t), Port: testutil.FreePort(t), dir: t.TempDir(), sentinel: true}
	s.conf = filepath.Join(s.dir, "sentinel.conf")
	lines := []string{
		"port " + strconv.Itoa(s.Port),
		"bind 127.0.0.1",
		"daemonize no",
		"dir " + s.dir,
		"logfile " + filepath.Join(s.dir, "sentinel.log"),
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1", master, primary.Port),
	}
	if err := os.WriteFile(s.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("write sentinel.conf: %v", err)
	}
	t.Cleanup(s.Stop)
	s.Start()
	return s
}

// Start returns a running server.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	s := New(t, extra...)
	s.Start()
	return s
}

// Addr is 127.0.0.1:PORT.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// URL is redis://127.0.0.1:PORT/0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Dir is the server's data directory.
func (s *Server) Dir() string { return s.dir }

// Start runs redis-server and waits until it answers PING (an append-only
// file is loaded by then).
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.t.Fatalf("redis-server already running")
	}
	args := []string{s.conf}
	if s.sentinel {
		args = append(args, "--sentinel")
	}
	s.proc = testutil.StartProcess(s.t, filepath.Join(s.dir, "stderr.log"),
		[]string{filepath.Join(s.dir, "redis.log")}, s.ping, s.bin, args...)
}

// ping sends PING and wants +PONG (not -LOADING).
func (s *Server) ping() error {
	c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Do sends one command (inline, arguments without spaces) and returns the
// first line of the answer: for the tests' own look at the server.
func (s *Server) Do(args ...string) string {
	s.t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		s.t.Fatalf("redis %v: %v", args, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		s.t.Fatalf("redis %v: %v", args, err)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		s.t.Fatalf("redis %v: %v", args, err)
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "$") {
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return ""
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			s.t.Fatalf("redis %v: %v", args, err)
		}
		return string(buf[:n])
	}
	return line
}

// Info returns the fields of INFO section.
func (s *Server) Info(section string) map[string]string {
	s.t.Helper()
	out := make(map[string]string)
	for _, line := range strings.Split(s.Do("INFO", section), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// Pause stops the process (SIGSTOP): its socket stays open and nothing
// answers, as with a Redis that hangs. Resume continues it.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP, true) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT, false) }

func (s *Server) signal(sig syscall.Signal, paused bool) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		s.t.Fatalf("redis-server not running")
	}
	if err := s.proc.Signal(sig); err != nil {
		s.t.Fatalf("signal redis-server: %v", err)
	}
	s.paused = paused
}

// Kill ends the server at once (SIGKILL), as a crash would: what its
// append-only file holds survives.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	s.proc.Kill()
	s.proc, s.paused = nil, false
}

// Stop ends the server gracefully (SIGTERM), by its PID, and kills it if
// it does not leave.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	if s.paused {
		_ = s.proc.Signal(syscall.SIGCONT)
	}
	s.proc.Stop()
	s.proc, s.paused = nil, false
}
