package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// MemPoint is the measurement at one size. Memory is in bytes, per
// connection figures in KiB. On loopback both ends of a connection are in
// this kernel, so a size of N adds 2N sockets to the slab caches; the
// server's share is one socket per connection.
type MemPoint struct {
	Size      int   `json:"size"`
	Connected int64 `json:"connected"`
	Failed    int64 `json:"failed"`
	Dropped   int64 `json:"dropped"`

	// RSSBaseline is the server's RSS before the first size, RSSBefore
	// right before this size (after the previous size disconnected).
	RSSBaseline int64 `json:"rss_baseline"`
	RSSBefore   int64 `json:"rss_before"`
	RSSAfter    int64 `json:"rss_after"`
	PSSAfter    int64 `json:"pss_after,omitempty"`
	// Settled is false when RSS kept moving until the settle timeout.
	Settled bool `json:"settled"`
	// KiBPerConn is (RSSAfter-RSSBaseline) / Connected. It counts from the
	// baseline because a server keeps memory freed by the previous size's
	// disconnects and reuses it for the next one; SinceBeforeKiBPerConn is
	// (RSSAfter-RSSBefore) / Connected, which that reuse understates.
	KiBPerConn            float64 `json:"kib_per_conn"`
	SinceBeforeKiBPerConn float64 `json:"since_before_kib_per_conn"`

	FDsBefore int `json:"fds_before"`
	FDsAfter  int `json:"fds_after"`

	HasSlab bool `json:"has_slab"`
	// SlabBefore and SlabAfter are the active bytes of the socket caches.
	SlabBefore int64 `json:"slab_before,omitempty"`
	SlabAfter  int64 `json:"slab_after,omitempty"`
	// SlabFromStart is SlabAfter minus the reading before the first size.
	SlabFromStart int64 `json:"slab_from_start,omitempty"`
	// SlabKiBPerSocket is (SlabAfter-SlabBefore) / (2*Connected).
	SlabKiBPerSocket float64 `json:"slab_kib_per_socket,omitempty"`
	// KernelKiBPerConn is KiBPerConn plus the server's socket in the slab.
	KernelKiBPerConn float64 `json:"rss_plus_kernel_kib_per_conn,omitempty"`

	HasHeap        bool    `json:"has_heap"`
	HeapBefore     float64 `json:"heap_before,omitempty"`
	HeapAfter      float64 `json:"heap_after,omitempty"`
	HeapKiBPerConn float64 `json:"heap_kib_per_conn,omitempty"`

	RampSeconds    float64          `json:"ramp_seconds"`
	ConnectRate    float64          `json:"connect_rate"`
	Connack        LatencySummary   `json:"connack"`
	Handshake      LatencySummary   `json:"handshake"`
	Resumed        int64            `json:"resumed,omitempty"`
	ConnectFailure map[string]int64 `json:"failures,omitempty"`
}

// compute fills the per-connection figures from the raw ones.
func (p *MemPoint) compute() {
	if p.Connected <= 0 {
		return
	}
	n := float64(p.Connected)
	p.KiBPerConn = float64(p.RSSAfter-p.RSSBaseline) / n / 1024
	p.SinceBeforeKiBPerConn = float64(p.RSSAfter-p.RSSBefore) / n / 1024
	if p.HasSlab {
		p.SlabKiBPerSocket = float64(p.SlabAfter-p.SlabBefore) / (2 * n) / 1024
		p.KernelKiBPerConn = p.KiBPerConn + p.SlabKiBPerSocket
	}
	if p.HasHeap {
		p.HeapKiBPerConn = (p.HeapAfter - p.HeapBefore) / n / 1024
	}
}

// MemReport is the result of `dualbench mem`.
type MemReport struct {
	Target      string    `json:"target"`
	PID         int       `json:"pid"`
	Command     string    `json:"command,omitempty"`
	Transport   string    `json:"transport"`
	TLSResume   bool      `json:"tls_resume,omitempty"`
	MQTTVersion int       `json:"mqtt_version"`
	KeepAlive   float64   `json:"keepalive_seconds"`
	Started     time.Time `json:"started"`
	MetricsURL  string    `json:"metrics_url,omitempty"`

	Baseline        ProcMem    `json:"baseline"`
	BaselineSettled bool       `json:"baseline_settled"`
	Points          []MemPoint `json:"points"`

	// Fit is RSS (bytes) against connections over the baseline (N=0) and
	// every size; SlopeKiB is its slope in KiB per connection.
	Fit      Fit     `json:"fit"`
	SlopeKiB float64 `json:"slope_kib_per_conn"`
	MinR2    float64 `json:"min_r2"`
	// Linear says R² reaches MinR2: that of SizesFit when there is one,
	// else that of Fit.
	Linear bool `json:"linear"`
	// SizesFit runs over the sizes alone (at least two): its slope is the
	// cost of one more connection, and its intercept above the baseline is
	// what the server paid once, on its first connections (code paged in,
	// tables and buffers sized on first use).
	SizesFit      *Fit    `json:"sizes_fit,omitempty"`
	SizesSlopeKiB float64 `json:"sizes_slope_kib_per_conn,omitempty"`

	// KernelFit adds the server's half of the socket slab growth since the
	// baseline to RSS; KernelSlopeKiB is its slope.
	HasSlab        bool     `json:"has_slab"`
	SlabCaches     []string `json:"slab_caches"`
	KernelFit      *Fit     `json:"rss_plus_kernel_fit,omitempty"`
	KernelSlopeKiB float64  `json:"rss_plus_kernel_slope_kib_per_conn,omitempty"`

	// HeapSlopeKiB is the mean heap growth per connection, when scraped.
	HeapKiBPerConn float64 `json:"heap_kib_per_conn,omitempty"`

	// Server is the measured process's name (/proc/PID/comm); for
	// dualgate the report compares the largest size with the goals.
	Server string `json:"server,omitempty"`
	Goals  []Goal `json:"goals,omitempty"`

	Notes []string `json:"notes,omitempty"`
}

// finish computes the fits from the points.
func (r *MemReport) finish() {
	if len(r.Points) == 0 {
		return
	}
	xs := []float64{0}
	ys := []float64{float64(r.Baseline.RSS)}
	kys := []float64{float64(r.Baseline.RSS)}
	allSlab, allHeap := r.HasSlab, true
	var heapSum float64
	for _, p := range r.Points {
		xs = append(xs, float64(p.Connected))
		ys = append(ys, float64(p.RSSAfter))
		kys = append(kys, float64(p.RSSAfter)+float64(p.SlabFromStart)/2)
		allSlab = allSlab && p.HasSlab
		allHeap = allHeap && p.HasHeap
		heapSum += p.HeapKiBPerConn
		if !p.Settled {
			r.Notes = append(r.Notes, fmt.Sprintf("RSS at size %d had not settled within the timeout", p.Size))
		}
		if p.Failed > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("size %d: %d connections failed; the fit uses the %d connected", p.Size, p.Failed, p.Connected))
		}
		if p.Dropped > 0 {
			// The figures divide by Connected: the memory was read with
			// fewer connections open, or with the server busy closing
			// them (dualgate tells a TLS device that proves no client id
			// to go back to plain after --secure-idle, and closes it).
			r.Notes = append(r.Notes, fmt.Sprintf("size %d: the server closed %d of the %d connections before the bench ended them; the figures per connection count them as open (for dualgate over TLS, set --secure-idle longer than the run)",
				p.Size, p.Dropped, p.Connected))
		}
	}
	if f, err := LeastSquares(xs, ys); err == nil {
		r.Fit, r.SlopeKiB = f, f.Slope/1024
		r.Linear = f.Linear(r.MinR2)
	} else {
		r.Notes = append(r.Notes, "no fit: "+err.Error())
	}
	if len(xs) >= 3 {
		if f, err := LeastSquares(xs[1:], ys[1:]); err == nil {
			r.SizesFit, r.SizesSlopeKiB = &f, f.Slope/1024
			// Growth is linear when the sizes lie on a line; a step from
			// the baseline to the first size is a one-off cost, not a
			// curve.
			r.Linear = f.Linear(r.MinR2)
		}
	}
	if allSlab {
		if f, err := LeastSquares(xs, kys); err == nil {
			r.KernelFit, r.KernelSlopeKiB = &f, f.Slope/1024
		}
	}
	if allHeap {
		r.HeapKiBPerConn = heapSum / float64(len(r.Points))
	}
	r.Goals = nil
	if strings.HasPrefix(r.Server, "dualgate") {
		last := r.Points[len(r.Points)-1]
		name, limit, format := "RSS per idle plain connection, dualgate", GoalPlainKiB, "%.3f KiB"
		if r.Transport == "tls" {
			name, limit, format = "RSS per idle TLS connection, dualgate", GoalTLSKiB, "%.2f KiB"
		}
		g := atMost(name, last.KiBPerConn, limit, format)
		g.Note = fmt.Sprintf("at N=%d; slope of the fit %.3f KiB", last.Size, r.SlopeKiB)
		r.Goals = append(r.Goals, g)
	}
}

// WriteFiles writes report.json, report.md and the chart memory.png into
// dir, creating it.
func (r *MemReport) WriteFiles(dir string) error {
	if err := writeReportFiles(dir, r, r.WriteMarkdown); err != nil {
		return err
	}
	return r.WriteChart(filepath.Join(dir, "memory.png"))
}

// writeReportFiles writes rep as report.json and md's text as report.md
// into dir, creating it.
func writeReportFiles(dir string, rep any, md func(io.Writer)) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: report dir: %w", err)
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: report json: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "report.json"), append(js, '\n')); err != nil {
		return err
	}
	var b strings.Builder
	md(&b)
	return writeFileAtomic(filepath.Join(dir, "report.md"), []byte(b.String()))
}

// WriteMarkdown renders the report as Markdown.
func (r *MemReport) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Server memory per idle connection\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| target | `%s` (pid %d) |\n", r.Target, r.PID)
	if r.Command != "" {
		fmt.Fprintf(&b, "| command | `%s` |\n", r.Command)
	}
	transport := r.Transport
	if r.TLSResume {
		transport += " (session resumption)"
	}
	fmt.Fprintf(&b, "| transport | %s, MQTT %s, keepalive %g s |\n", transport, mqttName(r.MQTTVersion), r.KeepAlive)
	fmt.Fprintf(&b, "| started | %s |\n", r.Started.Format(time.RFC3339))
	fmt.Fprintf(&b, "| baseline RSS | %s |\n\n", fmtBytes(r.Baseline.RSS))

	fmt.Fprintf(&b, "| N | connected | failed | RSS before | RSS after | KiB/conn (from baseline) | slab KiB/socket | RSS+kernel KiB/conn | heap KiB/conn | server fds | connect rate | CONNACK p99 | settled |\n")
	fmt.Fprintf(&b, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n")
	for _, p := range r.Points {
		fmt.Fprintf(&b, "| %d | %d | %d | %s | %s | %.3f | %s | %s | %s | %d -> %d | %.0f/s | %s | %s |\n",
			p.Size, p.Connected, p.Failed, fmtBytes(p.RSSBefore), fmtBytes(p.RSSAfter), p.KiBPerConn,
			optKiB(p.HasSlab, p.SlabKiBPerSocket), optKiB(p.HasSlab, p.KernelKiBPerConn), optKiB(p.HasHeap, p.HeapKiBPerConn),
			p.FDsBefore, p.FDsAfter, p.ConnectRate, fmtMs(p.Connack.P99), yesNo(p.Settled))
	}
	fmt.Fprintf(&b, "\n")
	for _, line := range r.summaryLines() {
		fmt.Fprintf(&b, "- %s\n", line)
	}
	fmt.Fprintf(&b, "\nRSS is VmRSS of the server process; KiB/conn is the growth of RSS from the baseline, taken before the first size, ")
	fmt.Fprintf(&b, "divided by the connections (a server reuses for the next size the memory the previous one freed). Slab is the active bytes of the kernel caches %s from /proc/slabinfo; ", strings.Join(r.SlabCaches, ", "))
	fmt.Fprintf(&b, "on loopback both ends of a connection are in this kernel, so the server's share is one socket per connection. ")
	fmt.Fprintf(&b, "The fit runs over the baseline (N = 0) and every size; the second, over the sizes alone, is the cost of one more connection, and its intercept above the baseline what the server paid once, on its first connections.\n")
	writeGoalsMarkdown(&b, r.Goals)
	writeNotesMarkdown(&b, r.Notes)
	_, _ = io.WriteString(w, b.String())
}

// summaryLines are the fit figures, shared by the table and the Markdown.
func (r *MemReport) summaryLines() []string {
	var out []string
	if r.Fit.Points >= 2 {
		line := fmt.Sprintf("slope %.3f KiB/conn (intercept %s), R² %.4f over %d points",
			r.SlopeKiB, fmtBytes(int64(r.Fit.Intercept)), r.Fit.R2, r.Fit.Points)
		if r.SizesFit == nil {
			line += fmt.Sprintf(", linear: %s (R² ≥ %.2f)", yesNo(r.Linear), r.MinR2)
		}
		out = append(out, line)
	}
	if f := r.SizesFit; f != nil {
		out = append(out, fmt.Sprintf("over the sizes alone: %.3f KiB/conn, R² %.4f, linear: %s (R² ≥ %.2f); paid once on the first connections: %s above the baseline",
			r.SizesSlopeKiB, f.R2, yesNo(r.Linear), r.MinR2, fmtBytes(int64(f.Intercept)-r.Baseline.RSS)))
	}
	if r.KernelFit != nil {
		out = append(out, fmt.Sprintf("with the server's kernel socket memory: %.3f KiB/conn (R² %.4f)", r.KernelSlopeKiB, r.KernelFit.R2))
	}
	if r.HeapKiBPerConn != 0 {
		out = append(out, fmt.Sprintf("Go heap in use: %.3f KiB/conn (mean over sizes)", r.HeapKiBPerConn))
	}
	return out
}

// writeMemTable prints the report as a plain table.
func writeMemTable(w io.Writer, r *MemReport) {
	var b strings.Builder
	fmt.Fprintf(&b, "--- result\n")
	fmt.Fprintf(&b, "%8s %9s %6s %12s %12s %9s %10s %11s %10s %8s\n",
		"N", "connected", "failed", "RSS before", "RSS after", "KiB/conn", "slab/sock", "RSS+kernel", "heap/conn", "settled")
	for _, p := range r.Points {
		fmt.Fprintf(&b, "%8d %9d %6d %12s %12s %9.3f %10s %11s %10s %8s\n",
			p.Size, p.Connected, p.Failed, fmtBytes(p.RSSBefore), fmtBytes(p.RSSAfter), p.KiBPerConn,
			optKiB(p.HasSlab, p.SlabKiBPerSocket), optKiB(p.HasSlab, p.KernelKiBPerConn), optKiB(p.HasHeap, p.HeapKiBPerConn),
			yesNo(p.Settled))
		for _, k := range slices.Sorted(maps.Keys(p.ConnectFailure)) {
			fmt.Fprintf(&b, "%8s failed: %s %d\n", "", k, p.ConnectFailure[k])
		}
	}
	for _, line := range r.summaryLines() {
		fmt.Fprintf(&b, "%s\n", line)
	}
	writeGoalsText(&b, r.Goals)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, _ = io.WriteString(w, b.String())
}

func optKiB(ok bool, v float64) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// fmtBytes formats a byte count in KiB or MiB.
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<20 || n <= -(1<<20):
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10 || n <= -(1<<10):
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
