package bench

import (
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/dualgate/dualgate/mqttcodec"
)

// plainHandler drives the plain connections of a Pool on its gnet client
// event loop. A connection's partial packet stays in gnet's inbound buffer;
// the handler keeps nothing per connection besides the clientConn.
type plainHandler struct {
	gnet.BuiltinEventEngine
	pool *Pool
}

// OnOpen publishes the connection's link and sends CONNECT; a device sends
// its query (QoS 0) in the same write, as the SDK does.
func (h *plainHandler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	cc, ok := c.Context().(*clientConn)
	if !ok {
		return nil, gnet.Close
	}
	h.pool.openPlain.Add(1)
	cc.link.Store(&link{gc: c})
	if s := cc.state.Load(); s != stateConnecting && s != stateMoving {
		// Failed (timed out, interrupted) or closing while being enrolled.
		return nil, gnet.Close
	}
	cc.sentAt.Store(time.Now().UnixNano())
	pkt := h.pool.connectPacket(cc.idx)
	if h.pool.cfg.Device != nil {
		pkt = append(pkt, h.pool.queryPkt...)
	}
	return pkt, gnet.None
}

// OnTraffic decodes every whole packet buffered and leaves a partial one in
// gnet's buffer until more bytes arrive.
func (h *plainHandler) OnTraffic(c gnet.Conn) gnet.Action {
	cc, ok := c.Context().(*clientConn)
	if !ok {
		return gnet.Close
	}
	p := h.pool
	l := cc.link.Load()
	if l == nil || l.gc != c {
		// A connection the device has left: it closes after its farewell.
		_, _ = c.Discard(-1)
		return gnet.None
	}
	var pkt mqttcodec.Packet
	for {
		b, _ := c.Peek(-1)
		if len(b) == 0 {
			return gnet.None
		}
		n, err := mqttcodec.PacketLen(b, p.cfg.MaxPacket)
		if err != nil {
			p.protocolError(cc, l, err)
			return gnet.Close
		}
		if n == 0 || n > len(b) {
			return gnet.None
		}
		if _, err := mqttcodec.Decode(b[:n], p.cfg.MQTTVersion, p.cfg.MaxPacket, &pkt); err != nil {
			p.protocolError(cc, l, err)
			return gnet.Close
		}
		keep := p.handle(cc, l, &pkt)
		if cc.link.Load() != l {
			// The device left: the farewell's write callback closes the
			// connection, or the server already did.
			_, _ = c.Discard(-1)
			if !keep {
				return gnet.Close
			}
			return gnet.None
		}
		if _, err := c.Discard(n); err != nil || !keep {
			return gnet.Close
		}
	}
}

// OnClose records the end of the connection.
func (h *plainHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	cc, ok := c.Context().(*clientConn)
	if !ok {
		return gnet.None
	}
	if l := cc.link.Load(); l != nil && l.gc == c {
		h.pool.closed(cc, l, err)
	}
	h.pool.openPlain.Add(-1)
	h.pool.signal()
	return gnet.None
}
