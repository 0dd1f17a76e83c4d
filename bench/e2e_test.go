package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/internal/testutil"
)

// fastSettle keeps the end-to-end tests short: 3 samples 200 ms apart.
func fastSettle() SettleConfig {
	return SettleConfig{Interval: 200 * time.Millisecond, Samples: 3, Tolerance: 0.01, Timeout: 5 * time.Second}
}

func TestRunConnAgainstMosquitto(t *testing.T) {
	addr, _ := startMosquitto(t, nil)
	tests := []struct {
		name    string
		version int
	}{
		{name: "MQTT 3.1.1", version: 4},
		{name: "MQTT 5", version: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := testFleet(addr, 200, 2)
			fc.Client.MQTTVersion = tt.version
			fc.Client.KeepAlive = 2 * time.Second
			fc.Client.Rate = 2000
			fc.Client.ClientIDPrefix = fmt.Sprintf("conn-%d-", tt.version)
			var out, progress strings.Builder
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := RunConn(ctx, ConnConfig{Fleet: fc, Hold: 2500 * time.Millisecond, Progress: &progress}, &out, zap.NewNop())
			if err != nil {
				t.Fatalf("RunConn: %v\n%s", err, out.String())
			}
			s := res.Result.Stats
			if res.Result.Workers != 2 || s.Attempted != 200 || s.Connected != 200 || s.Failed != 0 || s.Dropped != 0 || s.Live != 0 {
				t.Fatalf("result = %+v", res.Result)
			}
			if res.Ramp.Connected != 200 || res.Ramp.Live != 200 {
				t.Fatalf("ramp = %+v", res.Ramp)
			}
			if res.Result.Connack.Count != 200 || res.Result.Connack.Max <= 0 || res.Result.Connect.Count != 200 {
				t.Fatalf("latency: CONNACK %+v, connect %+v", res.Result.Connack, res.Result.Connect)
			}
			// Keepalive 2 s, held 2.5 s: every connection pinged at least once.
			if s.PingsSent < 200 || s.Pongs < 200 {
				t.Fatalf("pings %d sent, %d answered; want at least 200", s.PingsSent, s.Pongs)
			}
			if res.Held < 2.4 || res.Interrupted {
				t.Fatalf("held %.2f s, interrupted %v", res.Held, res.Interrupted)
			}
			// 200 at 2000/s take about 0.1 s.
			if rate := s.ConnectRate(); rate <= 0 || rate > 3000 {
				t.Fatalf("connect rate %.0f/s with a 2000/s limit", rate)
			}
			text := out.String()
			for _, want := range []string{
				"workers       2", "connected     200 / 200", "failed        0", "connect rate  ",
				"CONNACK       p50 ", "p90 ", "p99 ", "max ", "(n=200)", "dropped       0", "pings         ",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("output lacks %q:\n%s", want, text)
				}
			}
			if !strings.Contains(progress.String(), "connecting    ") {
				t.Errorf("no progress line: %q", progress.String())
			}
		})
	}
}

func TestRunConnStopsOnCancel(t *testing.T) {
	addr, _ := startMosquitto(t, nil)
	fc := testFleet(addr, 40, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		res ConnResult
		err error
	}
	done := make(chan result, 1)
	out := &watchWriter{want: "connected     40 / 40", seen: make(chan struct{})}
	go func() {
		// Hold 0: until cancelled, as Ctrl-C does.
		res, err := RunConn(ctx, ConnConfig{Fleet: fc}, out, zap.NewNop())
		done <- result{res, err}
	}()
	select {
	case <-out.seen:
	case r := <-done:
		t.Fatalf("RunConn returned before the cancel: %+v %v", r.res, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("connections not ready")
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("RunConn did not stop after the cancel")
	}
	if r.err != nil {
		t.Fatalf("RunConn: %v", r.err)
	}
	if !r.res.Interrupted || r.res.Result.Stats.Connected != 40 || r.res.Result.Stats.Live != 0 {
		t.Fatalf("result = %+v", r.res)
	}
	if !strings.Contains(out.String(), "interrupted   yes") {
		t.Fatalf("output does not say interrupted:\n%s", out.String())
	}
}

// watchWriter collects output and closes seen once want appears in it.
type watchWriter struct {
	mu   sync.Mutex // guards buf and done
	buf  strings.Builder
	want string
	seen chan struct{}
	done bool
}

func (w *watchWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	if !w.done && strings.Contains(w.buf.String(), w.want) {
		w.done = true
		close(w.seen)
	}
	return len(b), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestRunMemSpawnedMosquitto(t *testing.T) {
	bin := mosquittoPath(t)
	conf, addr := mosquittoConfig(t, nil)
	dir := t.TempDir()
	cfg := MemConfig{
		Fleet:  testFleet(addr, 0, 2),
		Sizes:  []int{100, 200},
		Spawn:  bin + " -c '" + conf + "'",
		Settle: fastSettle(),
		OutDir: dir,
	}
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	rep, err := RunMem(ctx, cfg, &out, zap.NewNop())
	if err != nil {
		t.Fatalf("RunMem: %v\n%s", err, out.String())
	}
	checkMemReport(t, rep, []int{100, 200})
	if rep.Command == "" || !strings.Contains(rep.Command, conf) {
		t.Fatalf("command = %q", rep.Command)
	}
	// The spawned server is stopped at the end.
	if err := syscall.Kill(rep.PID, 0); err == nil {
		t.Fatalf("spawned server pid %d still running", rep.PID)
	}

	text := out.String()
	for _, want := range []string{"N", "connected", "RSS before", "RSS after", "KiB/conn", "slope ", "KiB/conn", "R² ", "linear: "} {
		if !strings.Contains(text, want) {
			t.Errorf("table lacks %q:\n%s", want, text)
		}
	}

	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var fromFile MemReport
	if err := json.Unmarshal(raw, &fromFile); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	checkMemReport(t, &fromFile, []int{100, 200})
	var generic map[string]any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"target", "pid", "baseline", "points", "fit", "slope_kib_per_conn", "linear", "rss_plus_kernel_fit", "slab_caches"} {
		if _, ok := generic[key]; !ok {
			t.Errorf("report.json lacks %q", key)
		}
	}
	checkPNG(t, filepath.Join(dir, "memory.png"))
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| N | connected |", "| 100 | 100 |", "| 200 | 200 |", "slope ", "linear: ", "with the server's kernel socket memory"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q:\n%s", want, md)
		}
	}
}

// checkMemReport asserts that every figure of a mem report is there.
func checkMemReport(t *testing.T, rep *MemReport, sizes []int) {
	t.Helper()
	if rep.PID <= 0 || rep.Baseline.RSS <= 0 || rep.Transport != "plain" || rep.MQTTVersion != 4 {
		t.Fatalf("report header = %+v", rep)
	}
	if len(rep.Points) != len(sizes) {
		t.Fatalf("%d points, want %d", len(rep.Points), len(sizes))
	}
	for i, p := range rep.Points {
		n := int64(sizes[i])
		if p.Size != sizes[i] || p.Connected != n || p.Failed != 0 {
			t.Errorf("point %d: size %d connected %d failed %d", i, p.Size, p.Connected, p.Failed)
		}
		if p.RSSBefore <= 0 || p.RSSAfter <= 0 {
			t.Errorf("point %d: RSS %d -> %d", i, p.RSSBefore, p.RSSAfter)
		}
		want := float64(p.RSSAfter-rep.Baseline.RSS) / float64(n) / 1024
		if p.RSSBaseline != rep.Baseline.RSS || p.KiBPerConn != want {
			t.Errorf("point %d: KiB/conn %v, want %v", i, p.KiBPerConn, want)
		}
		if since := float64(p.RSSAfter-p.RSSBefore) / float64(n) / 1024; p.SinceBeforeKiBPerConn != since {
			t.Errorf("point %d: KiB/conn since before %v, want %v", i, p.SinceBeforeKiBPerConn, since)
		}
		// The server held one descriptor per connection.
		if p.FDsAfter < p.FDsBefore+sizes[i] {
			t.Errorf("point %d: server descriptors %d -> %d, want at least +%d", i, p.FDsBefore, p.FDsAfter, sizes[i])
		}
		if p.Connack.Count != n || p.ConnectRate <= 0 || p.RampSeconds <= 0 {
			t.Errorf("point %d: CONNACK %+v, rate %v, ramp %v", i, p.Connack, p.ConnectRate, p.RampSeconds)
		}
		// Root reads /proc/slabinfo. The slab is machine-wide, and other
		// test packages open and close sockets at the same time, so a
		// 100-connection step can move it either way: check that it was
		// read and that the per-socket figures follow from it.
		perSocket := float64(p.SlabAfter-p.SlabBefore) / float64(2*n) / 1024
		if !p.HasSlab || p.SlabBefore <= 0 || p.SlabAfter <= 0 || p.SlabKiBPerSocket != perSocket || p.KernelKiBPerConn != p.KiBPerConn+perSocket {
			t.Errorf("point %d: slab %d -> %d, %.3f KiB/socket, RSS+kernel %.3f", i, p.SlabBefore, p.SlabAfter, p.SlabKiBPerSocket, p.KernelKiBPerConn)
		}
	}
	if rep.Fit.Points != len(sizes)+1 || rep.Fit.R2 < 0 || rep.Fit.R2 > 1 {
		t.Errorf("fit = %+v", rep.Fit)
	}
	if rep.SlopeKiB != rep.Fit.Slope/1024 {
		t.Errorf("slope %v KiB vs fit %v B", rep.SlopeKiB, rep.Fit.Slope)
	}
	linearFit := rep.Fit
	if rep.SizesFit != nil {
		linearFit = *rep.SizesFit
	}
	if rep.Linear != linearFit.Linear(rep.MinR2) {
		t.Errorf("linear = %v with fit %+v", rep.Linear, linearFit)
	}
	if rep.KernelFit == nil || rep.KernelFit.Points != len(sizes)+1 || rep.KernelSlopeKiB != rep.KernelFit.Slope/1024 {
		t.Errorf("kernel fit = %+v, slope %v", rep.KernelFit, rep.KernelSlopeKiB)
	}
}

func TestRunMemTargetPIDWithHeapMetric(t *testing.T) {
	addr, srv := startMosquitto(t, nil)
	// A stand-in /metrics whose heap grows 1 MiB per scrape.
	var scrapes atomic.Int64
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := scrapes.Add(1)
		fmt.Fprintf(w, "# TYPE %s gauge\n%s %d\n", HeapMetric, HeapMetric, 50<<20+n<<20)
	}))
	defer metrics.Close()

	cfg := MemConfig{
		Fleet:      testFleet(addr, 0, 1),
		Sizes:      []int{100},
		TargetPID:  srv.PID(),
		MetricsURL: metrics.URL,
		Settle:     fastSettle(),
	}
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := RunMem(ctx, cfg, &out, zap.NewNop())
	if err != nil {
		t.Fatalf("RunMem: %v\n%s", err, out.String())
	}
	checkMemReport(t, rep, []int{100})
	p := rep.Points[0]
	if !p.HasHeap || p.HeapAfter <= p.HeapBefore || p.HeapKiBPerConn <= 0 || rep.HeapKiBPerConn != p.HeapKiBPerConn {
		t.Fatalf("heap figures: %+v (report mean %v)", p, rep.HeapKiBPerConn)
	}
	if !strings.Contains(out.String(), "Go heap in use") {
		t.Fatalf("table lacks the heap line:\n%s", out.String())
	}
	// The target was not spawned: it is left running.
	if exited, _ := srv.Exited(); exited {
		t.Fatal("RunMem stopped a server it did not start")
	}
}

func TestRunMemErrors(t *testing.T) {
	fc := testFleet("127.0.0.1:1", 0, 1)
	tests := []struct {
		name string
		cfg  MemConfig
	}{
		{name: "no sizes", cfg: MemConfig{Fleet: fc, TargetPID: 1}},
		{name: "zero size", cfg: MemConfig{Fleet: fc, Sizes: []int{0}, TargetPID: 1}},
		{name: "no target", cfg: MemConfig{Fleet: fc, Sizes: []int{10}}},
		{name: "spawned server never listens", cfg: MemConfig{Fleet: fc, Sizes: []int{10}, Spawn: "sleep 30", ListenTimeout: 300 * time.Millisecond}},
		{name: "spawned server exits", cfg: MemConfig{Fleet: fc, Sizes: []int{10}, Spawn: "true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := RunMem(context.Background(), tt.cfg, &strings.Builder{}, nil); err == nil {
				t.Fatal("want error")
			}
		})
	}
}

func TestRunConnNothingListening(t *testing.T) {
	fc := testFleet(net.JoinHostPort("127.0.0.1", itoa(testutil.FreePort(t))), 10, 1)
	var out strings.Builder
	res, err := RunConn(context.Background(), ConnConfig{Fleet: fc, Hold: time.Millisecond}, &out, zap.NewNop())
	if !errors.Is(err, ErrNoConnection) {
		t.Fatalf("RunConn = %v, want ErrNoConnection", err)
	}
	if res.Result.Stats.Failed != 10 || res.Result.Stats.Failures[ReasonRefused] != 10 {
		t.Fatalf("result = %+v", res.Result)
	}
	if !strings.Contains(out.String(), "failed        10\n  refused") {
		t.Fatalf("output does not list the reason:\n%s", out.String())
	}
}
