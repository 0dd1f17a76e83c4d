package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/devwire"
	"github.com/dualgate/dualgate/mqttcodec"
)

// ErrUnexpected is returned by a probe that got a packet it was not
// waiting for.
var ErrUnexpected = errors.New("bench: unexpected packet")

// probe is one device on one socket, driven step by step by the caller, so
// that the kernel's TCP counters of the socket can be read between steps:
// the instrument of `dualbench traffic`. It is not safe for concurrent use.
type probe struct {
	ctx     context.Context // ends every wait
	raw     *net.TCPConn
	tc      *tls.Conn // nil on plain
	conn    net.Conn  // raw or tc
	version byte
	timeout time.Duration
	buf     []byte
	rd      []byte
	pkt     mqttcodec.Packet
	// resumed and tlsVersion describe the TLS handshake.
	resumed    bool
	tlsVersion uint16
}

// probePacket is what a probe keeps of a packet: copies, valid after the
// next read.
type probePacket struct {
	typ       mqttcodec.Type
	topic     string
	payload   []byte
	qos       byte
	packetID  uint16
	reason    mqttcodec.ReasonCode
	serverRef string
	// acked is when the probe wrote its PUBACK (commands).
	acked time.Time
}

// dialProbe connects to addr, with a TLS handshake when cfg is not nil.
// timeout bounds every later step. The probe spends bytes as the device
// SDK does (internal/devwire, docs/protocol.md §4.1): delayed ACKs (that
// of the SYN-ACK too), the
// TLS client's Finished held for the CONNECT, one write per packet.
func dialProbe(ctx context.Context, addr string, cfg *tls.Config, version byte, timeout time.Duration) (*probe, error) {
	// Quickack off before connecting (the ACK of the SYN-ACK rides on the
	// first write) and again after (the handshake turned it back on).
	d := net.Dialer{Timeout: timeout, KeepAlive: -1, Control: devwire.DelayAcksControl}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bench: probe: dial %s: %w", addr, err)
	}
	devwire.DelayAcks(nc)
	p := &probe{ctx: ctx, raw: nc.(*net.TCPConn), conn: nc, version: version, timeout: timeout, rd: make([]byte, 4096)}
	if cfg == nil {
		return p, nil
	}
	fc := devwire.NewFlightConn(nc)
	p.tc = tls.Client(fc, cfg)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := p.tc.HandshakeContext(hctx); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("bench: probe: TLS handshake with %s: %w", addr, err)
	}
	fc.Release() // the Finished leaves with the CONNECT
	st := p.tc.ConnectionState()
	p.resumed, p.tlsVersion = st.DidResume, st.Version
	p.conn = p.tc
	return p, nil
}

// counters reads the socket's TCP counters.
func (p *probe) counters() (TCPCounters, error) { return ReadTCPCounters(p.raw) }

func (p *probe) write(b []byte) error {
	if err := p.conn.SetWriteDeadline(time.Now().Add(p.timeout)); err != nil {
		return fmt.Errorf("bench: probe: %w", err)
	}
	if _, err := p.conn.Write(b); err != nil {
		return fmt.Errorf("bench: probe: write: %w", err)
	}
	return nil
}

// next returns the next packet, waiting at most wait.
func (p *probe) next(wait time.Duration) (probePacket, error) {
	if err := p.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return probePacket{}, fmt.Errorf("bench: probe: %w", err)
	}
	// The end of the run ends the wait.
	stop := context.AfterFunc(p.ctx, func() { _ = p.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		if len(p.buf) > 0 {
			n, err := mqttcodec.Decode(p.buf, p.version, DefaultMaxPacket, &p.pkt)
			if err != nil {
				return probePacket{}, fmt.Errorf("bench: probe: decode: %w", err)
			}
			if n > 0 {
				out := p.keep()
				p.buf = append(p.buf[:0], p.buf[n:]...)
				return out, nil
			}
		}
		n, err := p.conn.Read(p.rd)
		if err != nil {
			if cerr := p.ctx.Err(); cerr != nil {
				return probePacket{}, fmt.Errorf("bench: probe: %w", cerr)
			}
			return probePacket{}, fmt.Errorf("bench: probe: read: %w", err)
		}
		p.buf = append(p.buf, p.rd[:n]...)
	}
}

// keep copies the decoded packet.
func (p *probe) keep() probePacket {
	k := probePacket{typ: p.pkt.Type}
	switch p.pkt.Type {
	case mqttcodec.PUBLISH:
		pub := &p.pkt.Publish
		k.topic, k.payload, k.qos, k.packetID = string(pub.Topic), append([]byte(nil), pub.Payload...), pub.QoS, pub.PacketID
	case mqttcodec.PUBACK:
		k.packetID, k.reason = p.pkt.Ack.PacketID, p.pkt.Ack.ReasonCode
	case mqttcodec.CONNACK:
		k.reason = p.pkt.Connack.ReasonCode
	case mqttcodec.DISCONNECT:
		k.reason = p.pkt.Disconnect.ReasonCode
		if p.pkt.Disconnect.Properties.Has(mqttcodec.PropServerReference) {
			k.serverRef = string(p.pkt.Disconnect.Properties.ServerReference)
		}
	}
	return k
}

// expect returns the next packet, which must be of type t.
func (p *probe) expect(t mqttcodec.Type, wait time.Duration) (probePacket, error) {
	k, err := p.next(wait)
	if err != nil {
		return k, err
	}
	if k.typ != t {
		return k, fmt.Errorf("%w: %s (topic %q), waiting for %s", ErrUnexpected, k.typ, k.topic, t)
	}
	return k, nil
}

// connect sends CONNECT and waits for a successful CONNACK. With query,
// on plain, the device's query (QoS 0, no answer) leaves in the CONNECT's
// write, as the SDK sends it; on TLS a device does not query (the gateway
// delivers to an accepted TLS session as soon as it is connected).
func (p *probe) connect(clientID string, keepAlive time.Duration, query bool) error {
	pkt := mqttcodec.AppendConnect(nil, &mqttcodec.Connect{
		ProtocolVersion: p.version, CleanStart: true, KeepAlive: uint16(keepAlive / time.Second), ClientID: []byte(clientID),
	})
	if query && p.tc == nil {
		pkt = append(pkt, devwire.QueryPacket(p.version)...)
	}
	if err := p.write(pkt); err != nil {
		return err
	}
	k, err := p.expect(mqttcodec.CONNACK, p.timeout)
	if err != nil {
		return err
	}
	if k.reason != 0 {
		return fmt.Errorf("bench: probe: CONNACK refused: 0x%02x %s", byte(k.reason), k.reason)
	}
	return nil
}

// ack acknowledges a QoS 1 PUBLISH.
func (p *probe) ack(k probePacket) error {
	if k.qos != 1 {
		return nil
	}
	return p.write(mqttcodec.AppendAck(nil, p.version, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: k.packetID}))
}

// ping sends PINGREQ and waits for PINGRESP.
func (p *probe) ping() error {
	if err := p.write(mqttcodec.AppendPingreq(nil)); err != nil {
		return err
	}
	_, err := p.expect(mqttcodec.PINGRESP, p.timeout)
	return err
}

// command waits for a command PUBLISH and acknowledges it.
func (p *probe) command(wait time.Duration) (probePacket, error) {
	k, err := p.expect(mqttcodec.PUBLISH, wait)
	if err != nil {
		return k, err
	}
	if k.topic == control.ControlTopic {
		return k, fmt.Errorf("%w: an instruction (%s), waiting for a command", ErrUnexpected, k.payload)
	}
	if err := p.ack(k); err != nil {
		return k, err
	}
	k.acked = time.Now()
	return k, nil
}

// instruction waits for a reconnect instruction to mode: a 3.1.1 control
// PUBLISH (acknowledged, followed by DISCONNECT) or an MQTT 5 DISCONNECT
// 0x9C. It returns the address to use. Afterwards the probe must finish.
func (p *probe) instruction(mode control.Mode, wait time.Duration) (string, error) {
	k, err := p.next(wait)
	if err != nil {
		return "", err
	}
	switch {
	case k.typ == mqttcodec.PUBLISH && k.topic == control.ControlTopic:
		in, err := control.ParseInstruction(k.payload)
		if err != nil {
			return "", fmt.Errorf("bench: probe: %w", err)
		}
		if in.Mode != mode {
			return "", fmt.Errorf("%w: instruction to use %s, waiting for %s", ErrUnexpected, in.Mode, mode)
		}
		farewell := mqttcodec.AppendAck(nil, p.version, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: k.packetID})
		farewell = mqttcodec.AppendDisconnect(farewell, p.version, &mqttcodec.Disconnect{})
		return in.Addr, p.write(farewell)
	case k.typ == mqttcodec.DISCONNECT && k.reason == mqttcodec.UseAnotherServer:
		m, addr, err := control.ParseServerReference(k.serverRef)
		if err != nil {
			return "", fmt.Errorf("bench: probe: %w", err)
		}
		if m != mode {
			return "", fmt.Errorf("%w: server reference %s, waiting for %s", ErrUnexpected, k.serverRef, mode)
		}
		return addr, nil
	}
	return "", fmt.Errorf("%w: %s (topic %q), waiting for an instruction to use %s", ErrUnexpected, k.typ, k.topic, mode)
}

// disconnect sends DISCONNECT.
func (p *probe) disconnect() error {
	return p.write(mqttcodec.AppendDisconnect(nil, p.version, &mqttcodec.Disconnect{}))
}

// end closes the connection after the server's instruction the way a
// device does (devwire.Close) and returns the socket's counters: after
// an instruction that came with the server's FIN (MQTT 5's DISCONNECT,
// devwire.PeerDone) with a reset, counted here as the one segment it is,
// after which nothing comes back; otherwise as finish does.
func (p *probe) end(settle time.Duration) (TCPCounters, error) {
	if !devwire.PeerDone(p.raw) {
		return p.finish(settle)
	}
	c, err := p.counters()
	c.SegsOut++ // the reset
	_ = devwire.Close(p.raw)
	return c, err
}

// finish ends the connection the way a device closes it (FIN, without a
// TLS close_notify: MQTT's DISCONNECT ended the session), reads until the
// server's FIN, lets the last ACKs pass for settle, and returns the
// socket's counters before closing it.
func (p *probe) finish(settle time.Duration) (TCPCounters, error) {
	defer p.raw.Close()
	// The server may have closed already and reset the connection: there
	// is no connection left to shut down.
	if err := p.raw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ENOTCONN) && !isReset(err) {
		return TCPCounters{}, fmt.Errorf("bench: probe: shutdown: %w", err)
	}
	if err := p.raw.SetReadDeadline(time.Now().Add(p.timeout)); err != nil {
		return TCPCounters{}, fmt.Errorf("bench: probe: %w", err)
	}
	// The server's last bytes and its FIN.
	if _, err := io.Copy(io.Discard, p.raw); err != nil && !isReset(err) {
		return TCPCounters{}, fmt.Errorf("bench: probe: wait for the server's FIN: %w", err)
	}
	time.Sleep(settle)
	return p.counters()
}

// settled returns the counters after settle, once the last ACKs passed.
func (p *probe) settled(settle time.Duration) (TCPCounters, error) {
	time.Sleep(settle)
	return p.counters()
}

func (p *probe) close() { _ = p.raw.Close() }

// isReset reports a connection reset: a server may close with RST.
func isReset(err error) bool { return classify(err) == ReasonReset }
