package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/bench"
)

// pubCmd is `dualbench pub`, parsed.
type pubCmd struct {
	cfg         bench.PubConfig
	logLevel    string
	maxDuration time.Duration
	// spawn, when set, is the dualgate started for the run; the
	// publishers connect to it.
	spawn *bench.DualgateConfig
	// subToGateway: the subscriber connects to the started gateway
	// (local routing, no --upstream).
	subToGateway bool
}

// parsePub parses the flags of `dualbench pub`.
func parsePub(args []string, stderr io.Writer) (pubCmd, error) {
	fs := flag.NewFlagSet("dualbench pub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describe(fs, "pub")
	var (
		c                        pubCmd
		host, port, subHost, sub string
		mqtt                     string
		qos                      int
		through                  bool
		upstream, dualgate       string
		gatewayArgs              listFlag
	)
	fs.StringVar(&host, "host", "127.0.0.1", "server the publishers connect to (any MQTT server)")
	fs.StringVar(&port, "port", "1883", "its port")
	fs.StringVar(&subHost, "sub-host", "", "server the subscriber connects to (default: --host, or the --upstream broker)")
	fs.StringVar(&sub, "sub-port", "", "its port (default: --port, or the --upstream broker's)")
	fs.BoolVar(&through, "through-dualgate", false, "start a dualgate for the run and publish through it (--host and --port unused)")
	fs.StringVar(&upstream, "upstream", "", "with --through-dualgate: the gateway's broker, tcp://host:port; the subscriber subscribes there (none: routed by the gateway alone)")
	fs.StringVar(&dualgate, "dualgate", "", "dualgate executable to start (default: next to dualbench, or on PATH)")
	fs.Var(&gatewayArgs, "gateway-arg", "one more flag for the dualgate started (repeatable), e.g. --gateway-arg=--upstream-pool=8")
	fs.IntVar(&c.cfg.Publishers, "c", 4, "publishers (connections)")
	fs.IntVar(&c.cfg.Publishers, "publishers", 4, "publishers (same as -c)")
	fs.IntVar(&c.cfg.Count, "n", 10000, "messages per publisher")
	fs.IntVar(&c.cfg.Count, "count", 10000, "messages per publisher (same as -n)")
	fs.Float64Var(&c.cfg.Rate, "rate", 0, "messages per second per publisher (0: as fast as the server takes them)")
	fs.IntVar(&qos, "qos", 1, "QoS of the publishes and the subscription: 0, 1 or 2")
	fs.IntVar(&c.cfg.PayloadSize, "payload", 64, "payload size in bytes (at least 16: the send time and sequence)")
	fs.StringVar(&c.cfg.Topic, "topic", "dualbench/pub/{i}", "publishers' topic, {i} standing for the publisher's index")
	fs.StringVar(&c.cfg.SubTopic, "sub-topic", "dualbench/pub/#", "subscriber's filter (a gateway's --upstream-prefix goes in front)")
	fs.StringVar(&mqtt, "mqtt", "4", "MQTT version: 4 (3.1.1) or 5")
	fs.IntVar(&c.cfg.InFlight, "inflight", 64, "unacknowledged QoS 1/2 messages per publisher (an MQTT 5 server's Receive Maximum lowers it)")
	fs.BoolVar(&c.cfg.WriteEach, "write-each", false, "a system call per packet, as the tool wrote before it coalesced (by default what may leave at once leaves in one write)")
	fs.DurationVar(&c.cfg.Drain, "drain", 5*time.Second, "longest wait for the last messages once the publishers are done")
	fs.StringVar(&c.cfg.Label, "label", "", "name of the path in the report, e.g. \"dualgate -> mosquitto\"")
	fs.StringVar(&c.cfg.OutDir, "out", "", "directory for report.md, report.json and latency.png")
	fs.DurationVar(&c.maxDuration, "max-duration", 2*time.Minute, "bound on the whole run")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	if err := parseFlags(fs, args); err != nil {
		return c, err
	}
	explicit := setFlags(fs)
	v, err := parseMQTT(mqtt)
	if err != nil {
		return c, usageError{err}
	}
	c.cfg.MQTTVersion = byte(v)
	if qos < 0 || qos > 2 {
		return c, usageError{fmt.Errorf("--qos %d: want 0, 1 or 2", qos)}
	}
	c.cfg.QoS = byte(qos)
	if c.cfg.Publishers < 1 || c.cfg.Count < 1 {
		return c, usageError{fmt.Errorf("-c %d -n %d: want at least 1 of each", c.cfg.Publishers, c.cfg.Count)}
	}
	if c.cfg.Rate < 0 {
		return c, usageError{fmt.Errorf("--rate %v: want 0 or more", c.cfg.Rate)}
	}
	if c.cfg.PayloadSize < 16 || c.cfg.PayloadSize > 1<<20 {
		return c, usageError{fmt.Errorf("--payload %d: want 16..1048576 bytes", c.cfg.PayloadSize)}
	}
	if c.maxDuration <= 0 {
		return c, usageError{fmt.Errorf("--max-duration %v: want more than 0", c.maxDuration)}
	}
	c.cfg.PubAddr = net.JoinHostPort(host, port)
	if !through {
		for _, name := range []string{"upstream", "dualgate", "gateway-arg"} {
			if explicit[name] {
				return c, usageError{fmt.Errorf("--%s goes with --through-dualgate", name)}
			}
		}
		c.cfg.SubAddr = net.JoinHostPort(pick(subHost, host), pick(sub, port))
		return c, nil
	}
	for _, name := range []string{"host", "port"} {
		if explicit[name] {
			return c, usageError{fmt.Errorf("--%s: the publishers connect to the dualgate started (--through-dualgate)", name)}
		}
	}
	bin := dualgate
	if bin == "" {
		if bin, err = bench.FindDualgate(); err != nil {
			return c, usageError{err}
		}
	}
	c.spawn = &bench.DualgateConfig{Binary: bin, Args: gatewayArgs}
	if upstream == "" {
		c.subToGateway = subHost == "" && sub == ""
		if !c.subToGateway {
			c.cfg.SubAddr = net.JoinHostPort(pick(subHost, "127.0.0.1"), pick(sub, "1883"))
		}
		if c.cfg.Label == "" {
			c.cfg.Label = "dualgate"
		}
		return c, nil
	}
	u, err := url.Parse(upstream)
	if err != nil || u.Scheme != "tcp" || u.Host == "" {
		return c, usageError{fmt.Errorf("--upstream %q: want tcp://host:port", upstream)}
	}
	bh, bp, err := net.SplitHostPort(u.Host)
	if err != nil {
		return c, usageError{fmt.Errorf("--upstream %q: %w", upstream, err)}
	}
	c.spawn.Args = append([]string{"--upstream", upstream}, c.spawn.Args...)
	c.cfg.SubAddr = net.JoinHostPort(pick(subHost, bh), pick(sub, bp))
	if c.cfg.Label == "" {
		c.cfg.Label = "dualgate -> " + u.Host
	}
	return c, nil
}

// pick returns v, or def when v is empty.
func pick(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func runPub(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parsePub(args, stderr)
	if err != nil {
		return err
	}
	return withLogger(c.logLevel, stderr, func(log *zap.Logger) error {
		ctx, cancel := context.WithTimeout(ctx, c.maxDuration)
		defer cancel()
		if c.spawn != nil {
			g, err := bench.StartDualgate(ctx, *c.spawn)
			if err != nil {
				return err
			}
			defer func() {
				if err := g.Stop(10 * time.Second); err != nil {
					log.Warn("stop dualgate", zap.Error(err))
				}
			}()
			c.cfg.PubAddr = g.Plain
			if c.subToGateway {
				c.cfg.SubAddr = g.Plain
			}
			fmt.Fprintf(stdout, "dualgate pid %d on %s\n", g.PID(), g.Plain)
		}
		c.cfg.Progress = stdout
		rep, err := bench.RunPub(ctx, c.cfg, stdout, log)
		if err != nil {
			return err
		}
		if !rep.Complete {
			return fmt.Errorf("incomplete run: %s", rep.StoppedBy)
		}
		return nil
	})
}
