// Command dualbench measures an MQTT server from outside: idle connections
// (conn), server memory per connection (mem), a device's bytes on the wire
// (traffic), secure command latency through the upgrade (upgrade), the
// same fleet three ways (savings), and publish throughput and latency
// (pub). See package bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/dualgate/dualgate/bench"
	_ "github.com/dualgate/dualgate/bench/chart" // draws the reports' charts
)

const usage = `dualbench measures an MQTT server from outside.

Usage:
  dualbench conn [flags]      hold N idle connections; report connect rate and CONNACK latency
  dualbench mem [flags]       measure a server's memory per idle connection at several sizes
  dualbench traffic [flags]   a device's bytes on the wire through dualgate: keepalive, commands, upgrade cycles, per day
  dualbench upgrade [flags]   secure command latency through the upgrade, POST to device PUBACK
  dualbench savings [flags]   the same fleet three ways: dualgate on demand, dualgate all TLS, a peer broker all TLS
  dualbench pub [flags]       publish throughput and end-to-end latency, QoS 0/1/2, straight to a broker or through dualgate

Run "dualbench COMMAND -h" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one sub-command and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first Ctrl-C or SIGTERM stops the run in order; a second one
	// gets the default behaviour and ends the process at once (workers
	// then see their stdin close and disconnect by themselves).
	go func() {
		<-ctx.Done()
		stop()
	}()

	var err error
	switch args[0] {
	case "conn":
		err = runConn(ctx, args[1:], stdout, stderr)
	case "mem":
		err = runMem(ctx, args[1:], stdout, stderr)
	case "traffic":
		err = runTraffic(ctx, args[1:], stdout, stderr)
	case "upgrade":
		err = runUpgrade(ctx, args[1:], stdout, stderr)
	case "savings":
		err = runSavings(ctx, args[1:], stdout, stderr)
	case "pub":
		err = runPub(ctx, args[1:], stdout, stderr)
	case "worker":
		err = runWorker(ctx, args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "dualbench: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, "dualbench:", err)
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "dualbench:", err)
		return 1
	}
	return 0
}

func runConn(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, logLevel, err := parseConn(args, stderr)
	if err != nil {
		return err
	}
	cfg.Progress, cfg.Terminal = stdout, isTerminal(stdout)
	return withFleet(logLevel, &cfg.Fleet, stderr, func(log *zap.Logger) error {
		_, err := bench.RunConn(ctx, cfg, stdout, log)
		return err
	})
}

func runMem(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, logLevel, err := parseMem(args, stderr)
	if err != nil {
		return err
	}
	cfg.Progress, cfg.Terminal = stdout, isTerminal(stdout)
	return withFleet(logLevel, &cfg.Fleet, stderr, func(log *zap.Logger) error {
		_, err := bench.RunMem(ctx, cfg, stdout, log)
		return err
	})
}

// withFleet runs fn with the logger for level once the fleet's worker
// processes are set to run this same program.
func withFleet(level string, fleet *bench.FleetConfig, stderr io.Writer, fn func(*zap.Logger) error) error {
	return withLogger(level, stderr, func(log *zap.Logger) error {
		if err := setWorkerCommand(fleet, level, stderr); err != nil {
			return err
		}
		return fn(log)
	})
}

// withLogger runs fn with the logger for level, synced when fn returns.
func withLogger(level string, stderr io.Writer, fn func(*zap.Logger) error) error {
	log, err := newLogger(level, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	return fn(log)
}

// runWorker is the hidden sub-command the parent starts: spec on stdin,
// events on stdout, logs on stderr.
func runWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("dualbench worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	return bench.RunWorker(ctx, os.Stdin, os.Stdout, log)
}

// setWorkerCommand makes the workers this executable's hidden "worker"
// sub-command, logging at the parent's level to its stderr.
func setWorkerCommand(fc *bench.FleetConfig, logLevel string, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	fc.WorkerCommand = []string{exe, "worker", "--log-level", logLevel}
	fc.WorkerStderr = stderr
	return nil
}

func newLogger(level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, usageError{fmt.Errorf("log level: %w", err)}
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core), nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
