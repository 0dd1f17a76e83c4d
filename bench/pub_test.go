package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// checkPub checks a report's numbers against each other.
func checkPub(t *testing.T, rep *PubReport, cfg PubConfig) {
	t.Helper()
	want := int64(cfg.Publishers * cfg.Count)
	if rep.Sent != want {
		t.Errorf("sent %d, want %d", rep.Sent, want)
	}
	if cfg.QoS > 0 {
		if rep.Acked != want || rep.Received != want || rep.Lost != 0 || !rep.Complete {
			t.Errorf("QoS %d: acked %d, received %d, lost %d, complete %v (%s); want %d each and none lost",
				cfg.QoS, rep.Acked, rep.Received, rep.Lost, rep.Complete, rep.StoppedBy, want)
		}
		if rep.Ack.Count != want {
			t.Errorf("%d acknowledgement latencies for %d messages", rep.Ack.Count, want)
		}
	}
	if rep.Received+rep.Lost != rep.Sent || rep.Received > rep.Sent {
		t.Errorf("received %d + lost %d != sent %d", rep.Received, rep.Lost, rep.Sent)
	}
	if rep.Duplicates != 0 && cfg.QoS != 1 {
		t.Errorf("%d duplicates at QoS %d", rep.Duplicates, cfg.QoS)
	}
	e := rep.EndToEnd
	if e.Count != rep.Received || e.Count == 0 {
		t.Errorf("%d end-to-end latencies for %d received", e.Count, rep.Received)
	}
	if !(0 < e.P50 && e.P50 <= e.P90 && e.P90 <= e.P99 && e.P99 <= e.Max) {
		t.Errorf("end-to-end percentiles out of order: %+v", e)
	}
	if a := rep.Ack; cfg.QoS > 0 && !(0 < a.P50 && a.P50 <= a.P99 && a.P99 <= a.Max) {
		t.Errorf("ack percentiles out of order: %+v", a)
	}
	if rep.SendRate <= 0 || rep.ReceiveRate <= 0 || rep.ReceiveSeconds < rep.SendSeconds {
		t.Errorf("rates: send %.0f/s over %.3f s, receive %.0f/s over %.3f s", rep.SendRate, rep.SendSeconds, rep.ReceiveRate, rep.ReceiveSeconds)
	}
	if cfg.Rate > 0 {
		// Paced: the sends take (count-1)/rate at least.
		if min := float64(cfg.Count-1) / cfg.Rate; rep.SendSeconds < min*0.95 {
			t.Errorf("sent %d per publisher in %.3f s at %g/s: faster than the rate", cfg.Count, rep.SendSeconds, cfg.Rate)
		}
	}
}

func runPubTest(t *testing.T, cfg PubConfig) *PubReport {
	t.Helper()
	cfg.OutDir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out strings.Builder
	rep, err := RunPub(ctx, cfg, &out, zap.NewNop())
	if err != nil {
		t.Fatalf("RunPub: %v\n%s", err, out.String())
	}
	checkPub(t, rep, cfg)
	b, err := os.ReadFile(filepath.Join(cfg.OutDir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back PubReport
	if err := json.Unmarshal(b, &back); err != nil || back.Sent != rep.Sent || back.Received != rep.Received {
		t.Fatalf("report.json: %v, sent %d received %d", err, back.Sent, back.Received)
	}
	md, err := os.ReadFile(filepath.Join(cfg.OutDir, "report.md"))
	if err != nil || !strings.Contains(string(md), "# Publish throughput and latency") {
		t.Fatalf("report.md: %v\n%s", err, md)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out.String())
	}
	return rep
}

// dualbench pub straight to Mosquitto, every QoS. QoS 2 keeps to
// Mosquitto's 20 messages in flight and is paced: beyond its limits,
// Mosquitto drops QoS 2 messages of 3.1.1 clients.
func TestRunPubAgainstMosquitto(t *testing.T) {
	addr, _ := startMosquitto(t, nil)
	rates := []float64{0, 0, 1000}
	for _, qos := range []byte{0, 1, 2} {
		t.Run("QoS"+string('0'+rune(qos)), func(t *testing.T) {
			runPubTest(t, PubConfig{
				PubAddr: addr, Label: "mosquitto", Publishers: 3, Count: 300, QoS: qos, PayloadSize: 64,
				ClientIDPrefix: "pub-q" + string('0'+rune(qos)) + "-", Topic: "pubtest/" + string('0'+rune(qos)) + "/{i}",
				SubTopic: "pubtest/" + string('0'+rune(qos)) + "/#", Rate: rates[qos], InFlight: 20,
			})
		})
	}
	// Paced, MQTT 5.
	t.Run("paced MQTT 5", func(t *testing.T) {
		runPubTest(t, PubConfig{PubAddr: addr, Publishers: 2, Count: 150, Rate: 500, QoS: 1, MQTTVersion: mqttcodec.V5, PayloadSize: 100})
	})
}

// dualbench pub through a dualgate to Mosquitto, and routed by the
// gateway alone.
func TestRunPubThroughDualgate(t *testing.T) {
	broker, _ := startMosquitto(t, nil)
	g := startDualgate(t, DualgateConfig{Args: []string{"--upstream", "tcp://" + broker}})
	t.Run("to the broker", func(t *testing.T) {
		runPubTest(t, PubConfig{PubAddr: g.Plain, SubAddr: broker, Label: "dualgate -> mosquitto", Publishers: 3, Count: 300, QoS: 1})
	})
	t.Run("routed locally", func(t *testing.T) {
		runPubTest(t, PubConfig{PubAddr: g.Plain, Label: "dualgate", Publishers: 2, Count: 300, QoS: 1,
			Topic: "local/{i}", SubTopic: "local/#", ClientIDPrefix: "local-"})
	})
}

func TestPubConfigChecks(t *testing.T) {
	for _, c := range []PubConfig{
		{},
		{PubAddr: "x:1"},
		{PubAddr: "x:1", Publishers: 1, Count: 1, QoS: 3},
		{PubAddr: "x:1", Publishers: 1, Count: 1, PayloadSize: 8},
		{PubAddr: "x:1", Publishers: 1, Count: 1, Rate: -1},
	} {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// Percentiles are shown only from the samples they need.
func TestLatencyCells(t *testing.T) {
	s := LatencySummary{Count: 50, P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 3 * time.Millisecond, Max: 4 * time.Millisecond}
	if got := latencyCells(s); got != "50 | 1.000 ms | 2.000 ms | – | 4.000 ms" {
		t.Fatalf("cells %q", got)
	}
}

// writeCounter counts the writes made on a connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (c *writeCounter) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// The subscriber acknowledges what one read brought in one write, and in
// a write per packet with WriteEach: the load tool's cost per message is
// what bounds a fast server's measured rate (docs/benchmarks.md §11.1).
func TestSubscriberAcksOneReadInOneWrite(t *testing.T) {
	for _, each := range []bool{false, true} {
		tool, server := net.Pipe()
		cc := &writeCounter{Conn: tool}
		c := &mqttConn{nc: cc, version: mqttcodec.V311, rd: make([]byte, 64<<10)}
		r := &pubRun{cfg: PubConfig{Publishers: 1, Count: 100, WriteEach: each}, e2e: NewLatency(), ack: NewLatency(), base: time.Now()}
		r.seen = [][]uint64{make([]uint64, 2)}
		done := make(chan error, 1)
		go func() { done <- r.receive(c) }()

		var burst []byte
		payload := make([]byte, pubHeader)
		for id := uint16(1); id <= 100; id++ {
			binary.BigEndian.PutUint64(payload, uint64(r.now()))
			binary.BigEndian.PutUint32(payload[12:], uint32(id-1))
			burst = mqttcodec.AppendPublish(burst, mqttcodec.V311, &mqttcodec.Publish{QoS: 1, Topic: []byte("t"), PacketID: id, Payload: payload})
		}
		_ = server.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := server.Write(burst); err != nil {
			t.Fatal(err)
		}
		// Read the 100 PUBACKs, in order.
		var got []byte
		buf := make([]byte, 4096)
		for len(got) < 100*4 {
			n, err := server.Read(buf)
			if err != nil {
				t.Fatalf("each=%v: after %d bytes of PUBACKs: %v", each, len(got), err)
			}
			got = append(got, buf[:n]...)
		}
		for id := uint16(1); id <= 100; id++ {
			var p mqttcodec.Packet
			n, err := mqttcodec.Decode(got, mqttcodec.V311, DefaultMaxPacket, &p)
			if err != nil || n == 0 || p.Type != mqttcodec.PUBACK || p.Ack.PacketID != id {
				t.Fatalf("each=%v: acknowledgement %d: %v %s id %d", each, id, err, p.Type, p.Ack.PacketID)
			}
			got = got[n:]
		}
		_ = server.Close()
		if err := <-done; err == nil {
			t.Errorf("each=%v: receive ended without the connection's error", each)
		}
		want := int64(1)
		if each {
			want = 100
		}
		if w := cc.writes.Load(); w != want {
			t.Errorf("each=%v: %d writes for 100 acknowledgements, want %d", each, w, want)
		}
		if r.received != 100 {
			t.Errorf("each=%v: %d messages recorded, want 100", each, r.received)
		}
	}
}
