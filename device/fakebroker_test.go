package device_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// fakeBroker is a hand-driven MQTT server, for what a real gateway never
// sends: a plain instruction over plain, a malformed one.
type fakeBroker struct {
	t       *testing.T
	ln      net.Listener
	version byte
	conns   chan net.Conn
	wg      sync.WaitGroup
}

func startFakeBroker(t *testing.T, version byte) *fakeBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBroker{t: t, ln: ln, version: version, conns: make(chan net.Conn, 16)}
	fb.wg.Add(1)
	go fb.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		fb.wg.Wait()
		close(fb.conns)
		for c := range fb.conns {
			_ = c.Close()
		}
	})
	return fb
}

func (fb *fakeBroker) addr() string { return fb.ln.Addr().String() }

func (fb *fakeBroker) accept() {
	defer fb.wg.Done()
	for {
		c, err := fb.ln.Accept()
		if err != nil {
			return
		}
		select {
		case fb.conns <- c:
		default:
			_ = c.Close()
		}
	}
}

// next takes the next connection, reads its CONNECT and accepts it.
func (fb *fakeBroker) next(within time.Duration) *fakeConn {
	fb.t.Helper()
	var c net.Conn
	select {
	case c = <-fb.conns:
	case <-time.After(within):
		fb.t.Fatalf("no connection to the fake broker within %s", within)
	}
	fb.t.Cleanup(func() { _ = c.Close() })
	fc := &fakeConn{t: fb.t, conn: c}
	p := fc.read(5 * time.Second)
	if p.Type != mqttcodec.CONNECT || p.Connect.ProtocolVersion != fb.version {
		fb.t.Fatalf("got %s version %d, want CONNECT version %d", p.Type, p.Connect.ProtocolVersion, fb.version)
	}
	fc.version = fb.version
	fc.send(mqttcodec.AppendConnack(nil, fb.version, &mqttcodec.Connack{}))
	return fc
}

// startRecorded starts a Device with cfg and records its events.
func startRecorded(t *testing.T, cfg device.Config) (*device.Device, *recorder) {
	t.Helper()
	rec := newRecorder()
	rec.hook(&cfg)
	d, err := device.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	go func() { _ = d.Start(context.Background()) }()
	return d, rec
}

// startOnFake starts a Device with cfg, whose plain endpoint is fb's
// (startRecorded), and serves its first connection up to the query.
func startOnFake(t *testing.T, fb *fakeBroker, cfg device.Config) (*device.Device, *recorder, *fakeConn) {
	t.Helper()
	d, rec := startRecorded(t, cfg)
	fc := fb.next(5 * time.Second)
	fc.expectQuery(0)
	return d, rec, fc
}

// startOnFakePlain starts a Device configured for gateway g but for its
// plain endpoint, a fake broker's (startOnFake).
func startOnFakePlain(t *testing.T, g *gateway.Gateway, id string, version byte) (*fakeBroker, *recorder, *fakeConn) {
	t.Helper()
	fb := startFakeBroker(t, version)
	cfg := testConfig(t, g, id, version)
	cfg.PlainAddr = fb.addr()
	_, rec, fc := startOnFake(t, fb, cfg)
	return fb, rec, fc
}

// fakeConn is one device connection to the fake broker.
type fakeConn struct {
	t       *testing.T
	conn    net.Conn
	version byte // 0 until the CONNECT
	buf     []byte
	p       mqttcodec.Packet
	nextPID uint16
	// refuse makes expectQuery refuse every subscription.
	refuse bool
}

// next returns the next packet from the device.
func (fc *fakeConn) next(timeout time.Duration) (*mqttcodec.Packet, error) {
	_ = fc.conn.SetReadDeadline(time.Now().Add(timeout))
	chunk := make([]byte, 4096)
	for {
		if len(fc.buf) > 0 {
			n, err := mqttcodec.Decode(fc.buf, fc.version, 0, &fc.p)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				// The packet's fields view the consumed bytes, which later
				// appends do not overwrite.
				fc.buf = fc.buf[n:]
				return &fc.p, nil
			}
		}
		k, err := fc.conn.Read(chunk)
		if err != nil {
			return nil, err
		}
		fc.buf = append(fc.buf, chunk[:k]...)
	}
}

func (fc *fakeConn) read(timeout time.Duration) *mqttcodec.Packet {
	fc.t.Helper()
	p, err := fc.next(timeout)
	if err != nil {
		fc.t.Fatalf("fake broker read: %v", err)
	}
	return p
}

func (fc *fakeConn) send(b []byte) {
	fc.t.Helper()
	if _, err := fc.conn.Write(b); err != nil {
		fc.t.Fatalf("fake broker write: %v", err)
	}
}

// expectQuery serves the device until its query (a QoS 0 PUBLISH that
// follows the CONNECT), then until it has subscribed subs times, and
// returns the filters it subscribed to.
func (fc *fakeConn) expectQuery(subs int) []string {
	fc.t.Helper()
	var filters []string
	queried := false
	for !queried || subs > 0 {
		p := fc.read(5 * time.Second)
		switch p.Type {
		case mqttcodec.SUBSCRIBE:
			subs--
			for _, s := range p.Subscribe.Subscriptions {
				filters = append(filters, string(s.Filter))
			}
			codes := make([]mqttcodec.ReasonCode, len(p.Subscribe.Subscriptions))
			for i := range codes {
				if fc.refuse {
					codes[i] = mqttcodec.UnspecifiedError // 0x80, "Failure" in 3.1.1
				}
			}
			fc.send(mqttcodec.AppendSuback(nil, fc.version, &mqttcodec.Suback{PacketID: p.Subscribe.PacketID, ReasonCodes: codes}))
		case mqttcodec.PINGREQ:
			fc.send(mqttcodec.AppendPingresp(nil))
		case mqttcodec.PUBLISH:
			if p.Publish.QoS > 0 {
				fc.send(mqttcodec.AppendAck(nil, fc.version, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID}))
			}
			if string(p.Publish.Topic) != control.QueryTopic {
				fc.t.Fatalf("fake broker: PUBLISH on %s before the query", p.Publish.Topic)
			}
			if queried {
				fc.t.Fatal("fake broker: a second query")
			}
			queried = true
		default:
			fc.t.Fatalf("fake broker: unexpected %s before the query", p.Type)
		}
	}
	return filters
}

// publish sends a QoS 1 PUBLISH and returns its packet id.
func (fc *fakeConn) publish(topic string, payload []byte) uint16 {
	fc.t.Helper()
	fc.nextPID++
	fc.send(mqttcodec.AppendPublish(nil, fc.version, &mqttcodec.Publish{
		Topic: []byte(topic), Payload: payload, QoS: 1, PacketID: fc.nextPID,
	}))
	return fc.nextPID
}

// expectPuback reads the device's PUBACK for pid.
func (fc *fakeConn) expectPuback(pid uint16) {
	fc.t.Helper()
	for {
		p := fc.read(5 * time.Second)
		switch p.Type {
		case mqttcodec.PINGREQ:
			fc.send(mqttcodec.AppendPingresp(nil))
			continue
		case mqttcodec.PUBACK:
			if p.Ack.PacketID == pid {
				return
			}
		}
		fc.t.Fatalf("fake broker: got %s, want PUBACK %d", p.Type, pid)
	}
}

// disconnect5 sends an MQTT 5 DISCONNECT 0x9C with a Server Reference
// (none when ref is empty) and closes the connection, as the gateway does.
func (fc *fakeConn) disconnect5(ref, reason string) {
	fc.t.Helper()
	d := mqttcodec.Disconnect{ReasonCode: mqttcodec.UseAnotherServer}
	if ref != "" {
		d.Properties.SetServerReference([]byte(ref))
	}
	d.Properties.SetReasonString([]byte(reason))
	fc.send(mqttcodec.AppendDisconnect(nil, mqttcodec.V5, &d))
	_ = fc.conn.Close()
}

// expectDisconnect waits for the device's DISCONNECT (then EOF).
func (fc *fakeConn) expectDisconnect() {
	fc.t.Helper()
	for {
		p, err := fc.next(5 * time.Second)
		if err != nil {
			fc.t.Fatalf("fake broker: connection ended without DISCONNECT: %v", err)
		}
		switch p.Type {
		case mqttcodec.DISCONNECT:
			return
		case mqttcodec.PINGREQ, mqttcodec.PUBACK:
			continue
		}
		fc.t.Fatalf("fake broker: got %s, want DISCONNECT", p.Type)
	}
}

// quiet checks that the device sends nothing and stays for d.
func (fc *fakeConn) quiet(d time.Duration) {
	fc.t.Helper()
	end := time.Now().Add(d)
	for {
		p, err := fc.next(time.Until(end))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return
		}
		if err != nil {
			fc.t.Fatalf("fake broker: the device left: %v", err)
		}
		if p.Type != mqttcodec.PINGREQ {
			fc.t.Fatalf("fake broker: the device sent %s", p.Type)
		}
		// Its keep-alive, due when the machine is slow enough: not an
		// action of the device's own.
		fc.send(mqttcodec.AppendPingresp(nil))
	}
}

// honeypot is a listener that must never be dialed.
type honeypot struct {
	ln       net.Listener
	mu       sync.Mutex
	accepted int
	wg       sync.WaitGroup
}

func startHoneypot(t *testing.T) *honeypot {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &honeypot{ln: ln}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.accepted++
			h.mu.Unlock()
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		h.wg.Wait()
	})
	return h
}

func (h *honeypot) addr() string { return h.ln.Addr().String() }

func (h *honeypot) dialed() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.accepted
}
