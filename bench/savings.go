package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// SavingsConfig is the `dualbench savings` run: the same fleet three ways
// in one invocation: (a) dualgate on demand, every device idle on plain
// and a fraction of them upgraded for one secure command each; (b)
// dualgate with every device on TLS; (c) a peer broker with every device
// on TLS.
type SavingsConfig struct {
	// Devices is the size of the fleet (15,000 when zero).
	Devices int
	// SecureFraction is the share of devices that get a secure command
	// in (a).
	SecureFraction float64
	// Dualgate is the gateway executable; Args more flags for it.
	Dualgate string
	Args     []string
	// SecureIdle is the gateway's quiet period in (a) (30 s when zero):
	// the upgraded devices are measured on TLS within it, and again once
	// it has sent them back to plain.
	SecureIdle time.Duration
	// Peer is the peer broker's executable (Mosquitto); PeerCmd, when
	// set, replaces it: a command line in which {host}, {port}, {cert},
	// {key}, {ca} and {dir} are replaced. With neither, (c) is skipped.
	Peer    string
	PeerCmd string
	// NoPeer skips (c).
	NoPeer bool
	// Fleet describes the devices (MQTT version, keepalive, connection
	// rate, workers); its address and count are set per run.
	Fleet FleetConfig
	// Resume and Kex are the devices' TLS settings (see UpgradeConfig).
	Resume bool
	Kex    string
	// Settle says when the servers' RSS counts as settled.
	Settle SettleConfig
	// CommandsPerDay is the secure commands a day of a device that needs
	// them, for the bytes-per-day figures (1 when zero).
	CommandsPerDay float64
	// TrafficCycles and TrafficSettle tune the one-device traffic probe
	// (see TrafficConfig); zero keeps its defaults.
	TrafficCycles int
	TrafficSettle time.Duration
	// Concurrency bounds the API requests in flight (64 when zero).
	Concurrency int
	// Timeouts: CommandTimeout for the secure commands' PUBACKs (60 s),
	// PlainTimeout for the gateway to send the devices back to plain (3
	// quiet periods + 60 s), StopTimeout for the devices' disconnection.
	// Every run has a server of its own.
	CommandTimeout time.Duration
	PlainTimeout   time.Duration
	StopTimeout    time.Duration
	// OutDir, when set, receives report.md, report.json and the charts.
	OutDir string
	// Progress and Terminal are as in ConnConfig.
	Progress io.Writer
	Terminal bool
	// Proc reads /proc; the zero value reads the real one.
	Proc ProcFS
}

func (c SavingsConfig) withDefaults() (SavingsConfig, error) {
	if c.Devices <= 0 {
		c.Devices = 15000
	}
	if c.SecureFraction < 0 || c.SecureFraction > 1 || math.IsNaN(c.SecureFraction) {
		return c, fmt.Errorf("bench: savings: secure fraction %v: want 0..1", c.SecureFraction)
	}
	if c.Dualgate == "" {
		return c, errors.New("bench: savings: no dualgate executable")
	}
	if c.SecureIdle <= 0 {
		c.SecureIdle = 30 * time.Second
	}
	if c.CommandsPerDay <= 0 {
		c.CommandsPerDay = 1
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = time.Minute
	}
	if c.PlainTimeout <= 0 {
		c.PlainTimeout = 3*c.SecureIdle + time.Minute
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultCloseTimeout + 10*time.Second
	}
	if c.Fleet.ProgressEvery <= 0 {
		c.Fleet.ProgressEvery = 200 * time.Millisecond
	}
	if err := c.Fleet.Client.Validate(); err != nil && c.Fleet.Client.Addr != "" {
		return c, err
	}
	return c, nil
}

// SecureDevices is the number of devices that get a secure command: the
// fraction of the fleet, at least one when the fraction is not zero.
func SecureDevices(devices int, fraction float64) int {
	if fraction <= 0 || devices <= 0 {
		return 0
	}
	return min(devices, max(1, int(math.Round(float64(devices)*fraction))))
}

// spreadIndices picks k of n indices (from first), evenly apart.
func spreadIndices(first, n, k int) []int {
	out := make([]int, 0, k)
	for i := range k {
		out = append(out, first+i*n/k)
	}
	return out
}

// SavingsReading is a server's memory at one moment of a run.
type SavingsReading struct {
	Name string `json:"name"`
	// Plain and TLS are the devices by transport as the gateway counts
	// them (-1: unknown, for a peer broker).
	Plain int `json:"plain"`
	TLS   int `json:"tls"`
	// RSS (VmRSS), PSS, and RSSDelta = RSS - the server's baseline.
	RSS      int64 `json:"rss"`
	PSS      int64 `json:"pss,omitempty"`
	RSSDelta int64 `json:"rss_delta"`
	Settled  bool  `json:"settled"`
	// KiBPerConn is RSSDelta per connected device.
	KiBPerConn float64 `json:"kib_per_conn"`
	// KernelDelta is the server's half of the socket slab growth since the
	// baseline; KernelKiBPerConn adds it to KiBPerConn.
	HasSlab          bool    `json:"has_slab"`
	KernelDelta      int64   `json:"kernel_delta,omitempty"`
	KernelKiBPerConn float64 `json:"rss_plus_kernel_kib_per_conn,omitempty"`
	// HeapInuse is the Go heap in use (dualgate's /metrics).
	HeapInuse float64 `json:"heap_inuse,omitempty"`
	FDs       int     `json:"fds"`
}

// SavingsRun is one of the three ways.
type SavingsRun struct {
	Key     string `json:"key"` // "a", "b" or "c"
	Server  string `json:"server"`
	Mode    string `json:"mode"`
	Command string `json:"command,omitempty"`
	PID     int    `json:"pid"`
	// Devices is the devices connected.
	Devices     int64            `json:"devices"`
	Failed      int64            `json:"failed"`
	Failures    map[string]int64 `json:"failures,omitempty"`
	ConnectRate float64          `json:"connect_rate"`
	RampSeconds float64          `json:"ramp_seconds"`
	Handshake   LatencySummary   `json:"tls_handshake"`
	Baseline    ProcMem          `json:"baseline"`
	Readings    []SavingsReading `json:"readings"`
	// TLSIdle is one TLS keepalive cycle of a device on this server.
	TLSIdle WireFigure `json:"tls_keepalive_cycle"`
	Skipped string     `json:"skipped,omitempty"`
}

// reading returns the named reading, or nil.
func (r *SavingsRun) reading(name string) *SavingsReading {
	if r == nil {
		return nil
	}
	for i := range r.Readings {
		if r.Readings[i].Name == name {
			return &r.Readings[i]
		}
	}
	return nil
}

// Reading names.
const (
	readingIdle  = "all on plain"
	readingOnTLS = "some on TLS"
	readingAfter = "back on plain"
	readingAll   = "all on TLS"
)

// SavingsFigure is one derived figure of the report.
type SavingsFigure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// DeviceDay is one way's bytes per device per day.
type DeviceDay struct {
	Name        string  `json:"name"`
	BytesPerDay float64 `json:"bytes_per_day"`
}

// SavingsReport is the result of `dualbench savings`.
type SavingsReport struct {
	Started        time.Time `json:"started"`
	Devices        int       `json:"devices"`
	SecureFraction float64   `json:"secure_fraction"`
	SecureDevices  int       `json:"secure_devices"`
	MQTTVersion    int       `json:"mqtt_version"`
	KeepAlive      float64   `json:"keepalive_seconds"`
	SecureIdle     float64   `json:"secure_idle_seconds"`
	Kex            string    `json:"kex"`
	Resume         bool      `json:"resume"`
	SlabCaches     []string  `json:"slab_caches"`

	Runs []SavingsRun `json:"runs"`
	// The secure commands of (a): sent, acknowledged, their latency
	// (POST to device PUBACK).
	CommandsSent  int64          `json:"commands_sent"`
	CommandsAcked int64          `json:"commands_acked"`
	Latency       LatencySummary `json:"latency"`
	Distribution  []Quantile     `json:"distribution,omitempty"`
	// Traffic is the one-device probe against the gateway of (a).
	Traffic *TrafficRun `json:"traffic,omitempty"`

	// Per connection (KiB): dualgate plain (a, all on plain), dualgate TLS
	// (b), peer TLS (c), one upgraded device (a: on TLS minus all on
	// plain, per upgraded device).
	PlainKiB    float64 `json:"plain_kib_per_conn"`
	TLSKiB      float64 `json:"tls_kib_per_conn"`
	PeerTLSKiB  float64 `json:"peer_tls_kib_per_conn"`
	UpgradedKiB float64 `json:"upgraded_kib_per_device"`
	// Fleet memory (RSS growth over the idle server) and the ratios all
	// on TLS over on demand.
	FleetOnDemand int64   `json:"fleet_on_demand_bytes"`
	FleetAllTLS   int64   `json:"fleet_all_tls_bytes"`
	FleetPeer     int64   `json:"fleet_peer_bytes"`
	RatioVsTLS    float64 `json:"ratio_vs_tls"`
	RatioVsPeer   float64 `json:"ratio_vs_peer"`
	// The same with the servers' kernel socket memory, and on total RSS.
	KernelRatioVsTLS  float64 `json:"kernel_ratio_vs_tls"`
	KernelRatioVsPeer float64 `json:"kernel_ratio_vs_peer"`
	TotalRatioVsTLS   float64 `json:"total_ratio_vs_tls"`
	TotalRatioVsPeer  float64 `json:"total_ratio_vs_peer"`

	Figures     []SavingsFigure `json:"figures"`
	DeviceDays  []DeviceDay     `json:"device_bytes_per_day"`
	BreakEven   float64         `json:"break_even_commands_per_day"`
	Goals       []Goal          `json:"goals"`
	Interrupted bool            `json:"interrupted"`
	Notes       []string        `json:"notes,omitempty"`
}

// RunSavings runs the three ways, prints the comparison and writes the
// report. On error the report holds what was measured so far.
func RunSavings(ctx context.Context, cfg SavingsConfig, out io.Writer, log *zap.Logger) (*SavingsReport, error) {
	if log == nil {
		log = zap.NewNop()
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	kex := cfg.Kex
	if kex == "" {
		kex = KexDefault
	}
	rep := &SavingsReport{
		Started: time.Now().UTC(), Devices: cfg.Devices, SecureFraction: cfg.SecureFraction,
		SecureDevices: SecureDevices(cfg.Devices, cfg.SecureFraction), MQTTVersion: mqttVersionOf(cfg.Fleet.Client),
		KeepAlive: cfg.Fleet.Client.KeepAlive.Seconds(), SecureIdle: cfg.SecureIdle.Seconds(), Kex: kex, Resume: cfg.Resume,
		SlabCaches: SocketSlabCaches(),
	}
	work, err := os.MkdirTemp("", "dualbench-savings-")
	if err != nil {
		return nil, fmt.Errorf("bench: savings: work dir: %w", err)
	}
	defer os.RemoveAll(work)
	// A peer broker started as root reads its certificate as another user.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, fmt.Errorf("bench: savings: %w", err)
	}
	s := &savingsRun{cfg: cfg, rep: rep, log: log, out: out, work: work}
	runErr := s.run(ctx)
	rep.Interrupted = ctx.Err() != nil
	rep.finish(cfg)
	writeSavingsText(out, rep)
	if cfg.OutDir != "" {
		if err := rep.WriteFiles(cfg.OutDir, s.latency); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	if rep.Interrupted && errors.Is(runErr, context.Canceled) {
		runErr = nil
	}
	return rep, runErr
}

// savingsRun is the state of one RunSavings.
type savingsRun struct {
	cfg     SavingsConfig
	rep     *SavingsReport
	log     *zap.Logger
	out     io.Writer
	work    string
	latency *Latency
	// The certificate of (a), used by (b) and (c).
	caFile, certFile, keyFile string
}

func (s *savingsRun) say(format string, args ...any) {
	if s.cfg.Progress != nil {
		fmt.Fprintf(s.cfg.Progress, "savings       "+format+"\n", args...)
	}
}

func (s *savingsRun) run(ctx context.Context) error {
	if err := s.onDemand(ctx); err != nil {
		return fmt.Errorf("bench: savings (a) dualgate on demand: %w", err)
	}
	if err := s.allTLS(ctx); err != nil {
		return fmt.Errorf("bench: savings (b) dualgate all on TLS: %w", err)
	}
	if err := s.peer(ctx); err != nil {
		return fmt.Errorf("bench: savings (c) peer all on TLS: %w", err)
	}
	return nil
}

// fleetFor is the fleet of one run against addr.
func (s *savingsRun) fleetFor(addr string, tlsSpec *TLSSpec, device *DeviceSpec) FleetConfig {
	fc := s.cfg.Fleet
	fc.Count = s.cfg.Devices
	fc.Client.Addr = addr
	fc.Client.TLS = tlsSpec
	fc.Client.Device = device
	return fc
}

// meter reads one server's memory.
func (s *savingsRun) meter(pid int, metricsURL string) *memRun {
	return &memRun{cfg: MemConfig{Settle: s.cfg.Settle, Proc: s.cfg.Proc, MetricsURL: metricsURL}, pid: pid, log: s.log, rep: &MemReport{}}
}

// reading takes a settled reading against the baseline.
func (s *savingsRun) reading(ctx context.Context, m *memRun, base snapshot, name string, devices int64) (SavingsReading, error) {
	snap, err := m.read(ctx)
	if err != nil {
		return SavingsReading{}, err
	}
	r := SavingsReading{
		Name: name, Plain: -1, TLS: -1, RSS: snap.mem.RSS, PSS: snap.mem.PSS, RSSDelta: snap.mem.RSS - base.mem.RSS,
		Settled: snap.settled, HasSlab: snap.hasSlab && base.hasSlab, FDs: snap.fds,
	}
	if snap.hasHeap {
		r.HeapInuse = snap.heap
	}
	if devices > 0 {
		r.KiBPerConn = float64(r.RSSDelta) / float64(devices) / 1024
	}
	if r.HasSlab {
		// On loopback both ends are in this kernel: the server's share is
		// half of the growth.
		r.KernelDelta = (snap.slab.ActiveBytes() - base.slab.ActiveBytes()) / 2
		if devices > 0 {
			r.KernelKiBPerConn = r.KiBPerConn + float64(r.KernelDelta)/float64(devices)/1024
		}
	}
	s.say("%-14s RSS %s (+%s over the idle server), %.3f KiB per device", name, fmtBytes(r.RSS), fmtBytes(r.RSSDelta), r.KiBPerConn)
	return r, nil
}

// connect starts a fleet and waits until every device has connected.
func (s *savingsRun) connect(ctx context.Context, fc FleetConfig, run *SavingsRun) (*Fleet, error) {
	fleet, err := StartFleet(fc, s.log)
	if err != nil {
		return nil, err
	}
	pr := &progressPrinter{w: s.cfg.Progress, terminal: s.cfg.Terminal, total: fc.Count}
	err = fleet.WaitReady(ctx, pr.update)
	pr.done()
	st := fleet.Stats()
	run.Devices, run.Failed, run.Failures = st.Connected, st.Failed, st.Failures
	run.ConnectRate, run.RampSeconds = st.ConnectRate(), st.RampDuration().Seconds()
	if err == nil && st.Connected == 0 {
		err = fmt.Errorf("%w: %d failed %v", ErrNoConnection, st.Failed, st.Failures)
	}
	if err != nil {
		s.stopFleet(ctx, fleet, run)
		return nil, err
	}
	s.say("%-14s %d of %d devices connected at %.0f/s", run.Key+") "+run.Mode, st.Connected, fc.Count, run.ConnectRate)
	return fleet, nil
}

// stopFleet disconnects a fleet and keeps its handshake figures.
func (s *savingsRun) stopFleet(ctx context.Context, fleet *Fleet, run *SavingsRun) FleetResult {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StopTimeout)
	defer cancel()
	res, err := fleet.Stop(stopCtx)
	if err != nil {
		s.log.Warn("stop devices", zap.Error(err))
	}
	run.Handshake = res.Handshake
	return res
}

// onDemand is (a).
func (s *savingsRun) onDemand(ctx context.Context) error {
	run := SavingsRun{Key: "a", Server: "dualgate", Mode: "on demand"}
	defer func() { s.rep.Runs = append(s.rep.Runs, run) }()
	g, err := StartDualgate(ctx, DualgateConfig{
		Binary: s.cfg.Dualgate, DataDir: filepath.Join(s.work, "a"), SecureIdle: s.cfg.SecureIdle, Args: s.cfg.Args,
	})
	if err != nil {
		return err
	}
	defer s.stopGateway(g)
	run.PID, run.Command = g.PID(), g.Command()
	s.caFile, s.certFile, s.keyFile = g.CAFile, g.CertFile, g.KeyFile
	api := NewAPIClient(g.APIURL(), "", s.cfg.Concurrency)
	defer api.Close()

	// One device's bytes on the wire, before the fleet arrives.
	s.say("a) dualgate on demand: one device's bytes on the wire (two upgrade cycles, %s quiet period each)", s.cfg.SecureIdle)
	tcfg, err := TrafficConfig{
		Gateway: GatewayTarget{Plain: g.Plain, TLS: g.TLS, API: g.APIURL(), CAFile: g.CAFile}, MQTTVersions: []int{s.rep.MQTTVersion},
		Kex: []string{s.rep.Kex}, KeepAlive: s.cfg.Fleet.Client.KeepAlive, Cycles: s.cfg.TrafficCycles, Settle: s.cfg.TrafficSettle,
		CycleWait: s.cfg.PlainTimeout, Progress: s.cfg.Progress,
	}.withDefaults()
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(g.Plain)
	t := &trafficRun{cfg: tcfg, gw: gatewayEndpoints{Plain: g.Plain, TLS: g.TLS, API: g.APIURL(), CAFile: g.CAFile}, api: api, model: WireModelFor(host), log: s.log}
	tr, err := t.run(ctx, byte(s.rep.MQTTVersion))
	s.rep.Traffic = &tr
	if err != nil {
		return fmt.Errorf("traffic probe: %w", err)
	}
	run.TLSIdle = tr.TLSIdle

	m := s.meter(g.PID(), "http://"+g.API+"/metrics")
	base, err := m.read(ctx)
	if err != nil {
		return err
	}
	run.Baseline = base.mem
	device := &DeviceSpec{TLS: TLSSpec{CAFile: g.CAFile, Resume: s.cfg.Resume, Curves: s.cfg.Kex}}
	fc := s.fleetFor(g.Plain, nil, device)
	fleet, err := s.connect(ctx, fc, &run)
	if err != nil {
		return err
	}
	defer s.stopFleet(ctx, fleet, &run)
	if err := s.waitStats(ctx, api, s.cfg.PlainTimeout, func(st GatewayStats) bool { return st.Plain() >= int(run.Devices) && st.TLS() == 0 }); err != nil {
		return fmt.Errorf("waiting for the fleet on plain: %w", err)
	}
	r, err := s.reading(ctx, m, base, readingIdle, run.Devices)
	if err != nil {
		return err
	}
	s.countModes(ctx, api, &r)
	run.Readings = append(run.Readings, r)

	k := s.rep.SecureDevices
	if k == 0 {
		return nil
	}
	u := &upgradeRun{
		cfg: UpgradeConfig{Concurrency: s.cfg.Concurrency, PayloadSize: 100, RoundTimeout: s.cfg.CommandTimeout},
		api: api, rep: &UpgradeReport{Devices: k}, log: s.log, prefix: fc.Client.ClientIDPrefix,
	}
	if u.prefix == "" {
		u.prefix = DefaultClientIDPrefix
	}
	targets := spreadIndices(fc.FirstIndex, s.cfg.Devices, k)
	s.say("a) dualgate on demand: a secure command to each of %d devices", k)
	rd, err := u.round(ctx, fleet, 0, targets)
	s.rep.CommandsSent, s.rep.CommandsAcked = rd.Sent, rd.Acked
	s.rep.Notes = append(s.rep.Notes, u.rep.Notes...)
	if err != nil {
		return err
	}
	s.say("a) dualgate on demand: %d commands acknowledged, all within %s", rd.Acked, fmtMs(rd.Completion))
	if err := s.waitStats(ctx, api, s.cfg.CommandTimeout, func(st GatewayStats) bool { return st.TLS() >= k }); err != nil {
		return fmt.Errorf("waiting for %d devices on TLS: %w", k, err)
	}
	r, err = s.reading(ctx, m, base, readingOnTLS, run.Devices)
	if err != nil {
		return err
	}
	s.countModes(ctx, api, &r)
	if r.TLS < k {
		s.rep.Notes = append(s.rep.Notes, fmt.Sprintf("(a) only %d of %d upgraded devices were still on TLS at the end of the reading: a longer --secure-idle keeps them there", r.TLS, k))
	}
	run.Readings = append(run.Readings, r)

	s.say("a) dualgate on demand: waiting for the gateway to send them back to plain")
	if err := s.waitStats(ctx, api, s.cfg.PlainTimeout, func(st GatewayStats) bool { return st.TLS() == 0 && st.Plain() >= int(run.Devices) }); err != nil {
		return fmt.Errorf("waiting for the devices back on plain: %w", err)
	}
	r, err = s.reading(ctx, m, base, readingAfter, run.Devices)
	if err != nil {
		return err
	}
	s.countModes(ctx, api, &r)
	run.Readings = append(run.Readings, r)
	res := s.stopFleet(ctx, fleet, &run)
	s.latency = res.CommandHist
	s.rep.Latency = res.Command
	if res.CommandHist != nil {
		s.rep.Distribution = res.CommandHist.Distribution(DistributionPercentiles())
	}
	return nil
}

// countModes records the gateway's devices by transport in r.
func (s *savingsRun) countModes(ctx context.Context, api *APIClient, r *SavingsReading) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if st, err := api.Stats(sctx); err == nil {
		r.Plain, r.TLS = st.Plain(), st.TLS()
	}
}

// allTLS is (b).
func (s *savingsRun) allTLS(ctx context.Context) error {
	run := SavingsRun{Key: "b", Server: "dualgate", Mode: "all on TLS"}
	defer func() { s.rep.Runs = append(s.rep.Runs, run) }()
	// A quiet period longer than the run: nobody is sent to plain.
	g, err := StartDualgate(ctx, DualgateConfig{
		Binary: s.cfg.Dualgate, DataDir: filepath.Join(s.work, "b"), SecureIdle: 24 * time.Hour, Args: s.cfg.Args,
		CertFile: s.certFile, KeyFile: s.keyFile, CAFile: s.caFile,
	})
	if err != nil {
		return err
	}
	defer s.stopGateway(g)
	run.PID, run.Command = g.PID(), g.Command()
	if s.rep.Traffic != nil {
		run.TLSIdle = s.rep.Traffic.TLSIdle
	}
	api := NewAPIClient(g.APIURL(), "", 2)
	defer api.Close()
	m := s.meter(g.PID(), "http://"+g.API+"/metrics")
	base, err := m.read(ctx)
	if err != nil {
		return err
	}
	run.Baseline = base.mem
	tlsSpec := &TLSSpec{CAFile: s.caFile, Resume: s.cfg.Resume, Curves: s.cfg.Kex}
	device := &DeviceSpec{TLS: *tlsSpec}
	fleet, err := s.connect(ctx, s.fleetFor(g.TLS, tlsSpec, device), &run)
	if err != nil {
		return err
	}
	defer s.stopFleet(ctx, fleet, &run)
	if err := s.waitStats(ctx, api, s.cfg.PlainTimeout, func(st GatewayStats) bool { return st.TLS() >= int(run.Devices) }); err != nil {
		return fmt.Errorf("waiting for the fleet on TLS: %w", err)
	}
	r, err := s.reading(ctx, m, base, readingAll, run.Devices)
	if err != nil {
		return err
	}
	s.countModes(ctx, api, &r)
	run.Readings = append(run.Readings, r)
	return nil
}

// peer is (c).
func (s *savingsRun) peer(ctx context.Context) error {
	run := SavingsRun{Key: "c", Mode: "all on TLS"}
	defer func() { s.rep.Runs = append(s.rep.Runs, run) }()
	command, name, err := s.peerCommand()
	run.Server = name
	if err != nil {
		run.Skipped = err.Error()
		s.rep.Notes = append(s.rep.Notes, "(c) skipped: "+err.Error())
		s.say("c) skipped: %v", err)
		return nil
	}
	addr := command.addr
	tail := &tailWriter{max: 4096}
	srv, err := SpawnServer(command.line, tail)
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.Stop(10 * time.Second); err != nil {
			s.log.Warn("stop peer", zap.Error(err))
		}
	}()
	run.PID, run.Command = srv.PID(), srv.Command()
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err = WaitListening(lctx, addr, srv)
	cancel()
	if err != nil {
		return fmt.Errorf("%w; its output:\n%s", err, tail.String())
	}

	// A device's TLS keepalive cycle on the peer.
	if fig, err := s.peerIdle(ctx, addr); err != nil {
		s.rep.Notes = append(s.rep.Notes, fmt.Sprintf("(c) TLS keepalive cycle not measured: %v", err))
	} else {
		run.TLSIdle = fig
	}
	m := s.meter(srv.PID(), "")
	base, err := m.read(ctx)
	if err != nil {
		return err
	}
	run.Baseline = base.mem
	tlsSpec := &TLSSpec{CAFile: s.caFile, Resume: s.cfg.Resume, Curves: s.cfg.Kex}
	fleet, err := s.connect(ctx, s.fleetFor(addr, tlsSpec, nil), &run)
	if err != nil {
		return err
	}
	defer s.stopFleet(ctx, fleet, &run)
	r, err := s.reading(ctx, m, base, readingAll, run.Devices)
	if err != nil {
		return err
	}
	run.Readings = append(run.Readings, r)
	return nil
}

// peerIdle measures a TLS keepalive cycle of a device on the peer.
func (s *savingsRun) peerIdle(ctx context.Context, addr string) (WireFigure, error) {
	tcfg, err := TrafficConfig{Kex: []string{s.rep.Kex}, Cycles: s.cfg.TrafficCycles, Settle: s.cfg.TrafficSettle}.withDefaults()
	if err != nil {
		return WireFigure{}, err
	}
	host, _, _ := net.SplitHostPort(addr)
	t := &trafficRun{cfg: tcfg, gw: gatewayEndpoints{CAFile: s.caFile}, model: WireModelFor(host), log: s.log}
	p, err := t.dialTLS(ctx, addr, byte(s.rep.MQTTVersion), s.rep.Kex, nil)
	if err != nil {
		return WireFigure{}, err
	}
	defer p.close()
	if err := p.connect(tcfg.ClientID+"-peer", tcfg.KeepAlive, false); err != nil {
		return WireFigure{}, err
	}
	if _, err := p.settled(tcfg.Settle); err != nil {
		return WireFigure{}, err
	}
	fig, err := t.idle(p)
	if err == nil {
		if derr := p.disconnect(); derr == nil {
			_, _ = p.finish(0)
		}
	}
	return fig, err
}

// peerLine is the command that starts the peer broker.
type peerLine struct {
	line string
	addr string
}

// peerCommand builds the peer's command line: --peer-cmd with its
// placeholders, or Mosquitto with a configuration written for the run.
func (s *savingsRun) peerCommand() (peerLine, string, error) {
	if s.cfg.NoPeer {
		return peerLine{}, "peer broker", errors.New("no peer broker asked for")
	}
	host := "127.0.0.1"
	ports, err := FreePorts(host, 1)
	if err != nil {
		return peerLine{}, "", err
	}
	dir := filepath.Join(s.work, "peer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return peerLine{}, "", fmt.Errorf("bench: peer dir: %w", err)
	}
	// Copies readable by the broker's own user (Mosquitto started as root
	// drops to the user mosquitto before it reads them).
	cert, key, ca := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca.pem")
	for src, dst := range map[string]string{s.certFile: cert, s.keyFile: key, s.caFile: ca} {
		b, err := os.ReadFile(src)
		if err != nil {
			return peerLine{}, "", fmt.Errorf("bench: peer certificate: %w", err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return peerLine{}, "", fmt.Errorf("bench: peer certificate: %w", err)
		}
	}
	port := ports[0]
	pl := peerLine{addr: net.JoinHostPort(host, strconv.Itoa(port))}
	if s.cfg.PeerCmd != "" {
		pl.line = strings.NewReplacer(
			"{host}", host, "{port}", strconv.Itoa(port), "{cert}", cert, "{key}", key, "{ca}", ca, "{dir}", dir,
		).Replace(s.cfg.PeerCmd)
		name := strings.Fields(s.cfg.PeerCmd)[0]
		return pl, filepath.Base(name), nil
	}
	bin := s.cfg.Peer
	if bin == "" {
		if bin, err = FindMosquitto(); err != nil {
			return pl, "mosquitto", err
		}
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(MosquittoTLSConfig(host, port, cert, key)), 0o644); err != nil {
		return pl, "mosquitto", fmt.Errorf("bench: peer config: %w", err)
	}
	pl.line = ShellJoin([]string{bin, "-c", conf})
	return pl, "mosquitto", nil
}

// FindMosquitto returns the Mosquitto broker on PATH or at
// /usr/sbin/mosquitto.
func FindMosquitto() (string, error) {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	if st, err := os.Stat("/usr/sbin/mosquitto"); err == nil && !st.IsDir() {
		return "/usr/sbin/mosquitto", nil
	}
	return "", errors.New("mosquitto is not installed (apt-get install mosquitto), and no --peer-cmd was given")
}

// MosquittoTLSConfig is a Mosquitto configuration with one TLS listener.
func MosquittoTLSConfig(host string, port int, certFile, keyFile string) string {
	return fmt.Sprintf(`listener %d %s
certfile %s
keyfile %s
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
`, port, host, certFile, keyFile)
}

func (s *savingsRun) stopGateway(g *Dualgate) {
	if err := g.Stop(15 * time.Second); err != nil {
		s.log.Warn("stop dualgate", zap.Error(err))
	}
}

// waitStats polls the gateway's stats until cond holds or timeout, with a
// progress line every few seconds.
func (s *savingsRun) waitStats(ctx context.Context, api *APIClient, timeout time.Duration, cond func(GatewayStats) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var (
		last    GatewayStats
		lastErr error
	)
	start, said := time.Now(), time.Now()
	for {
		st, err := api.Stats(ctx)
		if err == nil && cond(st) {
			return nil
		}
		if err == nil {
			last = st
		}
		lastErr = err
		if time.Since(said) >= 5*time.Second {
			said = time.Now()
			s.say("waiting %3.0f s: the gateway has %d devices on plain, %d on TLS", time.Since(start).Seconds(), last.Plain(), last.TLS())
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("bench: gateway at %v (last error %v): %w", last.Connections, lastErr, ctx.Err())
		}
	}
}
