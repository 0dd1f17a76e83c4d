package bench

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sampleReport is a report with fixed figures: 0.75 KiB per connection in
// RSS, 3.75 KiB per socket in the slab.
func sampleReport() *MemReport {
	base := int64(8 << 20)
	rep := &MemReport{
		Target:      "127.0.0.1:1883",
		PID:         4242,
		Command:     "mosquitto -c m.conf",
		Transport:   "plain",
		MQTTVersion: 4,
		KeepAlive:   60,
		Started:     time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC),
		Baseline:    ProcMem{RSS: base},
		MinR2:       DefaultMinR2,
		HasSlab:     true,
		SlabCaches:  []string{"TCP", "sock_inode_cache"},
	}
	prev := base
	for _, n := range []int64{2000, 5000} {
		p := MemPoint{
			Size: int(n), Connected: n,
			RSSBaseline: base, RSSBefore: prev, RSSAfter: base + n*768,
			Settled: true, FDsBefore: 10, FDsAfter: 10 + int(n),
			HasSlab: true, SlabBefore: 1 << 20, SlabAfter: 1<<20 + 2*n*3840, SlabFromStart: 2 * n * 3840,
			RampSeconds: float64(n) / 2000, ConnectRate: 2000,
			Connack: LatencySummary{Count: n, P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 3 * time.Millisecond, Max: 4 * time.Millisecond},
		}
		p.compute()
		rep.Points = append(rep.Points, p)
		prev = p.RSSAfter
	}
	rep.finish()
	return rep
}

func TestMemReportFinish(t *testing.T) {
	rep := sampleReport()
	if len(rep.Points) != 2 || rep.Fit.Points != 3 {
		t.Fatalf("points %d, fit %+v", len(rep.Points), rep.Fit)
	}
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if !near(rep.SlopeKiB, 0.75) || !near(rep.Fit.R2, 1) || !rep.Linear {
		t.Fatalf("slope %v KiB, R² %v, linear %v", rep.SlopeKiB, rep.Fit.R2, rep.Linear)
	}
	p := rep.Points[1]
	// Size 5000 starts from size 2000's RSS: (5000-2000)*768 / 5000 since
	// then, 0.75 KiB per connection from the baseline.
	if !near(p.KiBPerConn, 0.75) || !near(p.SinceBeforeKiBPerConn, 3000*0.75/5000) || !near(p.SlabKiBPerSocket, 3.75) || !near(p.KernelKiBPerConn, 0.75+3.75) {
		t.Fatalf("point = %+v", p)
	}
	if rep.KernelFit == nil || !near(rep.KernelSlopeKiB, 0.75+3.75) {
		t.Fatalf("kernel slope %v", rep.KernelSlopeKiB)
	}
	if len(rep.Notes) != 0 {
		t.Fatalf("notes = %v", rep.Notes)
	}
}

func TestMemReportFinishNotes(t *testing.T) {
	rep := &MemReport{Baseline: ProcMem{RSS: 1000}, MinR2: DefaultMinR2}
	rep.Points = []MemPoint{
		{Size: 10, Connected: 10, RSSAfter: 50000, Settled: true},
		{Size: 20, Connected: 18, Failed: 2, RSSAfter: 2000, Settled: false},
		{Size: 30, Connected: 30, Dropped: 7, RSSAfter: 90000, Settled: true},
	}
	rep.finish()
	if rep.Linear || rep.SizesFit == nil {
		t.Fatalf("jagged points called linear: %+v", rep.SizesFit)
	}
	// A step from the baseline to the first size is a one-off cost: the
	// sizes alone are on a line.
	step := &MemReport{Baseline: ProcMem{RSS: 1000}, MinR2: DefaultMinR2}
	step.Points = []MemPoint{
		{Size: 1000, Connected: 1000, RSSAfter: 2_000_000 + 1000*500, Settled: true},
		{Size: 2000, Connected: 2000, RSSAfter: 2_000_000 + 2000*500, Settled: true},
		{Size: 4000, Connected: 4000, RSSAfter: 2_000_000 + 4000*500, Settled: true},
	}
	step.finish()
	if !step.Linear || step.Fit.R2 >= DefaultMinR2 || math.Abs(step.SizesSlopeKiB-500.0/1024) > 1e-9 {
		t.Fatalf("step then line: linear %v, fit R² %v, sizes slope %v KiB", step.Linear, step.Fit.R2, step.SizesSlopeKiB)
	}
	if rep.KernelFit != nil {
		t.Fatal("kernel fit without slab readings")
	}
	joined := strings.Join(rep.Notes, "\n")
	for _, want := range []string{"size 20 had not settled", "size 20: 2 connections failed", "size 30: the server closed 7 of the 30 connections"} {
		if !strings.Contains(joined, want) {
			t.Errorf("notes lack %q: %v", want, rep.Notes)
		}
	}
	empty := &MemReport{}
	empty.finish()
	if empty.Fit.Points != 0 {
		t.Fatalf("fit of nothing = %+v", empty.Fit)
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (regenerate with go test -run %s -update)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestMemReportRendering(t *testing.T) {
	rep := sampleReport()
	var md bytes.Buffer
	rep.WriteMarkdown(&md)
	golden(t, "report.golden.md", md.Bytes())
	var table bytes.Buffer
	writeMemTable(&table, rep)
	golden(t, "table.golden.txt", table.Bytes())
}

func TestMemReportWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if err := sampleReport().WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.json", "report.md"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "report.json.tmp")); !os.IsNotExist(err) {
		t.Fatal("temporary file left behind")
	}
}

func TestFmtBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"},
		{5 << 20, "5.00 MiB"}, {-2048, "-2.0 KiB"},
	}
	for _, tt := range tests {
		if got := fmtBytes(tt.n); got != tt.want {
			t.Errorf("fmtBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestPoolStatsAdd(t *testing.T) {
	a := PoolStats{Attempted: 3, Connected: 2, Failed: 1, Failures: map[string]int64{ReasonRefused: 1}, FirstDial: 200, LastConnack: 900}
	b := PoolStats{Attempted: 5, Connected: 5, Live: 5, Drops: map[string]int64{ReasonReset: 2}, FirstDial: 100, LastConnack: 600}
	var sum PoolStats
	sum.Add(a)
	sum.Add(b)
	sum.Add(PoolStats{})
	if sum.Attempted != 8 || sum.Connected != 7 || sum.Live != 5 || sum.Failures[ReasonRefused] != 1 || sum.Drops[ReasonReset] != 2 {
		t.Fatalf("sum = %+v", sum)
	}
	if sum.FirstDial != 100 || sum.LastConnack != 900 {
		t.Fatalf("span %d..%d, want 100..900", sum.FirstDial, sum.LastConnack)
	}
	if got := sum.RampDuration(); got != 800 {
		t.Fatalf("ramp = %v", got)
	}
	if rate := sum.ConnectRate(); rate != 7/800e-9 {
		t.Fatalf("rate = %v", rate)
	}
	if (PoolStats{}).ConnectRate() != 0 {
		t.Fatal("empty stats: rate should be 0")
	}
}
