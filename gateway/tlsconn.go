package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"slices"
	"strconv"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/socket"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/tlsmux"
)

// A TLS connection is served by the same event loops as a plain one, with
// no goroutine of its own once its handshake is done. The handshake runs
// on a tlsmux worker, blocking, over a tlsmux.Transport; then handoffTLS
// detaches the transport and hands the socket to the gnet engine, which
// takes a duplicate of it (as for the single-port listener's plain
// connections). On the loop, OnTraffic lends gnet's bytes to the
// transport, reads plaintext from the tls.Conn until the transport has
// nothing left (crypto/tls keeps a record that is not whole), and feeds
// whole MQTT packets to the session; records the session writes go into
// gnet's outbound buffer. Everything else (deadline sweep, Exec, flow
// control, the outbound cut, drain and shutdown) is the plain connection's
// code: a plainConn with a tlsState.

// tlsState is what a TLS connection adds to a plainConn. Loop only.
type tlsState struct {
	conn     *tls.Conn
	tr       *tlsmux.Transport
	identity []string
	// pending holds plaintext that is not a whole MQTT packet yet, or
	// whole packets the session did not take because it paused reading;
	// nil otherwise.
	pending []byte
	paused  bool // the session holds the device back (PauseRead)
	// held: the socket is corked from the start until the session is
	// released (plainConn.Release), so that the CONNACK and the commands
	// delivered at the CONNECT leave in one segment.
	held bool
}

// tlsExtra is a TLS connection's connExtra and state, allocated together.
type tlsExtra struct {
	ext connExtra
	st  tlsState
}

// tlsHandoff is what handoffTLS gives the engine for OnOpen.
type tlsHandoff struct {
	conn *tls.Conn
	tr   *tlsmux.Transport
	info tlsmux.ConnInfo
	// remote is the PROXY header's address, "" when the socket's own
	// peer stands (the connection then asks gnet, as a plain one does,
	// and keeps no copy).
	remote string
	// counted: the socket is counted in the descriptor budget already
	// (the TLS listener's); OnOpen takes the count over.
	counted bool
}

// tlsReadBuf is the plaintext one read takes: a TLS record's payload.
const tlsReadBuf = 16 << 10

// handoffTLS hands a handshaken connection to the event loops. tlsmux
// calls it on the handshake worker, which it does not hold up.
func (g *Gateway) handoffTLS(c *tls.Conn, tr *tlsmux.Transport, info tlsmux.ConnInfo) {
	g.handshakes.WithLabelValues(strconv.FormatBool(info.Resumed)).Observe(info.HandshakeDuration.Seconds())
	accepted, err := tr.Detach()
	if err != nil {
		g.logger.Debug("tls: hand-over failed", zap.Error(err))
		if accepted != nil {
			_ = accepted.Close()
		}
		return
	}
	sock, budget := unwrapAccepted(accepted)
	if sock == nil {
		g.logger.Error("tls: hand-over: not a TCP socket; closing", zap.String("type", fmt.Sprintf("%T", accepted)))
		_ = accepted.Close()
		return
	}
	ho := &tlsHandoff{conn: c, tr: tr, info: info, counted: budget != nil}
	if info.Remote != nil {
		if r := info.Remote.String(); sock.RemoteAddr() == nil || r != sock.RemoteAddr().String() {
			ho.remote = r
		}
	}
	if budget != nil {
		// The count goes with the socket to the loop connection, whose
		// close releases it; the listener's wrapper must not.
		budget.handOver()
	}
	// The loop takes the socket by a descriptor of its own; the worker
	// goes back to handshaking at once and the loop opens the connection
	// when it gets to it (waiting for that here cost a quarter of the
	// handshake rate with two workers, docs/benchmarks.md §7). No
	// goroutine waits for the result: a failure comes back on the loop.
	if err := g.enroll(sock, ho, func(err error) { g.handoffFailed(ho, err) }); err != nil {
		g.handoffFailed(ho, err)
	}
}

// enroll hands a socket to the event loops (gnet's Engine.EnrollFD) with
// ctx as its context for OnOpen: a duplicate of its descriptor goes to a
// loop, and the socket itself is closed here. failed runs on the loop if
// the loop cannot register it; an error returned means it was not handed
// over. Either way, nothing is left to close.
func (g *Gateway) enroll(sock *net.TCPConn, ctx any, failed func(error)) error {
	rc, err := sock.SyscallConn()
	if err != nil {
		_ = sock.Close()
		return err
	}
	fd, dupErr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, dupErr = socket.Dup(int(s)) }); err != nil {
		dupErr = err
	}
	_ = sock.Close()
	if dupErr != nil {
		return dupErr
	}
	if err := g.plain.eng.EnrollFD(fd, ctx, failed); err != nil {
		_ = unix.Close(fd)
		return err
	}
	return nil
}

// handoffFailed cleans up after a TLS connection that was never opened
// on a loop: its socket is closed already; its count is ours to release.
func (g *Gateway) handoffFailed(ho *tlsHandoff, err error) {
	if ho.counted {
		g.fds.release()
	}
	g.logger.Debug("tls: hand-over to the event loop failed", zap.Error(err))
}

// unwrapAccepted finds the TCP socket under what the TLS listener
// accepted: the PROXY header reader, the untrusted-source marker and the
// descriptor budget's wrapper.
func unwrapAccepted(c net.Conn) (*net.TCPConn, *budgetConn) {
	for {
		switch w := c.(type) {
		case *net.TCPConn:
			return w, nil
		case *untrustedConn:
			c = w.Conn
		case *proxyproto.Conn:
			c = w.Raw()
		case *budgetConn:
			tc, _ := w.Conn.(*net.TCPConn)
			return tc, w
		default:
			return nil, nil
		}
	}
}

// openTLS makes the loop connection for a handed-off TLS connection.
func (ps *plainServer) openTLS(c gnet.Conn, ho *tlsHandoff) (*plainConn, gnet.Action) {
	if ps.draining.Load() || (!ho.counted && !ps.fds.admit()) {
		if ho.counted {
			ps.fds.release()
		}
		return nil, gnet.Close
	}
	// One allocation for both: the loop connection points into it.
	x := &tlsExtra{st: tlsState{conn: ho.conn, tr: ho.tr, identity: ho.info.PeerIdentity}}
	x.ext.tls = &x.st
	x.ext.remote = ho.remote
	pc := &plainConn{c: c, x: &x.ext}
	ho.tr.SetWriter((*loopWriter)(pc))
	x.st.held = cork(c.Fd()) == nil
	// What crypto/tls read past the handshake (the SDK's CONNECT comes in
	// the same segment as its Finished) and what the PROXY reader read
	// ahead are handled on the loop's next turn, even if the device
	// sends nothing more.
	_ = c.Wake(nil)
	return pc, gnet.None
}

// tlsTraffic handles the bytes gnet read for a TLS connection: it reports
// whether the connection must close. What the session and crypto/tls write
// meanwhile leaves in one write when the bytes are handled.
func (ps *plainServer) tlsTraffic(pc *plainConn, ls *loopState) bool {
	ts := pc.tls()
	buf, err := pc.c.Peek(-1)
	if err != nil {
		buf = nil
	}
	ts.tr.Lend(buf)
	pc.deferring = true
	closeConn := ps.tlsRead(pc, ls)
	pc.deferring = false
	left := ts.tr.Unlend()
	if pc.closed {
		return false
	}
	_ = pc.c.Flush() // a failed write closes the connection: OnClose
	if pc.closed {
		return false
	}
	if closeConn {
		return true
	}
	if used := len(buf) - left; used > 0 {
		// Careful: gnet's Discard(0) discards everything buffered.
		_, _ = pc.c.Discard(used)
	}
	if len(ts.pending) == 0 {
		// Between packets the connection gives back what the handshake
		// or a large record left in its TLS buffers.
		tlsmux.ReleaseBuffers(ts.conn)
	}
	return false
}

// tlsRead reads plaintext until the transport has no byte left (or the
// session pauses reading) and feeds whole packets to the session.
func (ps *plainServer) tlsRead(pc *plainConn, ls *loopState) (closeConn bool) {
	ts := pc.tls()
	if len(ts.pending) > 0 && !ts.paused {
		// Packets a pause held back, or the start of one.
		if closeConn = ps.tlsFeed(pc, ts.pending); closeConn || pc.closed {
			return closeConn
		}
	}
	if ls.scratch == nil {
		ls.scratch = make([]byte, tlsReadBuf)
	}
	for !ts.paused {
		n, err := ts.conn.Read(ls.scratch)
		if n > 0 {
			data := ls.scratch[:n]
			if len(ts.pending) > 0 {
				ts.pending = append(ts.pending, data...)
				data = ts.pending
			}
			if closeConn = ps.tlsFeed(pc, data); closeConn || pc.closed {
				return closeConn
			}
		}
		if err != nil {
			if errors.Is(err, tlsmux.ErrWouldBlock) {
				return false
			}
			if !errors.Is(err, io.EOF) {
				ps.logger.Debug("tls: read failed; closing", zap.String("peer", pc.Remote()), zap.Error(err))
			}
			return true
		}
	}
	return false
}

// tlsFeed feeds data (ts.pending or the loop's scratch buffer) to the
// session and keeps what it did not take in ts.pending.
func (ps *plainServer) tlsFeed(pc *plainConn, data []byte) (closeConn bool) {
	ts := pc.tls()
	used, closeConn := safeFeed(ps.logger, ps.env.Stats, &pc.sess, data)
	if closeConn || pc.closed {
		ts.pending = nil
		return closeConn
	}
	rest := data[used:]
	switch {
	case len(rest) == 0:
		ts.pending = nil // an idle connection keeps no buffer
	case len(ts.pending) > 0 && &data[0] == &ts.pending[0]:
		ts.pending = ts.pending[:copy(ts.pending, rest)]
	default:
		ts.pending = slices.Clone(rest)
	}
	return false
}

// channelBinding is the TLS exporter value the control channel binds to.
func (ts *tlsState) channelBinding() []byte {
	st := ts.conn.ConnectionState()
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
