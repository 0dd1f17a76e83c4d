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
			_ = f.conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := f.conn.Write(batch); err != nil {
				// A full socket for a second: the gateway is not reading
				// it (backpressure); keep trying until told to stop.
				continue
			}
			n += 64
		}
	}()
	return done
}

// One device floods QoS 0 through the bridge, far faster than the broker
// takes it, while 100 devices publish a message every 200 ms: the flooder
// loses its own messages past its share of the buffer (counted as
// device_share), and the 100 lose nothing. Before, the flood filled the
// whole buffer and every device's QoS 0 telemetry was dropped with it.
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
	eventually(t, 10*time.Second, "the flooder past its share", func() bool {
		return g.upstream.Stats().DroppedDeviceShare > 0
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
	t.Logf("flooder wrote %d QoS 0 publishes; bridge forwarded %d, dropped %d (device_share %d, buffer_full %d); the 100 devices' messages arrived within %v of the last one sent",
		n, st.ForwardedUp, st.DroppedQoS0, st.DroppedDeviceShare, st.DroppedBufferFull, time.Since(waited))
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
	if m := metric(t, g, `dualgate_upstream_dropped_total{reason="device_share"}`); m == 0 {
		t.Fatalf("dualgate_upstream_dropped_total{reason=\"device_share\"} = %v", m)
	}
}
