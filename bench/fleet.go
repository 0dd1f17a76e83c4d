package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// DefaultPerWorker is the default number of connections per worker
// process: below the 20,000 open files one process may hold, with room for
// the descriptors gnet duplicates while enrolling.
const DefaultPerWorker = 15000

// ErrWorkerFailed is returned when a worker process exits or reports an
// error before its final event.
var ErrWorkerFailed = errors.New("bench: worker failed")

// FleetConfig describes N connections spread over worker processes.
type FleetConfig struct {
	// Client describes the connections; Client.Rate is the total rate,
	// split evenly among workers.
	Client ClientSpec
	// Count is the number of connections.
	Count int
	// Workers is the number of worker processes; zero picks
	// ceil(Count / PerWorker).
	Workers int
	// PerWorker is the most connections one worker holds.
	PerWorker int
	// FirstIndex is the global index of the first connection.
	FirstIndex int
	// WorkerCommand starts one worker (program and arguments); the default
	// is this executable with the argument "worker".
	WorkerCommand []string
	// WorkerEnv is the workers' environment; nil inherits this process's.
	WorkerEnv []string
	// WorkerStderr receives the workers' logs; nil discards them.
	WorkerStderr io.Writer
	// ProgressEvery is the period of the workers' progress events.
	ProgressEvery time.Duration
	// CloseTimeout bounds each worker's disconnection at the end.
	CloseTimeout time.Duration
}

func (c FleetConfig) withDefaults(host string) (FleetConfig, error) {
	if c.Count < 0 {
		return c, fmt.Errorf("bench: %d connections", c.Count)
	}
	if err := c.Client.Validate(); err != nil {
		return c, err
	}
	if c.PerWorker <= 0 {
		c.PerWorker = DefaultPerWorker
	}
	if c.Workers <= 0 {
		c.Workers = max(1, (c.Count+c.PerWorker-1)/c.PerWorker)
	}
	if c.Count > 0 && (c.Count+c.Workers-1)/c.Workers > c.PerWorker {
		return c, fmt.Errorf("bench: %d connections over %d workers exceed %d per worker", c.Count, c.Workers, c.PerWorker)
	}
	if c.Count > 0 {
		c.Workers = min(c.Workers, c.Count)
	}
	if len(c.WorkerCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("bench: find own executable: %w", err)
		}
		c.WorkerCommand = []string{exe, "worker"}
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = DefaultProgressEvery
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if len(c.Client.SourceAddrs) == 0 {
		for _, a := range AutoSourceAddrs(host, c.FirstIndex+c.Count) {
			c.Client.SourceAddrs = append(c.Client.SourceAddrs, a.String())
		}
	} else {
		c.Client.SourceAddrs = append([]string(nil), c.Client.SourceAddrs...)
	}
	return c, nil
}

// workerProc is one running worker process as the parent sees it.
type workerProc struct {
	index int
	count int
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when stdout reached EOF and the process was reaped
	err   error         // exit status; read after done

	// Guarded by Fleet.mu.
	stats   PoolStats
	ready   bool
	final   *WorkerEvent
	failure string
}

// Fleet is a set of running worker processes holding connections for one
// measurement. Start it with StartFleet, wait with WaitReady, end it with
// Stop.
type Fleet struct {
	cfg FleetConfig
	log *zap.Logger

	changed chan struct{} // an event arrived or a worker ended; capacity 1

	mu      sync.Mutex // guards the workerProc fields marked so
	workers []*workerProc

	stopOnce sync.Once
	result   FleetResult
	stopErr  error
}

// StartFleet starts the worker processes and hands each its share of the
// connections.
func StartFleet(cfg FleetConfig, log *zap.Logger) (*Fleet, error) {
	if log == nil {
		log = zap.NewNop()
	}
	host, _, err := net.SplitHostPort(cfg.Client.Addr)
	if err != nil {
		return nil, fmt.Errorf("bench: server address %q: %w", cfg.Client.Addr, err)
	}
	cfg, err = cfg.withDefaults(host)
	if err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, log: log, changed: make(chan struct{}, 1)}
	first := cfg.FirstIndex
	for i := range cfg.Workers {
		n := cfg.Count / cfg.Workers
		if i < cfg.Count%cfg.Workers {
			n++
		}
		spec := WorkerSpec{
			Index:         i,
			First:         first,
			Count:         n,
			Client:        cfg.Client,
			ProgressEvery: cfg.ProgressEvery,
			CloseTimeout:  cfg.CloseTimeout,
		}
		spec.Client.Rate = cfg.Client.Rate / float64(cfg.Workers)
		first += n
		if err := f.start(spec); err != nil {
			f.kill()
			return nil, err
		}
	}
	return f, nil
}

// start launches one worker and sends it its spec.
func (f *Fleet) start(spec WorkerSpec) error {
	cmd := exec.Command(f.cfg.WorkerCommand[0], f.cfg.WorkerCommand[1:]...)
	cmd.Env = f.cfg.WorkerEnv
	cmd.Stderr = f.cfg.WorkerStderr
	// Own process group: a Ctrl-C at the terminal reaches the parent only,
	// which then stops the workers in order. Pdeathsig ends a worker whose
	// parent died without closing its stdin.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("bench: worker %d stdin: %w", spec.Index, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("bench: worker %d stdout: %w", spec.Index, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("bench: start worker %d: %w", spec.Index, err)
	}
	w := &workerProc{index: spec.Index, count: spec.Count, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	f.mu.Lock()
	f.workers = append(f.workers, w)
	f.mu.Unlock()
	go f.read(w, stdout)

	line, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("bench: worker %d spec: %w", spec.Index, err)
	}
	if _, err := stdin.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("bench: worker %d: send spec: %w", spec.Index, err)
	}
	f.log.Debug("worker started", zap.Int("worker", spec.Index), zap.Int("pid", cmd.Process.Pid), zap.Int("connections", spec.Count))
	return nil
}

// read consumes a worker's events until its stdout closes, then reaps it.
func (f *Fleet) read(w *workerProc, stdout io.Reader) {
	defer close(w.done)
	defer f.signal()
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var ev WorkerEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			f.log.Warn("worker wrote a line that is not an event", zap.Int("worker", w.index), zap.ByteString("line", sc.Bytes()))
			continue
		}
		f.mu.Lock()
		switch ev.Type {
		case EventProgress:
			w.stats = ev.Stats
		case EventReady:
			w.stats, w.ready = ev.Stats, true
		case EventFinal:
			w.stats, w.final = ev.Stats, &ev
		case EventError:
			w.failure = ev.Error
		}
		f.mu.Unlock()
		f.signal()
	}
	// Drain whatever is left so the worker never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, stdout)
	w.err = w.cmd.Wait()
}

func (f *Fleet) signal() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// Stats sums the latest counters of every worker.
func (f *Fleet) Stats() PoolStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s PoolStats
	for _, w := range f.workers {
		s.Add(w.stats)
	}
	return s
}

// Workers is the number of worker processes.
func (f *Fleet) Workers() int { return len(f.workers) }

// PIDs returns the process ids of the workers.
func (f *Fleet) PIDs() []int {
	out := make([]int, 0, len(f.workers))
	for _, w := range f.workers {
		out = append(out, w.cmd.Process.Pid)
	}
	return out
}

// WaitReady returns when every worker has attempted and resolved all its
// connections, calling progress (if not nil) on every event. It fails when
// a worker dies or reports an error, or when ctx ends.
func (f *Fleet) WaitReady(ctx context.Context, progress func(PoolStats)) error {
	for {
		ready, err := f.readiness()
		if progress != nil {
			progress(f.Stats())
		}
		if err != nil || ready {
			return err
		}
		select {
		case <-f.changed:
		case <-ctx.Done():
			return fmt.Errorf("bench: waiting for workers: %w", ctx.Err())
		}
	}
}

func (f *Fleet) readiness() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ready := true
	for _, w := range f.workers {
		if w.failure != "" {
			return false, fmt.Errorf("%w: worker %d: %s", ErrWorkerFailed, w.index, w.failure)
		}
		select {
		case <-w.done:
			if !w.ready {
				return false, fmt.Errorf("%w: worker %d exited before connecting: %v", ErrWorkerFailed, w.index, w.err)
			}
		default:
		}
		ready = ready && w.ready
	}
	return ready, nil
}

// FleetResult is what a fleet measured, summed over its workers.
type FleetResult struct {
	Workers int       `json:"workers"`
	Stats   PoolStats `json:"stats"`
	// Connect is dial start to CONNACK, Connack is CONNECT to CONNACK,
	// Handshake is the TLS handshake alone.
	Connect   LatencySummary `json:"connect"`
	Connack   LatencySummary `json:"connack"`
	Handshake LatencySummary `json:"handshake"`
	// Command is stamped command to PUBACK (devices); CommandHist holds
	// its whole distribution.
	Command     LatencySummary `json:"command"`
	CommandHist *Latency       `json:"-"`
}

// Stop tells every worker to disconnect, waits for their final events and
// exits until ctx ends, then kills what is left by PID. Stop is safe to
// call twice; the second call returns the first one's result.
func (f *Fleet) Stop(ctx context.Context) (FleetResult, error) {
	f.stopOnce.Do(func() { f.result, f.stopErr = f.stop(ctx) })
	return f.result, f.stopErr
}

func (f *Fleet) stop(ctx context.Context) (FleetResult, error) {
	for _, w := range f.workers {
		// A worker that already exited has a closed pipe: nothing to say.
		_, _ = io.WriteString(w.stdin, StopCommand+"\n")
		_ = w.stdin.Close()
	}
	var errs []error
	for _, w := range f.workers {
		select {
		case <-w.done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("bench: worker %d (pid %d) did not stop: %w", w.index, w.cmd.Process.Pid, ctx.Err()))
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	}
	res := FleetResult{Workers: len(f.workers)}
	connect, connack, handshake, command := NewLatency(), NewLatency(), NewLatency(), NewLatency()
	f.mu.Lock()
	for _, w := range f.workers {
		res.Stats.Add(w.stats)
		if w.final == nil {
			errs = append(errs, fmt.Errorf("%w: worker %d sent no final report (exit: %v)", ErrWorkerFailed, w.index, w.err))
			continue
		}
		for _, m := range []struct {
			l   *Latency
			enc string
		}{{connect, w.final.Connect}, {connack, w.final.Connack}, {handshake, w.final.Handshake}, {command, w.final.Command}} {
			if err := m.l.MergeEncoded(m.enc); err != nil {
				errs = append(errs, fmt.Errorf("bench: worker %d: %w", w.index, err))
			}
		}
	}
	f.mu.Unlock()
	res.Connect, res.Connack, res.Handshake = connect.Summary(), connack.Summary(), handshake.Summary()
	res.Command, res.CommandHist = command.Summary(), command
	return res, errors.Join(errs...)
}

// WaitFor returns once cond holds for the workers' summed counters, calling
// progress (if not nil) on every event. It fails when a worker dies or
// reports an error, or when ctx ends. Counters arrive with the workers'
// progress events (FleetConfig.ProgressEvery).
func (f *Fleet) WaitFor(ctx context.Context, cond func(PoolStats) bool, progress func(PoolStats)) error {
	for {
		s := f.Stats()
		if progress != nil {
			progress(s)
		}
		if cond(s) {
			return nil
		}
		if err := f.failure(); err != nil {
			return err
		}
		select {
		case <-f.changed:
		case <-ctx.Done():
			return fmt.Errorf("bench: waiting for workers: %w", ctx.Err())
		}
	}
}

// failure reports a worker that failed or exited.
func (f *Fleet) failure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.workers {
		if w.failure != "" {
			return fmt.Errorf("%w: worker %d: %s", ErrWorkerFailed, w.index, w.failure)
		}
		select {
		case <-w.done:
			return fmt.Errorf("%w: worker %d exited: %v", ErrWorkerFailed, w.index, w.err)
		default:
		}
	}
	return nil
}

// kill ends every started worker at once (start-up failure).
func (f *Fleet) kill() {
	for _, w := range f.workers {
		_ = w.stdin.Close()
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}
