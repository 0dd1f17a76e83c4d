package bench

import (
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/dualgate/dualgate/internal/devwire"
	"github.com/dualgate/dualgate/mqttcodec"
)

// tlsReadBuf is the size of one read from a TLS connection; a packet larger
// than that is assembled in a buffer that grows as needed.
const tlsReadBuf = 512

// runTLS performs the handshake with cfg, sends CONNECT and reads the
// connection until it closes. It owns the connection's read side; the
// caller counts it in tlsWG. A device holds its last handshake flight
// (Finished) for the CONNECT's write, does not query (the gateway
// delivers to an accepted TLS session at once) and closes without
// close_notify, as the SDK does (internal/devwire).
func (p *Pool) runTLS(cc *clientConn, nc net.Conn, cfg *tls.Config) {
	var (
		l  = &link{}
		fc *devwire.FlightConn
	)
	if p.cfg.Device != nil {
		fc = devwire.NewFlightConn(nc)
		l.tc, l.raw = tls.Client(fc, cfg), nc
	} else {
		l.tc = tls.Client(nc, cfg)
	}
	tc := l.tc
	cc.link.Store(l)
	if s := cc.state.Load(); s != stateConnecting && s != stateMoving {
		// Failed, interrupted or closing while dialing.
		l.closeTLS()
		p.closed(cc, l, nil)
		return
	}
	// One deadline covers the handshake and the CONNACK.
	if err := tc.SetDeadline(time.Unix(0, cc.dialAt.Load()).Add(p.cfg.ConnectTimeout)); err != nil {
		p.connFailed(cc, l, classify(err), err)
		l.closeTLS()
		return
	}
	start := time.Now()
	if err := tc.Handshake(); err != nil {
		reason := classify(err)
		if reason == ReasonOther || reason == ReasonClosed {
			reason = ReasonTLSHandshake
		}
		p.connFailed(cc, l, reason, err)
		l.closeTLS()
		return
	}
	if fc != nil {
		fc.Release()
	}
	p.handshake.Record(time.Since(start))
	if tc.ConnectionState().DidResume {
		p.resumed.Add(1)
	}
	cc.sentAt.Store(time.Now().UnixNano())
	if err := l.write(p.connectPacket(cc.idx)); err != nil {
		p.connFailed(cc, l, classify(err), err)
		l.closeTLS()
		return
	}
	p.readTLS(cc, l)
}

// readTLS reads and handles packets until the connection ends, or until
// the device leaves it for another.
func (p *Pool) readTLS(cc *clientConn, l *link) {
	var (
		pkt     mqttcodec.Packet
		pending []byte
		buf     = make([]byte, tlsReadBuf)
	)
	for {
		n, err := l.tc.Read(buf)
		if err != nil {
			if s := cc.state.Load(); (s == stateConnecting || s == stateMoving) && classify(err) == ReasonTimeout {
				p.connFailed(cc, l, ReasonConnackTime, err)
			}
			p.closed(cc, l, err)
			l.closeTLS()
			return
		}
		pending = append(pending, buf[:n]...)
		for len(pending) > 0 {
			total, err := mqttcodec.PacketLen(pending, p.cfg.MaxPacket)
			if err != nil {
				p.protocolError(cc, l, err)
				l.closeTLS()
				return
			}
			if total == 0 || total > len(pending) {
				break
			}
			if _, err := mqttcodec.Decode(pending[:total], p.cfg.MQTTVersion, p.cfg.MaxPacket, &pkt); err != nil {
				p.protocolError(cc, l, err)
				l.closeTLS()
				return
			}
			wasConnecting := cc.state.Load() != stateConnected
			keep := p.handle(cc, l, &pkt)
			if cc.link.Load() != l {
				// The device left this connection (it closes itself
				// after the farewell) or gave up on it.
				l.closeTLS()
				return
			}
			if !keep {
				p.closed(cc, l, nil)
				l.closeTLS()
				return
			}
			if wasConnecting && cc.state.Load() == stateConnected {
				// Idle from now on: no read deadline (PINGRESP timing is
				// the server's business).
				if err := l.tc.SetReadDeadline(time.Time{}); err != nil && !errors.Is(err, net.ErrClosed) {
					p.closed(cc, l, err)
					l.closeTLS()
					return
				}
			}
			pending = pending[total:]
		}
		if len(pending) == 0 {
			pending = nil // drop the grown array while idle
		}
	}
}
