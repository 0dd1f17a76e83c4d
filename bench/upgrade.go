package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// UpgradeConfig is the `dualbench upgrade` run: devices idle on plain get
// secure commands through the HTTP API, round after round; each command is
// timed from its POST to the device's PUBACK, through the upgrade.
type UpgradeConfig struct {
	// Gateway is the dualgate measured. A running one should serve no
	// other devices during the run: the waits between rounds read its
	// totals of devices by transport.
	Gateway GatewayTarget
	// Fleet describes the devices; RunUpgrade sets its address and, unless
	// Client.Device is set, makes them devices that trust the gateway's
	// CA (with Resume and Kex).
	Fleet FleetConfig
	// Resume gives each device its own TLS session to resume.
	Resume bool
	// Kex is the devices' key exchange (ParseCurves); empty: Go's default.
	Kex string
	// Rounds is the number of rounds: before each, every device is back
	// on plain, then every device gets one command (1 when zero).
	Rounds int
	// Rate is commands per second within a round; zero sends them all at
	// once (Concurrency requests in flight).
	Rate float64
	// Concurrency bounds the API requests in flight (256 when zero).
	Concurrency int
	// PayloadSize is the size of each command (100 when zero).
	PayloadSize int
	// RoundTimeout bounds the wait for a round's acknowledgements (60 s
	// when zero); PlainTimeout the wait for every device back on plain
	// (120 s when zero).
	RoundTimeout time.Duration
	PlainTimeout time.Duration
	// SampleEvery is the period of the gateway stats samples (100 ms when
	// zero).
	SampleEvery time.Duration
	// RecordTimeout bounds the wait, after the last round, for the gateway
	// to record every acknowledged command delivered (2 min when zero).
	RecordTimeout time.Duration
	// StopTimeout bounds the devices' disconnection.
	StopTimeout time.Duration
	// OutDir, when set, receives report.md, report.json and the charts.
	OutDir string
	// Progress and Terminal are as in ConnConfig.
	Progress io.Writer
	Terminal bool
}

func (c UpgradeConfig) withDefaults() UpgradeConfig {
	if c.Rounds <= 0 {
		c.Rounds = 1
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 256
	}
	if c.PayloadSize <= 0 {
		c.PayloadSize = 100
	}
	if c.RoundTimeout <= 0 {
		c.RoundTimeout = time.Minute
	}
	if c.PlainTimeout <= 0 {
		c.PlainTimeout = 2 * time.Minute
	}
	if c.SampleEvery <= 0 {
		c.SampleEvery = 100 * time.Millisecond
	}
	if c.RecordTimeout <= 0 {
		c.RecordTimeout = 2 * time.Minute
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultCloseTimeout + 10*time.Second
	}
	if c.Fleet.ProgressEvery <= 0 {
		c.Fleet.ProgressEvery = 100 * time.Millisecond
	}
	return c
}

// StatsSample is one reading of the gateway's connections.
type StatsSample struct {
	Seconds float64 `json:"t"`
	Plain   int     `json:"plain"`
	TLS     int     `json:"tls"`
	RSS     uint64  `json:"rss,omitempty"`
}

// UpgradeRound is one round of commands.
type UpgradeRound struct {
	Index    int   `json:"index"`
	Sent     int64 `json:"sent"`
	Accepted int64 `json:"accepted"`
	Acked    int64 `json:"acked"`
	// PostSeconds is the time the POSTs took; Completion is the first
	// POST to the last PUBACK.
	PostSeconds float64       `json:"post_seconds"`
	Completion  time.Duration `json:"completion_ns"`
}

// UpgradeReport is the result of `dualbench upgrade`.
type UpgradeReport struct {
	Target      string    `json:"target"`
	PID         int       `json:"pid,omitempty"`
	Command     string    `json:"command,omitempty"`
	Started     time.Time `json:"started"`
	MQTTVersion int       `json:"mqtt_version"`
	Devices     int       `json:"devices"`
	Rounds      int       `json:"rounds"`
	Rate        float64   `json:"rate"`
	PayloadSize int       `json:"payload_size"`
	Resume      bool      `json:"resume"`
	Kex         string    `json:"kex"`

	Connected int64 `json:"connected"`
	Sent      int64 `json:"sent"`
	Accepted  int64 `json:"accepted"`
	Acked     int64 `json:"acked"`
	// Delivered is the commands the gateway reports delivered;
	// GatewayStatus counts every accepted command by the status the
	// gateway reports after the run ("unreadable" when the read failed).
	Delivered     int64            `json:"gateway_delivered"`
	GatewayStatus map[string]int64 `json:"gateway_status,omitempty"`
	// CatchUp is the time from the devices' last PUBACK to the gateway
	// having no command in flight: how far its records lag behind.
	CatchUp time.Duration `json:"gateway_catch_up_ns"`
	// Latency is POST to the device's PUBACK, measured by the devices;
	// GatewayLatency is the gateway's own record, acceptance to PUBACK.
	Latency        LatencySummary `json:"latency"`
	Distribution   []Quantile     `json:"distribution"`
	GatewayLatency LatencySummary `json:"gateway_latency"`
	GatewayDist    []Quantile     `json:"gateway_distribution,omitempty"`
	// Completion summarises the rounds' first POST to last PUBACK.
	Completion LatencySummary `json:"round_completion"`
	Handshake  LatencySummary `json:"tls_handshake"`
	Resumed    int64          `json:"resumed_handshakes"`
	Upgrades   int64          `json:"upgrades"`
	Downgrades int64          `json:"downgrades"`
	MaxTLS     int            `json:"max_tls"`

	RoundResults []UpgradeRound `json:"round_results"`
	Samples      []StatsSample  `json:"samples"`
	Goals        []Goal         `json:"goals"`
	Interrupted  bool           `json:"interrupted"`
	Notes        []string       `json:"notes,omitempty"`
}

// RunUpgrade runs the upgrade latency benchmark, prints its summary and
// writes the report files. On error the report holds what was measured.
func RunUpgrade(ctx context.Context, cfg UpgradeConfig, out io.Writer, log *zap.Logger) (*UpgradeReport, error) {
	if log == nil {
		log = zap.NewNop()
	}
	cfg = cfg.withDefaults()
	if cfg.Fleet.Count <= 0 {
		return nil, errors.New("bench: upgrade: no devices")
	}
	gw, stop, err := cfg.Gateway.open(ctx, func(s string) { log.Warn(s) })
	if err != nil {
		return nil, err
	}
	defer stop()
	fc := cfg.Fleet
	fc.Client.Addr = gw.Plain
	if fc.Client.Device == nil {
		fc.Client.Device = &DeviceSpec{TLS: TLSSpec{CAFile: gw.CAFile, Resume: cfg.Resume, Curves: cfg.Kex}}
	}
	kex := fc.Client.Device.TLS.Curves
	if kex == "" {
		kex = KexDefault
	}
	rep := &UpgradeReport{
		Target: gw.Plain, PID: gw.PID, Command: gw.Command, Started: time.Now().UTC(),
		MQTTVersion: mqttVersionOf(fc.Client), Devices: fc.Count, Rounds: cfg.Rounds, Rate: cfg.Rate,
		PayloadSize: cfg.PayloadSize, Resume: fc.Client.Device.TLS.Resume, Kex: kex,
	}
	api := NewAPIClient(gw.API, gw.Token, cfg.Concurrency)
	defer api.Close()
	u := &upgradeRun{cfg: cfg, api: api, rep: rep, log: log, out: out, prefix: fc.Client.ClientIDPrefix, first: fc.FirstIndex}
	if u.prefix == "" {
		u.prefix = DefaultClientIDPrefix
	}

	fleet, err := StartFleet(fc, log)
	if err != nil {
		return rep, err
	}
	fmt.Fprintf(out, "target        dualgate %s, %d devices (MQTT %s) over %d workers, %d rounds\n", gw.Plain, fc.Count, mqttName(rep.MQTTVersion), fleet.Workers(), cfg.Rounds)
	sampler := startSampler(api, cfg.SampleEvery)
	runErr := u.run(ctx, fleet)
	rep.Samples = sampler.stop()
	rep.Interrupted = ctx.Err() != nil

	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.StopTimeout)
	res, stopErr := fleet.Stop(stopCtx)
	cancel()
	if stopErr != nil {
		log.Warn("stop devices", zap.Error(stopErr))
	}
	u.finish(context.WithoutCancel(ctx), res)
	writeUpgradeText(out, rep)
	if cfg.OutDir != "" {
		if err := rep.WriteFiles(cfg.OutDir, res.CommandHist, u.gatewayHist); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	if rep.Interrupted && errors.Is(runErr, context.Canceled) {
		runErr = nil
	}
	return rep, runErr
}

// upgradeRun is the state of one RunUpgrade.
type upgradeRun struct {
	cfg         UpgradeConfig
	api         *APIClient
	rep         *UpgradeReport
	log         *zap.Logger
	out         io.Writer
	prefix      string
	first       int
	seq         atomic.Int64
	mu          sync.Mutex // guards ids
	ids         []string   // accepted command ids
	gatewayHist *Latency
}

func (u *upgradeRun) progress(format string, args ...any) {
	if u.cfg.Progress != nil {
		fmt.Fprintf(u.cfg.Progress, format+"\n", args...)
	}
}

func (u *upgradeRun) run(ctx context.Context, fleet *Fleet) error {
	n := u.rep.Devices
	pr := &progressPrinter{w: u.cfg.Progress, terminal: u.cfg.Terminal, total: n}
	err := fleet.WaitReady(ctx, pr.update)
	pr.done()
	s := fleet.Stats()
	u.rep.Connected = s.Connected
	if err != nil {
		return err
	}
	if s.Connected < int64(n) {
		return fmt.Errorf("%w: %d of %d devices connected (failures %v)", ErrNoConnection, s.Connected, n, s.Failures)
	}
	for r := range u.cfg.Rounds {
		if err := u.waitPlain(ctx, fleet); err != nil {
			return err
		}
		round, err := u.round(ctx, fleet, r, nil)
		u.rep.RoundResults = append(u.rep.RoundResults, round)
		if err != nil {
			return err
		}
		u.progress("round %d/%d   %d/%d acknowledged, all within %s (POSTs took %.3f s)",
			r+1, u.cfg.Rounds, round.Acked, round.Accepted, fmtMs(round.Completion), round.PostSeconds)
	}
	return nil
}

// waitPlain waits until every device is on plain, as the gateway and the
// devices see it.
func (u *upgradeRun) waitPlain(ctx context.Context, fleet *Fleet) error {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.PlainTimeout)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	n := u.rep.Devices
	for {
		fs := fleet.Stats()
		if fs.OnTLS == 0 && fs.Live >= int64(n) {
			gs, err := u.api.Stats(ctx)
			if err == nil && gs.TLS() == 0 && gs.Plain() >= n {
				return nil
			}
		}
		if err := fleet.failure(); err != nil {
			return err
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("bench: upgrade: waiting for every device on plain (%d live, %d on TLS): %w", fs.Live, fs.OnTLS, ctx.Err())
		}
	}
}

// round sends one command to each device of targets (global indices; all
// devices when nil) and waits for the PUBACKs.
func (u *upgradeRun) round(ctx context.Context, fleet *Fleet, index int, targets []int) (UpgradeRound, error) {
	n := len(targets)
	if targets == nil {
		n = u.rep.Devices
	}
	rd := UpgradeRound{Index: index}
	ackedBefore := fleet.Stats().CommandAcks
	lim := rate.NewLimiter(rate.Inf, 1)
	if u.cfg.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(u.cfg.Rate), 1)
	}
	var (
		next, sent, accepted atomic.Int64
		wg                   sync.WaitGroup
		firstErr             atomic.Pointer[error]
	)
	start := time.Now()
	for range min(u.cfg.Concurrency, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := lim.Wait(ctx); err != nil {
					return
				}
				dev := u.first + i
				if targets != nil {
					dev = targets[i]
				}
				id := u.prefix + strconv.Itoa(dev)
				now := time.Now()
				sent.Add(1)
				acc, err := u.api.PostCommand(ctx, id, CommandRequest{
					Topic: "devices/" + id + "/commands/bench", QoS: 1, Secure: true, TTLSeconds: 600,
					Payload: string(StampCommand(now, int(u.seq.Add(1)), u.cfg.PayloadSize)),
				})
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				accepted.Add(1)
				u.mu.Lock()
				u.ids = append(u.ids, acc.ID)
				u.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rd.PostSeconds = time.Since(start).Seconds()
	rd.Sent, rd.Accepted = sent.Load(), accepted.Load()
	u.rep.Sent += rd.Sent
	u.rep.Accepted += rd.Accepted
	if e := firstErr.Load(); e != nil {
		u.rep.Notes = append(u.rep.Notes, fmt.Sprintf("round %d: %d of %d commands refused; first error: %v", index+1, rd.Sent-rd.Accepted, rd.Sent, *e))
	}
	want := ackedBefore + rd.Accepted
	wctx, cancel := context.WithTimeout(ctx, u.cfg.RoundTimeout)
	err := fleet.WaitFor(wctx, func(s PoolStats) bool { return s.CommandAcks >= want }, nil)
	cancel()
	s := fleet.Stats()
	rd.Acked = s.CommandAcks - ackedBefore
	u.rep.Acked += rd.Acked
	if s.LastCommandAck > start.UnixNano() {
		rd.Completion = time.Duration(s.LastCommandAck - start.UnixNano())
	}
	if err != nil {
		return rd, fmt.Errorf("bench: upgrade: round %d: %d of %d commands acknowledged: %w", index+1, rd.Acked, rd.Accepted, err)
	}
	return rd, nil
}

// finish fills the report from the devices' results and the gateway's
// records of the commands.
func (u *upgradeRun) finish(ctx context.Context, res FleetResult) {
	rep := u.rep
	rep.Latency = res.Command
	if res.CommandHist != nil {
		rep.Distribution = res.CommandHist.Distribution(DistributionPercentiles())
	}
	rep.Handshake = res.Handshake
	rep.Resumed = res.Stats.Resumed
	rep.Upgrades, rep.Downgrades = res.Stats.Upgrades, res.Stats.Downgrades
	comp := NewLatency()
	for _, r := range rep.RoundResults {
		if r.Completion > 0 {
			comp.Record(r.Completion)
		}
	}
	rep.Completion = comp.Summary()
	for _, s := range rep.Samples {
		rep.MaxTLS = max(rep.MaxTLS, s.TLS)
	}
	u.waitRecords(ctx, res.Stats.LastCommandAck)
	u.readGatewayRecords(ctx)
	if res.Stats.Dropped > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d devices dropped: %v", res.Stats.Dropped, res.Stats.Drops))
	}
	if res.Stats.MoveRetries > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d moves to another mode were retried", res.Stats.MoveRetries))
	}
	rep.Goals = upgradeGoals(rep)
}

// waitRecords waits, at most RecordTimeout, until the gateway has no
// command in flight, and records how long after the devices' last PUBACK
// (Unix ns) that was.
func (u *upgradeRun) waitRecords(ctx context.Context, lastAck int64) {
	if u.rep.Accepted == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, u.cfg.RecordTimeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	said := time.Now()
	for {
		st, err := u.api.Stats(ctx)
		if err == nil && st.InFlight() == 0 {
			if lastAck > 0 {
				u.rep.CatchUp = max(0, time.Since(time.Unix(0, lastAck)))
			}
			return
		}
		if err == nil && time.Since(said) >= 5*time.Second {
			said = time.Now()
			u.progress("waiting for the gateway to record the deliveries: %d commands still in flight", st.InFlight())
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			u.rep.Notes = append(u.rep.Notes, fmt.Sprintf("the gateway still had commands in flight %s after the run", u.cfg.RecordTimeout))
			return
		}
	}
}

// readGatewayRecords reads every accepted command back from the gateway:
// delivered or not, and its acceptance-to-PUBACK time.
func (u *upgradeRun) readGatewayRecords(ctx context.Context) {
	u.mu.Lock()
	ids := append([]string(nil), u.ids...)
	u.mu.Unlock()
	hist := NewLatency()
	var (
		delivered atomic.Int64
		next      atomic.Int64
		wg        sync.WaitGroup
		smu       sync.Mutex // guards status
		status    = map[string]int64{}
	)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for range min(16, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				st, err := u.api.Command(ctx, ids[i])
				name := st.Status
				if err != nil {
					name = "unreadable"
				}
				smu.Lock()
				status[name]++
				smu.Unlock()
				if err != nil || st.Status != "delivered" || st.DeliveredAt == nil {
					continue
				}
				delivered.Add(1)
				hist.Record(st.DeliveredAt.Sub(st.CreatedAt))
			}
		}()
	}
	wg.Wait()
	u.rep.Delivered = delivered.Load()
	if len(status) > 0 {
		u.rep.GatewayStatus = status
	}
	if n := u.rep.Accepted - u.rep.Delivered; n > 0 && u.rep.Acked >= u.rep.Accepted {
		u.rep.Notes = append(u.rep.Notes, fmt.Sprintf("the devices acknowledged every command, but the gateway reports %d of them not delivered: %s", n, fmtCounts(status)))
	}
	u.rep.GatewayLatency = hist.Summary()
	u.rep.GatewayDist = hist.Distribution(DistributionPercentiles())
	u.gatewayHist = hist
}

// upgradeGoals are the latency goals that apply to the run: one device,
// and GoalBurstDevices or more at once.
func upgradeGoals(r *UpgradeReport) []Goal {
	var goals []Goal
	if r.Devices == 1 && r.Latency.Count > 0 {
		g := atMost("secure command latency through the upgrade, one device, p99", float64(r.Latency.P99)/1e6, float64(GoalOneDeviceP99)/1e6, "%.1f ms")
		g.Note = fmt.Sprintf("%d commands", r.Latency.Count)
		goals = append(goals, g)
	}
	if r.Devices >= GoalBurstDevices && r.Rate == 0 && len(r.RoundResults) > 0 {
		worst := time.Duration(0)
		all := true
		for _, rd := range r.RoundResults {
			worst = max(worst, rd.Completion)
			all = all && rd.Acked == int64(r.Devices)
		}
		g := atMost(fmt.Sprintf("%d devices at once, all delivered within", r.Devices), worst.Seconds(), GoalBurstWithin.Seconds(), "%.2f s")
		if !all {
			g.Met = false
			g.Note = "not every command was acknowledged"
		}
		goals = append(goals, g)
	}
	return goals
}

// sampler polls the gateway's stats until stopped.
type sampler struct {
	done    chan struct{}
	stopped chan struct{}
	samples []StatsSample // written by the polling goroutine until stopped closes
}

func startSampler(api *APIClient, every time.Duration) *sampler {
	s := &sampler{done: make(chan struct{}), stopped: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := api.Stats(ctx)
			cancel()
			if err == nil {
				s.samples = append(s.samples, StatsSample{
					Seconds: time.Since(start).Seconds(), Plain: st.Plain(), TLS: st.TLS(), RSS: st.Memory["rss_bytes"],
				})
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the polling and returns the samples.
func (s *sampler) stop() []StatsSample {
	close(s.done)
	<-s.stopped
	return s.samples
}

// WriteFiles writes report.json, report.md, latency.png and
// tls-sessions.png into dir. device and gateway are the latency
// histograms (either may be nil).
func (r *UpgradeReport) WriteFiles(dir string, device, gateway *Latency) error {
	if err := writeReportFiles(dir, r, r.WriteMarkdown); err != nil {
		return err
	}
	var errs []error
	var series []LatencySeries
	if device != nil && device.Count() > 0 {
		series = append(series, LatencySeries{Name: "POST to device PUBACK (devices)", Quantiles: device.ChartQuantiles()})
	}
	if gateway != nil && gateway.Count() > 0 {
		series = append(series, LatencySeries{Name: "accepted to PUBACK (gateway record)", Quantiles: gateway.ChartQuantiles()})
	}
	title := fmt.Sprintf("Secure command latency through the upgrade: %d devices, %d rounds", r.Devices, r.Rounds)
	if err := LatencyChart(filepath.Join(dir, "latency.png"), title, series); err != nil && !errors.Is(err, ErrEmptyChart) {
		errs = append(errs, err)
	}
	if len(r.Samples) > 0 {
		tlsS := TimeSeries{Name: "on TLS"}
		plainS := TimeSeries{Name: "on plain"}
		for _, s := range r.Samples {
			tlsS.Seconds, tlsS.Values = append(tlsS.Seconds, s.Seconds), append(tlsS.Values, float64(s.TLS))
			plainS.Seconds, plainS.Values = append(plainS.Seconds, s.Seconds), append(plainS.Values, float64(s.Plain))
		}
		if err := TimeChart(filepath.Join(dir, "tls-sessions.png"), "Devices on the gateway by transport", "devices", []TimeSeries{tlsS, plainS}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WriteMarkdown renders the report as Markdown.
func (r *UpgradeReport) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Secure command latency through the upgrade\n\n")
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
	rateText := "all at once"
	if r.Rate > 0 {
		rateText = fmt.Sprintf("%g/s", r.Rate)
	}
	fmt.Fprintf(&b, "| devices | %d, MQTT %s, idle on plain before each round |\n", r.Devices, mqttName(r.MQTTVersion))
	fmt.Fprintf(&b, "| commands | %d rounds of one secure command per device (%d B), %s |\n", r.Rounds, r.PayloadSize, rateText)
	fmt.Fprintf(&b, "| device TLS | key exchange %s, session resumption %s |\n\n", r.Kex, yesNo(r.Resume))

	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| devices connected | %d / %d |\n", r.Connected, r.Devices)
	fmt.Fprintf(&b, "| commands sent / accepted / acknowledged by devices / delivered (gateway) | %d / %d / %d / %d |\n", r.Sent, r.Accepted, r.Acked, r.Delivered)
	if len(r.GatewayStatus) > 0 {
		fmt.Fprintf(&b, "| the commands' status at the gateway after the run | %s |\n", fmtCounts(r.GatewayStatus))
	}
	fmt.Fprintf(&b, "| POST to device PUBACK | %s |\n", r.Latency)
	fmt.Fprintf(&b, "| accepted to PUBACK (gateway record) | %s |\n", r.GatewayLatency)
	fmt.Fprintf(&b, "| gateway records caught up, after the devices' last PUBACK | %.3f s |\n", r.CatchUp.Seconds())
	fmt.Fprintf(&b, "| round: first POST to last PUBACK | %s |\n", r.Completion)
	fmt.Fprintf(&b, "| TLS handshakes of the devices | %s, %d resumed |\n", r.Handshake, r.Resumed)
	fmt.Fprintf(&b, "| upgrades / downgrades (devices) | %d / %d |\n", r.Upgrades, r.Downgrades)
	fmt.Fprintf(&b, "| most devices on TLS at once (gateway) | %d |\n", r.MaxTLS)
	if r.Interrupted {
		fmt.Fprintf(&b, "| interrupted | yes |\n")
	}
	if len(r.Distribution) > 0 {
		fmt.Fprintf(&b, "\n| percentile | POST to device PUBACK |\n|---:|---:|\n")
		for _, q := range r.Distribution {
			fmt.Fprintf(&b, "| %g | %s |\n", q.Percentile, fmtMs(q.Value))
		}
	}
	if len(r.RoundResults) > 0 && len(r.RoundResults) <= 20 {
		fmt.Fprintf(&b, "\n| round | sent | accepted | acknowledged | POSTs took | first POST to last PUBACK |\n|---:|---:|---:|---:|---:|---:|\n")
		for _, rd := range r.RoundResults {
			fmt.Fprintf(&b, "| %d | %d | %d | %d | %.3f s | %s |\n", rd.Index+1, rd.Sent, rd.Accepted, rd.Acked, rd.PostSeconds, fmtMs(rd.Completion))
		}
	}
	fmt.Fprintf(&b, "\nThe devices time each command from the moment its POST was sent (a stamp in the payload) to the moment they wrote its PUBACK: it covers the API, the durable store, the instruction on plain, the reconnection over TLS and the delivery. Charts: latency.png (distribution), tls-sessions.png (devices by transport over time, from GET /v1/stats).\n")
	writeGoalsMarkdown(&b, r.Goals)
	writeNotesMarkdown(&b, r.Notes)
	_, _ = io.WriteString(w, b.String())
}

// writeUpgradeText prints the summary as plain lines.
func writeUpgradeText(w io.Writer, r *UpgradeReport) {
	var b strings.Builder
	fmt.Fprintf(&b, "--- result\n")
	fmt.Fprintf(&b, "devices       %d / %d connected\n", r.Connected, r.Devices)
	fmt.Fprintf(&b, "commands      %d sent, %d accepted, %d acknowledged, %d delivered (gateway)\n", r.Sent, r.Accepted, r.Acked, r.Delivered)
	if len(r.GatewayStatus) > 1 {
		fmt.Fprintf(&b, "gateway says  %s\n", fmtCounts(r.GatewayStatus))
	}
	fmt.Fprintf(&b, "latency       %s (POST to device PUBACK)\n", r.Latency)
	fmt.Fprintf(&b, "gateway       %s (accepted to PUBACK), records caught up %.3f s after the last PUBACK\n", r.GatewayLatency, r.CatchUp.Seconds())
	fmt.Fprintf(&b, "rounds        %s (first POST to last PUBACK)\n", r.Completion)
	fmt.Fprintf(&b, "TLS handshake %s, %d resumed\n", r.Handshake, r.Resumed)
	fmt.Fprintf(&b, "upgrades      %d, downgrades %d, at most %d on TLS\n", r.Upgrades, r.Downgrades, r.MaxTLS)
	if r.Interrupted {
		fmt.Fprintf(&b, "interrupted   yes\n")
	}
	writeGoalsText(&b, r.Goals)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, _ = io.WriteString(w, b.String())
}

// fmtCounts formats counts as "k1 n1, k2 n2" in key order.
func fmtCounts(m map[string]int64) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
