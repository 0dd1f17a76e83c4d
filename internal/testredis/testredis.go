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
	return parseFields(s.Do("INFO", section))
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

// Cluster is a Redis Cluster of primaries on loopback, without replicas:
// each a Server started with cluster-enabled, its slots assigned in equal
// ranges and the nodes met, ready once every node says cluster_state:ok.
type Cluster struct {
	// Nodes are the primaries; Nodes[i] serves the i-th range of slots.
	Nodes []*Server
	// bus is the cluster bus port of Nodes[0], which the others meet.
	bus int
}

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// StartCluster returns a running Redis Cluster of n primaries (n >= 1),
// stopped when t ends. Extra lines go to every node's configuration.
func StartCluster(t testing.TB, n int, extra ...string) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testredis: a cluster of %d nodes", n)
	}
	c := &Cluster{}
	for range n {
		lines, bus := clusterLines(t, extra)
		c.Nodes = append(c.Nodes, Start(t, lines...))
		if c.bus == 0 {
			c.bus = bus
		}
	}
	for i, s := range c.Nodes {
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		if got := s.Do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi)); got != "+OK" {
			t.Fatalf("testredis: CLUSTER ADDSLOTSRANGE %d %d: %s", lo, hi, got)
		}
		if got := s.Do("CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1)); got != "+OK" {
			t.Fatalf("testredis: CLUSTER SET-CONFIG-EPOCH: %s", got)
		}
	}
	for _, s := range c.Nodes[1:] {
		if got := s.Do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(c.Nodes[0].Port), strconv.Itoa(c.bus)); got != "+OK" {
			t.Fatalf("testredis: CLUSTER MEET: %s", got)
		}
	}
	// The nodes learn of each other by gossip (a ping per 100 ms or so):
	// wait for every node to see every other and every slot served.
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range c.Nodes {
		for {
			ci := parseFields(s.Do("CLUSTER", "INFO"))
			if ci["cluster_state"] == "ok" && ci["cluster_known_nodes"] == strconv.Itoa(n) &&
				ci["cluster_slots_ok"] == strconv.Itoa(clusterSlots) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testredis: cluster not ready after 30 s: node %s says %v", s.Addr(), ci)
			}
			time.Sleep(50 * time.Millisecond) // gossip has no event to wait on
		}
	}
	return c
}

// clusterLines configure a node of a Redis Cluster, with extra after, and
// return its cluster bus port: a free port of its own, as the default (the
// port plus 10,000) may be taken (an ephemeral port) or past 65535.
func clusterLines(t testing.TB, extra []string) ([]string, int) {
	bus := testutil.FreePort(t)
	return append([]string{
		"cluster-enabled yes",
		"cluster-config-file nodes.conf",
		"cluster-port " + strconv.Itoa(bus),
		"cluster-node-timeout 5000",
		// A test may stop a node: the others keep serving their slots.
		"cluster-require-full-coverage no",
	}, extra...), bus
}

// parseFields splits lines "k:v" into a map.
func parseFields(text string) map[string]string {
	out := make(map[string]string)
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// URL is redis+cluster://FIRST?addr=OTHER...: every node as a seed.
func (c *Cluster) URL() string {
	var b strings.Builder
	b.WriteString("redis+cluster://")
	b.WriteString(c.Nodes[0].Addr())
	for i, s := range c.Nodes[1:] {
		if i == 0 {
			b.WriteString("?")
		} else {
			b.WriteString("&")
		}
		b.WriteString("addr=" + s.Addr())
	}
	return b.String()
}

// Addrs are the nodes' addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		out[i] = s.Addr()
	}
	return out
}

// AddReplica starts a replica of the primary Nodes[i], joined to the
// cluster, and returns once its link to the primary is up.
func (c *Cluster) AddReplica(t testing.TB, i int, extra ...string) *Server {
	t.Helper()
	primary := c.Nodes[i]
	lines, _ := clusterLines(t, extra)
	s := Start(t, lines...)
	if got := s.Do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(c.Nodes[0].Port), strconv.Itoa(c.bus)); got != "+OK" {
		t.Fatalf("testredis: CLUSTER MEET: %s", got)
	}
	id := primary.Do("CLUSTER", "MYID")
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The replica must know the primary (gossip) before it can follow it.
		got := s.Do("CLUSTER", "REPLICATE", id)
		if got == "+OK" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testredis: CLUSTER REPLICATE %s: %s", id, got)
		}
		time.Sleep(50 * time.Millisecond) // gossip has no event to wait on
	}
	for s.Info("replication")["master_link_status"] != "up" {
		if time.Now().After(deadline) {
			t.Fatalf("testredis: replica of %s not in sync after 30 s", primary.Addr())
		}
		time.Sleep(50 * time.Millisecond) // the first sync: polled
	}
	return s
}
