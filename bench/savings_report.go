package bench

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// run returns the run with key, or nil.
func (r *SavingsReport) run(key string) *SavingsRun {
	for i := range r.Runs {
		if r.Runs[i].Key == key {
			return &r.Runs[i]
		}
	}
	return nil
}

// ratio is a/b, 0 when b is not positive.
func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// cycleBytes is the upgrade cycle the per-day figures use: a resumed one
// when the probe made one (a device's steady state), else a full one.
func (r *SavingsReport) cycleBytes() (uint64, string) {
	if r.Traffic == nil {
		return 0, ""
	}
	var bytes uint64
	name := ""
	for _, c := range r.Traffic.Cycles {
		if bytes == 0 || c.Resumed {
			bytes, name = c.Total.Total(), handshakeName(c.Resumed)
		}
	}
	return bytes, name
}

// finish derives the comparison from the readings.
func (r *SavingsReport) finish(cfg SavingsConfig) {
	a, b, c := r.run("a"), r.run("b"), r.run("c")
	idle, onTLS, all, peer := a.reading(readingIdle), a.reading(readingOnTLS), b.reading(readingAll), c.reading(readingAll)
	fleet := onTLS
	if fleet == nil {
		fleet = idle
	}
	r.Figures, r.DeviceDays, r.Goals, r.BreakEven = nil, nil, nil, 0
	r.PlainKiB, r.TLSKiB, r.PeerTLSKiB, r.UpgradedKiB = 0, 0, 0, 0
	r.FleetOnDemand, r.FleetAllTLS, r.FleetPeer = 0, 0, 0
	r.RatioVsTLS, r.RatioVsPeer, r.KernelRatioVsTLS, r.KernelRatioVsPeer, r.TotalRatioVsTLS, r.TotalRatioVsPeer = 0, 0, 0, 0, 0, 0
	add := func(name string, v float64, unit string) {
		r.Figures = append(r.Figures, SavingsFigure{Name: name, Value: v, Unit: unit})
	}
	if idle != nil {
		r.PlainKiB = idle.KiBPerConn
		add("dualgate, per idle plain connection", r.PlainKiB, "KiB")
	}
	if all != nil {
		r.TLSKiB = all.KiBPerConn
		add("dualgate, per idle TLS connection", r.TLSKiB, "KiB")
	}
	if peer != nil {
		r.PeerTLSKiB = peer.KiBPerConn
		add(c.Server+", per idle TLS connection", r.PeerTLSKiB, "KiB")
	}
	if idle != nil && onTLS != nil && r.SecureDevices > 0 {
		r.UpgradedKiB = float64(onTLS.RSS-idle.RSS) / float64(r.SecureDevices) / 1024
		add("dualgate, per upgraded device (on TLS minus all on plain)", r.UpgradedKiB, "KiB")
	}
	if fleet != nil {
		r.FleetOnDemand = fleet.RSSDelta
		if all != nil {
			r.FleetAllTLS = all.RSSDelta
			r.RatioVsTLS = ratio(float64(all.RSSDelta), float64(fleet.RSSDelta))
			r.KernelRatioVsTLS = ratio(float64(all.RSSDelta+all.KernelDelta), float64(fleet.RSSDelta+fleet.KernelDelta))
			r.TotalRatioVsTLS = ratio(float64(all.RSS), float64(fleet.RSS))
			add("fleet: dualgate all on TLS over on demand (RSS growth)", r.RatioVsTLS, "x")
			add("fleet: dualgate all on TLS over on demand (RSS growth + kernel socket memory)", r.KernelRatioVsTLS, "x")
			add("fleet: dualgate all on TLS over on demand (total RSS)", r.TotalRatioVsTLS, "x")
		}
		if peer != nil {
			r.FleetPeer = peer.RSSDelta
			r.RatioVsPeer = ratio(float64(peer.RSSDelta), float64(fleet.RSSDelta))
			r.KernelRatioVsPeer = ratio(float64(peer.RSSDelta+peer.KernelDelta), float64(fleet.RSSDelta+fleet.KernelDelta))
			r.TotalRatioVsPeer = ratio(float64(peer.RSS), float64(fleet.RSS))
			add(fmt.Sprintf("fleet: %s all on TLS over dualgate on demand (RSS growth)", c.Server), r.RatioVsPeer, "x")
			add(fmt.Sprintf("fleet: %s all on TLS over dualgate on demand (RSS growth + kernel socket memory)", c.Server), r.KernelRatioVsPeer, "x")
			add(fmt.Sprintf("fleet: %s all on TLS over dualgate on demand (total RSS)", c.Server), r.TotalRatioVsPeer, "x")
		}
		if fleet.RSSDelta <= 0 {
			r.Notes = append(r.Notes, "the on-demand fleet's RSS growth was not positive: the fleet is too small to measure against the server's own noise")
		}
	}

	// Bytes per device per day.
	ka := time.Duration(r.KeepAlive * float64(time.Second))
	cycle, cycleName := r.cycleBytes()
	if r.Traffic != nil && ka > 0 && r.Traffic.PlainIdle.Total() > 0 {
		plainDay := PerDay(r.Traffic.PlainIdle.Total(), ka)
		day := func(name string, v float64) {
			r.DeviceDays = append(r.DeviceDays, DeviceDay{Name: name, BytesPerDay: v})
		}
		day("dualgate on demand: an idle device", plainDay)
		if cycle > 0 {
			day(fmt.Sprintf("dualgate on demand: a device with %g secure command(s) a day (%s upgrade cycles of %d B)", cfg.CommandsPerDay, cycleName, cycle),
				plainDay+cfg.CommandsPerDay*float64(cycle))
			day(fmt.Sprintf("dualgate on demand: fleet average (%g%% of devices with %g a day)", 100*r.SecureFraction, cfg.CommandsPerDay),
				plainDay+r.SecureFraction*cfg.CommandsPerDay*float64(cycle))
		}
		if b != nil && b.TLSIdle.Total() > 0 {
			tlsDay := PerDay(b.TLSIdle.Total(), ka)
			day("dualgate all on TLS: a device", tlsDay)
			r.BreakEven = BreakEvenCommands(plainDay, tlsDay, cycle)
		}
		if c != nil && c.TLSIdle.Total() > 0 {
			day(c.Server+" all on TLS: a device", PerDay(c.TLSIdle.Total(), ka))
		}
	}

	// Goals.
	if idle != nil {
		r.Goals = append(r.Goals, atMost("RSS per idle plain connection, dualgate", r.PlainKiB, GoalPlainKiB, "%.3f KiB"))
	}
	if all != nil {
		r.Goals = append(r.Goals, atMost("RSS per idle TLS connection, dualgate", r.TLSKiB, GoalTLSKiB, "%.2f KiB"))
	}
	frac := fmt.Sprintf("%d devices, %g%% on TLS", r.Devices, 100*r.SecureFraction)
	if all != nil && fleet != nil {
		g := atLeast(fmt.Sprintf("gateway memory, %s, against all on TLS through dualgate", frac), r.RatioVsTLS, GoalFleetVsTLS, "%.1fx less")
		g.Note = fmt.Sprintf("RSS growth over the idle server; %.1fx with kernel socket memory, %.1fx in total RSS", r.KernelRatioVsTLS, r.TotalRatioVsTLS)
		r.Goals = append(r.Goals, g)
	}
	if peer != nil && fleet != nil {
		g := atLeast(fmt.Sprintf("gateway memory, %s, against %s all on TLS", frac, c.Server), r.RatioVsPeer, GoalFleetVsPeer, "%.1fx less")
		g.Note = fmt.Sprintf("RSS growth over the idle server; %.1fx with kernel socket memory, %.1fx in total RSS", r.KernelRatioVsPeer, r.TotalRatioVsPeer)
		r.Goals = append(r.Goals, g)
	}
	if r.Traffic != nil {
		for _, cyc := range r.Traffic.Cycles {
			if cyc.Resumed {
				r.Goals = append(r.Goals, atMost(fmt.Sprintf("one upgrade cycle with resumption, %s", cyc.Group), float64(cyc.Total.Total()), ResumedCycleGoal(cyc.Group), "%.0f B"))
			}
		}
	}
}

// WriteFiles writes report.json, report.md and the charts memory.png,
// fleet.png and (with latency) latency.png into dir.
func (r *SavingsReport) WriteFiles(dir string, latency *Latency) error {
	if err := writeReportFiles(dir, r, r.WriteMarkdown); err != nil {
		return err
	}
	var errs []error
	if err := r.memoryChart(filepath.Join(dir, "memory.png")); err != nil && !errors.Is(err, ErrEmptyChart) {
		errs = append(errs, err)
	}
	if err := r.fleetChart(filepath.Join(dir, "fleet.png")); err != nil && !errors.Is(err, ErrEmptyChart) {
		errs = append(errs, err)
	}
	if latency != nil && latency.Count() > 0 {
		title := fmt.Sprintf("Secure commands through the upgrade: %d of %d devices at once", r.SecureDevices, r.Devices)
		series := []LatencySeries{{Name: "POST to device PUBACK", Quantiles: latency.ChartQuantiles()}}
		if err := LatencyChart(filepath.Join(dir, "latency.png"), title, series); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// memoryChart draws the memory per connection by server and mode.
func (r *SavingsReport) memoryChart(path string) error {
	var groups []string
	rss := BarSeries{Name: "RSS KiB per connection"}
	kernel := BarSeries{Name: "RSS + kernel socket KiB per connection"}
	hasKernel := true
	addGroup := func(name string, rd *SavingsReading) {
		if rd == nil {
			return
		}
		groups = append(groups, name)
		rss.Values = append(rss.Values, rd.KiBPerConn)
		kernel.Values = append(kernel.Values, rd.KernelKiBPerConn)
		hasKernel = hasKernel && rd.HasSlab
	}
	a, b, c := r.run("a"), r.run("b"), r.run("c")
	addGroup("dualgate plain", a.reading(readingIdle))
	addGroup(fmt.Sprintf("dualgate on demand (%g%% TLS)", 100*r.SecureFraction), a.reading(readingOnTLS))
	addGroup("dualgate TLS", b.reading(readingAll))
	if c != nil {
		addGroup(c.Server+" TLS", c.reading(readingAll))
	}
	series := []BarSeries{rss}
	if hasKernel {
		series = append(series, kernel)
	}
	return BarChart(path, fmt.Sprintf("Memory per idle connection, fleet of %d", r.Devices), "KiB per connection", groups, series)
}

// fleetChart draws the memory of the whole fleet, each way.
func (r *SavingsReport) fleetChart(path string) error {
	var groups []string
	growth := BarSeries{Name: "RSS growth (MiB)"}
	total := BarSeries{Name: "total RSS (MiB)"}
	addGroup := func(name string, rd *SavingsReading) {
		if rd == nil {
			return
		}
		groups = append(groups, name)
		growth.Values = append(growth.Values, float64(rd.RSSDelta)/(1<<20))
		total.Values = append(total.Values, float64(rd.RSS)/(1<<20))
	}
	a, b, c := r.run("a"), r.run("b"), r.run("c")
	addGroup(fmt.Sprintf("a) dualgate on demand (%g%% TLS)", 100*r.SecureFraction), a.reading(readingOnTLS))
	addGroup("b) dualgate all TLS", b.reading(readingAll))
	if c != nil {
		addGroup("c) "+c.Server+" all TLS", c.reading(readingAll))
	}
	return BarChart(path, fmt.Sprintf("Server memory for a fleet of %d devices", r.Devices), "MiB", groups, []BarSeries{growth, total})
}

// WriteMarkdown renders the report as Markdown.
func (r *SavingsReport) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "# On-demand TLS: what a fleet costs, three ways\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| fleet | %d devices, MQTT %s, keepalive %g s, idle |\n", r.Devices, mqttName(r.MQTTVersion), r.KeepAlive)
	fmt.Fprintf(&b, "| a) dualgate on demand | every device on plain; %d (%g%%) get one secure command each and go through an upgrade; measured while they are on TLS, and after the gateway sent them back (quiet period %g s) |\n",
		r.SecureDevices, 100*r.SecureFraction, r.SecureIdle)
	fmt.Fprintf(&b, "| b) dualgate all on TLS | every device on TLS |\n")
	peerName := "peer broker"
	if c := r.run("c"); c != nil && c.Server != "" {
		peerName = c.Server
	}
	fmt.Fprintf(&b, "| c) %s all on TLS | every device on TLS, same certificate |\n", peerName)
	fmt.Fprintf(&b, "| device TLS | key exchange %s, session resumption %s |\n", r.Kex, yesNo(r.Resume))
	fmt.Fprintf(&b, "| started | %s |\n", r.Started.Format(time.RFC3339))
	if r.Interrupted {
		fmt.Fprintf(&b, "| interrupted | yes |\n")
	}

	fmt.Fprintf(&b, "\n## Server memory, side by side\n\n")
	fmt.Fprintf(&b, "| way | server | reading | devices | plain / TLS (gateway) | RSS | RSS over the idle server | KiB per device | + kernel sockets, KiB per device | settled |\n")
	fmt.Fprintf(&b, "|---|---|---|---:|---:|---:|---:|---:|---:|:---:|\n")
	for _, run := range r.Runs {
		if run.Skipped != "" {
			fmt.Fprintf(&b, "| %s) %s | %s | skipped: %s | | | | | | | |\n", run.Key, run.Mode, run.Server, run.Skipped)
			continue
		}
		for _, rd := range run.Readings {
			modes := "-"
			if rd.Plain >= 0 {
				modes = fmt.Sprintf("%d / %d", rd.Plain, rd.TLS)
			}
			fmt.Fprintf(&b, "| %s) %s | %s | %s | %d | %s | %s | %s | %.3f | %s | %s |\n",
				run.Key, run.Mode, run.Server, rd.Name, run.Devices, modes, fmtBytes(rd.RSS), fmtBytes(rd.RSSDelta), rd.KiBPerConn,
				optKiB(rd.HasSlab, rd.KernelKiBPerConn), yesNo(rd.Settled))
		}
	}
	if len(r.Figures) > 0 {
		fmt.Fprintf(&b, "\n| figure | value |\n|---|---:|\n")
		for _, f := range r.Figures {
			fmt.Fprintf(&b, "| %s | %s |\n", f.Name, fmtFigure(f))
		}
	}
	fmt.Fprintf(&b, "\nRSS is VmRSS of the server process, read once it settled; \"over the idle server\" is its growth from the reading taken before the devices connected, each server started fresh. Kernel sockets are the server's half of the growth of the socket slab caches (%s) from /proc/slabinfo: both ends of every connection are in this kernel. The ratios divide what the fleet costs the server all on TLS by what it costs on demand while the upgraded devices are on TLS. Charts: memory.png (per connection), fleet.png (whole fleet), latency.png (the secure commands).\n",
		strings.Join(r.SlabCaches, ", "))

	if len(r.DeviceDays) > 0 {
		fmt.Fprintf(&b, "\n## Device bytes per day\n\n")
		fmt.Fprintf(&b, "IP-level bytes, both directions, from the kernel's counters of one device's sockets against the same servers (keepalive %g s).\n\n", r.KeepAlive)
		fmt.Fprintf(&b, "| device | bytes per day |\n|---|---:|\n")
		for _, d := range r.DeviceDays {
			fmt.Fprintf(&b, "| %s | %.0f |\n", d.Name, d.BytesPerDay)
		}
		if r.BreakEven > 0 {
			fmt.Fprintf(&b, "\nThe break-even is **%.1f secure commands a day**: below it, on demand costs a device fewer bytes than staying on TLS.\n", r.BreakEven)
		}
	}
	if r.Traffic != nil {
		t := r.Traffic
		fmt.Fprintf(&b, "\n| one device on dualgate | bytes on the wire |\n|---|---:|\n")
		fmt.Fprintf(&b, "| plain keepalive cycle | %d |\n| TLS keepalive cycle | %d |\n", t.PlainIdle.Total(), t.TLSIdle.Total())
		for _, c := range t.Cycles {
			fmt.Fprintf(&b, "| upgrade cycle, %s %s (plain %d + TLS %d + back %d) | %d |\n", c.Group, handshakeName(c.Resumed), c.Plain.Total(), c.TLS.Total(), c.Return.Total(), c.Total.Total())
		}
		if c := r.run("c"); c != nil && c.TLSIdle.Total() > 0 {
			fmt.Fprintf(&b, "| TLS keepalive cycle on %s | %d |\n", c.Server, c.TLSIdle.Total())
		}
	}
	if r.CommandsSent > 0 {
		fmt.Fprintf(&b, "\n## The secure commands of a)\n\n")
		fmt.Fprintf(&b, "%d sent at once, %d acknowledged; POST to device PUBACK: %s.\n", r.CommandsSent, r.CommandsAcked, r.Latency)
	}
	writeGoalsMarkdown(&b, r.Goals)
	fmt.Fprintf(&b, "\n## Servers\n\n| way | pid | command | connect rate | TLS handshake |\n|---|---:|---|---:|---|\n")
	for _, run := range r.Runs {
		fmt.Fprintf(&b, "| %s) %s %s | %d | `%s` | %.0f/s | %s |\n", run.Key, run.Server, run.Mode, run.PID, run.Command, run.ConnectRate, run.Handshake)
	}
	writeNotesMarkdown(&b, r.Notes)
	_, _ = io.WriteString(w, b.String())
}

func fmtFigure(f SavingsFigure) string {
	switch f.Unit {
	case "x":
		return fmt.Sprintf("%.1fx", f.Value)
	case "KiB":
		return fmt.Sprintf("%.3f KiB", f.Value)
	}
	return fmt.Sprintf("%g %s", f.Value, f.Unit)
}

// writeSavingsText prints the comparison as plain lines.
func writeSavingsText(w io.Writer, r *SavingsReport) {
	var b strings.Builder
	fmt.Fprintf(&b, "--- result: %d devices, %d (%g%%) upgraded on demand\n", r.Devices, r.SecureDevices, 100*r.SecureFraction)
	for _, run := range r.Runs {
		if run.Skipped != "" {
			fmt.Fprintf(&b, "%s) %-10s %-12s skipped: %s\n", run.Key, run.Server, run.Mode, run.Skipped)
			continue
		}
		for _, rd := range run.Readings {
			fmt.Fprintf(&b, "%s) %-10s %-12s %-14s RSS %10s  +%10s  %8.3f KiB/device  %s KiB/device with kernel sockets\n",
				run.Key, run.Server, run.Mode, rd.Name, fmtBytes(rd.RSS), fmtBytes(rd.RSSDelta), rd.KiBPerConn, optKiB(rd.HasSlab, rd.KernelKiBPerConn))
		}
	}
	for _, f := range r.Figures {
		fmt.Fprintf(&b, "%-90s %s\n", f.Name, fmtFigure(f))
	}
	for _, d := range r.DeviceDays {
		fmt.Fprintf(&b, "%-90s %.0f B/day\n", d.Name, d.BytesPerDay)
	}
	if r.BreakEven > 0 {
		fmt.Fprintf(&b, "break-even: on demand costs a device fewer bytes below %.1f secure commands a day\n", r.BreakEven)
	}
	if r.CommandsSent > 0 {
		fmt.Fprintf(&b, "secure commands: %d sent, %d acknowledged, %s\n", r.CommandsSent, r.CommandsAcked, r.Latency)
	}
	writeGoalsText(&b, r.Goals)
	if r.Interrupted {
		fmt.Fprintf(&b, "interrupted   yes\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, _ = io.WriteString(w, b.String())
}
