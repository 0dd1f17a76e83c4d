// Command dualgate is the dualgate MQTT gateway.
//
//	dualgate serve [flags]                      run the gateway
//	dualgate certs init --dir DIR --hosts h1,h2 write a development CA, server and client certificates
//	dualgate certs client --dir DIR ID [ID...]  issue device certificates DIR/ID.pem, DIR/ID-key.pem from DIR's CA
//	dualgate store check [--data DIR]           report the health of the command store
//	dualgate version                            print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/gateway"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "certs":
		return certsCmd(args[1:], stdout, stderr)
	case "demo":
		// The demo links the device SDK and the bench; the gateway does not.
		fmt.Fprintln(stderr, "dualgate: the demo is its own command now: go run ./cmd/dualdemo (or build it: go build -o bin/ ./cmd/dualgate ./cmd/dualdemo && bin/dualdemo)")
		return 2
	case "store":
		return storeCmd(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "dualgate", version)
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "dualgate: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  dualgate serve [flags]                       run the gateway (dualgate serve -h lists the flags)
  dualgate certs init --dir DIR --hosts h1,h2  write a development CA, server and client certificates
  dualgate certs client --dir DIR ID [ID...]   issue device certificates DIR/ID.pem and DIR/ID-key.pem from DIR's CA
  dualgate store check [--data DIR]            report the health of the command store (pending commands)
  dualgate version                             print the version
`)
}

func serve(args []string, stderr io.Writer) int {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fmt.Fprintln(stderr, "usage: dualgate serve [flags]; every flag is also a YAML key (--config) and an env var DUALGATE_<FLAG>")
			gateway.Usage(os.Stderr)
			return 0
		}
	}
	cfg, err := gateway.LoadConfig(args, os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, "dualgate serve:", err)
		return 2
	}
	logger, err := newLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(stderr, "dualgate serve:", err)
		return 2
	}
	defer func() { _ = logger.Sync() }()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cfg.GCPercent)
	}

	g, err := gateway.New(cfg, gateway.Options{Logger: logger})
	if err != nil {
		logger.Error("cannot configure the gateway", zap.Error(err))
		return 1
	}
	// Signals are taken before the listeners open: a SIGHUP sent as soon
	// as /readyz answers must reload, not end the process.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := g.Start(); err != nil {
		logger.Error("cannot start the gateway", zap.Error(err))
		return 1
	}
	var sig os.Signal
	for sig == nil || sig == syscall.SIGHUP {
		if sig == syscall.SIGHUP {
			_ = g.ReloadCertificates()
			_ = g.ReloadACL()
		}
		select {
		case sig = <-sigs:
		case <-g.Failed():
			// A listener stopped for good: exit non-zero so that the
			// supervisor restarts the gateway.
			signal.Stop(sigs)
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			_ = g.Shutdown(ctx)
			logger.Error("stopped after a failure", zap.Error(g.Err()))
			return 1
		}
	}
	logger.Info("stopping", zap.String("signal", sig.String()))
	if sig == syscall.SIGTERM {
		// A load balancer's stop: move the devices off gradually first.
		dctx, dcancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		if err := g.Drain(dctx); err != nil {
			logger.Warn("drain ended before every device left", zap.Error(err))
		}
		dcancel()
	}
	signal.Stop(sigs)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		logger.Error("shutdown", zap.Error(err))
		return 1
	}
	logger.Info("stopped")
	return 0
}

// newLogger builds the zap logger: console for people, JSON for machines,
// sampled so that a flood of identical lines (a storm of bad connections)
// cannot drown the log or the CPU.
func newLogger(format, level string) (*zap.Logger, error) {
	var zc zap.Config
	if format == "json" {
		zc = zap.NewProductionConfig()
	} else {
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
		zc.DisableStacktrace = true
		zc.EncoderConfig.EncodeTime = zapcore.TimeEncoderOfLayout(time.RFC3339)
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = &zap.SamplingConfig{Initial: 20, Thereafter: 100}
	return zc.Build()
}

const certsUsage = `usage:
  dualgate certs init --dir DIR --hosts h1,h2 [--client-id ID] [--force]
  dualgate certs client --dir DIR [--force] ID [ID...]`

func certsCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "client" {
		return certsClient(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprintln(stderr, certsUsage)
		return 2
	}
	fs := flag.NewFlagSet("certs init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "./dualgate-certs", "directory to write the PEM files into")
	hosts := fs.String("hosts", "localhost,127.0.0.1,::1", "comma-separated host names and IP addresses for the server certificate")
	clientID := fs.String("client-id", "", "client id named by the client certificate (default: dev-client)")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var opts []certs.Option
	if *clientID != "" {
		opts = append(opts, certs.WithClientID(*clientID))
	}
	if *force {
		opts = append(opts, certs.WithOverwrite())
	}
	var hs []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	p, err := certs.Init(*dir, hs, opts...)
	if err != nil {
		fmt.Fprintln(stderr, "dualgate certs init:", err)
		return 1
	}
	fmt.Fprintf(stdout, "CA:                 %s\nserver certificate: %s\nserver key:         %s\nclient certificate: %s\nclient key:         %s\n",
		p.CA, p.Server, p.ServerKey, p.Client, p.ClientKey)
	return 0
}

// certsClient issues device certificates from the CA in --dir: the files a
// device presents on TLS so that the gateway's default --secure-identity
// cert lets its secure commands through.
func certsClient(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("certs client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "./dualgate-certs", "directory holding ca.pem and ca-key.pem (a gateway's is <data>/certs); the certificates are written there")
	force := fs.Bool("force", false, "replace existing certificates")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ids := fs.Args()
	if len(ids) == 0 {
		fmt.Fprintln(stderr, "dualgate certs client: give at least one client id")
		fmt.Fprintln(stderr, certsUsage)
		return 2
	}
	for _, id := range ids {
		if strings.HasPrefix(id, "-") {
			fmt.Fprintf(stderr, "dualgate certs client: flag %s after the client ids: give flags first\n", id)
			return 2
		}
	}
	var opts []certs.Option
	if *force {
		opts = append(opts, certs.WithOverwrite())
	}
	files, err := certs.IssueClients(*dir, ids, opts...)
	if err != nil {
		fmt.Fprintln(stderr, "dualgate certs client:", err)
		return 1
	}
	for i, f := range files {
		_, key := certs.ClientFiles(*dir, ids[i])
		fmt.Fprintf(stdout, "%s: certificate %s, key %s\n", ids[i], f, key)
	}
	return 0
}
