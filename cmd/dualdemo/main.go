// Command dualdemo runs a dualgate gateway on temporary loopback ports, a
// handful of devices built on the device SDK, sends them commands through
// the HTTP API, prints the timeline of the on-demand TLS cycle, measures
// the gateway's memory per idle connection by mode, and cleans up. It
// lives apart from dualgate so that the gateway binary links neither the
// SDK nor the bench.
//
//	go build -o bin/ ./cmd/dualgate ./cmd/dualdemo && bin/dualdemo
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/bench"
	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/device"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run starts a gateway on temporary loopback ports, a handful of SDK
// devices, sends them commands through the HTTP API, prints the timeline,
// measures the gateway's memory per idle connection by mode, and cleans up.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dualdemo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: dualdemo [flags]

Runs a dualgate gateway and a few SDK devices through the on-demand TLS
cycle on loopback ports, prints every transition, then measures the
gateway's memory per idle connection by mode. Takes 10-20 s.
The gateway is the dualgate executable next to dualdemo, else on PATH,
else built with "go build" when run inside the source tree.

example: go build -o bin/ ./cmd/dualgate ./cmd/dualdemo && bin/dualdemo

flags:
`)
		fs.PrintDefaults()
	}
	gw := fs.String("dualgate", "", "the dualgate executable (default: next to dualdemo, on PATH, or built from source)")
	idlePlain := fs.Int("idle-plain", 2000, "idle plain connections opened to measure memory per connection")
	idleTLS := fs.Int("idle-tls", 200, "idle TLS connections opened to measure memory per connection")
	quiet := fs.Duration("secure-idle", 2*time.Second, "the gateway's quiet period before a TLS device goes back to plain")
	limit := fs.Duration("timeout", 60*time.Second, "longest the demo may run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	d := &demoRun{out: stdout, start: time.Now(), exe: *gw}
	if err := d.run(ctx, *quiet, *idlePlain, *idleTLS); err != nil {
		fmt.Fprintln(stderr, "dualdemo:", err)
		return 1
	}
	return 0
}

type demoRun struct {
	out   io.Writer
	start time.Time
	mu    sync.Mutex // serializes output lines

	exe        string // the dualgate executable
	dir        string
	plain, tls string
	api        string
	gw         *exec.Cmd
}

func (d *demoRun) say(who, format string, a ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "%7.3fs  %-8s %s\n", time.Since(d.start).Seconds(), who, fmt.Sprintf(format, a...))
}

func (d *demoRun) run(ctx context.Context, quiet time.Duration, idlePlain, idleTLS int) error {
	dir, err := os.MkdirTemp("", "dualgate-demo-")
	if err != nil {
		return err
	}
	d.dir = dir
	defer os.RemoveAll(dir)
	if err := d.startGateway(ctx, quiet); err != nil {
		return err
	}
	defer d.stopGateway()

	devs, err := d.startDevices(ctx)
	for _, dv := range devs {
		defer dv.Stop()
	}
	if err != nil {
		return err
	}

	type order struct{ client, name, payload string }
	commands := []struct {
		order
		secure bool
	}{
		{order{"meter-1", "read", "report-now"}, false},
		{order{"car-2", "unlock", "door=driver"}, true},
		{order{"car-3", "trunk", "open"}, true},
		{order{"lock-4", "code", "rotate"}, true},
		{order{"lock-4", "code", "confirm"}, true},
	}
	var ids []string
	for _, c := range commands {
		id, status, err := d.post(ctx, c.client, c.name, c.payload, c.secure)
		if err != nil {
			return err
		}
		kind := "secure"
		if !c.secure {
			kind = "plain"
		}
		d.say("api", "%s command %s for %s -> %s", kind, id[len(id)-6:], c.client, status)
		ids = append(ids, id)
	}
	for _, id := range ids {
		v, err := d.waitDelivered(ctx, id)
		if err != nil {
			return err
		}
		d.say("api", "command %s for %s delivered in %s", id[len(id)-6:], v.ClientID, v.DeliveredAt.Sub(v.CreatedAt).Round(time.Millisecond))
	}
	d.say("gateway", "waiting for the quiet period (%s) to send the TLS devices back to plain", quiet)
	for _, dv := range devs {
		for dv.Mode() != device.ModePlain {
			select {
			case <-ctx.Done():
				return fmt.Errorf("devices did not return to plain: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	d.say("gateway", "every device is back on plain")
	return d.measure(ctx, idlePlain, idleTLS)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startGateway runs `dualgate serve` as a child, so its memory is its own.
func (d *demoRun) startGateway(ctx context.Context, quiet time.Duration) error {
	var err error
	for _, p := range []*string{&d.plain, &d.tls, &d.api} {
		if *p, err = freeAddr(); err != nil {
			return err
		}
	}
	if d.exe == "" {
		if d.exe, err = findGateway(ctx, d.dir); err != nil {
			return err
		}
	}
	d.gw = exec.Command(d.exe, "serve", "--plain", d.plain, "--tls", d.tls, "--api", d.api, "--data", d.dir,
		"--secure-idle", quiet.String(), "--secure-idle-fixed", "--log-level", "error")
	d.gw.Stderr = os.Stderr
	if err := d.gw.Start(); err != nil {
		return err
	}
	for {
		resp, err := http.Get("http://" + d.api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway did not start: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	d.say("gateway", "pid %d: plain %s, tls %s, api %s, data %s", d.gw.Process.Pid, d.plain, d.tls, d.api, d.dir)
	return nil
}

func (d *demoRun) stopGateway() {
	_ = d.gw.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = d.gw.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = d.gw.Process.Kill()
		<-done
	}
}

func (d *demoRun) startDevices(ctx context.Context) ([]*device.Device, error) {
	specs := []struct {
		id      string
		version byte
	}{{"meter-1", 4}, {"car-2", 4}, {"car-3", 5}, {"lock-4", 5}}
	// Each device proves its client id on TLS with a certificate from the
	// gateway's CA, as `dualgate certs client --dir <data>/certs ID...`
	// issues them: the gateway writes secure commands only to a device
	// that did (--secure-identity cert).
	certDir := filepath.Join(d.dir, "certs")
	ids := make([]string, len(specs))
	for i, spec := range specs {
		ids[i] = spec.id
	}
	if _, err := certs.IssueClients(certDir, ids); err != nil {
		return nil, err
	}
	d.say("certs", "issued device certificates for %s in %s", strings.Join(ids, ", "), certDir)
	var devs []*device.Device
	for _, spec := range specs {
		id := spec.id
		certFile, keyFile := certs.ClientFiles(certDir, id)
		dv, err := device.New(device.Config{
			ClientID:  id,
			PlainAddr: d.plain,
			TLSAddr:   d.tls,
			CAFile:    filepath.Join(certDir, certs.CAFile),
			CertFile:  certFile,
			KeyFile:   keyFile,
			Version:   spec.version,
			OnCommand: func(c device.Command) {
				over := "plain"
				if c.OverTLS {
					over = "TLS"
				}
				d.say(id, "command %s %q over %s", c.Topic, c.Payload, over)
			},
			OnModeChange: func(from, to device.Mode, reason string) {
				d.say(id, "%s -> %s (%s)", from, to, reason)
			},
		})
		if err != nil {
			return devs, err
		}
		if err := dv.Start(ctx); err != nil {
			return devs, fmt.Errorf("%s: %w", id, err)
		}
		devs = append(devs, dv)
		d.say(id, "connected over plain (MQTT %s)", map[byte]string{4: "3.1.1", 5: "5.0"}[spec.version])
	}
	return devs, nil
}

func (d *demoRun) post(ctx context.Context, client, name, payload string, secure bool) (string, string, error) {
	body := fmt.Sprintf(`{"topic":"devices/%s/commands/%s","payload":%q,"secure":%v,"ttl_seconds":60}`, client, name, payload, secure)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+d.api+"/v1/clients/"+client+"/commands", strings.NewReader(body))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	var out struct{ ID, Status, Error string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", "", fmt.Errorf("POST command: %d %s", resp.StatusCode, out.Error)
	}
	return out.ID, out.Status, nil
}

type demoCommand struct {
	ClientID    string    `json:"client_id"`
	Status      string    `json:"status"`
	CreatedAt   time.Time `json:"created_at"`
	DeliveredAt time.Time `json:"delivered_at"`
}

func (d *demoRun) waitDelivered(ctx context.Context, id string) (demoCommand, error) {
	for {
		var v demoCommand
		resp, err := http.Get("http://" + d.api + "/v1/commands/" + id)
		if err != nil {
			return v, err
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil {
			return v, err
		}
		if v.Status == "delivered" {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("command %s still %s: %w", id, v.Status, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// measure opens idle connections of each mode and reads the gateway's RSS
// before and after, as dualbench mem does at scale.
func (d *demoRun) measure(ctx context.Context, nPlain, nTLS int) error {
	pem, err := os.ReadFile(filepath.Join(d.dir, "certs", "ca.pem"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	proc := bench.ProcFS{}
	pid := d.gw.Process.Pid
	settle := bench.DefaultSettle()
	settle.Interval, settle.Timeout = 300*time.Millisecond, 10*time.Second
	rss := func() (int64, error) {
		m, err := proc.ReadMem(pid)
		return m.RSS, err
	}
	perConn := map[string]float64{}
	for _, m := range []struct {
		name string
		n    int
		addr string
		tls  *tls.Config
	}{
		{"plain", nPlain, d.plain, nil},
		{"tls", nTLS, d.tls, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}},
	} {
		if m.n <= 0 {
			continue
		}
		before, _, err := bench.WaitSettled(ctx, settle, rss)
		if err != nil {
			return err
		}
		pool, err := bench.NewPool(bench.ClientConfig{Addr: m.addr, KeepAlive: time.Minute, ClientIDPrefix: "idle-" + m.name + "-", TLS: m.tls}, zap.NewNop())
		if err != nil {
			return err
		}
		err = pool.Connect(ctx, 0, m.n)
		if err == nil {
			var after int64
			if after, _, err = bench.WaitSettled(ctx, settle, rss); err == nil {
				perConn[m.name] = float64(after-before) / float64(m.n) / 1024
				d.say("gateway", "%d idle %s connections: RSS %.1f -> %.1f MiB, %.2f KiB each",
					m.n, m.name, float64(before)/(1<<20), float64(after)/(1<<20), perConn[m.name])
			}
		}
		_ = pool.Close(ctx)
		if err != nil {
			return err
		}
	}
	if perConn["plain"] > 0 && perConn["tls"] > 0 {
		d.say("gateway", "memory per idle connection: plain %.2f KiB, tls %.2f KiB (%.0fx); dualbench mem measures it at scale",
			perConn["plain"], perConn["tls"], perConn["tls"]/perConn["plain"])
	}
	return nil
}

// findGateway returns the dualgate executable next to this one or on
// PATH; failing both, it builds one into dir with the go command (for
// "go run ./cmd/dualdemo" in the source tree).
func findGateway(ctx context.Context, dir string) (string, error) {
	if p, err := bench.FindDualgate(); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "", errors.New("no dualgate executable next to dualdemo nor on PATH, and no go command to build one: give --dualgate")
	}
	p := filepath.Join(dir, "dualgate")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", p, "github.com/dualgate/dualgate/cmd/dualgate").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("no dualgate executable next to dualdemo nor on PATH, and building one failed (run inside the source tree or give --dualgate): %v\n%s", err, out)
	}
	return p, nil
}
