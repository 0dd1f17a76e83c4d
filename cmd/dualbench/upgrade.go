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

// upgradeCmd is `dualbench upgrade`, parsed.
type upgradeCmd struct {
	cfg         bench.UpgradeConfig
	logLevel    string
	maxDuration time.Duration
}

// parseUpgrade parses the flags of `dualbench upgrade`.
func parseUpgrade(args []string, stderr io.Writer) (upgradeCmd, error) {
	fs := flag.NewFlagSet("dualbench upgrade", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describe(fs, "upgrade")
	var (
		c        upgradeCmd
		gf       gatewayFlags
		cf       clientFlags
		devices  int
		noResume bool
	)
	gf.register(fs, 500*time.Millisecond)
	cf.registerFleet(fs, "conn-rate", 1000)
	fs.IntVar(&devices, "c", 1, "number of devices")
	fs.IntVar(&devices, "devices", 1, "number of devices (same as -c)")
	fs.IntVar(&c.cfg.Rounds, "rounds", 1, "rounds: every device back on plain, then one secure command to each")
	fs.Float64Var(&c.cfg.Rate, "rate", 0, "commands per second within a round (0: all at once)")
	fs.IntVar(&c.cfg.Concurrency, "concurrency", 256, "API requests in flight (the gateway stores commands in batches: more in flight, more per batch)")
	fs.IntVar(&c.cfg.PayloadSize, "payload", 100, "command payload size in bytes")
	fs.StringVar(&c.cfg.Kex, "kex", "", "the devices' key exchange: x25519, p256, ... (default: Go's, X25519MLKEM768 first)")
	fs.BoolVar(&noResume, "no-resume", false, "devices do not resume their TLS sessions")
	fs.DurationVar(&c.cfg.RoundTimeout, "round-timeout", time.Minute, "longest wait for a round's acknowledgements")
	fs.DurationVar(&c.cfg.PlainTimeout, "plain-timeout", 2*time.Minute, "longest wait for every device back on plain before a round")
	fs.StringVar(&c.cfg.OutDir, "out", "", "directory for report.md, report.json, latency.png and tls-sessions.png")
	fs.DurationVar(&c.maxDuration, "max-duration", time.Hour, "bound on the whole run")
	if err := parseFlags(fs, args); err != nil {
		return c, err
	}
	explicit := setFlags(fs)
	version, err := parseMQTT(cf.mqtt)
	if err != nil {
		return c, usageError{err}
	}
	// A started gateway keeps its quiet period short and fixed, so that
	// rounds follow each other quickly.
	if c.cfg.Gateway, err = gf.target(explicit, true); err != nil {
		return c, usageError{err}
	}
	if c.cfg.Fleet, err = cf.fleetSpec(version, "--conn-rate"); err != nil {
		return c, usageError{err}
	}
	c.cfg.Fleet.Count = devices
	c.cfg.Resume = !noResume
	c.logLevel = cf.logLevel
	switch {
	case devices < 1:
		return c, usageError{fmt.Errorf("-c %d: want at least 1", devices)}
	case c.cfg.Rounds < 1 || c.cfg.Rounds > 100000:
		return c, usageError{fmt.Errorf("--rounds %d: want 1..100000", c.cfg.Rounds)}
	case c.cfg.Rate < 0:
		return c, usageError{fmt.Errorf("--rate %v: want 0 or more", c.cfg.Rate)}
	case c.cfg.Concurrency < 1:
		return c, usageError{fmt.Errorf("--concurrency %d: want at least 1", c.cfg.Concurrency)}
	case c.cfg.PayloadSize < 48 || c.cfg.PayloadSize > 64<<10:
		return c, usageError{fmt.Errorf("--payload %d: want 48..65536 bytes (the stamp takes 48)", c.cfg.PayloadSize)}
	case c.maxDuration <= 0:
		return c, usageError{fmt.Errorf("--max-duration %v: want more than 0", c.maxDuration)}
	}
	if _, err := bench.ParseCurves(c.cfg.Kex); err != nil {
		return c, usageError{err}
	}
	return c, nil
}

func runUpgrade(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseUpgrade(args, stderr)
	if err != nil {
		return err
	}
	c.cfg.Progress, c.cfg.Terminal = stdout, isTerminal(stdout)
	return withFleet(c.logLevel, &c.cfg.Fleet, stderr, func(log *zap.Logger) error {
		ctx, cancel := context.WithTimeout(ctx, c.maxDuration)
		defer cancel()
		_, err := bench.RunUpgrade(ctx, c.cfg, stdout, log)
		return err
	})
}
