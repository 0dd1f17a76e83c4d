package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/bench"
)

// savingsCmd is `dualbench savings`, parsed.
type savingsCmd struct {
	cfg         bench.SavingsConfig
	logLevel    string
	maxDuration time.Duration
}

// parseSavings parses the flags of `dualbench savings`.
func parseSavings(args []string, stderr io.Writer) (savingsCmd, error) {
	fs := flag.NewFlagSet("dualbench savings", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describe(fs, "savings")
	var (
		c        savingsCmd
		cf       clientFlags
		dualgate string
		gwArgs   listFlag
		noPeer   bool
		noResume bool
		settle   = bench.DefaultSettle()
	)
	cf.registerFleet(fs, "rate", 2000)
	fs.IntVar(&c.cfg.Devices, "devices", 15000, "devices in the fleet")
	fs.Float64Var(&c.cfg.SecureFraction, "secure-fraction", 0.01, "share of the devices that get a secure command in the on-demand run")
	fs.StringVar(&c.cfg.OutDir, "out", "", "directory for report.md, report.json, memory.png, fleet.png and latency.png")
	fs.StringVar(&dualgate, "dualgate", "", "dualgate executable (default: next to dualbench, or on PATH)")
	fs.Var(&gwArgs, "gateway-arg", "one more flag for every dualgate started (repeatable)")
	fs.DurationVar(&c.cfg.SecureIdle, "secure-idle", 30*time.Second, "the on-demand gateway's quiet period: the upgraded devices are measured on TLS within it")
	fs.StringVar(&c.cfg.Peer, "peer", "", "peer broker executable (default: mosquitto on PATH or /usr/sbin/mosquitto)")
	fs.StringVar(&c.cfg.PeerCmd, "peer-cmd", "", "command that starts the peer broker with a TLS listener; {host} {port} {cert} {key} {ca} {dir} are replaced")
	fs.BoolVar(&noPeer, "no-peer", false, "skip the peer broker")
	fs.StringVar(&c.cfg.Kex, "kex", "", "the devices' key exchange: x25519, p256, ... (default: Go's, X25519MLKEM768 first)")
	fs.BoolVar(&noResume, "no-resume", false, "devices do not resume their TLS sessions")
	fs.Float64Var(&c.cfg.CommandsPerDay, "commands-per-day", 1, "secure commands a day of a device that needs them, for the bytes per day")
	fs.IntVar(&c.cfg.TrafficCycles, "cycles", 5, "keepalive cycles averaged by the one-device traffic probe")
	fs.DurationVar(&settle.Interval, "settle-interval", settle.Interval, "time between RSS samples")
	fs.IntVar(&settle.Samples, "settle-samples", settle.Samples, "consecutive RSS samples that must agree")
	fs.Float64Var(&settle.Tolerance, "settle-tolerance", settle.Tolerance, "largest spread of those samples (fraction)")
	fs.DurationVar(&settle.Timeout, "settle-timeout", settle.Timeout, "longest wait for RSS to settle")
	fs.DurationVar(&c.maxDuration, "max-duration", time.Hour, "bound on the whole run")
	if err := parseFlags(fs, args); err != nil {
		return c, err
	}
	version, err := parseMQTT(cf.mqtt)
	if err != nil {
		return c, usageError{err}
	}
	if c.cfg.Fleet, err = cf.fleetSpec(version, "--rate"); err != nil {
		return c, usageError{err}
	}
	c.logLevel = cf.logLevel
	c.cfg.Settle = settle
	c.cfg.Resume = !noResume
	c.cfg.Args = gwArgs
	switch {
	case c.cfg.Devices < 1:
		return c, usageError{fmt.Errorf("--devices %d: want at least 1", c.cfg.Devices)}
	case c.cfg.SecureFraction < 0 || c.cfg.SecureFraction > 1:
		return c, usageError{fmt.Errorf("--secure-fraction %v: want 0..1", c.cfg.SecureFraction)}
	case c.cfg.SecureIdle < 100*time.Millisecond:
		return c, usageError{fmt.Errorf("--secure-idle %v: want at least 100ms", c.cfg.SecureIdle)}
	case c.cfg.CommandsPerDay <= 0:
		return c, usageError{fmt.Errorf("--commands-per-day %v: want more than 0", c.cfg.CommandsPerDay)}
	case c.cfg.TrafficCycles < 1 || c.cfg.TrafficCycles > 1000:
		return c, usageError{fmt.Errorf("--cycles %d: want 1..1000", c.cfg.TrafficCycles)}
	case noPeer && (c.cfg.Peer != "" || c.cfg.PeerCmd != ""):
		return c, usageError{fmt.Errorf("--no-peer with --peer or --peer-cmd")}
	case c.maxDuration <= 0:
		return c, usageError{fmt.Errorf("--max-duration %v: want more than 0", c.maxDuration)}
	}
	c.cfg.NoPeer = noPeer
	if _, err := bench.ParseCurves(c.cfg.Kex); err != nil {
		return c, usageError{err}
	}
	if dualgate == "" {
		if dualgate, err = bench.FindDualgate(); err != nil {
			return c, err
		}
	}
	c.cfg.Dualgate = dualgate
	return c, nil
}

func runSavings(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseSavings(args, stderr)
	if err != nil {
		return err
	}
	c.cfg.Progress, c.cfg.Terminal = stdout, isTerminal(stdout)
	return withFleet(c.logLevel, &c.cfg.Fleet, stderr, func(log *zap.Logger) error {
		ctx, cancel := context.WithTimeout(ctx, c.maxDuration)
		defer cancel()
		_, err := bench.RunSavings(ctx, c.cfg, stdout, log)
		return err
	})
}
