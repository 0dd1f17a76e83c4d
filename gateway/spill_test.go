package gateway

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// With the broker away and the spill at its cap, a device's QoS 1 publish
// is refused with PUBACK 0x97 (and counted), while a command posted through
// the API at that moment is still accepted (202), stored, and delivered.
// Once the broker is back, every publish that was taken reaches it. The
// second case has room under the caps but a file system that cannot keep
// the free space asked for, as on a full disk.
func TestFullSpillKeepsCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(c *Config)
	}{
		{name: "spill at its byte cap", mod: func(c *Config) { c.UpstreamSpillBytes = 4096 }},
		{name: "spill disk short of space", mod: func(c *Config) { c.UpstreamSpillKeepFree = 1 << 62 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := testbroker.New(t) // not started: the broker is away
			spill := filepath.Join(t.TempDir(), "spill")
			g := startGateway(t, func(c *Config) {
				c.Upstream = br.URL()
				c.UpstreamClientID = "gw-spill"
				c.UpstreamBuffer = 4
				c.UpstreamSpillDir = spill
				c.SecureIdle = time.Minute
				tc.mod(c)
			})

			dev := dialRaw(t, g.PlainAddr())
			dev.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, KeepAlive: 60, ClientID: []byte("meter-9")})
			const n = 30
			for i := range n {
				dev.send(mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{
					Topic: []byte("telemetry/meter-9"), QoS: 1, PacketID: uint16(i + 1),
					Payload: []byte(fmt.Sprintf("%03d:%s", i, strings.Repeat("m", 300)))}))
			}
			// Past the memory buffer, the spill writer takes or refuses
			// each publish on its own goroutine.
			eventually(t, 10*time.Second, "every publish taken or refused", func() bool {
				st := g.upstream.Stats()
				return st.Handoff == 0 && st.Buffered+int(st.SpillFull) == n
			})
			refused := map[uint16]bool{}
			for len(refused) < int(g.upstream.Stats().SpillFull) {
				p := dev.read(10 * time.Second)
				if p.Type != mqttcodec.PUBACK || p.Ack.ReasonCode != mqttcodec.QuotaExceeded {
					t.Fatalf("got %s %s, want PUBACK 0x97", p.Type, p.Ack.ReasonCode)
				}
				refused[p.Ack.PacketID] = true
			}
			st := g.upstream.Stats()
			if st.SpillFull != uint64(len(refused)) || st.Buffered+len(refused) != n {
				t.Fatalf("%d refused; stats %+v", len(refused), st)
			}
			if st.SpilledBytes > 4096 {
				t.Fatalf("spill holds %d bytes", st.SpilledBytes)
			}
			if m := metric(t, g, "dualgate_upstream_spill_full_total"); m != float64(len(refused)) {
				t.Fatalf("dualgate_upstream_spill_full_total %v, want %d", m, len(refused))
			}

			// The command store takes a command while the spill is full.
			id, status := postCommand(t, g, "car-5", `{"topic":"devices/car-5/commands/lights","payload":"on","secure":false}`)
			if status != "pending" {
				t.Fatalf("status %s", status)
			}
			if v := commandStatus(t, g, id); v.Status != "pending" {
				t.Fatalf("stored command: %+v", v)
			}
			car := newDevice311(t, g, "car-5")
			car.connect(false, g.PlainAddr())
			car.query()
			if c := nextCommand(t, car.cmds); c.payload != "on" {
				t.Fatalf("command %+v", c)
			}
			waitStatus(t, g, id, "delivered")

			// The broker returns: what was taken goes up, and its device
			// gets PUBACK Success.
			br.Start()
			taken := 0
			for taken < n-len(refused) {
				p := dev.read(20 * time.Second)
				if p.Type != mqttcodec.PUBACK || p.Ack.ReasonCode != mqttcodec.Success || refused[p.Ack.PacketID] {
					t.Fatalf("got %s %d %s after the broker returned", p.Type, p.Ack.PacketID, p.Ack.ReasonCode)
				}
				taken++
			}
			if st := g.upstream.Stats(); st.ForwardedUp != uint64(taken) || st.Buffered != 0 {
				t.Fatalf("after the broker returned: %+v", st)
			}
			if _, err := os.Stat(filepath.Join(spill, "uplink.lock")); err != nil {
				t.Fatalf("the spill did not use --upstream-spill-dir: %v", err)
			}
		})
	}
}

// The spill settings come from flags and the environment, have their
// defaults, and bad values are refused with the setting's name.
func TestSpillConfig(t *testing.T) {
	env := map[string]string{"DUALGATE_UPSTREAM_SPILL_DIR": "/var/spool/dualgate"}
	cfg, err := LoadConfig([]string{"--upstream-spill-bytes", "1048576"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UpstreamSpillDir != "/var/spool/dualgate" || cfg.UpstreamSpillBytes != 1<<20 ||
		cfg.UpstreamSpillMessages != 250000 || cfg.UpstreamSpillKeepFree != 64<<20 {
		t.Fatalf("config %+v", cfg)
	}
	for _, args := range [][]string{
		{"--upstream-spill-bytes", "-1"},
		{"--upstream-spill-messages", "-5"},
		{"--upstream-spill-keep-free", "-1"},
		{"--upstream-spill-dir", "/srv/dg", "--data", "/srv/dg/"},
	} {
		_, err := LoadConfig(args, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want an error naming %s", args, err, args[0])
		}
	}
}
