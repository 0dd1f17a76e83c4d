package gateway

import (
	"crypto/tls"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
	"github.com/dualgate/dualgate/tlsmux"
)

// TLS connections are the few active ones: each has a goroutine, blocked in
// Read while idle, and a small read buffer that grows only for a large
// packet.
const (
	tlsReadBuf      = 512
	tlsWriteTimeout = 10 * time.Second
)

// tlsConn is one TLS device connection. Its session is owned by whoever
// holds mu: the reader goroutine while it feeds bytes, or a function queued
// with Exec.
type tlsConn struct {
	ctr      *counters
	conn     *tls.Conn
	remote   string
	identity []string

	mu     sync.Mutex // guards sess and closed; held while the session runs
	closed bool
	sess   session.Session

	qmu   sync.Mutex // guards queue
	queue []func()
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
	tc := &tlsConn{ctr: &g.counters, conn: c, identity: info.PeerIdentity}
	g.handshakes.WithLabelValues(strconv.FormatBool(info.Resumed)).Observe(info.HandshakeDuration.Seconds())
	if info.Remote != nil {
		tc.remote = info.Remote.String()
	}
	tc.mu.Lock()
	tc.sess.Init(g.env, tc)
	tc.unlock()
	g.tlsConns.add(tc)
	defer g.tlsConns.remove(tc)

	buf := make([]byte, 0, tlsReadBuf)
	for {
		if len(buf) == cap(buf) {
			buf = growFor(buf, g.env.MaxPacketSize)
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			tc.mu.Lock()
			used, closeConn := 0, tc.closed
			if !closeConn {
				used, closeConn = safeFeed(g.logger, g.env.Stats, &tc.sess, buf)
				tc.ctr.bytesIn[registryTLS].Add(uint64(used))
			}
			tc.unlock()
			if closeConn {
				break
			}
			buf = buf[:copy(buf, buf[used:])]
			if len(buf) == 0 && cap(buf) > tlsReadBuf {
				buf = make([]byte, 0, tlsReadBuf) // drop what a large packet grew
			}
		}
		if err != nil {
			break
		}
	}
	_ = c.Close()
	tc.mu.Lock()
	tc.closed = true
	safeClosed(g.logger, g.env.Stats, &tc.sess)
	tc.unlock()
}

// growFor makes room for the packet at the front of buf: its whole length
// when the header says it, else twice the room, bounded by the maximum
// packet size (the session refuses anything larger anyway).
func growFor(buf []byte, maxSize uint32) []byte {
	want := 2 * cap(buf)
	if total, err := mqttcodec.PacketLen(buf, maxSize); err == nil && total > len(buf) {
		want = total
	}
	want = min(want, int(maxSize)+5)
	if want <= cap(buf) {
		want = cap(buf) + tlsReadBuf
	}
	nb := make([]byte, len(buf), want)
	copy(nb, buf)
	return nb
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
			if !tc.closed {
				fn()
			}
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

func (tc *tlsConn) Write(b []byte) error {
	if tc.closed {
		return errConnClosed
	}
	_ = tc.conn.SetWriteDeadline(time.Now().Add(tlsWriteTimeout))
	_, err := tc.conn.Write(b)
	if err == nil {
		tc.ctr.bytesOut[registryTLS].Add(uint64(len(b)))
	}
	return err
}

func (tc *tlsConn) Close() {
	_ = tc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = tc.conn.Close()
}

// Exec queues fn and runs it now if nobody holds the session, else when the
// holder lets go. It never blocks on the session, so it is safe from within
// the session's own context too.
func (tc *tlsConn) Exec(fn func()) {
	tc.qmu.Lock()
	tc.queue = append(tc.queue, fn)
	tc.qmu.Unlock()
	if tc.mu.TryLock() {
		tc.unlock()
	}
}

func (tc *tlsConn) Mode() registry.Mode     { return registry.ModeTLS }
func (tc *tlsConn) Remote() string          { return tc.remote }
func (tc *tlsConn) PeerIdentity() []string  { return tc.identity }
func (tc *tlsConn) Local() string           { return tc.conn.LocalAddr().String() }
func (tc *tlsConn) tick(now time.Time) bool { return tc.sess.Tick(now) }

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
