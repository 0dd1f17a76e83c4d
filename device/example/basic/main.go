// Command basic is a dualgate device: it idles on plain TCP, prints every
// command the gateway delivers, moves to TLS and back as the gateway
// instructs, and publishes a telemetry reading now and then.
//
// Against a gateway started with `go run ./cmd/dualgate serve` in the
// repository root (it writes its development CA to
// ./dualgate-data/certs/ca.pem), issue the device its certificate from
// that CA, which it presents on TLS to prove its client id (the gateway's
// default --secure-identity cert), and run it:
//
//	go run ./cmd/dualgate certs client --dir dualgate-data/certs car-0042
//	go run ./device/example/basic -id car-0042
//
// Without -cert and -key it uses <ID>.pem and <ID>-key.pem next to the CA
// file when they exist.
//
// then send it a secure command:
//
//	curl -d '{"topic":"devices/car-0042/commands/unlock","payload":"open"}' \
//	     http://127.0.0.1:8080/v1/clients/car-0042/commands
package main

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dualgate/dualgate/device"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "basic:", err)
		os.Exit(1)
	}
}

// run runs the device until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("basic", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		id        = fs.String("id", "car-0042", "client id")
		plain     = fs.String("plain", "127.0.0.1:1883", "gateway plain endpoint host:port")
		tlsAddr   = fs.String("tls", "127.0.0.1:8883", "gateway TLS endpoint host:port")
		ca        = fs.String("ca", "dualgate-data/certs/ca.pem", "CA file to trust (the gateway's development CA by default)")
		cert      = fs.String("cert", "", "client certificate file naming the client id (default: <ID>.pem next to the CA file, when there)")
		key       = fs.String("key", "", "client key file (default: <ID>-key.pem next to the CA file, when there)")
		secret    = fs.String("secret", "", "device secret in hex, for gateways run with --auth token")
		version   = fs.Uint("version", 4, "MQTT version: 4 (3.1.1) or 5")
		curves    = fs.String("curves", "", "TLS key exchange: empty for Go's default (post-quantum hybrid), or x25519 (about 2.3 KB less per full handshake)")
		interval  = fs.Duration("interval", time.Minute, "time between telemetry readings (0: none)")
		keepAlive = fs.Duration("keepalive", time.Minute, "MQTT keepalive")
		verbose   = fs.Bool("v", false, "log the SDK's debug messages")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version != 4 && *version != 5 {
		return fmt.Errorf("-version %d: want 4 or 5", *version)
	}
	if *cert == "" && *key == "" {
		*cert, *key = deviceCertFiles(*ca, *id)
	}
	cfg := device.Config{
		ClientID:  *id,
		PlainAddr: *plain,
		TLSAddr:   *tlsAddr,
		CAFile:    *ca,
		CertFile:  *cert,
		KeyFile:   *key,
		Version:   byte(*version),
		KeepAlive: *keepAlive,
	}
	if *secret != "" {
		b, err := hex.DecodeString(*secret)
		if err != nil {
			return fmt.Errorf("-secret: %w", err)
		}
		cfg.Secret = b
	}
	switch strings.ToLower(*curves) {
	case "":
	case "x25519":
		cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	default:
		return fmt.Errorf("-curves %q: want empty or x25519", *curves)
	}
	logger := newLogger(stderr, *verbose)
	defer func() { _ = logger.Sync() }()
	cfg.Logger = logger

	if cfg.CertFile == "" {
		logger.Warn("no client certificate: the gateway sends secure commands only to a device that proves its client id; "+
			"issue one with `dualgate certs client --dir DIR ID` from the gateway's CA", zap.String("client", *id))
	}

	var mu sync.Mutex // one line at a time on stdout
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, format+"\n", a...)
	}
	cfg.OnCommand = func(c device.Command) {
		transport := "plain"
		if c.OverTLS {
			transport = "tls"
		}
		say("command %s %q over %s", c.Topic, c.Payload, transport)
	}
	cfg.OnModeChange = func(from, to device.Mode, reason string) {
		say("mode %s -> %s (%s)", from, to, reason)
	}
	cfg.OnEvent = func(ev device.Event) {
		switch ev.Kind {
		case device.EventDowngradeIgnored:
			say("ignored an instruction to use plain that came over plain (addr %q)", ev.Addr)
		case device.EventConnected:
			if ev.TLS != nil {
				say("connected to %s over tls (resumed %v, key exchange %s)", ev.Addr, ev.TLS.DidResume, ev.TLS.CurveID)
			} else {
				say("connected to %s over plain", ev.Addr)
			}
		}
	}

	d, err := device.New(cfg)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop()

	var tick <-chan time.Time
	if *interval > 0 {
		t := time.NewTicker(*interval)
		defer t.Stop()
		tick = t.C
	}
	for reading := 1; ; reading++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := d.Publish(pctx, "devices/"+*id+"/telemetry", fmt.Appendf(nil, `{"reading":%d}`, reading), 1)
		cancel()
		if err != nil && !errors.Is(err, context.Canceled) {
			logger.Warn("telemetry not sent", zap.Error(err))
		}
	}
}

// deviceCertFiles returns the certificate and key of id that `dualgate
// certs client` writes next to the CA file, or empty names when they are
// not there.
func deviceCertFiles(caFile, id string) (cert, key string) {
	dir := filepath.Dir(caFile)
	cert, key = filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem")
	if _, err := os.Stat(cert); err != nil {
		return "", ""
	}
	if _, err := os.Stat(key); err != nil {
		return "", ""
	}
	return cert, key
}

// newLogger logs in the console format to w, at debug level when verbose.
func newLogger(w io.Writer, verbose bool) *zap.Logger {
	level := zapcore.InfoLevel
	if verbose {
		level = zapcore.DebugLevel
	}
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), level))
}
