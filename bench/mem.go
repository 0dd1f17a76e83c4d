package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"
)

// DefaultMinR2 is the coefficient of determination above which the memory
// growth is reported as linear.
const DefaultMinR2 = 0.98

// MemConfig is the `dualbench mem` run: for each size, connect that many
// idle clients, read the server's memory once it settles, disconnect.
type MemConfig struct {
	// Fleet describes the clients; its Count is set per size.
	Fleet FleetConfig
	// Sizes are the connection counts measured, in order.
	Sizes []int
	// TargetPID is the server to measure; ignored when Spawn is set.
	TargetPID int
	// Spawn is a command line that starts the server; RunMem starts it,
	// measures it, and stops it at the end.
	Spawn string
	// SpawnOutput receives the spawned server's output; nil discards it.
	SpawnOutput io.Writer
	// ListenTimeout bounds the wait for a spawned server to accept
	// connections; zero means 10 s.
	ListenTimeout time.Duration
	// MetricsURL, when set, is scraped for go_memstats_heap_inuse_bytes.
	MetricsURL string
	// Settle says when RSS counts as settled.
	Settle SettleConfig
	// DrainTimeout bounds the wait, after disconnecting, for the server to
	// close its side; zero means 15 s.
	DrainTimeout time.Duration
	// MinR2 is the threshold of "linear: yes"; zero means DefaultMinR2.
	MinR2 float64
	// OutDir, when set, receives report.json and report.md.
	OutDir string
	// Proc reads /proc; the zero value reads the real one.
	Proc ProcFS
	// StopTimeout bounds each fleet's disconnection.
	StopTimeout time.Duration
	// Progress and Terminal are as in ConnConfig.
	Progress io.Writer
	Terminal bool
}

// RunMem measures the server's memory at every size, prints a table to
// out, and writes the report files when OutDir is set. On error the report
// holds what was measured so far.
func RunMem(ctx context.Context, cfg MemConfig, out io.Writer, log *zap.Logger) (*MemReport, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if len(cfg.Sizes) == 0 {
		return nil, errors.New("bench: mem: no sizes")
	}
	for _, n := range cfg.Sizes {
		if n <= 0 {
			return nil, fmt.Errorf("bench: mem: size %d", n)
		}
	}
	if cfg.MinR2 <= 0 {
		cfg.MinR2 = DefaultMinR2
	}
	if cfg.ListenTimeout <= 0 {
		cfg.ListenTimeout = 10 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 15 * time.Second
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultCloseTimeout + 10*time.Second
	}
	if err := cfg.Fleet.Client.Validate(); err != nil {
		return nil, err
	}

	rep := &MemReport{
		Target:      cfg.Fleet.Client.Addr,
		Transport:   cfg.Fleet.Client.Transport(),
		MQTTVersion: mqttVersionOf(cfg.Fleet.Client),
		KeepAlive:   cfg.Fleet.Client.KeepAlive.Seconds(),
		Started:     time.Now().UTC(),
		SlabCaches:  SocketSlabCaches(),
		MinR2:       cfg.MinR2,
		MetricsURL:  cfg.MetricsURL,
	}
	if cfg.Fleet.Client.TLS != nil {
		rep.TLSResume = cfg.Fleet.Client.TLS.Resume
	}
	pid := cfg.TargetPID
	if cfg.Spawn != "" {
		srv, err := SpawnServer(cfg.Spawn, cfg.SpawnOutput)
		if err != nil {
			return nil, err
		}
		defer func() {
			if err := srv.Stop(10 * time.Second); err != nil {
				log.Warn("stop spawned server", zap.Error(err))
			}
		}()
		pid, rep.Command = srv.PID(), srv.Command()
		lctx, cancel := context.WithTimeout(ctx, cfg.ListenTimeout)
		err = WaitListening(lctx, cfg.Fleet.Client.Addr, srv)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if pid <= 0 {
		return nil, errors.New("bench: mem: no target: give a PID or a command to spawn")
	}
	rep.PID = pid
	if name, err := cfg.Proc.Comm(pid); err == nil {
		rep.Server = name
	}

	m := &memRun{cfg: cfg, pid: pid, log: log, out: out, rep: rep}
	err := m.run(ctx)
	rep.finish()
	writeMemTable(out, rep)
	if cfg.OutDir != "" {
		if werr := rep.WriteFiles(cfg.OutDir); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return rep, err
}

// memRun is the state of one RunMem.
type memRun struct {
	cfg MemConfig
	pid int
	log *zap.Logger
	out io.Writer
	rep *MemReport
}

func (m *memRun) rss() (int64, error) {
	pm, err := m.cfg.Proc.ReadMem(m.pid)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errNoProcess, err)
	}
	return pm.RSS, nil
}

// snapshot is every figure read at one moment.
type snapshot struct {
	mem     ProcMem
	settled bool
	fds     int
	slab    SlabSample
	hasSlab bool
	heap    float64
	hasHeap bool
}

func (m *memRun) read(ctx context.Context) (snapshot, error) {
	var s snapshot
	_, settled, err := WaitSettled(ctx, m.cfg.Settle, m.rss)
	if err != nil {
		return s, err
	}
	s.settled = settled
	if s.mem, err = m.cfg.Proc.ReadMem(m.pid); err != nil {
		return s, fmt.Errorf("%w: %w", errNoProcess, err)
	}
	if s.fds, err = m.cfg.Proc.CountFDs(m.pid); err != nil {
		s.fds = -1
	}
	if slab, err := m.cfg.Proc.ReadSocketSlab(); err == nil {
		s.slab, s.hasSlab = slab, true
	}
	if m.cfg.MetricsURL != "" {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := ScrapeGauge(hctx, http.DefaultClient, m.cfg.MetricsURL, HeapMetric)
		cancel()
		if err != nil {
			m.log.Warn("scrape heap", zap.Error(err))
		} else {
			s.heap, s.hasHeap = v, true
		}
	}
	return s, nil
}

func (m *memRun) run(ctx context.Context) error {
	base, err := m.read(ctx)
	if err != nil {
		return err
	}
	m.rep.Baseline = base.mem
	m.rep.BaselineSettled = base.settled
	m.rep.HasSlab = base.hasSlab
	fmt.Fprintf(m.out, "target        %s pid %d (%s, MQTT %s)\n", m.rep.Target, m.pid, m.rep.Transport, mqttName(m.rep.MQTTVersion))
	fmt.Fprintf(m.out, "baseline      RSS %s\n", fmtBytes(base.mem.RSS))
	before := base
	next := m.cfg.Fleet.FirstIndex
	for _, n := range m.cfg.Sizes {
		pt, after, err := m.measure(ctx, n, next, before, base)
		if pt != nil {
			m.rep.Points = append(m.rep.Points, *pt)
		}
		if err != nil {
			return err
		}
		before = after
	}
	return nil
}

// measure connects n clients, reads the figures, disconnects, and waits for
// the server to close its side. It returns the point, and a snapshot to use
// as the next size's "before".
func (m *memRun) measure(ctx context.Context, n, first int, before, base snapshot) (*MemPoint, snapshot, error) {
	fc := m.cfg.Fleet
	fc.Count = n
	fc.FirstIndex = first
	fleet, err := StartFleet(fc, m.log)
	if err != nil {
		return nil, before, err
	}
	pr := &progressPrinter{w: m.cfg.Progress, terminal: m.cfg.Terminal, total: n}
	readyErr := fleet.WaitReady(ctx, pr.update)
	pr.done()
	var (
		after   snapshot
		readErr error
	)
	if readyErr == nil {
		after, readErr = m.read(ctx)
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.StopTimeout)
	res, stopErr := fleet.Stop(stopCtx)
	cancel()
	if err := errors.Join(readyErr, readErr); err != nil {
		return nil, before, errors.Join(err, stopErr)
	}
	if stopErr != nil {
		m.log.Warn("stop workers", zap.Error(stopErr))
	}
	if res.Stats.Connected == 0 {
		return nil, before, fmt.Errorf("%w: size %d: %d failed %v", ErrNoConnection, n, res.Stats.Failed, res.Stats.Failures)
	}

	pt := &MemPoint{
		Size:           n,
		Connected:      res.Stats.Connected,
		Failed:         res.Stats.Failed,
		Dropped:        res.Stats.Dropped,
		RSSBaseline:    base.mem.RSS,
		RSSBefore:      before.mem.RSS,
		RSSAfter:       after.mem.RSS,
		PSSAfter:       after.mem.PSS,
		Settled:        after.settled,
		FDsBefore:      before.fds,
		FDsAfter:       after.fds,
		RampSeconds:    res.Stats.RampDuration().Seconds(),
		ConnectRate:    res.Stats.ConnectRate(),
		Connack:        res.Connack,
		Handshake:      res.Handshake,
		Resumed:        res.Stats.Resumed,
		HasSlab:        before.hasSlab && after.hasSlab,
		HasHeap:        before.hasHeap && after.hasHeap,
		SlabBefore:     before.slab.ActiveBytes(),
		SlabAfter:      after.slab.ActiveBytes(),
		SlabFromStart:  after.slab.ActiveBytes() - base.slab.ActiveBytes(),
		HeapBefore:     before.heap,
		HeapAfter:      after.heap,
		ConnectFailure: res.Stats.Failures,
	}
	pt.compute()
	fmt.Fprintf(m.out, "size %-8d connected %d, RSS %s -> %s, %.3f KiB/conn from the baseline\n", n, pt.Connected, fmtBytes(pt.RSSBefore), fmtBytes(pt.RSSAfter), pt.KiBPerConn)

	// Wait for the server to close its side, so that the next size starts
	// from an idle server.
	drained, err := m.drain(ctx, before.fds)
	if err != nil {
		return pt, before, err
	}
	if !drained {
		m.log.Warn("server still holds connections after the drain timeout", zap.Int("size", n))
	}
	next, err := m.read(ctx)
	return pt, next, err
}

// drain waits until the server's open descriptors are back to fdsBefore
// (plus 1% slack), or DrainTimeout.
func (m *memRun) drain(ctx context.Context, fdsBefore int) (bool, error) {
	if fdsBefore < 0 {
		return false, nil
	}
	limit := fdsBefore + fdsBefore/100 + 2
	deadline := time.Now().Add(m.cfg.DrainTimeout)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		n, err := m.cfg.Proc.CountFDs(m.pid)
		if err != nil {
			return false, fmt.Errorf("%w: %w", errNoProcess, err)
		}
		if n <= limit {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return false, fmt.Errorf("bench: drain: %w", ctx.Err())
		}
	}
}

// writeFileAtomic writes data to path through a temporary file.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	return nil
}
