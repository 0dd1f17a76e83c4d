package bench

import (
	"bytes"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fig is a WireFigure of out and in payload bytes over so and si segments
// (52 B of headers each).
func fig(out, in uint64, so, si uint32) WireFigure {
	return LoopbackWireModel().Figure(TCPCounters{BytesSent: out, BytesReceived: in, SegsOut: so, SegsIn: si, HasBytesSent: true}, false)
}

// sampleTrafficReport is a traffic report with fixed figures, one MQTT
// version, full and resumed cycles with X25519.
func sampleTrafficReport() *TrafficReport {
	x := TLSSession{Kex: "x25519", Group: "X25519", Version: "TLS 1.3"}
	xr := x
	xr.Resumed = true
	full := UpgradeCycle{TLSSession: x, Plain: fig(6, 120, 4, 3), TLS: fig(900, 1900, 9, 8), Return: fig(60, 8, 5, 4)}
	full.Total = full.Plain.Plus(full.TLS).Plus(full.Return)
	res := UpgradeCycle{TLSSession: xr, Plain: fig(6, 120, 4, 3), TLS: fig(700, 900, 8, 7), Return: fig(60, 8, 5, 4)}
	res.Total = res.Plain.Plus(res.TLS).Plus(res.Return)
	run := TrafficRun{
		MQTTVersion:  4,
		PlainConnect: fig(50, 8, 5, 4),
		PlainIdle:    fig(2, 2, 2, 1),
		TLSIdle:      fig(24, 24, 2, 1),
		PlainCommand: fig(4, 140, 2, 1),
		TLSCommand:   fig(26, 162, 2, 1),
		Sessions: []SessionFigure{
			{Bytes: fig(30, 4, 5, 4)},
			{TLS: true, TLSSession: x, Bytes: fig(700, 1500, 8, 7)},
			{TLS: true, TLSSession: xr, Bytes: fig(500, 700, 8, 7)},
		},
		Cycles: []UpgradeCycle{full, res},
	}
	rep := &TrafficReport{
		Target: "127.0.0.1:1883", PID: 4242, Command: "dualgate serve", Started: time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC),
		Model: LoopbackWireModel(), KeepAlive: 60, PayloadSize: 100, Cycles: 5, Settle: 250 * time.Millisecond,
		Runs: []TrafficRun{run}, dayPeriods: []time.Duration{time.Minute, 5 * time.Minute},
	}
	rep.finish()
	return rep
}

func TestTrafficReportFinish(t *testing.T) {
	rep := sampleTrafficReport()
	if len(rep.Days) != 2 || len(rep.Days[0].BreakEven) != 2 {
		t.Fatalf("days = %+v", rep.Days)
	}
	d := rep.Days[0]
	// 160 B and 204 B a minute.
	if d.PlainPerDay != 230400 || d.TLSPerDay != 293760 || d.BreakEven[1].CommandsPerDay != BreakEvenCommands(230400, 293760, rep.Runs[0].Cycles[1].Total.Total()) {
		t.Fatalf("day = %+v", d)
	}
	if len(rep.Goals) != 1 || rep.Goals[0].Met != (float64(rep.Runs[0].Cycles[1].Total.Total()) <= ResumedCycleGoal(rep.Runs[0].Cycles[1].Group)) {
		t.Fatalf("goals = %+v", rep.Goals)
	}
}

func TestTrafficReportRendering(t *testing.T) {
	rep := sampleTrafficReport()
	var md, text bytes.Buffer
	rep.WriteMarkdown(&md)
	golden(t, "traffic.golden.md", md.Bytes())
	writeTrafficText(&text, rep)
	golden(t, "traffic.golden.txt", text.Bytes())
}

func sampleUpgradeReport() *UpgradeReport {
	lat := NewLatency()
	for i := range 100 {
		lat.Record(time.Duration(10+i%7) * time.Millisecond)
	}
	lat.Record(30 * time.Millisecond)
	rep := &UpgradeReport{
		Target: "127.0.0.1:1883", PID: 4242, Command: "dualgate serve", Started: time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC),
		MQTTVersion: 5, Devices: 1, Rounds: 101, PayloadSize: 100, Resume: true, Kex: "x25519",
		Connected: 1, Sent: 101, Accepted: 101, Acked: 101, Delivered: 101,
		Latency: lat.Summary(), Distribution: lat.Distribution([]float64{50, 99, 100}),
		GatewayLatency: lat.Summary(), Completion: lat.Summary(),
		Handshake: LatencySummary{Count: 101, P50: 4 * time.Millisecond, P90: 5 * time.Millisecond, P99: 6 * time.Millisecond, Max: 7 * time.Millisecond},
		Resumed:   100, Upgrades: 101, Downgrades: 100, MaxTLS: 1,
		RoundResults: []UpgradeRound{{Index: 0, Sent: 1, Accepted: 1, Acked: 1, PostSeconds: 0.01, Completion: 30 * time.Millisecond}},
		Samples:      []StatsSample{{Seconds: 0, Plain: 1}, {Seconds: 0.1, TLS: 1}, {Seconds: 0.2, Plain: 1}},
	}
	rep.Goals = upgradeGoals(rep)
	return rep
}

func TestUpgradeGoals(t *testing.T) {
	rep := sampleUpgradeReport()
	if len(rep.Goals) != 1 || rep.Goals[0].Met != (rep.Latency.P99 <= GoalOneDeviceP99) {
		t.Fatalf("one device: %+v", rep.Goals)
	}
	burst := &UpgradeReport{Devices: 1000, RoundResults: []UpgradeRound{{Acked: 1000, Completion: 1500 * time.Millisecond}}}
	if g := upgradeGoals(burst); len(g) != 1 || !g[0].Met || g[0].Measured != "1.50 s" {
		t.Fatalf("burst in time: %+v", g)
	}
	burst.RoundResults[0].Acked = 999
	if g := upgradeGoals(burst); len(g) != 1 || g[0].Met {
		t.Fatalf("burst with a command missing: %+v", g)
	}
	burst.Rate = 100 // not at once: no goal
	if g := upgradeGoals(burst); len(g) != 0 {
		t.Fatalf("burst at a rate: %+v", g)
	}
	if g := upgradeGoals(&UpgradeReport{Devices: 20, RoundResults: burst.RoundResults}); len(g) != 0 {
		t.Fatalf("20 devices: %+v", g)
	}
}

func TestUpgradeReportRendering(t *testing.T) {
	rep := sampleUpgradeReport()
	var md, text bytes.Buffer
	rep.WriteMarkdown(&md)
	golden(t, "upgrade.golden.md", md.Bytes())
	writeUpgradeText(&text, rep)
	golden(t, "upgrade.golden.txt", text.Bytes())
}

// sampleSavingsReport is a savings report of 15,000 devices with fixed
// readings: 0.5 KiB per plain connection, 15 KiB per TLS one on dualgate,
// 14 KiB on the peer, 150 devices upgraded.
func sampleSavingsReport() *SavingsReport {
	const n = 15000
	reading := func(name string, plain, tls int, delta int64) SavingsReading {
		base := int64(16 << 20)
		r := SavingsReading{Name: name, Plain: plain, TLS: tls, RSS: base + delta, RSSDelta: delta, Settled: true, HasSlab: true,
			KernelDelta: n * 3840, FDs: n + 20}
		r.KiBPerConn = float64(delta) / n / 1024
		r.KernelKiBPerConn = r.KiBPerConn + float64(r.KernelDelta)/n/1024
		return r
	}
	tr := sampleTrafficReport().Runs[0]
	rep := &SavingsReport{
		Started: time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC), Devices: n, SecureFraction: 0.01, SecureDevices: 150,
		MQTTVersion: 4, KeepAlive: 60, SecureIdle: 30, Kex: "x25519", Resume: true, SlabCaches: []string{"TCP", "sock_inode_cache"},
		Runs: []SavingsRun{
			{Key: "a", Server: "dualgate", Mode: "on demand", Command: "dualgate serve", PID: 11, Devices: n, ConnectRate: 9000,
				Readings: []SavingsReading{
					reading(readingIdle, n, 0, n*512),
					reading(readingOnTLS, n-150, 150, n*512+150*16*1024),
					reading(readingAfter, n, 0, n*512+150*4*1024),
				}, TLSIdle: tr.TLSIdle},
			{Key: "b", Server: "dualgate", Mode: "all on TLS", Command: "dualgate serve --secure-idle 24h", PID: 12, Devices: n, ConnectRate: 1500,
				Readings: []SavingsReading{reading(readingAll, 0, n, n*15*1024)}, TLSIdle: tr.TLSIdle},
			{Key: "c", Server: "mosquitto", Mode: "all on TLS", Command: "mosquitto -c m.conf", PID: 13, Devices: n, ConnectRate: 700,
				Readings: []SavingsReading{reading(readingAll, -1, -1, n*14*1024)}, TLSIdle: fig(24, 24, 2, 1)},
		},
		CommandsSent: 150, CommandsAcked: 150,
		Latency: LatencySummary{Count: 150, P50: 40 * time.Millisecond, P90: 90 * time.Millisecond, P99: 120 * time.Millisecond, Max: 130 * time.Millisecond},
		Traffic: &tr,
	}
	rep.finish(SavingsConfig{CommandsPerDay: 1})
	return rep
}

func TestSavingsReportFinish(t *testing.T) {
	rep := sampleSavingsReport()
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if !near(rep.PlainKiB, 0.5) || !near(rep.TLSKiB, 15) || !near(rep.PeerTLSKiB, 14) || !near(rep.UpgradedKiB, 16) {
		t.Fatalf("per connection: %v %v %v %v", rep.PlainKiB, rep.TLSKiB, rep.PeerTLSKiB, rep.UpgradedKiB)
	}
	fleet := float64(15000*512 + 150*16*1024)
	if rep.FleetOnDemand != int64(fleet) || !near(rep.RatioVsTLS, 15000*15*1024/fleet) || !near(rep.RatioVsPeer, 15000*14*1024/fleet) {
		t.Fatalf("fleet %d, ratios %v %v", rep.FleetOnDemand, rep.RatioVsTLS, rep.RatioVsPeer)
	}
	kernel := float64(15000 * 3840)
	if !near(rep.KernelRatioVsTLS, (15000*15*1024+kernel)/(fleet+kernel)) {
		t.Fatalf("kernel ratio %v", rep.KernelRatioVsTLS)
	}
	if !near(rep.TotalRatioVsTLS, (16<<20+15000*15*1024)/(16<<20+fleet)) {
		t.Fatalf("total ratio %v", rep.TotalRatioVsTLS)
	}
	cycle := rep.Traffic.Cycles[1].Total.Total()
	if len(rep.DeviceDays) != 5 || rep.DeviceDays[0].BytesPerDay != 230400 || rep.DeviceDays[1].BytesPerDay != 230400+float64(cycle) ||
		!near(rep.DeviceDays[2].BytesPerDay, 230400+0.01*float64(cycle)) || rep.DeviceDays[3].BytesPerDay != 293760 {
		t.Fatalf("device days %+v", rep.DeviceDays)
	}
	if !near(rep.BreakEven, BreakEvenCommands(230400, 293760, cycle)) {
		t.Fatalf("break-even %v", rep.BreakEven)
	}
	// 22.7x and 21.2x less memory on demand.
	want := []bool{true, true, true, true, float64(rep.Traffic.Cycles[1].Total.Total()) <= ResumedCycleGoal(rep.Traffic.Cycles[1].Group)}
	if len(rep.Goals) != len(want) {
		t.Fatalf("goals %+v", rep.Goals)
	}
	for i, g := range rep.Goals {
		if g.Met != want[i] {
			t.Errorf("goal %q met %v, want %v", g.Name, g.Met, want[i])
		}
	}
}

func TestSavingsReportWithoutPeer(t *testing.T) {
	rep := sampleSavingsReport()
	rep.Runs[2] = SavingsRun{Key: "c", Server: "mosquitto", Mode: "all on TLS", Skipped: "mosquitto is not installed"}
	rep.finish(SavingsConfig{CommandsPerDay: 1})
	if rep.RatioVsPeer != 0 || len(rep.Goals) != 4 || len(rep.DeviceDays) != 4 {
		t.Fatalf("ratio %v, goals %+v, days %+v", rep.RatioVsPeer, rep.Goals, rep.DeviceDays)
	}
	var md bytes.Buffer
	rep.WriteMarkdown(&md)
	if !bytes.Contains(md.Bytes(), []byte("skipped: mosquitto is not installed")) {
		t.Fatalf("markdown:\n%s", md.String())
	}
}

func TestSavingsReportRendering(t *testing.T) {
	rep := sampleSavingsReport()
	var md, text bytes.Buffer
	rep.WriteMarkdown(&md)
	golden(t, "savings.golden.md", md.Bytes())
	writeSavingsText(&text, rep)
	golden(t, "savings.golden.txt", text.Bytes())
}

// checkPNG asserts that path is a non-empty PNG image.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Fatalf("%s: %v", path, b)
	}
}

func TestReportFilesAndCharts(t *testing.T) {
	dir := t.TempDir()
	if err := sampleReport().WriteFiles(filepath.Join(dir, "mem")); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, filepath.Join(dir, "mem", "memory.png"))

	up := sampleUpgradeReport()
	lat := NewLatency()
	lat.Record(12 * time.Millisecond)
	lat.Record(40 * time.Millisecond)
	if err := up.WriteFiles(filepath.Join(dir, "upgrade"), lat, lat); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, filepath.Join(dir, "upgrade", "latency.png"))
	checkPNG(t, filepath.Join(dir, "upgrade", "tls-sessions.png"))

	sv := sampleSavingsReport()
	if err := sv.WriteFiles(filepath.Join(dir, "savings"), lat); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"memory.png", "fleet.png", "latency.png"} {
		checkPNG(t, filepath.Join(dir, "savings", f))
	}
	for _, d := range []string{"mem", "upgrade", "savings"} {
		for _, f := range []string{"report.md", "report.json"} {
			if st, err := os.Stat(filepath.Join(dir, d, f)); err != nil || st.Size() == 0 {
				t.Fatalf("%s/%s: %v", d, f, err)
			}
		}
	}
	// Without latencies there is no latency chart, and no error.
	if err := sv.WriteFiles(filepath.Join(dir, "nolat"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nolat", "latency.png")); !os.IsNotExist(err) {
		t.Fatalf("latency chart without latencies: %v", err)
	}
}

func TestChartErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.png")
	if err := BarChart(p, "t", "y", nil, nil); !errors.Is(err, ErrEmptyChart) {
		t.Fatalf("empty bar chart: %v", err)
	}
	if err := BarChart(p, "t", "y", []string{"a", "b"}, []BarSeries{{Name: "s", Values: []float64{1}}}); err == nil {
		t.Fatal("series shorter than the groups: want an error")
	}
	if err := LatencyChart(p, "t", []LatencySeries{{Name: "none"}}); !errors.Is(err, ErrEmptyChart) {
		t.Fatalf("empty latency chart: %v", err)
	}
	if err := TimeChart(p, "t", "y", []TimeSeries{{Name: "odd", Seconds: []float64{1}, Values: nil}}); !errors.Is(err, ErrEmptyChart) {
		t.Fatalf("time chart without values: %v", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatal("a failed chart left a file")
	}
	if err := TimeChart(p, "t", "y", []TimeSeries{{Name: "ok", Seconds: []float64{0, 1, 2}, Values: []float64{1, 3, 2}}}); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, p)
}

func TestGoals(t *testing.T) {
	g := atMost("plain", 0.55, 0.6, "%.2f KiB")
	if !g.Met || g.Target != "≤ 0.60 KiB" || g.Measured != "0.55 KiB" || !g.AtMost {
		t.Fatalf("atMost = %+v", g)
	}
	if g := atMost("plain", 0.61, 0.6, "%.2f KiB"); g.Met {
		t.Fatalf("0.61 ≤ 0.6: %+v", g)
	}
	if g := atLeast("ratio", 20, 20, "%.1fx"); !g.Met || g.Target != "≥ 20.0x" {
		t.Fatalf("atLeast = %+v", g)
	}
	if g := atLeast("ratio", 19.9, 20, "%.1fx"); g.Met {
		t.Fatalf("19.9 ≥ 20: %+v", g)
	}
	if metMissed(true) != "met" || metMissed(false) != "missed" {
		t.Fatal("metMissed")
	}
}

func TestMemReportGoalsForDualgate(t *testing.T) {
	rep := sampleReport()
	if len(rep.Goals) != 0 {
		t.Fatalf("goals for %q: %+v", rep.Server, rep.Goals)
	}
	rep.Server = "dualgate"
	rep.Notes = nil
	rep.finish()
	if len(rep.Goals) != 1 || rep.Goals[0].Met || rep.Goals[0].Limit != GoalPlainKiB {
		t.Fatalf("plain goals %+v", rep.Goals)
	}
	rep.Transport = "tls"
	rep.finish()
	if len(rep.Goals) != 1 || !rep.Goals[0].Met || rep.Goals[0].Limit != GoalTLSKiB {
		t.Fatalf("TLS goals %+v", rep.Goals)
	}
}
