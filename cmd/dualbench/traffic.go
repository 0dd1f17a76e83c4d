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

// trafficCmd is `dualbench traffic`, parsed.
type trafficCmd struct {
	cfg         bench.TrafficConfig
	logLevel    string
	maxDuration time.Duration
}

// parseTraffic parses the flags of `dualbench traffic`.
func parseTraffic(args []string, stderr io.Writer) (trafficCmd, error) {
	fs := flag.NewFlagSet("dualbench traffic", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describe(fs, "traffic")
	var (
		c         trafficCmd
		gf        gatewayFlags
		versions  string
		kex       string
		days      string
		keepalive int
	)
	gf.register(fs, 3*time.Second)
	fs.StringVar(&versions, "mqtt", "4,5", "MQTT versions to measure, comma-separated: 4 (3.1.1), 5")
	fs.StringVar(&kex, "kex", "default,x25519", "device key exchanges to compare: default (Go's, X25519MLKEM768 first), x25519, p256, or curves joined with +")
	fs.StringVar(&c.cfg.TLSVersion, "tls-version", "", "pin the device's TLS version: 1.2 or 1.3 (default 1.3 only, as the device SDK)")
	fs.IntVar(&keepalive, "keepalive", 60, "the device's MQTT keepalive in seconds")
	fs.StringVar(&days, "day-keepalives", "60,300", "keepalives in seconds to compute bytes per day and break-even for")
	fs.IntVar(&c.cfg.Cycles, "cycles", 5, "keepalive cycles averaged")
	fs.IntVar(&c.cfg.PayloadSize, "payload", 100, "command payload size in bytes")
	fs.DurationVar(&c.cfg.Settle, "settle", 250*time.Millisecond, "wait for the last (delayed) ACKs before reading the counters")
	fs.DurationVar(&c.cfg.CycleWait, "cycle-wait", 2*time.Minute, "longest wait for the gateway to send a TLS device back to plain")
	fs.StringVar(&c.cfg.OutDir, "out", "", "directory for report.md and report.json")
	fs.DurationVar(&c.maxDuration, "max-duration", 15*time.Minute, "bound on the whole run")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	if err := parseFlags(fs, args); err != nil {
		return c, err
	}
	explicit := setFlags(fs)
	var err error
	if c.cfg.Gateway, err = gf.target(explicit, false); err != nil {
		return c, usageError{err}
	}
	if c.cfg.MQTTVersions, err = parseVersions(versions); err != nil {
		return c, usageError{err}
	}
	if c.cfg.Kex, err = parseKex(kex); err != nil {
		return c, usageError{err}
	}
	if keepalive < 1 || keepalive > 65535 {
		return c, usageError{fmt.Errorf("--keepalive %d: want 1..65535 seconds", keepalive)}
	}
	c.cfg.KeepAlive = time.Duration(keepalive) * time.Second
	sizes, err := parseCounts("--day-keepalives", "keepalive", days)
	if err != nil {
		return c, usageError{err}
	}
	for _, s := range sizes {
		c.cfg.DayKeepAlives = append(c.cfg.DayKeepAlives, time.Duration(s)*time.Second)
	}
	if c.cfg.Cycles < 1 || c.cfg.Cycles > 1000 {
		return c, usageError{fmt.Errorf("--cycles %d: want 1..1000", c.cfg.Cycles)}
	}
	if c.cfg.PayloadSize < 1 || c.cfg.PayloadSize > 64<<10 {
		return c, usageError{fmt.Errorf("--payload %d: want 1..65536 bytes", c.cfg.PayloadSize)}
	}
	if c.maxDuration <= 0 {
		return c, usageError{fmt.Errorf("--max-duration %v: want more than 0", c.maxDuration)}
	}
	return c, nil
}

func runTraffic(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseTraffic(args, stderr)
	if err != nil {
		return err
	}
	return withLogger(c.logLevel, stderr, func(log *zap.Logger) error {
		ctx, cancel := context.WithTimeout(ctx, c.maxDuration)
		defer cancel()
		c.cfg.Progress = stdout
		_, err = bench.RunTraffic(ctx, c.cfg, stdout, log)
		return err
	})
}
