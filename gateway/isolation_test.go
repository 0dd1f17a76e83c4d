package gateway

import (
	"bufio"
	"crypto/tls"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// A TLS subscriber that stops reading while a plain device floods its
// topic with 500 x 60 KB: the flood is written to the subscriber's own
// queue, never on the publisher's event loop, so a plain device on the
// same loop keeps getting its PINGRESPs (it waited 10 s for each before),
// a plain subscriber that reads gets every message, and the stalled
// subscriber is disconnected once its queue passes the bound.
func TestSlowTLSReaderDoesNotStallEventLoop(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.EventLoops = 1
		// Room for the reading subscriber to fall behind on a loaded
		// machine; the stalled one passes it within the flood (30 MB).
		c.MaxOutbound = 12 << 20
	})

	// The stalled TLS subscriber.
	tc, err := tls.Dial("tcp", g.TLSAddr(), clientTLS(t, g))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	stalled := &raw{t: t, conn: tc, r: bufio.NewReader(tc)}
	stalled.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("stalled")})
	stalled.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("flood/#")}}}))
	if p := stalled.read(5 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	// From here on it reads nothing.

	reader := dialRaw(t, g.PlainAddr())
	reader.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("reader")})
	reader.send(mqttcodec.AppendSubscribe(nil, 4, &mqttcodec.Subscribe{PacketID: 1,
		Subscriptions: []mqttcodec.Subscription{{Filter: []byte("flood/#")}}}))
	if p := reader.read(5 * time.Second); p.Type != mqttcodec.SUBACK {
		t.Fatalf("got %s, want SUBACK", p.Type)
	}
	const messages = 500
	received := make(chan int, 1)
	go func() {
		// Read as fast as a device would: header, length, body skipped.
		_ = reader.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		n := 0
		for n < messages {
			first, err := reader.r.ReadByte()
			if err != nil {
				break
			}
			size, shift := 0, 0
			for {
				b, err := reader.r.ReadByte()
				if err != nil {
					break
				}
				size |= int(b&0x7f) << shift
				if shift += 7; b&0x80 == 0 {
					break
				}
			}
			if _, err := reader.r.Discard(size); err != nil {
				break
			}
			if mqttcodec.Type(first>>4) == mqttcodec.PUBLISH {
				n++
			}
		}
		received <- n
	}()

	pinger := dialRaw(t, g.PlainAddr())
	pinger.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("pinger")})
	publisher := dialRaw(t, g.PlainAddr())
	publisher.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, ClientID: []byte("publisher")})

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		payload := make([]byte, 60<<10)
		for range messages {
			if _, err := publisher.conn.Write(mqttcodec.AppendPublish(nil, 4,
				&mqttcodec.Publish{Topic: []byte("flood/x"), Payload: payload})); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
		}
	}()
	var rtts []time.Duration
	for range 100 {
		start := time.Now()
		pinger.send(mqttcodec.AppendPingreq(nil))
		if p := pinger.read(20 * time.Second); p.Type != mqttcodec.PINGRESP {
			t.Fatalf("got %s, want PINGRESP", p.Type)
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	if n := <-received; n != messages {
		t.Fatalf("the reading subscriber got %d of %d messages", n, messages)
	}
	eventually(t, 10*time.Second, "the stalled subscriber disconnected", func() bool {
		return g.Stats().SlowReaderClosed.Load() == 1
	})
	eventually(t, 10*time.Second, "the stalled subscriber's session to end", func() bool {
		_, ok := g.Registry().Get("stalled")
		return !ok
	})
	slices.Sort(rtts)
	p99, worst := rtts[len(rtts)*99/100-1], rtts[len(rtts)-1]
	t.Logf("PINGREQ round trips during the flood: p50 %v, p99 %v, max %v", rtts[len(rtts)/2], p99, worst)
	// Before, each waited for the stalled socket's 10 s write deadline.
	// The figure is a benchmark's; the test only tells the two apart.
	if worst > 2*time.Second {
		t.Fatalf("a PINGREQ waited %v behind a stalled TLS subscriber", worst)
	}
	// The loop's own lag is exported, sampled once a second.
	eventually(t, 10*time.Second, "the event loop lag sampled", func() bool {
		return metric(t, g, "dualgate_event_loop_lag_seconds_count") > 0
	})
	if n := metric(t, g, "dualgate_slow_reader_disconnects_total"); n != 1 {
		t.Fatalf("dualgate_slow_reader_disconnects_total = %v", n)
	}
}
