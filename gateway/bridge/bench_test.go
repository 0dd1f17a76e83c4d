package bridge

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// The benchmarks measure messages per second through a real Mosquitto on
// loopback, end to end: device -> Publish -> broker -> a subscribed
// application, and application -> broker -> Deliver. Run them with a fixed
// count, e.g.
//
//	go test -run '^$' -bench . -benchtime 50000x ./gateway/bridge/
//
// The figure is reported as msg/s; ns/op is its inverse.

var benchPayload = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") // 64 bytes

// msg is a device message of the benchmark.
func msg(client, topic string, qos byte) *session.Message {
	return &session.Message{ClientID: client, Topic: topic, Payload: benchPayload, QoS: qos}
}

// BenchmarkUplink: device messages through Publish to the broker. "acked"
// stops the clock when the broker acknowledged every QoS 1 message (the
// contract of Publish); the others when a subscribed application received
// every message (QoS 0 has no other proof of arrival).
func BenchmarkUplink(b *testing.B) {
	b.Run("v5", benchUplink)
	b.Run("v3.1.1", benchUplink) // testConfig reads the protocol from the name
}

func benchUplink(b *testing.B) {
	for _, tc := range []struct {
		name       string
		qos        byte
		subscriber bool
	}{
		{name: "qos0", qos: 0, subscriber: true},
		{name: "qos1-acked", qos: 1},
		{name: "qos1-end-to-end", qos: 1, subscriber: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			br := startBroker(b)
			n := int64(b.N)
			var arrived, acked atomic.Int64
			done := make(chan struct{})
			if tc.subscriber {
				app := peer(b, br.URL(), "bench-app", true, func(mqtt.Client, mqtt.Message) {
					if arrived.Add(1) == n {
						close(done)
					}
				})
				mustToken(b, app.Subscribe("bench/#", tc.qos, nil), "subscribe")
			}
			cfg := testConfig(b, br.URL())
			cfg.BufferMessages = b.N + 1
			cfg.BufferBytes = 1 << 30
			bg := startBridge(b, cfg)
			waitReady(b, bg)
			var ack func(mqttcodec.ReasonCode)
			if tc.qos == 1 {
				ack = func(rc mqttcodec.ReasonCode) {
					if rc == mqttcodec.Success && acked.Add(1) == n && !tc.subscriber {
						close(done)
					}
				}
			}
			ids := make([]string, 64)
			topics := make([]string, 64)
			for i := range ids {
				ids[i] = "dev" + strconv.Itoa(i)
				topics[i] = "bench/" + ids[i] + "/t"
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				bg.Publish(msg(ids[i%64], topics[i%64], tc.qos), ack)
			}
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				b.Fatalf("%d arrived, %d acknowledged of %d", arrived.Load(), acked.Load(), b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
			if tc.qos == 1 {
				waitFor(b, 10*time.Second, "the acks", func() bool { return acked.Load() == n })
			}
		})
	}
}

func BenchmarkDownlink(b *testing.B) {
	b.Run("v5", benchDownlink)
	b.Run("v3.1.1", benchDownlink)
}

func benchDownlink(b *testing.B) {
	for _, qos := range []byte{0, 1} {
		b.Run("qos"+strconv.Itoa(int(qos)), func(b *testing.B) {
			br := startBroker(b)
			var delivered atomic.Int64
			var markers atomic.Int64
			done := make(chan struct{})
			n := int64(b.N)
			cfg := testConfig(b, br.URL())
			cfg.Deliver = func(m Message) {
				if m.Topic == "bench/marker" {
					markers.Add(1)
					return
				}
				if delivered.Add(1) == n {
					close(done)
				}
			}
			bg := startBridge(b, cfg)
			waitReady(b, bg)
			bg.Subscribe(&handle{"bench"}, session.Subscription{Filter: "bench/#", QoS: 1}, true, nil)
			app := peer(b, br.URL(), "bench-source", true, nil)
			waitFor(b, 10*time.Second, "the subscription", func() bool {
				mustToken(b, app.Publish("bench/marker", 1, false, "m"), "marker")
				time.Sleep(20 * time.Millisecond)
				return markers.Load() > 0
			})
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var last mqtt.Token
			for i := 0; i < b.N; i++ {
				last = app.Publish("bench/data", qos, false, benchPayload)
			}
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				b.Fatalf("%d of %d messages delivered", delivered.Load(), b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			last.Wait()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
		})
	}
}
