package bench

import (
	"context"
	"errors"
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
	"time"
)

// DualgateConfig says how to start a dualgate gateway for a measurement:
// every listener on a free loopback port, its own data directory.
type DualgateConfig struct {
	// Binary is the dualgate executable.
	Binary string
	// Host is the address every listener binds; empty means 127.0.0.1.
	Host string
	// DataDir is the gateway's data directory; empty makes a temporary one
	// that Stop removes.
	DataDir string
	// CertFile and KeyFile are the server certificate and key, CAFile the
	// CA that signed it. Empty: the gateway generates a development CA and
	// certificate in DataDir/certs.
	CertFile, KeyFile, CAFile string
	// SecureIdle is --secure-idle; zero keeps the gateway's default.
	SecureIdle time.Duration
	// SecureIdleFixed is --secure-idle-fixed: no stretching of the quiet
	// period for devices that upgrade often.
	SecureIdleFixed bool
	// TLSCurves is --tls-curves; empty keeps the gateway's default.
	TLSCurves string
	// SecureIdentity is --secure-identity; empty means none. dualbench's
	// devices present no client certificate, and what it measures is the
	// transport (memory, bytes, the upgrade's latency), not who may
	// receive a command: under the gateway's default (cert) their secure
	// commands would wait for a proof they cannot give. Args may still
	// say --secure-identity cert.
	SecureIdentity string
	// Args are more flags for `dualgate serve`.
	Args []string
	// Output receives the gateway's log; nil keeps only its tail, for
	// error messages.
	Output io.Writer
	// ListenTimeout bounds the wait for the listeners; zero means 20 s.
	ListenTimeout time.Duration
}

// Dualgate is a gateway started by StartDualgate.
type Dualgate struct {
	srv  *Server
	tail *tailWriter
	// Plain, TLS and API are the listeners' host:port.
	Plain, TLS, API string
	// CAFile is the CA devices must trust; CertFile and KeyFile the
	// server's certificate and key.
	CAFile, CertFile, KeyFile string
	// DataDir is the gateway's data directory.
	DataDir   string
	removeDir bool
}

// FindDualgate returns the dualgate executable: next to this executable,
// or on PATH.
func FindDualgate() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "dualgate")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("dualgate")
	if err != nil {
		return "", fmt.Errorf("bench: dualgate executable not found next to this one nor on PATH (go build -o DIR/dualgate ./cmd/dualgate): %w", err)
	}
	return p, nil
}

// StartDualgate starts `dualgate serve` and waits until its three
// listeners accept connections.
func StartDualgate(ctx context.Context, cfg DualgateConfig) (*Dualgate, error) {
	if cfg.Binary == "" {
		return nil, errors.New("bench: dualgate: no executable")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") || (cfg.CertFile != "" && cfg.CAFile == "") {
		return nil, errors.New("bench: dualgate: give the certificate, its key and its CA together, or none")
	}
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	if cfg.ListenTimeout <= 0 {
		cfg.ListenTimeout = 20 * time.Second
	}
	ports, err := FreePorts(host, 3)
	if err != nil {
		return nil, err
	}
	d := &Dualgate{
		Plain:   net.JoinHostPort(host, strconv.Itoa(ports[0])),
		TLS:     net.JoinHostPort(host, strconv.Itoa(ports[1])),
		API:     net.JoinHostPort(host, strconv.Itoa(ports[2])),
		DataDir: cfg.DataDir,
	}
	if d.DataDir == "" {
		if d.DataDir, err = os.MkdirTemp("", "dualbench-dualgate-"); err != nil {
			return nil, fmt.Errorf("bench: dualgate data dir: %w", err)
		}
		d.removeDir = true
	}
	args := []string{cfg.Binary, "serve",
		"--plain", d.Plain, "--tls", d.TLS, "--api", d.API, "--data", d.DataDir,
		"--log-level", "warn",
	}
	d.CAFile = filepath.Join(d.DataDir, "certs", "ca.pem")
	d.CertFile = filepath.Join(d.DataDir, "certs", "server.pem")
	d.KeyFile = filepath.Join(d.DataDir, "certs", "server-key.pem")
	if cfg.CertFile != "" {
		args = append(args, "--tls-cert", cfg.CertFile, "--tls-key", cfg.KeyFile)
		d.CAFile, d.CertFile, d.KeyFile = cfg.CAFile, cfg.CertFile, cfg.KeyFile
	}
	if cfg.SecureIdle > 0 {
		args = append(args, "--secure-idle", cfg.SecureIdle.String())
	}
	if cfg.SecureIdleFixed {
		args = append(args, "--secure-idle-fixed")
	}
	if cfg.TLSCurves != "" {
		args = append(args, "--tls-curves", cfg.TLSCurves)
	}
	identity := cfg.SecureIdentity
	if identity == "" {
		identity = "none"
	}
	args = append(args, "--secure-identity", identity)
	args = append(args, cfg.Args...)
	d.tail = &tailWriter{max: 4096, next: cfg.Output}
	d.srv, err = SpawnServer(ShellJoin(args), d.tail)
	if err != nil {
		d.cleanup()
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, cfg.ListenTimeout)
	defer cancel()
	for _, addr := range []string{d.Plain, d.TLS, d.API} {
		if err := WaitListening(lctx, addr, d.srv); err != nil {
			_ = d.Stop(5 * time.Second)
			return nil, fmt.Errorf("%w; its last output:\n%s", err, d.tail.String())
		}
	}
	return d, nil
}

// PID is the gateway's process id.
func (d *Dualgate) PID() int { return d.srv.PID() }

// Command is the gateway's command line.
func (d *Dualgate) Command() string { return d.srv.Command() }

// APIURL is the base URL of the HTTP API.
func (d *Dualgate) APIURL() string { return "http://" + d.API }

// Output is the tail of the gateway's log.
func (d *Dualgate) Output() string { return d.tail.String() }

// Stop ends the gateway with SIGINT (no drain), waits up to grace, then
// kills it, and removes a temporary data directory.
func (d *Dualgate) Stop(grace time.Duration) error {
	err := d.srv.StopWith(syscall.SIGINT, grace)
	d.cleanup()
	return err
}

func (d *Dualgate) cleanup() {
	if d.removeDir {
		_ = os.RemoveAll(d.DataDir)
		d.removeDir = false
	}
}

// FreePorts returns n TCP ports of host that were free a moment ago, all
// different.
func FreePorts(host string, n int) ([]int, error) {
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("bench: free port on %s: %w", host, err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// ShellJoin quotes args for /bin/sh.
func ShellJoin(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(shellQuote(a))
	}
	return b.String()
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_./:=,@%+-", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tailWriter keeps the last max bytes written to it and passes everything
// on to next (if not nil). Safe for concurrent use.
type tailWriter struct {
	max  int
	next io.Writer

	mu  sync.Mutex // guards buf
	buf []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	if over := len(w.buf) - w.max; over > 0 {
		w.buf = append(w.buf[:0], w.buf[over:]...)
	}
	w.mu.Unlock()
	if w.next != nil {
		return w.next.Write(p)
	}
	return len(p), nil
}

func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}

// GatewayTarget is the dualgate a run measures: one started for the run
// (Spawn set) or one already running at the given addresses.
type GatewayTarget struct {
	// Spawn, when set, starts a gateway for the run and stops it after.
	Spawn *DualgateConfig
	// Plain, TLS and API (a base URL) address a running gateway; CAFile
	// is the CA its TLS listener's certificate comes from.
	Plain, TLS, API, CAFile string
	// Token is the gateway's --api-token, if any.
	Token string
}

// gatewayEndpoints is a resolved GatewayTarget.
type gatewayEndpoints struct {
	Plain, TLS, API, CAFile, Token string
	// PID and Command are known for a spawned gateway only.
	PID     int
	Command string
}

// open starts the gateway when asked to, and returns its endpoints and the
// function that stops it.
func (t GatewayTarget) open(ctx context.Context, log func(string)) (gatewayEndpoints, func(), error) {
	if t.Spawn == nil {
		if t.Plain == "" || t.API == "" {
			return gatewayEndpoints{}, func() {}, errors.New("bench: gateway: give its plain address and API URL, or a dualgate to start")
		}
		return gatewayEndpoints{Plain: t.Plain, TLS: t.TLS, API: strings.TrimRight(t.API, "/"), CAFile: t.CAFile, Token: t.Token}, func() {}, nil
	}
	g, err := StartDualgate(ctx, *t.Spawn)
	if err != nil {
		return gatewayEndpoints{}, func() {}, err
	}
	stop := func() {
		if err := g.Stop(10 * time.Second); err != nil && log != nil {
			log(fmt.Sprintf("stop dualgate: %v", err))
		}
	}
	return gatewayEndpoints{Plain: g.Plain, TLS: g.TLS, API: g.APIURL(), CAFile: g.CAFile, Token: t.Token, PID: g.PID(), Command: g.Command()}, stop, nil
}
