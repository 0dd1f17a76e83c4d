package bench

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// DeviceConfig makes a pool's connections dualgate devices, a compact
// implementation of docs/protocol.md for both MQTT versions:
//
//   - it spends bytes as the device SDK does (internal/devwire,
//     docs/protocol.md §4.1): on plain the query (QoS 0) leaves in the
//     CONNECT's write, on TLS there is none (the gateway delivers to an
//     accepted TLS session at once); the TLS Finished leaves with the
//     CONNECT; TLS connections close without close_notify; the kernel
//     delays ACKs;
//   - a 3.1.1 instruction (PUBLISH on $dualgate/control) is acknowledged,
//     followed by DISCONNECT, and the device reconnects in the named mode
//     to the named address; MQTT 5 DISCONNECT 0x9C with a Server Reference
//     does the same;
//   - an instruction to go plain is obeyed only on TLS (anti-downgrade), one
//     to go to TLS only on plain; others are acknowledged and ignored;
//   - every other PUBLISH is a command: acknowledged (QoS 1), counted, and
//     timed when its payload carries a stamp (StampCommand).
//
// A move whose new connection fails before its CONNACK is retried
// (maxMoveTries in all, with a short backoff); after that the device counts
// as dropped.
type DeviceConfig struct {
	// TLS is the client configuration used when told to move to TLS. An
	// empty ServerName means the host of the instruction's address; the
	// session cache is ignored (see Resume).
	TLS *tls.Config
	// Resume gives every device its own session cache, so that its moves
	// to TLS after the first resume the session, as the protocol advises.
	Resume bool
}

// DeviceSpec is DeviceConfig in a form that travels to worker processes.
type DeviceSpec struct {
	// TLS describes the connections made when told to move to TLS; its
	// Resume gives each device its own session.
	TLS TLSSpec `json:"tls"`
}

// Moves of a device: attempts per instruction, and the first backoff
// (doubled after each failure).
const (
	maxMoveTries     = 4
	moveRetryBackoff = 200 * time.Millisecond
)

// moveTarget is where a device was told to go.
type moveTarget struct {
	mode control.Mode
	addr string
}

// stampPrefix starts the payload of a timed command.
const stampPrefix = "dualbench t="

// StampCommand returns a command payload of at least size bytes that
// carries sent (Unix nanoseconds) and seq: "dualbench t=<ns> s=<seq> "
// padded with 'x'. A device that receives it records the time from sent to
// its PUBACK.
func StampCommand(sent time.Time, seq int, size int) []byte {
	b := make([]byte, 0, max(size, 48))
	b = append(b, stampPrefix...)
	b = strconv.AppendInt(b, sent.UnixNano(), 10)
	b = append(b, " s="...)
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, ' ')
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

// ParseStamp returns the time a stamped payload carries.
func ParseStamp(payload []byte) (time.Time, bool) {
	rest, ok := bytes.CutPrefix(payload, []byte(stampPrefix))
	if !ok {
		return time.Time{}, false
	}
	end := bytes.IndexByte(rest, ' ')
	if end < 0 {
		end = len(rest)
	}
	ns, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil || ns <= 0 {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

// onCommand counts a command PUBLISH and, once acknowledged, times it.
func (p *Pool) onCommand(payload []byte, acked bool) {
	p.commands.Add(1)
	if !acked {
		return
	}
	now := time.Now()
	p.commandAcks.Add(1)
	storeMax(&p.lastCommandAck, now.UnixNano())
	if sent, ok := ParseStamp(payload); ok {
		p.command.Record(now.Sub(sent))
	}
}

// onInstruction handles a 3.1.1 reconnect instruction on link l: PUBACK,
// and when it is to be followed, DISCONNECT and a move. It returns false
// when the link failed.
func (p *Pool) onInstruction(cc *clientConn, l *link, pub *mqttcodec.Publish) bool {
	p.instructions.Add(1)
	var ack []byte
	if pub.QoS == 1 {
		ack = mqttcodec.AppendAck(nil, p.cfg.MQTTVersion, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: pub.PacketID})
	}
	in, err := control.ParseInstruction(pub.Payload)
	if err != nil || !p.follows(l, in.Mode) {
		p.ignored.Add(1)
		if err != nil {
			p.log.Debug("instruction ignored", zap.Int("conn", cc.idx), zap.Error(err))
		}
		if ack != nil {
			return l.write(ack) == nil
		}
		return true
	}
	farewell := append(ack, p.disconnectPkt...)
	if !p.startMove(cc, l, in.Mode, in.Addr, farewell) && ack != nil {
		return l.write(ack) == nil
	}
	return true
}

// onServerReference handles an MQTT 5 DISCONNECT 0x9C: the server closes
// the connection, the device follows the reference.
func (p *Pool) onServerReference(cc *clientConn, l *link, ref string) {
	p.instructions.Add(1)
	mode, addr, err := control.ParseServerReference(ref)
	if err != nil || !p.follows(l, mode) {
		p.ignored.Add(1)
		return
	}
	p.startMove(cc, l, mode, addr, nil)
}

// follows says whether a device on link l obeys an instruction to use
// mode: to TLS from plain, to plain only from TLS [protocol 5.3].
func (p *Pool) follows(l *link, mode control.Mode) bool {
	onTLS := l.tc != nil
	switch mode {
	case control.ModeTLS:
		return !onTLS && p.cfg.Device.TLS != nil
	case control.ModePlain:
		return onTLS && p.client != nil
	}
	return false
}

// startMove leaves link l for mode at addr: farewell (PUBACK and
// DISCONNECT, or nothing) is written and l closed, and the new connection
// is dialed by a goroutine. It returns false when the connection was not
// in a state to move (closing, or moving already).
func (p *Pool) startMove(cc *clientConn, l *link, mode control.Mode, addr string, farewell []byte) bool {
	if cc.link.Load() != l || !cc.state.CompareAndSwap(stateConnected, stateMoving) {
		return false
	}
	// From here on, the old link's events are ignored.
	cc.link.Store(nil)
	p.uncount(l)
	cc.target.Store(&moveTarget{mode: mode, addr: addr})
	cc.moveTries.Store(0)
	// What the old connection's server said does not carry over.
	cc.srvReason.Store(-1)
	cc.srvKA.Store(0)
	if farewell != nil {
		l.disconnect(farewell)
	}
	p.spawnMove(cc, 0)
	return true
}

// spawnMove starts the goroutine that makes a device's next connection
// after delay, unless the pool is closing.
func (p *Pool) spawnMove(cc *clientConn, delay time.Duration) {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		p.abandon(cc)
		return
	}
	p.tlsWG.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.tlsWG.Done()
		p.move(cc, delay)
	}()
}

// move dials the device's target and hands the connection to a TLS reader
// (run here) or to the event loop.
func (p *Pool) move(cc *clientConn, delay time.Duration) {
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-p.life.Done():
			t.Stop()
		}
	}
	t := cc.target.Load()
	if cc.state.Load() != stateMoving || t == nil || p.life.Err() != nil {
		p.abandon(cc)
		return
	}
	cc.dialAt.Store(time.Now().UnixNano())
	nc, err := p.dial(p.life, cc.idx, t.addr)
	if err != nil {
		p.moveFailed(cc, nil, classify(err), err)
		return
	}
	if t.mode == control.ModeTLS {
		cfg, err := p.moveTLSConfig(cc, t.addr)
		if err != nil {
			_ = nc.Close()
			p.moveFailed(cc, nil, ReasonOther, err)
			return
		}
		p.runTLS(cc, nc, cfg)
		return
	}
	// EnrollContext duplicates the descriptor and closes nc; OnOpen sends
	// CONNECT.
	if _, err := p.client.EnrollContext(nc, cc); err != nil {
		p.moveFailed(cc, nil, ReasonEnroll, err)
	}
}

// moveTLSConfig is the client configuration of a device's move to addr.
func (p *Pool) moveTLSConfig(cc *clientConn, addr string) (*tls.Config, error) {
	cfg := p.cfg.Device.TLS.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("bench: instruction address %q: %w", addr, err)
		}
		cfg.ServerName = host
	}
	cfg.ClientSessionCache = nil
	if p.cfg.Device.Resume {
		if cc.sessions == nil {
			cc.sessions = tls.NewLRUClientSessionCache(1)
		}
		cfg.ClientSessionCache = cc.sessions
	}
	return cfg, nil
}

// moveFailed handles the failure of a device's new connection (link l, or
// nil when it failed before there was one): retry with backoff, or give the
// device up after maxMoveTries.
func (p *Pool) moveFailed(cc *clientConn, l *link, reason string, err error) {
	if l != nil {
		if !cc.link.CompareAndSwap(l, nil) {
			return // an old link: its failure no longer matters
		}
		p.uncount(l)
		l.close()
	}
	if cc.state.Load() != stateMoving {
		p.abandon(cc)
		return
	}
	p.log.Debug("move failed", zap.Int("conn", cc.idx), zap.String("reason", reason), zap.Error(err))
	if n := cc.moveTries.Add(1); n < maxMoveTries {
		p.moveRetries.Add(1)
		p.spawnMove(cc, moveRetryBackoff<<(n-1))
		return
	}
	if cc.state.CompareAndSwap(stateMoving, stateClosed) {
		p.live.Add(-1)
		p.dropped.Add(1)
		p.mu.Lock()
		p.drops["move failed: "+reason]++
		p.mu.Unlock()
	}
}

// abandon finishes a device that was between connections when the pool
// began to close.
func (p *Pool) abandon(cc *clientConn) {
	if cc.link.Load() != nil {
		return // its link's end does it
	}
	if cc.state.CompareAndSwap(stateMoving, stateClosed) || cc.state.CompareAndSwap(stateClosing, stateClosed) {
		p.live.Add(-1)
	}
}
