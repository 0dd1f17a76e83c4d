package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

func TestStampCommand(t *testing.T) {
	sent := time.Unix(1767225600, 123456789)
	b := StampCommand(sent, 42, 100)
	if len(b) != 100 || !strings.HasPrefix(string(b), "dualbench t=1767225600123456789 s=42 x") {
		t.Fatalf("payload %q (%d bytes)", b, len(b))
	}
	got, ok := ParseStamp(b)
	if !ok || !got.Equal(sent) {
		t.Fatalf("ParseStamp = %v, %v", got, ok)
	}
	// Shorter than the stamp: the stamp is whole anyway.
	if b := StampCommand(sent, 7, 10); !strings.HasSuffix(string(b), " s=7 ") {
		t.Fatalf("short payload %q", b)
	}
	for _, bad := range []string{"", "hello", "dualbench t=", "dualbench t=abc s=1", "dualbench t=-5 s=1"} {
		if _, ok := ParseStamp([]byte(bad)); ok {
			t.Errorf("ParseStamp(%q) accepted", bad)
		}
	}
	if got, ok := ParseStamp([]byte("dualbench t=99")); !ok || got.UnixNano() != 99 {
		t.Errorf("stamp without a sequence: %v %v", got, ok)
	}
}

// TestPoolDevicesThroughTheUpgrade runs device pools against dualgate:
// commands reach plain devices through the upgrade, the devices go back to
// plain when told, and the second upgrade resumes the TLS session.
func TestPoolDevicesThroughTheUpgrade(t *testing.T) {
	g := startDualgate(t, DualgateConfig{SecureIdle: 300 * time.Millisecond})
	api := NewAPIClient(g.APIURL(), "", 8)
	defer api.Close()
	for _, version := range []byte{mqttcodec.V311, mqttcodec.V5} {
		t.Run("MQTT "+mqttName(int(version)), func(t *testing.T) {
			prefix := fmt.Sprintf("dev%d-", version)
			spec := ClientSpec{
				Addr: g.Plain, MQTTVersion: int(version), ClientIDPrefix: prefix, KeepAlive: time.Minute,
				Device: &DeviceSpec{TLS: TLSSpec{CAFile: g.CAFile, Resume: true}},
			}
			cfg, err := spec.ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			const n = 5
			p := runPool(t, cfg, n)
			defer func() { _ = p.Close(context.Background()) }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			waitGateway(t, ctx, api, "every device on plain", func(s GatewayStats) bool { return s.Plain() >= n && s.TLS() == 0 })

			for round := 1; round <= 2; round++ {
				for i := range n {
					id := prefix + itoa(i)
					_, err := api.PostCommand(ctx, id, CommandRequest{
						Topic: "devices/" + id + "/commands/unlock", Payload: string(StampCommand(time.Now(), i, 100)), QoS: 1, Secure: true,
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				eventually(t, 20*time.Second, "every command acknowledged", func() bool {
					return p.Stats().CommandAcks == int64(round*n)
				})
				eventually(t, 20*time.Second, "every device back on plain", func() bool {
					s := p.Stats()
					return s.Downgrades == int64(round*n) && s.OnTLS == 0
				})
				waitGateway(t, ctx, api, "the gateway to see every device on plain", func(s GatewayStats) bool { return s.Plain() == n && s.TLS() == 0 })
			}
			s := p.Stats()
			if s.Upgrades != 2*n || s.Instructions != 4*n || s.Ignored != 0 || s.Dropped != 0 || s.Live != n || s.MoveRetries != 0 {
				t.Fatalf("stats = %+v", s)
			}
			// The first upgrade of each device is a full handshake, the
			// second resumes its own session.
			if s.Resumed != n {
				t.Fatalf("resumed %d handshakes, want %d", s.Resumed, n)
			}
			if lat := p.CommandLatency().Summary(); lat.Count != 2*n || lat.Max <= 0 || lat.Max > 10*time.Second {
				t.Fatalf("command latency %+v", lat)
			}
			_, _, hs := p.Histograms()
			if hs.Count() != 2*n {
				t.Fatalf("%d handshakes timed, want %d", hs.Count(), 2*n)
			}
			st := closePool(t, p)
			if st.Live != 0 || st.Dropped != 0 {
				t.Fatalf("after close: %+v", st)
			}
		})
	}
}

// waitGateway polls the gateway's stats until cond holds.
func waitGateway(t *testing.T, ctx context.Context, api *APIClient, what string, cond func(GatewayStats) bool) {
	t.Helper()
	var last GatewayStats
	for ctx.Err() == nil {
		s, err := api.Stats(ctx)
		if err == nil && cond(s) {
			return
		}
		last = s
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last stats %+v", what, last)
}

func TestPoolDeviceIgnoresDowngradeOnPlain(t *testing.T) {
	srv := newFakeServer(t, fakeInstructPlain)
	spec := ClientSpec{Addr: srv.addr(), Device: &DeviceSpec{TLS: TLSSpec{Insecure: true}}}
	cfg, err := spec.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	p := runPool(t, cfg, 2)
	eventually(t, 5*time.Second, "both instructions acknowledged", func() bool {
		_, acks, _ := srv.snapshot()
		return acks == 2
	})
	s := closePool(t, p)
	if s.Instructions != 2 || s.Ignored != 2 || s.Downgrades != 0 || s.Dropped != 0 || s.Connected != 2 {
		t.Fatalf("stats = %+v", s)
	}
}
