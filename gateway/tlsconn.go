package gateway

import (
	"crypto/tls"
	"io"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
	"github.com/dualgate/dualgate/tlsmux"
)

// TLS connections are the few active ones: each has a goroutine, blocked in
// Read while idle, and no read buffer of its own; the TLS layer's are given
// back between packets (tlsmux.ReleaseBuffers).
const tlsWriteTimeout = 10 * time.Second

// tlsConn is one TLS device connection. Its session is owned by whoever
// holds mu: the reader goroutine while it feeds bytes, or a function queued
// with Exec.
type tlsConn struct {
	conn     *tls.Conn
	remote   string
	identity []string

	mu     sync.Mutex // guards sess and closed; held while the session runs
	closed bool
	sess   session.Session

	qmu   sync.Mutex // guards queue
	queue []func()

	// The outbound queue: the session appends, a writer goroutine that
	// exists only while there is something to send drains it, so no
	// session, event loop or bridge ever waits on this socket.
	wmu      sync.Mutex    // guards out, sending, writing, closeReq, resumed
	out      []byte        // waiting to be written
	sending  int           // bytes of the write in progress
	writing  bool          // the writer goroutine runs
	wdone    chan struct{} // closed when that writer ends
	closeReq bool          // close once out is written
	// resumed is set while the session holds the device back
	// (PauseRead): the reader goroutine reads nothing until it is
	// closed, by ResumeRead, Close or a failed write.
	resumed chan struct{}
}

// tlsSet is the set of live TLS connections, for the deadline sweep and
// shutdown.
type tlsSet struct {
	mu    sync.Mutex // guards conns
	conns map[*tlsConn]struct{}
}

func (ts *tlsSet) add(tc *tlsConn) {
	ts.mu.Lock()
	if ts.conns == nil {
		ts.conns = make(map[*tlsConn]struct{})
	}
	ts.conns[tc] = struct{}{}
	ts.mu.Unlock()
}

func (ts *tlsSet) remove(tc *tlsConn) {
	ts.mu.Lock()
	delete(ts.conns, tc)
	ts.mu.Unlock()
}

func (ts *tlsSet) snapshot() []*tlsConn {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := make([]*tlsConn, 0, len(ts.conns))
	for tc := range ts.conns {
		out = append(out, tc)
	}
	return out
}

// serveTLS runs one TLS connection's session until it ends. tlsmux calls it
// on the connection's goroutine after the handshake.
func (g *Gateway) serveTLS(c *tls.Conn, info tlsmux.ConnInfo) {
	tc := &tlsConn{conn: c, identity: info.PeerIdentity}
	g.handshakes.WithLabelValues(strconv.FormatBool(info.Resumed)).Observe(info.HandshakeDuration.Seconds())
	if info.Remote != nil {
		tc.remote = info.Remote.String()
	}
	done := make(chan struct{}, 1)
	tc.onSession(done, func() { tc.sess.Init(g.env, tc) })
	g.tlsConns.add(tc)
	defer g.tlsConns.remove(tc)

	for {
		// Between packets the connection gives back what the handshake
		// or a large packet left in its TLS buffers.
		tlsmux.ReleaseBuffers(c)
		pkt, err := readPacket(c, g.env.MaxPacketSize)
		if len(pkt) > 0 {
			closeConn, fed := false, false
			for !fed && !closeConn {
				tc.onSession(done, func() {
					if closeConn = tc.closed; closeConn {
						return
					}
					if tc.sess.ReadingPaused() && tc.sess.Connected() {
						// Paused while this packet was read (PauseUpstream
						// from another goroutine): it waits its turn.
						return
					}
					fed = true
					_, closeConn = safeFeed(g.logger, g.env.Stats, &tc.sess, pkt)
				})
				if !fed && !closeConn {
					// A connection closing (a failed write) ends the wait.
					closeConn = tc.waitResumed()
				}
			}
			putPacketBuf(pkt)
			if closeConn {
				break
			}
			// Flow control: while the session holds the device back,
			// nothing more is read; TCP stalls the device's sending.
			tc.waitResumed()
		}
		if err != nil {
			break
		}
	}
	// What the session wrote last (a refusing CONNACK, a DISCONNECT) goes
	// out before the connection closes, within the close's own bound.
	tc.waitWritten(2 * time.Second)
	_ = c.Close()
	tc.onSession(done, func() {
		tc.closed = true
		safeClosed(g.logger, g.env.Stats, &tc.sess)
	})
}

// onSession runs fn in the session's owner context (holding mu) on a
// short-lived goroutine, and waits for it. The connection's own goroutine
// lives as long as the device stays, mostly blocked in Read: keeping the
// session's deep call chains (CONNECT, authentication, logging) off its
// stack keeps that stack small, which is most of what an idle TLS
// connection costs.
func (tc *tlsConn) onSession(done chan struct{}, fn func()) {
	go func() {
		tc.mu.Lock()
		fn()
		tc.unlock()
		done <- struct{}{}
	}()
	<-done
}

// readPacket reads one whole MQTT packet from c. While a device is idle
// its goroutine waits here for the first byte with no buffer at all; the
// buffer, from a pool, exists only while a packet is read and handled.
// A fixed header the codec refuses is returned as it is, so the session
// reports the error.
func readPacket(c io.Reader, maxSize uint32) ([]byte, error) {
	var hdr [5]byte
	n := 0
	for {
		if _, err := io.ReadFull(c, hdr[n:n+1]); err != nil {
			return nil, err
		}
		n++
		if n >= 2 && (hdr[n-1]&0x80 == 0 || n == len(hdr)) {
			break
		}
	}
	total, err := mqttcodec.PacketLen(hdr[:n], maxSize)
	if err != nil || total < n {
		b := getPacketBuf(n)
		return append(b, hdr[:n]...), nil
	}
	b := getPacketBuf(total)[:total]
	copy(b, hdr[:n])
	if _, err := io.ReadFull(c, b[n:]); err != nil {
		putPacketBuf(b)
		return nil, err
	}
	return b, nil
}

// Packet buffers come from pools by size, so a TLS connection holds one only
// while it handles a packet.
var packetBufs = [...]struct {
	size int
	pool sync.Pool
}{{size: 256}, {size: 4 << 10}, {size: 64 << 10}}

func getPacketBuf(n int) []byte {
	for i := range packetBufs {
		if n <= packetBufs[i].size {
			if b, ok := packetBufs[i].pool.Get().(*[]byte); ok {
				return (*b)[:0]
			}
			return make([]byte, 0, packetBufs[i].size)
		}
	}
	return make([]byte, 0, n)
}

func putPacketBuf(b []byte) {
	for i := range packetBufs {
		if cap(b) == packetBufs[i].size {
			b = b[:0]
			packetBufs[i].pool.Put(&b)
			return
		}
	}
}

// unlock releases mu after running what Exec queued meanwhile, so queued
// functions run in order and never concurrently with the session.
func (tc *tlsConn) unlock() {
	for {
		tc.qmu.Lock()
		q := tc.queue
		tc.queue = nil
		tc.qmu.Unlock()
		for _, fn := range q {
			fn()
		}
		tc.mu.Unlock()
		tc.qmu.Lock()
		empty := len(tc.queue) == 0
		tc.qmu.Unlock()
		if empty || !tc.mu.TryLock() {
			return
		}
	}
}

// Transport, for the session. Every method but Exec runs with mu held.

// Write queues b for the writer goroutine; it never waits on the socket.
func (tc *tlsConn) Write(b []byte) error {
	if tc.closed {
		return errConnClosed
	}
	tc.wmu.Lock()
	if tc.closeReq {
		tc.wmu.Unlock()
		return errConnClosed
	}
	tc.out = append(tc.out, b...)
	start := !tc.writing
	if start {
		tc.writing = true
		tc.wdone = make(chan struct{})
	}
	tc.wmu.Unlock()
	if start {
		go tc.flush(tc.wdone)
	}
	return nil
}

// waitWritten waits, at most limit, until the writer has sent what is
// queued: the connection's own goroutine calls it before closing, so that
// a last packet (a refusing CONNACK, a DISCONNECT) is not cut off.
func (tc *tlsConn) waitWritten(limit time.Duration) {
	tc.wmu.Lock()
	done := tc.wdone
	writing := tc.writing
	tc.wmu.Unlock()
	if !writing {
		return
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// flush writes what is queued until nothing is, then ends; it closes the
// connection once asked to and the queue is empty, or at once on a write
// error (the reader then sees the connection end).
func (tc *tlsConn) flush(done chan struct{}) {
	defer close(done)
	var buf []byte
	for {
		tc.wmu.Lock()
		buf, tc.out = tc.out, buf[:0]
		tc.sending = len(buf)
		if len(buf) == 0 {
			tc.writing = false
			closing := tc.closeReq
			tc.out = nil // an idle connection keeps no buffer
			tc.wmu.Unlock()
			if closing {
				_ = tc.conn.SetWriteDeadline(time.Now().Add(time.Second))
				_ = tc.conn.Close()
			}
			return
		}
		closing := tc.closeReq
		tc.wmu.Unlock()
		deadline := tlsWriteTimeout
		if closing {
			deadline = time.Second
		}
		_ = tc.conn.SetWriteDeadline(time.Now().Add(deadline))
		if _, err := tc.conn.Write(buf); err != nil {
			tc.wmu.Lock()
			tc.out, tc.sending, tc.writing, tc.closeReq = nil, 0, false, true
			tc.resumeLocked() // a paused reader must see the end
			tc.wmu.Unlock()
			_ = tc.conn.NetConn().Close()
			return
		}
		if cap(buf) > 64<<10 {
			buf = nil // do not keep what a burst needed
		}
	}
}

// PauseRead makes the reader goroutine stop after the packet it is
// feeding, until ResumeRead.
func (tc *tlsConn) PauseRead() {
	tc.wmu.Lock()
	if tc.resumed == nil && !tc.closeReq {
		tc.resumed = make(chan struct{})
	}
	tc.wmu.Unlock()
}

// ResumeRead lets the reader goroutine read again.
func (tc *tlsConn) ResumeRead() {
	tc.wmu.Lock()
	tc.resumeLocked()
	tc.wmu.Unlock()
}

// resumeLocked wakes a paused reader; wmu held.
func (tc *tlsConn) resumeLocked() {
	if tc.resumed != nil {
		close(tc.resumed)
		tc.resumed = nil
	}
}

// waitResumed blocks the reader goroutine while reading is paused, and
// reports whether the connection is closing.
func (tc *tlsConn) waitResumed() (closing bool) {
	tc.wmu.Lock()
	ch := tc.resumed
	tc.wmu.Unlock()
	if ch != nil {
		<-ch
	}
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	return tc.closeReq
}

// Buffered is what the device has not taken yet: queued and being written.
func (tc *tlsConn) Buffered() int {
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	return len(tc.out) + tc.sending
}

// Close closes the connection once the queue is written, giving a device
// that does not read one second; it never waits itself.
func (tc *tlsConn) Close() {
	tc.wmu.Lock()
	tc.closeReq = true
	tc.resumeLocked() // a paused reader must see the end
	writing := tc.writing
	tc.wmu.Unlock()
	if writing {
		// Bound the write in progress: the writer closes when done.
		_ = tc.conn.SetWriteDeadline(time.Now().Add(time.Second))
		return
	}
	go func() {
		_ = tc.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = tc.conn.Close()
	}()
}

// Exec queues fn to run in the session's owner context. If nobody holds
// the session, a new goroutine runs the queue: never the caller's, which
// may be an event loop or the bridge, so that it never waits on this
// connection. It is safe from within the session's own context too.
func (tc *tlsConn) Exec(fn func()) {
	tc.qmu.Lock()
	tc.queue = append(tc.queue, fn)
	tc.qmu.Unlock()
	if tc.mu.TryLock() {
		go tc.unlock()
	}
}

func (tc *tlsConn) Mode() registry.Mode    { return registry.ModeTLS }
func (tc *tlsConn) Remote() string         { return tc.remote }
func (tc *tlsConn) PeerIdentity() []string { return tc.identity }
func (tc *tlsConn) Local() string          { return tc.conn.LocalAddr().String() }

func (tc *tlsConn) ChannelBinding() []byte {
	st := tc.conn.ConnectionState()
	b, err := st.ExportKeyingMaterial(control.ExporterLabel, nil, control.ExporterLen)
	if err != nil {
		return nil
	}
	return b
}

// safeFeed runs the session on bytes; a panic in it is a bug, contained to
// this connection: logged with the client id, counted, and the connection
// closed.
func safeFeed(logger *zap.Logger, st *session.Stats, s *session.Session, b []byte) (used int, closeConn bool) {
	defer func() {
		if r := recover(); r != nil {
			logger.Error("session panic; closing the connection", zap.String("client", s.ClientID()),
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			st.Panics.Add(1)
			used, closeConn = len(b), true
		}
	}()
	return s.Feed(b)
}

func safeClosed(logger *zap.Logger, st *session.Stats, s *session.Session) {
	defer func() {
		if r := recover(); r != nil {
			logger.Error("session panic at close", zap.String("client", s.ClientID()),
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			st.Panics.Add(1)
		}
	}()
	s.Closed()
}
