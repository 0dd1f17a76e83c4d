package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestRunUpgradeAgainstDualgate(t *testing.T) {
	tests := []struct {
		name    string
		version int
		devices int
		rounds  int
		rate    float64
	}{
		{name: "20 devices at once, MQTT 3.1.1", version: 4, devices: 20, rounds: 2},
		{name: "one device, MQTT 5, at a rate", version: 5, devices: 1, rounds: 3, rate: 50},
	}
	bin := dualgateBinary(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			fc := testFleet("", tt.devices, 1)
			fc.Client.MQTTVersion = tt.version
			fc.Client.KeepAlive = time.Minute
			var out, progress strings.Builder
			cfg := UpgradeConfig{
				Gateway:  GatewayTarget{Spawn: &DualgateConfig{Binary: bin, SecureIdle: 300 * time.Millisecond, SecureIdleFixed: true}},
				Fleet:    fc,
				Resume:   true,
				Kex:      "x25519",
				Rounds:   tt.rounds,
				Rate:     tt.rate,
				OutDir:   dir,
				Progress: &progress,
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rep, err := RunUpgrade(ctx, cfg, &out, zap.NewNop())
			if err != nil {
				t.Fatalf("RunUpgrade: %v\n%s\n%s", err, progress.String(), out.String())
			}
			total := int64(tt.devices * tt.rounds)
			if rep.Connected != int64(tt.devices) || rep.Sent != total || rep.Accepted != total || rep.Acked != total || rep.Delivered != total {
				t.Fatalf("report = %+v", rep)
			}
			if rep.Latency.Count != total || rep.Latency.P50 <= 0 || rep.Latency.Max > 10*time.Second || rep.GatewayLatency.Count != total {
				t.Fatalf("latency: devices %+v, gateway %+v", rep.Latency, rep.GatewayLatency)
			}
			// The gateway's record runs from acceptance, after the POST was
			// sent: it cannot be longer than the devices' view.
			if rep.GatewayLatency.P50 > rep.Latency.Max {
				t.Fatalf("gateway p50 %v beyond the devices' max %v", rep.GatewayLatency.P50, rep.Latency.Max)
			}
			// Every command went through an upgrade; every device came
			// back to plain but for the last round, which the run does not
			// wait for. The second upgrade of a device resumes.
			if rep.Upgrades != total || rep.Downgrades < total-int64(tt.devices) || rep.Resumed < total-int64(tt.devices) {
				t.Fatalf("upgrades %d, downgrades %d, resumed %d", rep.Upgrades, rep.Downgrades, rep.Resumed)
			}
			if len(rep.RoundResults) != tt.rounds || rep.Completion.Count != int64(tt.rounds) || rep.MaxTLS < 1 || len(rep.Samples) == 0 {
				t.Fatalf("rounds %+v, completion %+v, max TLS %d, %d samples", rep.RoundResults, rep.Completion, rep.MaxTLS, len(rep.Samples))
			}
			if len(rep.Distribution) != len(DistributionPercentiles()) {
				t.Fatalf("distribution %+v", rep.Distribution)
			}
			wantGoals := 0
			if tt.devices == 1 {
				wantGoals = 1
			}
			if len(rep.Goals) != wantGoals {
				t.Fatalf("goals %+v", rep.Goals)
			}
			for _, f := range []string{"report.md", "report.json", "latency.png", "tls-sessions.png"} {
				raw, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil || len(raw) == 0 {
					t.Fatalf("%s: %v (%d bytes)", f, err, len(raw))
				}
				if strings.HasSuffix(f, ".png") {
					if _, err := png.Decode(bytes.NewReader(raw)); err != nil {
						t.Fatalf("%s: %v", f, err)
					}
				}
			}
			var back UpgradeReport
			raw, _ := os.ReadFile(filepath.Join(dir, "report.json"))
			if err := json.Unmarshal(raw, &back); err != nil || back.Acked != total {
				t.Fatalf("report.json: %v %+v", err, back)
			}
			if !strings.Contains(progress.String(), "round 1/") || !strings.Contains(out.String(), "latency       p50") {
				t.Fatalf("progress:\n%s\noutput:\n%s", progress.String(), out.String())
			}
		})
	}
}
