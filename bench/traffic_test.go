package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestPerDayAndBreakEven(t *testing.T) {
	// The figures of ANCHORS.md: 160 B plain and 204 B TLS 1.3 per
	// keepalive cycle; upgrade cycles of 4,146 B (full) and 3,267 B
	// (resumed).
	plain, tls := PerDay(160, time.Minute), PerDay(204, time.Minute)
	if plain != 230400 || tls != 293760 {
		t.Fatalf("per day at 60 s: plain %v, TLS %v", plain, tls)
	}
	if got := PerDay(160, 5*time.Minute); got != 46080 {
		t.Fatalf("per day at 300 s: %v", got)
	}
	if got := PerDay(160, 0); got != 0 {
		t.Fatalf("per day at 0 s: %v", got)
	}
	near := func(a, b float64) bool { return a-b < 0.05 && b-a < 0.05 }
	if got := BreakEvenCommands(plain, tls, 4146); !near(got, 15.28) {
		t.Fatalf("break-even full = %v", got)
	}
	if got := BreakEvenCommands(plain, tls, 3267); !near(got, 19.39) {
		t.Fatalf("break-even resumed = %v", got)
	}
	if got := BreakEvenCommands(PerDay(160, 5*time.Minute), PerDay(204, 5*time.Minute), 3267); !near(got, 3.88) {
		t.Fatalf("break-even at 300 s = %v", got)
	}
	if got := BreakEvenCommands(plain, tls, 0); got != 0 {
		t.Fatalf("break-even of an empty cycle = %v", got)
	}
}

func TestWireFigures(t *testing.T) {
	m := LoopbackWireModel()
	// PINGREQ and its ACK-carrying PINGRESP, and the device's lone ACK.
	ping := m.Figure(TCPCounters{BytesSent: 2, BytesReceived: 2, SegsOut: 2, SegsIn: 1, HasBytesSent: true}, false)
	if ping.Total() != 160 || ping.SegsOut != 2 || ping.SegsIn != 1 {
		t.Fatalf("keepalive cycle = %+v (%d B)", ping, ping.Total())
	}
	// A connection from its SYN: the SYN options count once each way.
	conn := m.Figure(TCPCounters{BytesSent: 20, BytesReceived: 4, SegsOut: 3, SegsIn: 2, HasBytesSent: true}, true)
	if conn.Out != 20+3*52+8 || conn.In != 4+2*52+8 {
		t.Fatalf("connection = %+v", conn)
	}
	sum := ping.Plus(conn)
	if sum.Total() != ping.Total()+conn.Total() || sum.SegsOut != 5 || sum.SegsIn != 3 || sum.PayloadOut != 22 {
		t.Fatalf("sum = %+v", sum)
	}
	mean := MeanFigure([]WireFigure{ping, ping.Plus(m.Figure(TCPCounters{SegsOut: 1, HasBytesSent: true}, false))})
	if mean.Samples != 2 || mean.MinTotal != 160 || mean.MaxTotal != 212 || mean.Total() != 186 {
		t.Fatalf("mean = %+v (%d B)", mean, mean.Total())
	}
	if got := MeanFigure(nil); got != (WireFigure{}) {
		t.Fatalf("mean of nothing = %+v", got)
	}
}

func TestWireModelFor(t *testing.T) {
	v4, v6 := WireModelFor("127.0.0.1"), WireModelFor("::1")
	if v6.HeaderBytes != v4.HeaderBytes+20 {
		t.Fatalf("IPv4 %d B, IPv6 %d B per segment", v4.HeaderBytes, v6.HeaderBytes)
	}
	raw, err := os.ReadFile("/proc/sys/net/ipv4/tcp_timestamps")
	if err != nil {
		t.Fatal(err)
	}
	want := 52
	if strings.TrimSpace(string(raw)) == "0" {
		want = 40
	}
	if v4.HeaderBytes != want {
		t.Fatalf("IPv4 header %d B, want %d", v4.HeaderBytes, want)
	}
}

func TestRunTrafficAgainstDualgate(t *testing.T) {
	dir := t.TempDir()
	var out, progress strings.Builder
	cfg := TrafficConfig{
		Gateway:      GatewayTarget{Spawn: &DualgateConfig{Binary: dualgateBinary(t), SecureIdle: time.Second}},
		MQTTVersions: []int{4, 5},
		Kex:          []string{"x25519"},
		Cycles:       2,
		Settle:       150 * time.Millisecond,
		CycleWait:    20 * time.Second,
		OutDir:       dir,
		Progress:     &progress,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := RunTraffic(ctx, cfg, &out, zap.NewNop())
	if err != nil {
		t.Fatalf("RunTraffic: %v\n%s\n%s", err, progress.String(), out.String())
	}
	t.Log(out.String())
	if len(rep.Runs) != 2 {
		t.Fatalf("%d runs", len(rep.Runs))
	}
	hdr := uint64(rep.Model.HeaderBytes)
	for _, run := range rep.Runs {
		// PINGREQ and PINGRESP are 2 B each, one segment each way, and
		// the device's delayed ACK: 3 segments.
		if p := run.PlainIdle; p.PayloadOut != 2 || p.PayloadIn != 2 || p.SegsOut+p.SegsIn < 3 || p.Total() != 4+uint64(p.SegsOut+p.SegsIn)*hdr {
			t.Errorf("MQTT %d plain keepalive cycle = %+v", run.MQTTVersion, p)
		}
		// On TLS 1.3 each 2 B packet is a 24 B record.
		if p := run.TLSIdle; p.PayloadOut != 24 || p.PayloadIn != 24 || p.Total() <= run.PlainIdle.Total() {
			t.Errorf("MQTT %d TLS keepalive cycle = %+v", run.MQTTVersion, p)
		}
		if run.PlainCommand.PayloadIn < uint64(rep.PayloadSize) || run.TLSCommand.PayloadIn <= run.PlainCommand.PayloadIn {
			t.Errorf("MQTT %d commands: plain %+v, TLS %+v", run.MQTTVersion, run.PlainCommand, run.TLSCommand)
		}
		if len(run.Cycles) != 2 || run.Cycles[0].Resumed || !run.Cycles[1].Resumed {
			t.Fatalf("MQTT %d cycles = %+v", run.MQTTVersion, run.Cycles)
		}
		for _, c := range run.Cycles {
			if c.Group != "X25519" || c.Version != "TLS 1.3" {
				t.Errorf("cycle TLS %+v", c.TLSSession)
			}
			if c.Total != c.Plain.Plus(c.TLS).Plus(c.Return) || c.Plain.Total() == 0 || c.Return.Total() == 0 {
				t.Errorf("cycle legs %+v", c)
			}
			if c.Latency <= 0 || c.Latency > 5*time.Second || c.Duration < time.Second {
				t.Errorf("cycle latency %v, duration %v", c.Latency, c.Duration)
			}
		}
		// Resumption skips the certificate: the resumed TLS leg is
		// smaller than the full one.
		if full, res := run.Cycles[0].TLS.Total(), run.Cycles[1].TLS.Total(); res >= full {
			t.Errorf("MQTT %d TLS leg full %d B, resumed %d B", run.MQTTVersion, full, res)
		}
		if len(run.Sessions) != 3 || run.Sessions[0].TLS || !run.Sessions[1].TLS || run.Sessions[1].Resumed || !run.Sessions[2].Resumed {
			t.Fatalf("sessions %+v", run.Sessions)
		}
		if run.Sessions[1].Bytes.Total() <= run.Sessions[0].Bytes.Total() {
			t.Errorf("TLS session %d B, plain %d B", run.Sessions[1].Bytes.Total(), run.Sessions[0].Bytes.Total())
		}
	}
	// Two keepalives per version; a break-even per cycle.
	if len(rep.Days) != 4 || len(rep.Days[0].BreakEven) != 2 || rep.Days[0].BreakEven[0].CommandsPerDay <= 0 {
		t.Fatalf("per day = %+v", rep.Days)
	}
	if len(rep.Goals) != 2 {
		t.Fatalf("goals = %+v", rep.Goals)
	}
	var back TrafficReport
	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &back); err != nil || len(back.Runs) != 2 || len(back.Goals) != 2 {
		t.Fatalf("report.json: %v %+v", err, back)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## MQTT 3.1.1", "## MQTT 5", "plain keepalive cycle", "break-even", "## Goals", "one upgrade cycle with resumption"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if !strings.Contains(progress.String(), "upgrade cycle") {
		t.Errorf("progress: %s", progress.String())
	}
}

// A resumed cycle's goal depends on its key exchange: the hybrid's key
// shares get their own budget (issue 17's table).
func TestResumedCycleGoal(t *testing.T) {
	for group, want := range map[string]float64{
		"X25519": 2500, "CurveP256": 2500, "X25519MLKEM768": 4500, "SecP256r1MLKEM768": 4500,
	} {
		if got := ResumedCycleGoal(group); got != want {
			t.Errorf("ResumedCycleGoal(%q) = %v, want %v", group, got, want)
		}
	}
}
