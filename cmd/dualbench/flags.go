package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/dualgate/dualgate/bench"
)

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// clientFlags are the flags shared by conn and mem.
type clientFlags struct {
	host, port     string
	rate           float64
	keepalive      int
	mqtt           string
	prefix         string
	username       string
	password       string
	connectTimeout time.Duration
	ifaddr         string
	workers        string
	perWorker      int
	inflight       int
	logLevel       string

	tls        bool
	ca         string
	cert, key  string
	insecure   bool
	resume     bool
	tlsVersion string
	sni        string
}

func (c *clientFlags) register(fs *flag.FlagSet, defaultPort string) {
	fs.StringVar(&c.host, "host", "127.0.0.1", "server host")
	fs.StringVar(&c.port, "port", defaultPort, "server port; 8883 with --tls unless given")
	c.registerFleet(fs, "rate", 1000)

	fs.BoolVar(&c.tls, "tls", false, "connect with TLS")
	fs.StringVar(&c.ca, "ca", "", "PEM file of the CA to trust (TLS)")
	fs.StringVar(&c.cert, "cert", "", "client certificate PEM (mutual TLS)")
	fs.StringVar(&c.key, "key", "", "client key PEM (mutual TLS)")
	fs.BoolVar(&c.insecure, "insecure", false, "do not verify the server certificate (TLS)")
	fs.BoolVar(&c.resume, "resume", false, "resume TLS sessions from a pool shared by each worker (each handshake takes its own)")
	fs.StringVar(&c.tlsVersion, "tls-version", "", "pin the TLS version: 1.2 or 1.3")
	fs.StringVar(&c.sni, "sni", "", "TLS server name (default: --host)")
}

// registerFleet registers the flags of the clients themselves and of
// their worker processes; rateName is the name of the connection rate
// flag.
func (c *clientFlags) registerFleet(fs *flag.FlagSet, rateName string, rate float64) {
	fs.Float64Var(&c.rate, rateName, rate, "connection attempts per second, all workers together (0: unlimited)")
	fs.IntVar(&c.keepalive, "keepalive", 60, "MQTT keepalive in seconds; a PINGREQ is sent every keepalive (0: none)")
	fs.StringVar(&c.mqtt, "mqtt", "4", "MQTT version: 4 (3.1.1) or 5")
	fs.StringVar(&c.prefix, "prefix", bench.DefaultClientIDPrefix, "client id prefix, followed by the connection's index")
	fs.StringVar(&c.username, "username", "", "MQTT user name")
	fs.StringVar(&c.password, "password", "", "MQTT password")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", bench.DefaultConnectTimeout, "bound on dial, TLS handshake and CONNACK")
	fs.StringVar(&c.ifaddr, "ifaddr", "", "source addresses, e.g. 127.0.0.2-127.0.0.20,127.0.1.1 (default: spread over 127.0.0.2.. when N > 20000 on loopback)")
	fs.StringVar(&c.workers, "workers", "auto", "worker processes, or auto (one per --per-worker connections)")
	fs.IntVar(&c.perWorker, "per-worker", bench.DefaultPerWorker, "most connections per worker process")
	fs.IntVar(&c.inflight, "inflight", bench.DefaultInFlight, "connections between dial and CONNACK at once, per worker")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
}

// fleet turns the flags into a FleetConfig (Count left to the caller).
func (c *clientFlags) fleet(explicit map[string]bool) (bench.FleetConfig, error) {
	var fc bench.FleetConfig
	port := c.port
	if c.tls && !explicit["port"] {
		port = "8883"
	}
	version, err := parseMQTT(c.mqtt)
	if err != nil {
		return fc, err
	}
	fc, err = c.fleetSpec(version, "--rate")
	if err != nil {
		return fc, err
	}
	fc.Client.Addr = net.JoinHostPort(c.host, port)
	tlsOnly := c.ca != "" || c.cert != "" || c.key != "" || c.insecure || c.resume || c.tlsVersion != "" || c.sni != ""
	if tlsOnly && !c.tls {
		return fc, fmt.Errorf("--ca, --cert, --key, --insecure, --resume, --tls-version and --sni need --tls")
	}
	if c.tls {
		fc.Client.TLS = &bench.TLSSpec{
			CAFile: c.ca, CertFile: c.cert, KeyFile: c.key, ServerName: c.sni,
			Insecure: c.insecure, Resume: c.resume, Version: c.tlsVersion,
		}
	}
	return fc, nil
}

// fleetSpec turns the fleet flags into a FleetConfig without address,
// TLS or count; rateName names the rate flag in errors.
func (c *clientFlags) fleetSpec(version int, rateName string) (bench.FleetConfig, error) {
	var fc bench.FleetConfig
	if c.keepalive < 0 || c.keepalive > 65535 {
		return fc, fmt.Errorf("--keepalive %d: want 0..65535 seconds", c.keepalive)
	}
	if c.rate < 0 {
		return fc, fmt.Errorf("%s %v: want 0 or more", rateName, c.rate)
	}
	fc.Client = bench.ClientSpec{
		MQTTVersion:    version,
		KeepAlive:      time.Duration(c.keepalive) * time.Second,
		ClientIDPrefix: c.prefix,
		Username:       c.username,
		Password:       c.password,
		ConnectTimeout: c.connectTimeout,
		Rate:           c.rate,
		InFlight:       c.inflight,
	}
	if c.ifaddr != "" {
		addrs, err := bench.ParseAddrRanges(c.ifaddr)
		if err != nil {
			return fc, err
		}
		for _, a := range addrs {
			fc.Client.SourceAddrs = append(fc.Client.SourceAddrs, a.String())
		}
	}
	if c.workers != "auto" {
		n, err := strconv.Atoi(c.workers)
		if err != nil || n < 1 {
			return fc, fmt.Errorf("--workers %q: want a positive number or auto", c.workers)
		}
		fc.Workers = n
	}
	if c.perWorker < 1 {
		return fc, fmt.Errorf("--per-worker %d: want at least 1", c.perWorker)
	}
	fc.PerWorker = c.perWorker
	return fc, nil
}

func parseMQTT(s string) (int, error) {
	switch s {
	case "4", "3.1.1", "311":
		return 4, nil
	case "5", "5.0":
		return 5, nil
	}
	return 0, fmt.Errorf("--mqtt %q: want 4 (3.1.1) or 5", s)
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// parseConn parses the flags of `dualbench conn`.
func parseConn(args []string, stderr io.Writer) (bench.ConnConfig, string, error) {
	fs := flag.NewFlagSet("dualbench conn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describe(fs, "conn")
	var (
		cf    clientFlags
		count int
		hold  time.Duration
	)
	cf.register(fs, "1883")
	fs.IntVar(&count, "c", 1000, "number of connections")
	fs.IntVar(&count, "count", 1000, "number of connections (same as -c)")
	fs.DurationVar(&hold, "hold", 0, "how long to hold the connections once all are attempted (0: until Ctrl-C)")
	if err := parseFlags(fs, args); err != nil {
		return bench.ConnConfig{}, "", err
	}
	fc, err := cf.fleet(setFlags(fs))
	if err != nil {
		return bench.ConnConfig{}, "", usageError{err}
	}
	if count < 1 {
		return bench.ConnConfig{}, "", usageError{fmt.Errorf("-c %d: want at least 1", count)}
	}
	if hold < 0 {
		return bench.ConnConfig{}, "", usageError{fmt.Errorf("--hold %v: want 0 or more", hold)}
	}
	fc.Count = count
	return bench.ConnConfig{Fleet: fc, Hold: hold}, cf.logLevel, nil
}

// parseMem parses the flags of `dualbench mem`.
func parseMem(args []string, stderr io.Writer) (bench.MemConfig, string, error) {
	fs := flag.NewFlagSet("dualbench mem", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describe(fs, "mem")
	var (
		cf     clientFlags
		cfg    bench.MemConfig
		sizes  string
		settle = bench.DefaultSettle()
	)
	cf.register(fs, "1883")
	fs.IntVar(&cfg.TargetPID, "target-pid", 0, "PID of the server to measure")
	fs.StringVar(&cfg.Spawn, "spawn", "", "command that starts the server to measure; it is stopped at the end")
	fs.StringVar(&sizes, "sizes", "2000,5000,15000", "connection counts to measure, comma-separated")
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "", "Prometheus URL of the server, read for "+bench.HeapMetric)
	fs.StringVar(&cfg.OutDir, "out", "", "directory for report.json and report.md")
	fs.DurationVar(&settle.Interval, "settle-interval", settle.Interval, "time between RSS samples")
	fs.IntVar(&settle.Samples, "settle-samples", settle.Samples, "consecutive RSS samples that must agree")
	fs.Float64Var(&settle.Tolerance, "settle-tolerance", settle.Tolerance, "largest spread of those samples (fraction)")
	fs.DurationVar(&settle.Timeout, "settle-timeout", settle.Timeout, "longest wait for RSS to settle")
	fs.Float64Var(&cfg.MinR2, "min-r2", bench.DefaultMinR2, "R² from which the growth is called linear")
	if err := parseFlags(fs, args); err != nil {
		return cfg, "", err
	}
	fc, err := cf.fleet(setFlags(fs))
	if err != nil {
		return cfg, "", usageError{err}
	}
	cfg.Fleet = fc
	cfg.Settle = settle
	if cfg.Sizes, err = parseSizes(sizes); err != nil {
		return cfg, "", usageError{err}
	}
	if (cfg.TargetPID > 0) == (cfg.Spawn != "") {
		return cfg, "", usageError{fmt.Errorf("give exactly one of --target-pid and --spawn")}
	}
	return cfg, cf.logLevel, nil
}

func parseSizes(s string) ([]int, error) {
	return parseCounts("--sizes", "size", s)
}

// parseCounts parses a comma-separated list of positive integers given to
// flag name.
func parseCounts(name, what, s string) ([]int, error) {
	var out []int
	for _, part := range parseList(s) {
		n, err := strconv.Atoi(part)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive count", name, part)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no %s", name, what)
	}
	return out, nil
}

// gatewayFlags say which dualgate a run measures: one it starts
// (--dualgate, the default), or a running one (--api and its addresses).
type gatewayFlags struct {
	dualgate   string
	api        string
	host       string
	port       string
	tlsPort    string
	ca         string
	token      string
	secureIdle time.Duration
	args       listFlag
}

func (g *gatewayFlags) register(fs *flag.FlagSet, secureIdle time.Duration) {
	fs.StringVar(&g.dualgate, "dualgate", "", "dualgate executable to start for the run (default: next to dualbench, or on PATH)")
	fs.Var(&g.args, "gateway-arg", "one more flag for the dualgate started (repeatable), e.g. --gateway-arg=--tls-curves=x25519")
	fs.DurationVar(&g.secureIdle, "secure-idle", secureIdle, "--secure-idle of the dualgate started: the quiet period before a device is sent back to plain")
	fs.StringVar(&g.api, "api", "", "base URL of a running dualgate's HTTP API (instead of starting one), e.g. http://127.0.0.1:8080")
	fs.StringVar(&g.host, "host", "127.0.0.1", "host of the running dualgate (with --api)")
	fs.StringVar(&g.port, "port", "1883", "plain port of the running dualgate (with --api)")
	fs.StringVar(&g.tlsPort, "tls-port", "8883", "TLS port of the running dualgate (with --api)")
	fs.StringVar(&g.ca, "ca", "", "CA of the running dualgate's certificate, e.g. DATA/certs/ca.pem (with --api)")
	fs.StringVar(&g.token, "api-token", "", "bearer token of the running dualgate's API")
}

// target turns the flags into a GatewayTarget; fixed asks the started
// gateway not to stretch its quiet period.
func (g *gatewayFlags) target(explicit map[string]bool, fixed bool) (bench.GatewayTarget, error) {
	if g.api != "" {
		for _, name := range []string{"dualgate", "gateway-arg", "secure-idle"} {
			if explicit[name] {
				return bench.GatewayTarget{}, fmt.Errorf("--%s starts a dualgate: not with --api", name)
			}
		}
		if g.ca == "" {
			return bench.GatewayTarget{}, fmt.Errorf("--api needs --ca: the devices verify the gateway's certificate")
		}
		return bench.GatewayTarget{
			Plain: net.JoinHostPort(g.host, g.port), TLS: net.JoinHostPort(g.host, g.tlsPort),
			API: g.api, CAFile: g.ca, Token: g.token,
		}, nil
	}
	for _, name := range []string{"host", "port", "tls-port", "ca", "api-token"} {
		if explicit[name] {
			return bench.GatewayTarget{}, fmt.Errorf("--%s addresses a running dualgate: give --api too", name)
		}
	}
	if g.secureIdle < 100*time.Millisecond {
		return bench.GatewayTarget{}, fmt.Errorf("--secure-idle %v: want at least 100ms", g.secureIdle)
	}
	bin, err := g.binary()
	if err != nil {
		return bench.GatewayTarget{}, err
	}
	return bench.GatewayTarget{Spawn: &bench.DualgateConfig{
		Binary: bin, SecureIdle: g.secureIdle, SecureIdleFixed: fixed, Args: g.args,
	}}, nil
}

func (g *gatewayFlags) binary() (string, error) {
	if g.dualgate != "" {
		return g.dualgate, nil
	}
	return bench.FindDualgate()
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// parseList splits a comma-separated list, dropping empty items.
func parseList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// parseVersions parses a list of MQTT versions.
func parseVersions(s string) ([]int, error) {
	var out []int
	for _, part := range parseList(s) {
		v, err := parseMQTT(part)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--mqtt: no version")
	}
	return out, nil
}

// parseKex checks a list of key exchanges: "default" or curve lists
// joined with '+' (x25519+p256).
func parseKex(s string) ([]string, error) {
	var out []string
	for _, k := range parseList(s) {
		if k != bench.KexDefault {
			k = strings.ReplaceAll(k, "+", ",")
			if _, err := bench.ParseCurves(k); err != nil {
				return nil, err
			}
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--kex: no key exchange")
	}
	return out, nil
}
