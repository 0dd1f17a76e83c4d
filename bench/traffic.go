package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/internal/control"
)

// KexDefault names Go's default key exchange (X25519MLKEM768 first) in
// TrafficConfig.Kex.
const KexDefault = "default"

// TrafficConfig is the `dualbench traffic` run: one device, step by step,
// with the kernel's TCP counters of its sockets read between the steps.
type TrafficConfig struct {
	Gateway GatewayTarget
	// MQTTVersions are measured in turn; empty means 3.1.1 only.
	MQTTVersions []int
	// Kex are the key exchanges offered by the device for its TLS
	// connections: KexDefault or a list for ParseCurves (e.g. "x25519").
	// Empty means KexDefault only.
	Kex []string
	// TLSVersion pins the device's TLS version ("1.2", "1.3"); empty is
	// 1.3 only, as the device SDK offers by default (an offer that
	// includes TLS 1.2 adds its cipher suites to every ClientHello).
	TLSVersion string
	// ServerName is the TLS server name; empty uses the host of each
	// address.
	ServerName string
	// KeepAlive is the device's MQTT keepalive (60 s when zero); it sends
	// no PINGREQ on its own during the run.
	KeepAlive time.Duration
	// DayKeepAlives are the keepalives the per-day figures are computed
	// for; empty means 60 s and 300 s.
	DayKeepAlives []time.Duration
	// Cycles is how many keepalive cycles are averaged (5 when zero).
	Cycles int
	// PayloadSize is the size of each command's payload (100 when zero).
	PayloadSize int
	// Settle is the wait for the last (delayed) ACKs before counters are
	// read; 250 ms when zero.
	Settle time.Duration
	// Timeout bounds each step (10 s when zero); CycleWait bounds the wait
	// for the gateway to send a TLS device back to plain (120 s when zero).
	Timeout   time.Duration
	CycleWait time.Duration
	// ClientID prefixes the probe device's client ids.
	ClientID string
	// OutDir, when set, receives report.md and report.json.
	OutDir string
	// Progress receives a line per step; nil prints none.
	Progress io.Writer
}

func (c TrafficConfig) withDefaults() (TrafficConfig, error) {
	if len(c.MQTTVersions) == 0 {
		c.MQTTVersions = []int{4}
	}
	for _, v := range c.MQTTVersions {
		if v != 4 && v != 5 {
			return c, fmt.Errorf("bench: traffic: MQTT version %d: want 4 or 5", v)
		}
	}
	if len(c.Kex) == 0 {
		c.Kex = []string{KexDefault}
	}
	for _, k := range c.Kex {
		if k == KexDefault {
			continue
		}
		if _, err := ParseCurves(k); err != nil {
			return c, err
		}
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = time.Minute
	}
	if len(c.DayKeepAlives) == 0 {
		c.DayKeepAlives = []time.Duration{time.Minute, 5 * time.Minute}
	}
	if c.Cycles <= 0 {
		c.Cycles = 5
	}
	if c.PayloadSize <= 0 {
		c.PayloadSize = 100
	}
	if c.Settle <= 0 {
		c.Settle = 250 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.CycleWait <= 0 {
		c.CycleWait = 120 * time.Second
	}
	if c.ClientID == "" {
		c.ClientID = DefaultClientIDPrefix + "traffic-" + strconv.Itoa(os.Getpid())
	}
	return c, nil
}

// WireFigure is the traffic of one measured step, IP-level bytes by
// direction from the device's point of view.
type WireFigure struct {
	WireBytes
	SegsOut uint32 `json:"segs_out"`
	SegsIn  uint32 `json:"segs_in"`
	// Samples is how many repetitions were averaged (0 or 1: one);
	// MinTotal and MaxTotal are their range.
	Samples  int    `json:"samples,omitempty"`
	MinTotal uint64 `json:"min_total,omitempty"`
	MaxTotal uint64 `json:"max_total,omitempty"`
}

// Figure turns counters into a WireFigure (see Bytes).
func (m WireModel) Figure(c TCPCounters, handshake bool) WireFigure {
	return WireFigure{WireBytes: m.Bytes(c, handshake), SegsOut: c.SegsOut, SegsIn: c.SegsIn}
}

// Plus is the traffic of f and o together.
func (f WireFigure) Plus(o WireFigure) WireFigure {
	return WireFigure{
		WireBytes: WireBytes{
			PayloadOut: f.PayloadOut + o.PayloadOut, PayloadIn: f.PayloadIn + o.PayloadIn,
			Out: f.Out + o.Out, In: f.In + o.In,
		},
		SegsOut: f.SegsOut + o.SegsOut, SegsIn: f.SegsIn + o.SegsIn,
	}
}

// MeanFigure averages figures (rounded to whole bytes and segments).
func MeanFigure(fs []WireFigure) WireFigure {
	if len(fs) == 0 {
		return WireFigure{}
	}
	var sum WireFigure
	lo, hi := fs[0].Total(), fs[0].Total()
	for _, f := range fs {
		sum = sum.Plus(f)
		lo, hi = min(lo, f.Total()), max(hi, f.Total())
	}
	n := uint64(len(fs))
	div := func(v uint64) uint64 { return (v + n/2) / n }
	return WireFigure{
		WireBytes: WireBytes{PayloadOut: div(sum.PayloadOut), PayloadIn: div(sum.PayloadIn), Out: div(sum.Out), In: div(sum.In)},
		SegsOut:   uint32(div(uint64(sum.SegsOut))), SegsIn: uint32(div(uint64(sum.SegsIn))),
		Samples: len(fs), MinTotal: lo, MaxTotal: hi,
	}
}

// TLSSession is a connection with a TLS handshake: which key exchange and
// whether it resumed.
type TLSSession struct {
	Kex     string `json:"kex"`
	Group   string `json:"group"`
	Version string `json:"tls_version"`
	Resumed bool   `json:"resumed"`
}

// SessionFigure is connect + CONNECT/CONNACK + DISCONNECT on a new
// connection: the price of one short session.
type SessionFigure struct {
	TLSSession
	TLS   bool       `json:"tls"`
	Bytes WireFigure `json:"bytes"`
}

// UpgradeCycle is one trip of a device through the upgrade: the
// instruction on plain and the plain connection's close (Plain), the whole
// TLS connection with the command and the instruction back (TLS), and the
// new plain connection up to its CONNACK, the query having left with the
// CONNECT (Return).
type UpgradeCycle struct {
	TLSSession
	Plain  WireFigure `json:"plain_leg"`
	TLS    WireFigure `json:"tls_leg"`
	Return WireFigure `json:"return_leg"`
	Total  WireFigure `json:"total"`
	// Latency is POST of the command to the device's PUBACK; Duration is
	// POST to the device back on plain (it includes the quiet period).
	// Both include the probe's waits for the last ACKs (Settle), so they
	// are no latency measurement: `dualbench upgrade` is.
	Latency  time.Duration `json:"latency_ns"`
	Duration time.Duration `json:"duration_ns"`
}

// TrafficRun is what one MQTT version measured.
type TrafficRun struct {
	MQTTVersion int `json:"mqtt_version"`
	// PlainConnect is connect + CONNECT/CONNACK + query on plain.
	PlainConnect WireFigure `json:"plain_connect"`
	// PlainIdle and TLSIdle are one keepalive cycle: PINGREQ, PINGRESP and
	// the ACKs.
	PlainIdle WireFigure `json:"plain_keepalive_cycle"`
	TLSIdle   WireFigure `json:"tls_keepalive_cycle"`
	// PlainCommand is a command that needs no encryption on plain;
	// TLSCommand a secure one on TLS: PUBLISH and PUBACK.
	PlainCommand WireFigure `json:"plain_command"`
	TLSCommand   WireFigure `json:"tls_command"`
	// Sessions are short sessions: plain, then TLS full and resumed per
	// key exchange.
	Sessions []SessionFigure `json:"sessions"`
	// Cycles are upgrade cycles, full then resumed per key exchange.
	Cycles []UpgradeCycle `json:"upgrade_cycles"`
}

// DayFigures are the bytes per device per day at one keepalive.
type DayFigures struct {
	MQTTVersion  int     `json:"mqtt_version"`
	KeepAlive    float64 `json:"keepalive_seconds"`
	PlainPerDay  float64 `json:"plain_idle_bytes_per_day"`
	TLSPerDay    float64 `json:"tls_idle_bytes_per_day"`
	TLSOverPlain float64 `json:"tls_over_plain"`
	// BreakEven is, per upgrade cycle, the secure commands a day below
	// which on-demand TLS costs a device fewer bytes than staying on TLS.
	BreakEven []BreakEven `json:"break_even"`
}

// BreakEven is the break-even number of secure commands a day for one kind
// of upgrade cycle.
type BreakEven struct {
	TLSSession
	CycleBytes      uint64  `json:"cycle_bytes"`
	CommandsPerDay  float64 `json:"commands_per_day"`
	SavedIdlePerDay float64 `json:"saved_idle_bytes_per_day"`
}

// PerDay is bytes a day for something that happens every period.
func PerDay(bytes uint64, period time.Duration) float64 {
	if period <= 0 {
		return 0
	}
	return float64(bytes) * float64(24*time.Hour) / float64(period)
}

// BreakEvenCommands is the number of upgrade cycles a day that cost what
// staying on TLS costs over staying on plain: below it, on-demand TLS
// saves bytes.
func BreakEvenCommands(plainPerDay, tlsPerDay float64, cycleBytes uint64) float64 {
	if cycleBytes == 0 {
		return 0
	}
	return (tlsPerDay - plainPerDay) / float64(cycleBytes)
}

// TrafficReport is the result of `dualbench traffic`.
type TrafficReport struct {
	Target      string        `json:"target"`
	PID         int           `json:"pid,omitempty"`
	Command     string        `json:"command,omitempty"`
	Started     time.Time     `json:"started"`
	Model       WireModel     `json:"wire_model"`
	KeepAlive   float64       `json:"keepalive_seconds"`
	PayloadSize int           `json:"payload_size"`
	Cycles      int           `json:"cycles_averaged"`
	Settle      time.Duration `json:"settle_ns"`
	Runs        []TrafficRun  `json:"runs"`
	Days        []DayFigures  `json:"per_day"`
	Goals       []Goal        `json:"goals"`
	Notes       []string      `json:"notes,omitempty"`
	dayPeriods  []time.Duration
}

// WireModelFor is the header model of connections to host: IPv4 or IPv6,
// with TCP timestamps as the running kernel has them.
func WireModelFor(host string) WireModel {
	m := LoopbackWireModel()
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		m.HeaderBytes += 20
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_timestamps"); err == nil && strings.TrimSpace(string(b)) == "0" {
		m.HeaderBytes -= 12
	}
	return m
}

// RunTraffic measures one device's bytes on the wire through a dualgate
// gateway and prints and writes the report. On error the report holds
// what was measured so far.
func RunTraffic(ctx context.Context, cfg TrafficConfig, out io.Writer, log *zap.Logger) (*TrafficReport, error) {
	if log == nil {
		log = zap.NewNop()
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	gw, stop, err := cfg.Gateway.open(ctx, func(s string) { log.Warn(s) })
	if err != nil {
		return nil, err
	}
	defer stop()
	host, _, err := net.SplitHostPort(gw.Plain)
	if err != nil {
		return nil, fmt.Errorf("bench: traffic: plain address %q: %w", gw.Plain, err)
	}
	if gw.TLS == "" {
		return nil, errors.New("bench: traffic: the gateway's TLS address is needed")
	}
	rep := &TrafficReport{
		Target: gw.Plain, PID: gw.PID, Command: gw.Command, Started: time.Now().UTC(),
		Model: WireModelFor(host), KeepAlive: cfg.KeepAlive.Seconds(), PayloadSize: cfg.PayloadSize,
		Cycles: cfg.Cycles, Settle: cfg.Settle, dayPeriods: cfg.DayKeepAlives,
	}
	api := NewAPIClient(gw.API, gw.Token, 2)
	defer api.Close()
	t := &trafficRun{cfg: cfg, gw: gw, api: api, model: rep.Model, log: log}
	fmt.Fprintf(out, "target        dualgate %s (TLS %s), device side, %d B headers per segment\n", gw.Plain, gw.TLS, rep.Model.HeaderBytes)
	var runErr error
	for _, v := range cfg.MQTTVersions {
		run, err := t.run(ctx, byte(v))
		rep.Runs = append(rep.Runs, run)
		if err != nil {
			runErr = fmt.Errorf("bench: traffic, MQTT %s: %w", mqttName(v), err)
			break
		}
	}
	rep.finish()
	writeTrafficText(out, rep)
	if cfg.OutDir != "" {
		if err := writeReportFiles(cfg.OutDir, rep, rep.WriteMarkdown); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	return rep, runErr
}

// trafficRun is the state of one RunTraffic.
type trafficRun struct {
	cfg   TrafficConfig
	gw    gatewayEndpoints
	api   *APIClient
	model WireModel
	log   *zap.Logger
	seq   int
}

func (t *trafficRun) progress(format string, args ...any) {
	if t.cfg.Progress != nil {
		fmt.Fprintf(t.cfg.Progress, "traffic       "+format+"\n", args...)
	}
}

// tlsConfig is the device's TLS configuration for addr with key exchange
// kex and session cache cache (nil: none).
func (t *trafficRun) tlsConfig(addr, kex string, cache tls.ClientSessionCache) (*tls.Config, error) {
	spec := TLSSpec{CAFile: t.gw.CAFile, ServerName: t.cfg.ServerName, Version: t.cfg.TLSVersion}
	if spec.Version == "" {
		spec.Version = "1.3"
	}
	if kex != KexDefault {
		spec.Curves = kex
	}
	cfg, err := spec.Config(addr)
	if err != nil {
		return nil, err
	}
	cfg.ClientSessionCache = cache
	return cfg, nil
}

func session(p *probe, kex string) TLSSession {
	s := TLSSession{Kex: kex, Resumed: p.resumed, Version: tls.VersionName(p.tlsVersion)}
	if p.tc != nil {
		s.Group = p.tc.ConnectionState().CurveID.String()
	}
	return s
}

// run measures everything for one MQTT version.
func (t *trafficRun) run(ctx context.Context, version byte) (TrafficRun, error) {
	run := TrafficRun{MQTTVersion: int(version)}
	id := t.cfg.ClientID + "-" + strconv.Itoa(int(version))
	name := "MQTT " + mqttName(int(version))

	// A plain device: connect with the query, idle, a command that needs
	// no encryption.
	dev, err := dialProbe(ctx, t.gw.Plain, nil, version, t.cfg.Timeout)
	if err != nil {
		return run, err
	}
	defer func() { dev.close() }()
	if err := dev.connect(id, t.cfg.KeepAlive, true); err != nil {
		return run, err
	}
	c, err := dev.settled(t.cfg.Settle)
	if err != nil {
		return run, err
	}
	run.PlainConnect = t.model.Figure(c, true)
	t.progress("%s: plain connect + CONNECT/CONNACK + query %d B", name, run.PlainConnect.Total())
	if run.PlainIdle, err = t.idle(dev); err != nil {
		return run, fmt.Errorf("plain keepalive: %w", err)
	}
	t.progress("%s: plain keepalive cycle %d B", name, run.PlainIdle.Total())
	if run.PlainCommand, _, err = t.command(ctx, dev, id, false); err != nil {
		return run, fmt.Errorf("command on plain: %w", err)
	}
	t.progress("%s: command on plain %d B", name, run.PlainCommand.Total())

	// Upgrade cycles: per key exchange a new device session cache, so
	// that the first cycle is a full handshake and the second resumes.
	for _, kex := range t.cfg.Kex {
		cache := tls.NewLRUClientSessionCache(1)
		for range 2 {
			cyc, next, err := t.upgrade(ctx, dev, id, kex, cache)
			if next != nil {
				dev = next
			}
			if err != nil {
				return run, fmt.Errorf("upgrade cycle (%s): %w", kex, err)
			}
			run.Cycles = append(run.Cycles, cyc)
			t.progress("%s: upgrade cycle, %s, %s: %d B (plain %d, TLS %d, back %d)",
				name, cyc.Group, handshakeName(cyc.Resumed), cyc.Total.Total(), cyc.Plain.Total(), cyc.TLS.Total(), cyc.Return.Total())
		}
	}
	if err := dev.disconnect(); err == nil {
		_, _ = dev.finish(0)
	}

	// A device that stays on TLS: a secure command, then idle cycles
	// (within the quiet period that follows the command).
	tdev, err := t.dialTLS(ctx, t.gw.TLS, version, t.cfg.Kex[0], nil)
	if err != nil {
		return run, err
	}
	defer tdev.close()
	tid := id + "-tls"
	if err := tdev.connect(tid, t.cfg.KeepAlive, false); err != nil {
		return run, err
	}
	if _, err := tdev.settled(t.cfg.Settle); err != nil {
		return run, err
	}
	if run.TLSCommand, _, err = t.command(ctx, tdev, tid, true); err != nil {
		return run, fmt.Errorf("secure command on TLS: %w", err)
	}
	t.progress("%s: secure command on TLS %d B", name, run.TLSCommand.Total())
	if run.TLSIdle, err = t.idle(tdev); err != nil {
		return run, fmt.Errorf("TLS keepalive (is the gateway's --secure-idle long enough?): %w", err)
	}
	t.progress("%s: TLS keepalive cycle %d B", name, run.TLSIdle.Total())
	if err := tdev.disconnect(); err == nil {
		_, _ = tdev.finish(0)
	}

	// Short sessions: plain, and TLS full then resumed per key exchange.
	sid := id + "-session"
	s, err := t.session(ctx, t.gw.Plain, version, sid, "", nil)
	if err != nil {
		return run, fmt.Errorf("plain session: %w", err)
	}
	run.Sessions = append(run.Sessions, s)
	for _, kex := range t.cfg.Kex {
		cache := tls.NewLRUClientSessionCache(1)
		for range 2 {
			s, err := t.session(ctx, t.gw.TLS, version, sid, kex, cache)
			if err != nil {
				return run, fmt.Errorf("TLS session (%s): %w", kex, err)
			}
			run.Sessions = append(run.Sessions, s)
		}
	}
	t.progress("%s: short sessions measured", name)
	return run, nil
}

func handshakeName(resumed bool) string {
	if resumed {
		return "resumed"
	}
	return "full"
}

func (t *trafficRun) dialTLS(ctx context.Context, addr string, version byte, kex string, cache tls.ClientSessionCache) (*probe, error) {
	cfg, err := t.tlsConfig(addr, kex, cache)
	if err != nil {
		return nil, err
	}
	return dialProbe(ctx, addr, cfg, version, t.cfg.Timeout)
}

// idle measures keepalive cycles on an idle, settled connection.
func (t *trafficRun) idle(p *probe) (WireFigure, error) {
	var fs []WireFigure
	for range t.cfg.Cycles {
		before, err := p.counters()
		if err != nil {
			return WireFigure{}, err
		}
		if err := p.ping(); err != nil {
			return WireFigure{}, err
		}
		after, err := p.settled(t.cfg.Settle)
		if err != nil {
			return WireFigure{}, err
		}
		fs = append(fs, t.model.Figure(after.Sub(before), false))
	}
	return MeanFigure(fs), nil
}

// post sends a stamped command to the device id.
func (t *trafficRun) post(ctx context.Context, id string, secure bool) (time.Time, error) {
	t.seq++
	now := time.Now()
	_, err := t.api.PostCommand(ctx, id, CommandRequest{
		Topic: "devices/" + id + "/commands/bench", Payload: string(StampCommand(now, t.seq, t.cfg.PayloadSize)),
		QoS: 1, Secure: secure, TTLSeconds: 300,
	})
	return now, err
}

// command measures one command delivered on an idle, settled connection.
func (t *trafficRun) command(ctx context.Context, p *probe, id string, secure bool) (WireFigure, time.Duration, error) {
	before, err := p.counters()
	if err != nil {
		return WireFigure{}, 0, err
	}
	sent, err := t.post(ctx, id, secure)
	if err != nil {
		return WireFigure{}, 0, err
	}
	k, err := p.command(t.cfg.Timeout)
	if err != nil {
		return WireFigure{}, 0, err
	}
	after, err := p.settled(t.cfg.Settle)
	if err != nil {
		return WireFigure{}, 0, err
	}
	return t.model.Figure(after.Sub(before), false), k.acked.Sub(sent), nil
}

// upgrade runs one upgrade cycle from plain connection dev, which it
// ends; it returns the device's new plain connection (nil when the cycle
// failed before there was one).
func (t *trafficRun) upgrade(ctx context.Context, dev *probe, id, kex string, cache tls.ClientSessionCache) (UpgradeCycle, *probe, error) {
	var cyc UpgradeCycle
	before, err := dev.counters()
	if err != nil {
		return cyc, nil, err
	}
	sent, err := t.post(ctx, id, true)
	if err != nil {
		return cyc, nil, err
	}
	addr, err := dev.instruction(control.ModeTLS, t.cfg.Timeout)
	if err != nil {
		return cyc, nil, fmt.Errorf("waiting for the instruction to use TLS: %w", err)
	}
	c, err := dev.end(t.cfg.Settle)
	if err != nil {
		return cyc, nil, err
	}
	cyc.Plain = t.model.Figure(c.Sub(before), false)

	tdev, err := t.dialTLS(ctx, addr, dev.version, kex, cache)
	if err != nil {
		return cyc, nil, err
	}
	defer tdev.close()
	cyc.TLSSession = session(tdev, kex)
	// No query on TLS: the gateway delivers as soon as the session is
	// connected.
	if err := tdev.connect(id, t.cfg.KeepAlive, false); err != nil {
		return cyc, nil, err
	}
	k, err := tdev.command(t.cfg.Timeout)
	if err != nil {
		return cyc, nil, fmt.Errorf("waiting for the command on TLS: %w", err)
	}
	cyc.Latency = k.acked.Sub(sent)
	back, err := tdev.instruction(control.ModePlain, t.cfg.CycleWait)
	if err != nil {
		return cyc, nil, fmt.Errorf("waiting for the instruction to go back to plain: %w", err)
	}
	if c, err = tdev.end(t.cfg.Settle); err != nil {
		return cyc, nil, err
	}
	cyc.TLS = t.model.Figure(c, true)

	next, err := dialProbe(ctx, back, nil, dev.version, t.cfg.Timeout)
	if err != nil {
		return cyc, nil, err
	}
	if err := next.connect(id, t.cfg.KeepAlive, true); err != nil {
		return cyc, next, err
	}
	cyc.Duration = time.Since(sent)
	if c, err = next.settled(t.cfg.Settle); err != nil {
		return cyc, next, err
	}
	cyc.Return = t.model.Figure(c, true)
	cyc.Total = cyc.Plain.Plus(cyc.TLS).Plus(cyc.Return)
	return cyc, next, nil
}

// session measures connect + CONNECT/CONNACK + DISCONNECT on a new
// connection; kex "" is plain.
func (t *trafficRun) session(ctx context.Context, addr string, version byte, id, kex string, cache tls.ClientSessionCache) (SessionFigure, error) {
	var (
		p   *probe
		err error
	)
	if kex == "" {
		p, err = dialProbe(ctx, addr, nil, version, t.cfg.Timeout)
	} else {
		p, err = t.dialTLS(ctx, addr, version, kex, cache)
	}
	if err != nil {
		return SessionFigure{}, err
	}
	defer p.close()
	s := SessionFigure{TLS: kex != ""}
	if s.TLS {
		s.TLSSession = session(p, kex)
	}
	if err := p.connect(id, t.cfg.KeepAlive, false); err != nil {
		return s, err
	}
	if err := p.disconnect(); err != nil {
		return s, err
	}
	c, err := p.finish(t.cfg.Settle)
	if err != nil {
		return s, err
	}
	s.Bytes = t.model.Figure(c, true)
	return s, nil
}

// finish computes the per-day figures and the goals.
func (r *TrafficReport) finish() {
	r.Days, r.Goals = nil, nil
	for _, run := range r.Runs {
		if run.PlainIdle.Total() == 0 || run.TLSIdle.Total() == 0 {
			continue
		}
		for _, ka := range r.dayPeriods {
			d := DayFigures{
				MQTTVersion: run.MQTTVersion, KeepAlive: ka.Seconds(),
				PlainPerDay: PerDay(run.PlainIdle.Total(), ka), TLSPerDay: PerDay(run.TLSIdle.Total(), ka),
			}
			d.TLSOverPlain = d.TLSPerDay / d.PlainPerDay
			for _, c := range run.Cycles {
				d.BreakEven = append(d.BreakEven, BreakEven{
					TLSSession: c.TLSSession, CycleBytes: c.Total.Total(),
					CommandsPerDay:  BreakEvenCommands(d.PlainPerDay, d.TLSPerDay, c.Total.Total()),
					SavedIdlePerDay: d.TLSPerDay - d.PlainPerDay,
				})
			}
			r.Days = append(r.Days, d)
		}
	}
	for _, run := range r.Runs {
		for _, c := range run.Cycles {
			if !c.Resumed {
				continue
			}
			g := atMost(fmt.Sprintf("one upgrade cycle with resumption, MQTT %s, %s", mqttName(run.MQTTVersion), c.Group),
				float64(c.Total.Total()), ResumedCycleGoal(c.Group), "%.0f B")
			r.Goals = append(r.Goals, g)
		}
	}
}

// WriteMarkdown renders the report as Markdown.
func (r *TrafficReport) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Bytes on the wire per device\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| target | dualgate `%s`", r.Target)
	if r.PID > 0 {
		fmt.Fprintf(&b, " (pid %d)", r.PID)
	}
	fmt.Fprintf(&b, " |\n")
	if r.Command != "" {
		fmt.Fprintf(&b, "| command | `%s` |\n", r.Command)
	}
	fmt.Fprintf(&b, "| started | %s |\n", r.Started.Format(time.RFC3339))
	fmt.Fprintf(&b, "| measured | the device's sockets (TCP_INFO), both directions, %d B of IP and TCP headers per segment, SYN options +%d B |\n", r.Model.HeaderBytes, r.Model.SYNExtraBytes)
	fmt.Fprintf(&b, "| device | keepalive %g s, commands of %d B, keepalive cycles averaged over %d |\n", r.KeepAlive, r.PayloadSize, r.Cycles)
	for _, run := range r.Runs {
		fmt.Fprintf(&b, "\n## MQTT %s\n\n", mqttName(run.MQTTVersion))
		fmt.Fprintf(&b, "| what | out | in | total | segments out/in |\n|---|---:|---:|---:|---:|\n")
		row := func(name string, f WireFigure) {
			fmt.Fprintf(&b, "| %s | %d | %d | **%d** | %d/%d |\n", name, f.Out, f.In, f.Total(), f.SegsOut, f.SegsIn)
		}
		row("plain keepalive cycle (PINGREQ, PINGRESP, ACK)", run.PlainIdle)
		row("TLS keepalive cycle", run.TLSIdle)
		row("plain connect + CONNECT/CONNACK + query", run.PlainConnect)
		row(fmt.Sprintf("command on plain (%d B, not secure)", r.PayloadSize), run.PlainCommand)
		row(fmt.Sprintf("secure command on TLS (%d B)", r.PayloadSize), run.TLSCommand)
		for _, s := range run.Sessions {
			name := "plain"
			if s.TLS {
				name = fmt.Sprintf("%s %s %s", s.Version, s.Group, handshakeName(s.Resumed))
			}
			row("connect + CONNECT/CONNACK + DISCONNECT, "+name, s.Bytes)
		}
		if len(run.Cycles) > 0 {
			fmt.Fprintf(&b, "\nUpgrade cycles: instruction on plain and its close, the TLS connection (handshake, CONNECT, the command, the instruction back, close), the new plain connection up to its CONNACK (the query, QoS 0, leaves with the CONNECT; none on TLS).\n\n")
			fmt.Fprintf(&b, "| key exchange | handshake | plain leg | TLS leg | back to plain | total | segments out/in |\n")
			fmt.Fprintf(&b, "|---|---|---:|---:|---:|---:|---:|\n")
			for _, c := range run.Cycles {
				fmt.Fprintf(&b, "| %s (%s) | %s | %d | %d | %d | **%d** | %d/%d |\n",
					c.Group, c.Version, handshakeName(c.Resumed), c.Plain.Total(), c.TLS.Total(), c.Return.Total(), c.Total.Total(),
					c.Total.SegsOut, c.Total.SegsIn)
			}
		}
	}
	if len(r.Days) > 0 {
		fmt.Fprintf(&b, "\n## Per device per day\n\n")
		fmt.Fprintf(&b, "An idle device sends one keepalive cycle per keepalive period. On-demand TLS saves the difference between a day on TLS and a day on plain, and pays one upgrade cycle per secure command: below the break-even number of secure commands a day, it costs the device fewer bytes.\n\n")
		fmt.Fprintf(&b, "| MQTT | keepalive | plain idle B/day | TLS idle B/day | TLS/plain | break-even secure commands/day |\n|---|---:|---:|---:|---:|---|\n")
		for _, d := range r.Days {
			var be []string
			for _, x := range d.BreakEven {
				be = append(be, fmt.Sprintf("%.1f (%s %s)", x.CommandsPerDay, x.Group, handshakeName(x.Resumed)))
			}
			fmt.Fprintf(&b, "| %s | %g s | %.0f | %.0f | %.3fx | %s |\n", mqttName(d.MQTTVersion), d.KeepAlive, d.PlainPerDay, d.TLSPerDay, d.TLSOverPlain, strings.Join(be, "; "))
		}
	}
	writeGoalsMarkdown(&b, r.Goals)
	writeNotesMarkdown(&b, r.Notes)
	_, _ = io.WriteString(w, b.String())
}

// writeTrafficText prints the report's figures as plain lines.
func writeTrafficText(w io.Writer, r *TrafficReport) {
	var b strings.Builder
	fmt.Fprintf(&b, "--- result (bytes on the wire, both directions)\n")
	for _, run := range r.Runs {
		v := mqttName(run.MQTTVersion)
		fmt.Fprintf(&b, "MQTT %-6s plain keepalive cycle %d B, TLS keepalive cycle %d B\n", v, run.PlainIdle.Total(), run.TLSIdle.Total())
		fmt.Fprintf(&b, "MQTT %-6s command on plain %d B, secure command on TLS %d B\n", v, run.PlainCommand.Total(), run.TLSCommand.Total())
		for _, s := range run.Sessions {
			name := "plain"
			if s.TLS {
				name = fmt.Sprintf("TLS %s %s", s.Group, handshakeName(s.Resumed))
			}
			fmt.Fprintf(&b, "MQTT %-6s session (connect, CONNECT/CONNACK, DISCONNECT) %s: %d B\n", v, name, s.Bytes.Total())
		}
		for _, c := range run.Cycles {
			fmt.Fprintf(&b, "MQTT %-6s upgrade cycle %s %s: %d B (plain %d + TLS %d + back %d)\n", v, c.Group, handshakeName(c.Resumed), c.Total.Total(), c.Plain.Total(), c.TLS.Total(), c.Return.Total())
		}
	}
	for _, d := range r.Days {
		var be []string
		for _, x := range d.BreakEven {
			be = append(be, fmt.Sprintf("%.1f (%s %s)", x.CommandsPerDay, x.Group, handshakeName(x.Resumed)))
		}
		fmt.Fprintf(&b, "MQTT %-6s keepalive %gs: plain %.0f B/day, TLS %.0f B/day (%.3fx); break-even %s secure commands/day\n",
			mqttName(d.MQTTVersion), d.KeepAlive, d.PlainPerDay, d.TLSPerDay, d.TLSOverPlain, strings.Join(be, ", "))
	}
	writeGoalsText(&b, r.Goals)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, _ = io.WriteString(w, b.String())
}
