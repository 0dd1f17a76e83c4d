package gateway

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// flood writes QoS 0 publishes on topic to addr as fast as the socket
// takes them, until stop is closed; it returns how many it wrote.
func flood(t *testing.T, addr, clientID, topic string, stop <-chan struct{}) <-chan int {
	t.Helper()
	f := dialRaw(t, addr)
	f.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(clientID)})
	var batch []byte
	payload := []byte(strings.Repeat("f", 256))
	for range 64 {
		batch = mqttcodec.AppendPublish(batch, 4, &mqttcodec.Publish{Topic: []byte(topic), Payload: payload})
	}
	done := make(chan int, 1)
	go func() {
		n := 0
		defer func() { done <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Write the whole batch, resuming where a full socket left
			// off: the gateway may not be reading it (backpressure).
			for off := 0; off < len(batch); {
				_ = f.conn.SetWriteDeadline(time.Now().Add(time.Second))
				w, err := f.conn.Write(batch[off:])
				off += w
				if err != nil {
					select {
					case <-stop:
						return
					default:
					}
				}
			}
			n += 64
		}
	}()
	return done
}

// One device floods QoS 0 through the bridge, far faster than the broker
// takes it, while 100 devices publish a message every 200 ms: the flooder
// is paused at three quarters of its share of the buffer, at once, at the
// message that reached it (the rest of what the gateway read from it and
// its own socket hold what it sends), so it loses nothing, and the 100
// lose nothing. Before, the flood filled the whole buffer and every
// device's QoS 0 telemetry was dropped with it; then, with the pause
// applied after the read in hand, the flooder lost most of its own.
func TestQoS0FlooderDoesNotDropOthers(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, func(c *Config) {
		c.UpstreamBuffer = 2000
	})
	waitUpstream(t, g)

	const devices, each = 100, 10
	got := newCounter()
	cloud := cloudApp(t, br, "cloud-telemetry", true)
	if tok := cloud.Subscribe("good/#", 0, got.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("cloud subscribe: %v", tok.Error())
	}
	var good []*raw
	for i := range devices {
		d := dialRaw(t, g.PlainAddr())
		d.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(fmt.Sprintf("meter-%03d", i))})
		good = append(good, d)
	}

	stop := make(chan struct{})
	var stopOnce sync.Once
	stopFlood := func() { stopOnce.Do(func() { close(stop) }) }
	t.Cleanup(stopFlood)
	flooded := flood(t, g.PlainAddr(), "flooder", "flood/x", stop)
	eventually(t, 10*time.Second, "the flooder held back", func() bool {
		return g.upstream.Stats().Throttled > 0
	})

	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for seq := range each {
		<-tick.C
		for i, d := range good {
			d.send(mqttcodec.AppendPublish(nil, 4, &mqttcodec.Publish{
				Topic:   []byte(fmt.Sprintf("good/meter-%03d", i)),
				Payload: []byte(fmt.Sprintf("meter-%03d/%d", i, seq)),
			}))
		}
	}
	want := devices * each
	waited := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for got.distinct() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the subscriber's count, as eventually does
	}
	stopFlood()
	n := <-flooded
	st := g.upstream.Stats()
	t.Logf("flooder wrote %d QoS 0 publishes, paused %d times; bridge forwarded %d, dropped %d (device_share %d, buffer_full %d); the 100 devices' messages arrived within %v of the last one sent",
		n, st.Throttled, st.ForwardedUp, st.DroppedQoS0, st.DroppedDeviceShare, st.DroppedBufferFull, time.Since(waited))
	if d := got.distinct(); d != want {
		var lost []string
		for i := range devices {
			for seq := range each {
				if p := fmt.Sprintf("meter-%03d/%d", i, seq); got.count(p) == 0 && len(lost) < 10 {
					lost = append(lost, p)
				}
			}
		}
		t.Fatalf("the broker got %d of the %d well-behaved devices' messages; lost e.g. %v; stats %+v", d, want, lost, st)
	}
	if st.DroppedBufferFull != 0 {
		t.Fatalf("%d messages dropped for a full buffer: the flooder took more than its share", st.DroppedBufferFull)
	}
	if st.DroppedQoS0 != 0 {
		t.Fatalf("%d QoS 0 messages dropped (device_share %d): the flooder was not held back at once", st.DroppedQoS0, st.DroppedDeviceShare)
	}
	// Backpressure first: the flooder was paused (its socket, not the
	// gateway, held what it sent), and counted.
	if m := metric(t, g, "dualgate_upstream_backpressure_total"); m == 0 {
		t.Fatal("dualgate_upstream_backpressure_total = 0: the flooder was never paused")
	}
	if g.Stats().ReadPauses.Load() == 0 {
		t.Fatal("no device was paused")
	}
}

// windowed publishes QoS 1 on topic from a new MQTT 5 device, keeping up
// to window unacknowledged, until stop is closed; it returns the
// acknowledgements received, by reason code.
func windowed(t *testing.T, addr, clientID, topic string, window int, stop <-chan struct{}) <-chan map[mqttcodec.ReasonCode]int {
	t.Helper()
	d := dialRaw(t, addr)
	ack := d.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V5, CleanStart: true, KeepAlive: 60, ClientID: []byte(clientID)})
	if ack.Properties.Has(mqttcodec.PropReceiveMaximum) {
		// Never past what the gateway advertised [MQTT-3.3.4-9].
		window = min(window, int(ack.Properties.ReceiveMaximum))
	}
	slots := make(chan struct{}, window)
	acks := make(chan map[mqttcodec.ReasonCode]int, 1)
	go func() {
		got := map[mqttcodec.ReasonCode]int{}
		defer func() { acks <- got }()
		for {
			p, err := d.next(10 * time.Second)
			if err != nil {
				return
			}
			if p.Type == mqttcodec.PUBACK {
				got[p.Ack.ReasonCode]++
				<-slots
			}
		}
	}()
	go func() {
		// Closing ends the reader too.
		defer func() { _ = d.conn.Close() }()
		payload := []byte(strings.Repeat("s", 4096))
		for pid := uint16(1); ; pid = pid%65535 + 1 {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return
			}
			pub := mqttcodec.AppendPublish(nil, mqttcodec.V5, &mqttcodec.Publish{Topic: []byte(topic), QoS: 1, PacketID: pid, Payload: payload})
			if _, err := d.conn.Write(pub); err != nil {
				return
			}
		}
	}()
	return acks
}

// Publishers of QoS 1 keep the bridge's memory buffer full, so that the
// flow goes through the spill files on disk (written, read back, sent):
// a plain device's PINGREQ on the same event loop is not held up by
// those disk writes, which happen on the spill writer's goroutine.
func TestSpillDoesNotDelayPing(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, func(c *Config) {
		c.EventLoops = 1
		c.UpstreamBuffer = 4
	})
	waitUpstream(t, g)
	stop := make(chan struct{})
	var stopOnce sync.Once
	stopAll := func() { stopOnce.Do(func() { close(stop) }) }
	t.Cleanup(stopAll)
	var results []<-chan map[mqttcodec.ReasonCode]int
	for i := range 4 {
		results = append(results, windowed(t, g.PlainAddr(), fmt.Sprintf("logger-%d", i), fmt.Sprintf("logs/logger-%d", i), 32, stop))
	}
	eventually(t, 10*time.Second, "messages spilled to disk", func() bool { return g.upstream.Stats().SpilledTotal > 100 })

	pinger := dialRaw(t, g.PlainAddr())
	pinger.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte("pinger")})
	before := g.upstream.Stats().SpilledTotal
	rtts := pingRTTs(t, pinger, 100, nil)
	spilled := g.upstream.Stats().SpilledTotal - before
	stopAll()
	acked := map[mqttcodec.ReasonCode]int{}
	for _, r := range results {
		for rc, n := range <-r {
			acked[rc] += n
		}
	}
	p99, worst := rtts[len(rtts)*99/100-1], rtts[len(rtts)-1]
	t.Logf("PINGREQ round trips while %d messages went through the spill files (%v acknowledgements by reason): p50 %v, p99 %v, max %v",
		spilled, acked, rtts[len(rtts)/2], p99, worst)
	if spilled == 0 {
		t.Fatal("nothing was spilled while the pings ran")
	}
	if acked[mqttcodec.Success] == 0 {
		t.Fatalf("no publish acknowledged: %v", acked)
	}
	if worst > 2*time.Second {
		t.Fatalf("a PINGREQ waited %v while the bridge spilled", worst)
	}
}

// The overload settings come from flags and the environment, have their
// defaults, and bad values are refused with the setting's name.
func TestOverloadConfig(t *testing.T) {
	cfg, err := LoadConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MuxPending != 4096 || cfg.UpstreamDeviceBuffer != 0 {
		t.Fatalf("defaults: --mux-pending %d, --upstream-device-buffer %d", cfg.MuxPending, cfg.UpstreamDeviceBuffer)
	}
	env := map[string]string{"DUALGATE_MUX_PENDING": "100"}
	cfg, err = LoadConfig([]string{"--upstream-device-buffer", "50"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MuxPending != 100 || cfg.UpstreamDeviceBuffer != 50 {
		t.Fatalf("config %+v", cfg)
	}
	for _, args := range [][]string{
		{"--mux-pending", "-1"},
		{"--upstream-device-buffer", "-1"},
		{"--upstream-device-buffer", "20000", "--upstream-buffer", "10000"},
	} {
		_, err := LoadConfig(args, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want an error naming %s", args, err, args[0])
		}
	}
}
