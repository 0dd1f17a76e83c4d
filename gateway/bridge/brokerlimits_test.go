package bridge

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// A broker whose MQTT 5 CONNACK gives a Maximum Packet Size (Mosquitto's
// max_packet_size) closes the connection on a larger PUBLISH. The bridge
// must not send one: a device message over the limit is refused to its
// device (0x95) or, at QoS 0, dropped, and the lane goes on with the
// messages after it. Before, the bridge sent it, the broker closed the
// connection, and the bridge reconnected and resent it for ever (10,435
// reconnects in 5 s), with the lane's later messages stuck behind it.
// The sizes straddle the limit by one byte, with and without properties,
// so the broker itself checks how the bridge counts.
func TestBrokerMaximumPacketSize(t *testing.T) {
	const limit = 1000
	br := startBroker(t, "max_packet_size "+strconv.Itoa(limit))
	app := newApp5(t, br.Addr(), "app-"+strconv.Itoa(br.Port))
	app.subscribe(t, "devices/#", 1)
	cfg := testConfig(t, br.URL())
	cfg.PoolSize = 1 // one lane: what is refused would hold up what follows
	b := startBridge(t, cfg)
	waitReady(t, b)

	const topic = "devices/car1/b" // 14 bytes
	// QoS 1, no properties: 1 + 2 (remaining length) + 2 + 14 + 2
	// (packet identifier) + 1 (properties length) + payload.
	exact := limit - (1 + 2 + 2 + len(topic) + 2 + 1)
	user := func(n int) *session.MessageProps {
		return &session.MessageProps{User: []session.UserProp{{Key: "k", Value: strings.Repeat("v", n)}}}
	}
	// With one user property of n bytes and a 10-byte payload: properties
	// 1 + 2 + 1 + 2 + n, their length 2 bytes.
	propsExact := limit - (1 + 2 + 2 + len(topic) + 2 + 2 + 10 + (1 + 2 + 1 + 2))
	msgs := []struct {
		m    *session.Message
		want mqttcodec.ReasonCode
	}{
		{&session.Message{Topic: topic, Payload: bytes.Repeat([]byte("a"), exact), QoS: 1}, mqttcodec.Success},
		{&session.Message{Topic: topic, Payload: bytes.Repeat([]byte("b"), exact+1), QoS: 1}, mqttcodec.PacketTooLarge},
		{&session.Message{Topic: topic, Payload: bytes.Repeat([]byte("c"), 10), QoS: 1, Props: user(propsExact)}, mqttcodec.Success},
		{&session.Message{Topic: topic, Payload: bytes.Repeat([]byte("d"), 10), QoS: 1, Props: user(propsExact + 1)}, mqttcodec.PacketTooLarge},
		{&session.Message{Topic: topic, Payload: bytes.Repeat([]byte("e"), 5000), QoS: 0}, 0},
		{&session.Message{Topic: topic, Payload: []byte("after"), QoS: 1}, mqttcodec.Success},
	}
	a := newAcks()
	acked := 0
	for i, m := range msgs {
		m.m.ClientID = "car1"
		var ack func(mqttcodec.ReasonCode)
		if m.m.QoS > 0 {
			ack = a.fn(t, i)
			acked++
		}
		b.Publish(m.m, ack)
	}
	a.waitN(t, acked, 10*time.Second)
	for i, m := range msgs {
		if m.m.QoS == 0 {
			continue
		}
		if rc, _ := a.get(i); rc != m.want {
			t.Errorf("message %d (%d bytes of payload): ack %v, want %v", i, len(m.m.Payload), rc, m.want)
		}
	}
	got := app.waitN(t, 3)
	var first []string
	for _, p := range got {
		first = append(first, string(p.Payload[:1]))
	}
	if strings.Join(first, "") != "aca" || string(got[2].Payload) != "after" {
		t.Errorf("the application got %v, want the messages that fit: a..., c..., after", first)
	}
	st := b.Stats()
	if st.TooLarge != 3 {
		t.Errorf("TooLarge %d, want 3 (two QoS 1 refused, one QoS 0 dropped)", st.TooLarge)
	}
	if st.Reconnects != 0 || st.ConnectionLosses != 0 {
		t.Errorf("%d reconnects, %d losses: the broker closed the bridge's connection", st.Reconnects, st.ConnectionLosses)
	}
}

// A broker that ends every connection right after its CONNACK (it takes
// connections and drops them, or closes on something the bridge resends
// at each connection) is not hammered: the lane waits before connecting
// again, as after a failed connect, instead of reconnecting in a loop.
// The bound is generous: a slower machine makes fewer connections, not
// more; in a loop it was thousands a second.
func TestShortLivedConnectionsBackOff(t *testing.T) {
	bothProtocols(t, testShortLivedConnectionsBackOff)
}

func testShortLivedConnectionsBackOff(t *testing.T) {
	connack := []byte{0x20, 0x03, 0x00, 0x00, 0x00} // MQTT 5, no properties
	if protocolOf(t) == Protocol311 {
		connack = []byte{0x20, 0x02, 0x00, 0x00}
	}
	addr, accepted := startHangUpBroker(t, connack)
	cfg := testConfig(t, "tcp://"+addr)
	cfg.PoolSize = 1
	// Above 100 ms, and short enough that paho.mqtt.golang's reconnect
	// goroutine, asleep in its backoff, ends soon after Stop.
	cfg.ReconnectMax = 500 * time.Millisecond
	b := startBridge(t, cfg)
	waitFor(t, 10*time.Second, "a connection to be lost", func() bool { return b.Stats().ConnectionLosses > 0 })
	start := accepted.Load()
	window := time.NewTimer(1500 * time.Millisecond)
	<-window.C
	// Waits of 100, 200, 400, 500, 500 ms: about 5 connections in 1.5 s.
	if n := accepted.Load() - start; n > 10 {
		t.Errorf("%d connections in 1.5 s to a broker that drops each at once: reconnecting in a loop", n)
	}
	stopBridge(t, b)
	// paho.mqtt.golang's reconnect goroutine, asleep in its backoff when
	// Disconnect came, ends once it wakes (MQTT 3.1.1).
	waitFor(t, 10*time.Second, "paho's reconnect goroutine to end", func() bool {
		buf := make([]byte, 1<<20)
		return !bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("(*client).reconnect"))
	})
}

// startHangUpBroker is a broker that reads a CONNECT, answers with what
// it is given (a CONNACK, and maybe more) and hangs up. It returns its
// address and the count of connections accepted; it stops at the end of
// the test.
func startHangUpBroker(t *testing.T, answer []byte) (string, *atomic.Int64) {
	t.Helper()
	accepted := new(atomic.Int64)
	addr := serveTCP(t, func(c net.Conn, _ int, _ func(net.Conn)) {
		accepted.Add(1)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		_, _ = c.Read(buf)
		_, _ = c.Write(answer)
	})
	return addr, accepted
}

// A message the broker closes the connection on for some other reason
// than its size (a policy, a plugin): it is resent at every connection,
// and the lane's later messages wait behind it. After maxResends
// connections lost soon after they were made with it in flight, it is
// given up and refused to its device (0x80), and the messages after it
// go. Played with a proxy in front of a real Mosquitto that cuts the
// connection when the message passes.
func TestPoisonMessageGivenUp(t *testing.T) { bothProtocols(t, testPoisonMessageGivenUp) }

func testPoisonMessageGivenUp(t *testing.T) {
	br := startBroker(t)
	app := newApp5(t, br.Addr(), "app-"+strconv.Itoa(br.Port))
	app.subscribe(t, "devices/#", 1)
	px, _ := startCutProxy(t, br.Addr(), []byte("POISON"), false)
	cfg := testConfig(t, "tcp://"+px)
	cfg.PoolSize = 1
	b := startBridge(t, cfg)
	waitReady(t, b)
	a := newAcks()
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/x", Payload: []byte("POISON"), QoS: 1}, a.fn(t, 0))
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/x", Payload: []byte("after"), QoS: 1}, a.fn(t, 1))
	a.waitN(t, 2, 60*time.Second)
	if rc, _ := a.get(0); rc != mqttcodec.UnspecifiedError {
		t.Errorf("the message the broker closes on: ack %v, want 0x80 after %d tries", rc, maxResends)
	}
	if rc, _ := a.get(1); rc != mqttcodec.Success {
		t.Errorf("the message after it: ack %v, want success", rc)
	}
	if got := app.waitN(t, 1); string(got[0].Payload) != "after" {
		t.Errorf("the application got %q, want after", got[0].Payload)
	}
	st := b.Stats()
	if st.Abandoned != 1 || st.ConnectionLosses < maxResends {
		t.Errorf("abandoned %d, %d connection losses; want 1 after at least %d", st.Abandoned, st.ConnectionLosses, maxResends)
	}
}

// startCutProxy forwards TCP connections to addr and cuts a connection,
// both ways, when the client sends a packet containing cut; with
// dropPubrel it does not pass the client's PUBRELs on (a QoS 2 exchange
// stays between PUBREC and PUBCOMP). It returns its address and the count
// of PUBRELs dropped; it stops at the end of the test.
func startCutProxy(t *testing.T, addr string, cut []byte, dropPubrel bool) (string, *atomic.Int64) {
	t.Helper()
	dropped := new(atomic.Int64)
	px := serveTCP(t, func(c net.Conn, _ int, own func(net.Conn)) {
		s, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		own(s)
		done := make(chan struct{})
		go func() { // broker -> client
			defer close(done)
			_, _ = io.Copy(c, s)
			_ = c.Close()
			_ = s.Close()
		}()
		// client -> broker, packet by packet
		var pending []byte
		buf := make([]byte, 32<<10)
	read:
		for {
			n, err := c.Read(buf)
			pending = append(pending, buf[:n]...)
			for {
				size, perr := mqttcodec.PacketLen(pending, 0)
				if perr != nil || size == 0 || size > len(pending) {
					break
				}
				pkt := pending[:size]
				pending = pending[size:]
				switch {
				case bytes.Contains(pkt, cut):
					break read
				case dropPubrel && pkt[0]>>4 == byte(mqttcodec.PUBREL):
					dropped.Add(1)
					continue
				}
				if _, werr := s.Write(pkt); werr != nil {
					break read
				}
			}
			if err != nil {
				break
			}
		}
		_ = c.Close()
		_ = s.Close()
		<-done
	})
	return px, dropped
}

// Two gateways configured with one upstream client id take the session
// from each other: a broker that says so closes the older connection with
// DISCONNECT 0x8E (EMQX, HiveMQ; Mosquitto 2.0 closes without a
// DISCONNECT), and the log says why and what to change, not only that
// the connection was lost. Played by a broker that answers every CONNECT
// with a CONNACK and a DISCONNECT 0x8E.
func TestSessionTakenOverIsExplained(t *testing.T) {
	addr, _ := startHangUpBroker(t, []byte{0x20, 0x03, 0x00, 0x00, 0x00, 0xE0, 0x02, byte(mqttcodec.SessionTakenOver), 0x00})
	core, logs := observer.New(zap.WarnLevel)
	cfg := testConfig(t, "tcp://"+addr)
	cfg.PoolSize = 1
	cfg.Logger = zap.New(core)
	startBridge(t, cfg)
	waitFor(t, 10*time.Second, "the bridge to log the takeover", func() bool {
		for _, e := range logs.FilterMessageSnippet("same client id").All() {
			if e.ContextMap()["reason"] == mqttcodec.SessionTakenOver.String() {
				return true
			}
		}
		return false
	})
}

// Mosquitto 2.0 says nothing when another client takes a session over: it
// closes the older connection. Two gateways given one upstream client id
// then take the session from each other at every connection, and each
// one's log must name the likely cause, not only "connection lost". Played
// by two bridges with one client id prefix against a real Mosquitto.
func TestSharedClientIDIsExplained(t *testing.T) {
	br := startBroker(t)
	cfg := testConfig(t, br.URL())
	cfg.Protocol = Protocol5
	cfg.PoolSize = 1
	var logs [2]*observer.ObservedLogs
	for i := range logs {
		var core zapcore.Core
		core, logs[i] = observer.New(zap.WarnLevel)
		c := cfg
		c.Logger = zap.New(core)
		startBridge(t, c)
	}
	waitFor(t, 30*time.Second, "a bridge to explain the connections it keeps losing", func() bool {
		for _, l := range logs {
			for _, e := range l.FilterMessageSnippet("keeps closing this connection").All() {
				if e.ContextMap()["client_id"] == cfg.ClientIDPrefix+"-0" {
					return true
				}
			}
		}
		return false
	})
}

// The message blamed for a broker closing connections is the oldest the
// broker has not taken: a QoS 2 message it answered with PUBREC has been
// received, and only its PUBREL/PUBCOMP exchange is left. Here the proxy
// keeps that exchange from finishing (it drops PUBRELs) and cuts the
// connection on the message after it: that one is given up, not the QoS 2
// message in front of it, which stays owed. MQTT 5 only: paho.mqtt.golang
// (v1.5.1) does not store the PUBREL it sends, and resends the PUBLISH
// after a reconnect instead, so the 3.1.1 outbox cannot tell a received
// QoS 2 message from one that was not (the broker answers PUBREC again).
func TestPoisonBlameSkipsReceivedQoS2(t *testing.T) {
	br := startBroker(t)
	px, pubrels := startCutProxy(t, br.Addr(), []byte("POISON"), true)
	cfg := testConfig(t, "tcp://"+px)
	cfg.PoolSize = 1
	b := startBridge(t, cfg)
	waitReady(t, b)
	a := newAcks()
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/x", Payload: []byte("kept"), QoS: 2}, a.fn(t, 0))
	// The broker answered PUBREC: the bridge sent its PUBREL.
	waitFor(t, 10*time.Second, "the PUBREL of the QoS 2 message", func() bool { return pubrels.Load() > 0 })
	b.Publish(&session.Message{ClientID: "car1", Topic: "devices/car1/x", Payload: []byte("POISON"), QoS: 1}, a.fn(t, 1))
	waitFor(t, 60*time.Second, "the poisoned message to be refused", func() bool { _, ok := a.get(1); return ok })
	if rc, _ := a.get(1); rc != mqttcodec.UnspecifiedError {
		t.Errorf("the message the broker closes on: ack %v, want 0x80", rc)
	}
	if rc, ok := a.get(0); ok {
		t.Errorf("the QoS 2 message the broker had received was answered %v: blamed for the connections the next one broke", rc)
	}
}
