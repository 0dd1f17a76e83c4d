package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// WorkerSpec is what the parent sends a worker: one JSON line on its stdin.
type WorkerSpec struct {
	// Index numbers the worker from 0.
	Index int `json:"index"`
	// First is the global index of the worker's first connection; client
	// ids and source addresses follow the global index.
	First int `json:"first"`
	// Count is the number of connections the worker holds.
	Count int `json:"count"`
	// Client describes the connections; its Rate is the worker's share.
	Client ClientSpec `json:"client"`
	// ProgressEvery is the period of progress events (nanoseconds).
	ProgressEvery time.Duration `json:"progress_every_ns"`
	// CloseTimeout bounds the disconnection at the end (nanoseconds).
	CloseTimeout time.Duration `json:"close_timeout_ns,omitempty"`
}

// Worker event types, in the order a worker sends them.
const (
	EventProgress = "progress" // counters while connecting and holding
	EventReady    = "ready"    // every connection attempted and resolved
	EventFinal    = "final"    // disconnected: counters and histograms
	EventError    = "error"    // the worker could not run; Error says why
)

// StopCommand, sent as a line on a worker's stdin, makes it disconnect and
// exit. End of file on stdin does the same.
const StopCommand = "stop"

// WorkerEvent is one JSON line a worker writes on its stdout.
type WorkerEvent struct {
	Type   string    `json:"type"`
	Worker int       `json:"worker"`
	Stats  PoolStats `json:"stats"`
	// Encoded HdrHistograms (final only): dial start to CONNACK, CONNECT to
	// CONNACK, TLS handshake.
	Connect   string `json:"connect_hist,omitempty"`
	Connack   string `json:"connack_hist,omitempty"`
	Handshake string `json:"handshake_hist,omitempty"`
	// Command is the encoded histogram of stamped commands, stamp to
	// PUBACK (devices only).
	Command string `json:"command_hist,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Default worker timings.
const (
	DefaultProgressEvery = time.Second
	DefaultCloseTimeout  = 30 * time.Second
)

// eventWriter writes WorkerEvents as JSON lines, one at a time.
type eventWriter struct {
	mu  sync.Mutex // guards enc
	enc *json.Encoder
}

func (w *eventWriter) send(ev WorkerEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.enc.Encode(ev); err != nil {
		return fmt.Errorf("bench: worker: write event: %w", err)
	}
	return nil
}

// RunWorker is the body of a worker process: it reads a WorkerSpec line from
// in, opens the connections, writes WorkerEvents to out, holds the
// connections until a StopCommand line or end of file on in (or ctx ends),
// disconnects them, and writes the final event. The goroutine reading in
// after the spec returns when in reaches end of file.
func RunWorker(ctx context.Context, in io.Reader, out io.Writer, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	w := &eventWriter{enc: json.NewEncoder(out)}
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil && (len(line) == 0 || !errors.Is(err, io.EOF)) {
		return fmt.Errorf("bench: worker: read spec: %w", err)
	}
	var spec WorkerSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		err = fmt.Errorf("bench: worker: spec: %w", err)
		_ = w.send(WorkerEvent{Type: EventError, Error: err.Error()})
		return err
	}
	log = log.With(zap.Int("worker", spec.Index))
	if err := raiseFileLimit(); err != nil {
		log.Warn("cannot raise the open file limit", zap.Error(err))
	}
	cfg, err := spec.Client.ClientConfig()
	if err != nil {
		_ = w.send(WorkerEvent{Type: EventError, Worker: spec.Index, Error: err.Error()})
		return err
	}
	pool, err := NewPool(cfg, log)
	if err != nil {
		_ = w.send(WorkerEvent{Type: EventError, Worker: spec.Index, Error: err.Error()})
		return err
	}

	stop := make(chan struct{})
	go watchStop(br, stop)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-runCtx.Done():
		}
	}()

	every := spec.ProgressEvery
	if every <= 0 {
		every = DefaultProgressEvery
	}
	progressDone := make(chan struct{})
	progressStop := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-progressStop:
				return
			case <-t.C:
				if err := w.send(WorkerEvent{Type: EventProgress, Worker: spec.Index, Stats: pool.Stats()}); err != nil {
					log.Warn("progress", zap.Error(err))
				}
			}
		}
	}()

	connErr := pool.Connect(runCtx, spec.First, spec.Count)
	if connErr == nil {
		_ = w.send(WorkerEvent{Type: EventReady, Worker: spec.Index, Stats: pool.Stats()})
		<-runCtx.Done()
	}
	close(progressStop)
	<-progressDone

	closeTimeout := spec.CloseTimeout
	if closeTimeout <= 0 {
		closeTimeout = DefaultCloseTimeout
	}
	closeCtx, closeCancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer closeCancel()
	closeErr := pool.Close(closeCtx)
	if closeErr != nil {
		log.Warn("disconnect", zap.Error(closeErr))
	}

	final := WorkerEvent{Type: EventFinal, Worker: spec.Index, Stats: pool.Stats()}
	connect, connack, handshake := pool.Histograms()
	var encErr error
	if final.Connect, err = connect.Encode(); err != nil {
		encErr = err
	}
	if final.Connack, err = connack.Encode(); err != nil {
		encErr = err
	}
	if handshake.Count() > 0 {
		if final.Handshake, err = handshake.Encode(); err != nil {
			encErr = err
		}
	}
	if command := pool.CommandLatency(); command.Count() > 0 {
		if final.Command, err = command.Encode(); err != nil {
			encErr = err
		}
	}
	if err := w.send(final); err != nil {
		return err
	}
	return encErr
}

// watchStop closes stop at a StopCommand line or at the end of r.
func watchStop(r *bufio.Reader, stop chan<- struct{}) {
	defer close(stop)
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) == StopCommand || err != nil {
			return
		}
	}
}

// raiseFileLimit lifts the soft open-file limit to the hard one: a worker
// holds thousands of sockets.
func raiseFileLimit() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("bench: getrlimit: %w", err)
	}
	if lim.Cur >= lim.Max {
		return nil
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("bench: setrlimit: %w", err)
	}
	return nil
}
