package gateway

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
)

// errConnClosed is returned by writes to a connection that is gone.
var errConnClosed = errors.New("gateway: connection closed")

// plainServer is the plain MQTT listener: a gnet event-loop engine. An idle
// plain connection holds no goroutine, no timer and no read buffer: gnet
// reads into one buffer per event loop, and keeps bytes for a connection
// only while a packet is incomplete. Each connection's state (plainConn) is
// touched only on its event loop.
type plainServer struct {
	gnet.BuiltinEventEngine

	env      *session.Env
	logger   *zap.Logger
	counters *counters
	proxy    *proxyGate
	draining *atomic.Bool // set while the gateway shuts down: new connections are refused
	fds      *fdBudget    // descriptors for device sockets
	// lag is how long a function queued onto a loop waits to run.
	lag prometheus.Histogram
	// sweep is how often each loop checks its connections' deadlines.
	sweep time.Duration

	eng    gnet.Engine
	booted chan struct{}
	// running is closed on the first tick: gnet calls OnBoot before its
	// event loops are registered, and handing a connection to the engine
	// (the single-port listener) needs them.
	running     chan struct{}
	runningOnce sync.Once
	stopped     chan struct{}

	mu    sync.Mutex // guards loops
	loops map[gnet.EventLoop]*loopState
}

// loopState is what one event loop keeps: its connections, for the sweep,
// and the buffer its TLS connections' plaintext is read into. Only that
// loop touches it.
type loopState struct {
	el      gnet.EventLoop
	conns   []*plainConn
	scratch []byte // tlsReadBuf bytes, once a TLS connection needed it
}

// plainConn is a device connection on an event loop, plain or TLS (tls
// set): the gnet connection and its session. Everything in it is owned by
// the connection's event loop.
type plainConn struct {
	c gnet.Conn
	// x is what few connections need: the device's address from a PROXY
	// header, and a TLS connection's state. nil for a plain connection
	// without a PROXY header, most of them.
	x         *connExtra
	idx       int32 // position in loop.conns
	closed    bool
	proxyWait bool // a PROXY header may still come first
	untrusted bool // the peer is outside --proxy-trusted: a PROXY header from it is refused
	// deferring: the connection's bytes are being fed (OnTraffic) or a
	// task runs for it (Exec), and what the session writes meanwhile (a
	// TLS connection's records too: loopWriter) waits in gnet's outbound
	// buffer, flushed in one system call when the feed is over or the
	// loop's round of tasks ends.
	deferring bool
	sess      session.Session
}

func newPlainServer(env *session.Env, logger *zap.Logger, ctr *counters, proxy *proxyGate, draining *atomic.Bool) *plainServer {
	return &plainServer{
		env:      env,
		logger:   logger,
		counters: ctr,
		proxy:    proxy,
		draining: draining,
		sweep:    time.Second,
		booted:   make(chan struct{}),
		running:  make(chan struct{}),
		stopped:  make(chan struct{}),
		loops:    make(map[gnet.EventLoop]*loopState),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dualgate_event_loop_lag_seconds",
			Help:    "Time a task queued onto a plain event loop waits before it runs (sampled once a second per loop): what every device on the loop waits.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
}

// run serves addr until stop; it returns when the engine has stopped.
//
// Each event loop accepts its own connections on a listener of its own
// (SO_REUSEPORT, the kernel spreading new connections over them): no
// acceptor thread hands every connection to a loop through an eventfd
// wake-up and a queued task, which a reconnect storm paid on every
// CONNECT (docs/benchmarks.md §2).
func (ps *plainServer) run(addr string, loops int) error {
	defer close(ps.stopped)
	if err := addrFree(addr); err != nil {
		return err
	}
	return gnet.Run(ps, "tcp://"+addr,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(loops),
		gnet.WithReuseAddr(true),
		gnet.WithReusePort(true),
		// Connections handed over by the single-port listener are enrolled
		// from another goroutine, which round-robin does not allow.
		gnet.WithLoadBalancing(gnet.LeastConnections),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{ps.logger.Sugar()}),
		// Out of descriptors: count, back off, keep listening.
		gnet.WithOnAcceptError(ps.fds.acceptError),
	)
}

// addrFree fails when another socket listens on addr: SO_REUSEPORT would
// let the event loops' listeners join it, a second gateway on the same
// port silently sharing the first one's devices, instead of failing with
// "address already in use". Port 0 is always free.
func addrFree(addr string) error {
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

func (ps *plainServer) OnBoot(eng gnet.Engine) gnet.Action {
	ps.eng = eng
	close(ps.booted)
	return gnet.None
}

func (ps *plainServer) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	var pc *plainConn
	if ho, ok := c.Context().(*tlsHandoff); ok {
		// A TLS connection whose handshake is done (handoffTLS).
		c.SetContext(nil)
		var action gnet.Action
		if pc, action = ps.openTLS(c, ho); pc == nil {
			return nil, action
		}
	} else {
		if ps.draining.Load() || !ps.fds.admit() {
			return nil, gnet.Close
		}
		untrusted := false
		if ps.proxy.mode != ProxyOff && !ps.proxy.trusts(c.RemoteAddr()) {
			if ps.proxy.mode == ProxyRequired {
				ps.proxy.refuse("plain", addrString(c.RemoteAddr()), whyRequired)
				ps.fds.release()
				return nil, gnet.Close
			}
			untrusted = true
		}
		pc = &plainConn{c: c, proxyWait: ps.proxy.mode != ProxyOff, untrusted: untrusted}
	}
	ls := ps.loopOf(c.EventLoop())
	pc.idx = int32(len(ls.conns))
	ls.conns = append(ls.conns, pc)
	c.SetContext(pc)
	pc.sess.Init(ps.env, pc)
	return nil, gnet.None
}

func (ps *plainServer) OnTraffic(c gnet.Conn) gnet.Action {
	pc, ok := c.Context().(*plainConn)
	if !ok || pc.closed {
		return gnet.None
	}
	if pc.tls() != nil {
		if ps.tlsTraffic(pc, ps.loopOf(c.EventLoop())) {
			return gnet.Close
		}
		return gnet.None
	}
	buf, err := c.Peek(-1)
	if err != nil || len(buf) == 0 {
		return gnet.None
	}
	if pc.proxyWait {
		n, ok := ps.proxyHeader(pc, buf)
		if !ok {
			return gnet.Close
		}
		if n == 0 && pc.proxyWait {
			return gnet.None // the header is not whole yet
		}
		if n > 0 {
			_, _ = c.Discard(n)
			if buf, err = c.Peek(-1); err != nil || len(buf) == 0 {
				return gnet.None
			}
		}
	}
	// The session's answers to what it is fed (PUBACKs, SUBACKs,
	// PINGRESPs, ...) wait for the end of the feed and leave in one
	// write: a device with many QoS 1 publishes in one read costs one
	// system call, not one per PUBACK.
	pc.deferring = true
	used, closeConn := safeFeed(ps.logger, ps.env.Stats, &pc.sess, buf)
	pc.deferring = false
	if pc.closed {
		return gnet.None // a failed write closed it meanwhile
	}
	_ = c.Flush() // a failed write closes the connection: OnClose
	if pc.closed {
		return gnet.None
	}
	if closeConn {
		return gnet.Close
	}
	if used > 0 {
		// Careful: gnet's Discard(0) discards everything buffered.
		_, _ = c.Discard(used)
	}
	return gnet.None
}

func (ps *plainServer) OnClose(c gnet.Conn, _ error) gnet.Action {
	pc, ok := c.Context().(*plainConn)
	if !ok || pc.closed {
		return gnet.None
	}
	pc.closed = true
	ps.fds.release()
	ls := ps.loopOf(c.EventLoop())
	last := ls.conns[len(ls.conns)-1]
	ls.conns[pc.idx] = last
	last.idx = pc.idx
	ls.conns[len(ls.conns)-1] = nil
	ls.conns = ls.conns[:len(ls.conns)-1]
	if len(ls.conns) == 0 {
		ls.conns = nil
	}
	safeClosed(ps.logger, ps.env.Stats, &pc.sess)
	if ts := pc.tls(); ts != nil {
		ts.pending = nil
	}
	c.SetContext(nil)
	return gnet.None
}

// OnTick runs on its own goroutine: it schedules a deadline sweep onto each
// loop, where the connections' state lives.
func (ps *plainServer) OnTick() (time.Duration, gnet.Action) {
	ps.runningOnce.Do(func() { close(ps.running) })
	ps.mu.Lock()
	loops := make([]*loopState, 0, len(ps.loops))
	for _, ls := range ps.loops {
		loops = append(loops, ls)
	}
	ps.mu.Unlock()
	for _, ls := range loops {
		queued := time.Now()
		_ = ls.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			// How long the loop took to get to this: the lag every
			// device on it sees.
			ps.lag.Observe(time.Since(queued).Seconds())
			now := ps.env.Now()
			// Tick may close a connection, which reorders ls.conns: walk
			// from the end so a moved connection has been seen already.
			for i := len(ls.conns) - 1; i >= 0; i-- {
				if i < len(ls.conns) {
					ls.conns[i].sess.Tick(now)
				}
			}
			return nil
		}))
	}
	ps.env.Sessions.Sweep(ps.env.Now())
	return ps.sweep, gnet.None
}

// proxyHeader takes a PROXY header off the front of buf: it returns the
// header's length once it is whole (0 while it is not, or when there is
// none), and false when the connection must be closed.
func (ps *plainServer) proxyHeader(pc *plainConn, buf []byte) (int, bool) {
	if pc.untrusted {
		switch present, maybe := proxySignature(buf); {
		case present:
			ps.proxy.refuse("plain", pc.Remote(), whyHeader)
			return 0, false
		case !maybe:
			pc.proxyWait = false // no header: served with its own address
		}
		return 0, true
	}
	n, err := proxyHeaderLen(buf)
	switch {
	case errors.Is(err, errNoProxyHeader) && ps.proxy.mode == ProxyOptional:
		pc.proxyWait = false
		return 0, true
	case err != nil:
		ps.counters.proxyErrors.Add(1)
		ps.proxy.log.Info("connection without a valid PROXY header; closing",
			zap.String("peer", pc.Remote()), zap.Error(err))
		return 0, false
	case n == 0 || len(buf) < n:
		return 0, true
	}
	addr, err := parseProxyHeader(buf[:n])
	if err != nil {
		ps.counters.proxyErrors.Add(1)
		ps.proxy.log.Info("malformed PROXY header; closing", zap.String("peer", pc.Remote()), zap.Error(err))
		return 0, false
	}
	if addr != "" { // "" is a LOCAL header: the socket's own address stands
		pc.x = &connExtra{remote: addr}
	}
	pc.proxyWait = false
	return n, true
}

func (ps *plainServer) loopOf(el gnet.EventLoop) *loopState {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ls, ok := ps.loops[el]
	if !ok {
		ls = &loopState{el: el}
		ps.loops[el] = ls
	}
	return ls
}

// each runs fn on every plain session, on its loop, and waits.
func (ps *plainServer) each(fn func(s *session.Session)) {
	ps.mu.Lock()
	var wg sync.WaitGroup
	for _, ls := range ps.loops {
		wg.Add(1)
		if err := ls.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			defer wg.Done()
			for i := len(ls.conns) - 1; i >= 0; i-- {
				if i < len(ls.conns) {
					fn(&ls.conns[i].sess)
				}
			}
			return nil
		})); err != nil {
			wg.Done()
		}
	}
	ps.mu.Unlock()
	wg.Wait()
}

func (ps *plainServer) stop(ctx context.Context) error {
	select {
	case <-ps.booted:
	default:
		return nil
	}
	return ps.eng.Stop(ctx)
}

// connExtra is the part of a loop connection that most plain ones do
// without.
type connExtra struct {
	remote string    // from a PROXY header, "" without one
	tls    *tlsState // TLS connections only
}

// tls is the connection's TLS state, nil for a plain connection.
func (pc *plainConn) tls() *tlsState {
	if pc.x == nil {
		return nil
	}
	return pc.x.tls
}

// Transport, for the session. Every method but Exec runs on the loop.

// Write sends b, for TLS as records, through loopWriter (the session
// writes on its loop only).
func (pc *plainConn) Write(b []byte) error {
	if pc.closed {
		return errConnClosed
	}
	var err error
	if ts := pc.tls(); ts != nil {
		_, err = ts.conn.Write(b) // its records come to loopWriter
	} else {
		_, err = (*loopWriter)(pc).Write(b)
	}
	return err
}

// loopWriter is where a loop connection's bytes go (a TLS connection's
// records, which crypto/tls writes to its transport, included): into
// gnet's outbound buffer while the connection defers its writes, to the
// socket otherwise. It is the plainConn itself seen as an io.Writer, so it
// costs a connection nothing.
type loopWriter plainConn

// deferLimit bounds what a connection defers: a write that would take its
// outbound buffer past it goes out at once, after what was deferred. What
// stays in the buffer is then what the socket did not take, which is what
// --max-outbound-bytes bounds (session.write): a round of large
// deliveries to a device that reads them must not look like a device that
// does not read. A large write is not copied into the buffer first, and a
// buffer already past the limit holds what the socket refused: gnet
// writes it when the socket is writable, and further writes wait behind
// it.
const deferLimit = 64 << 10

func (w *loopWriter) Write(b []byte) (int, error) {
	pc := (*plainConn)(w)
	if !pc.deferring {
		return pc.c.Write(b)
	}
	switch before := pc.c.OutboundBuffered(); {
	case before+len(b) < deferLimit || before >= deferLimit:
		return pc.c.Defer(b)
	case before > 0:
		if err := pc.c.Flush(); err != nil {
			return 0, err
		}
	}
	return pc.c.Write(b)
}

// Finish writes the session's last packet (a DISCONNECT: an instruction,
// a drain, an error) and closes. The socket is corked before the write
// and shut for writing after it, so that the packet leaves in the
// segment that carries the FIN (one segment less for the device, twice
// per upgrade cycle), and leaves even when the close then sends a reset
// (the device's bytes still unread), which would drop what a cork held.
func (pc *plainConn) Finish(b []byte) error {
	if pc.closed {
		return errConnClosed
	}
	fd := pc.c.Fd()
	corked := cork(fd) == nil
	err := pc.Write(b)
	if corked && err == nil && pc.c.Flush() == nil && pc.c.OutboundBuffered() == 0 {
		_ = finish(fd)
	}
	pc.Close()
	return err
}

// Release ends a TLS connection's hold (tlsState.held): what gnet's
// outbound buffer holds goes to the socket first, behind the cork, and
// then the cork comes off, which sends it all at once. A plain connection
// holds nothing.
func (pc *plainConn) Release() {
	ts := pc.tls()
	if ts == nil || !ts.held || pc.closed {
		return
	}
	ts.held = false
	_ = pc.c.Flush() // a failed write closes the connection: OnClose
	if !pc.closed {
		_ = uncork(pc.c.Fd())
	}
}

func (pc *plainConn) Buffered() int {
	if pc.closed {
		return 0
	}
	return pc.c.OutboundBuffered()
}

// PauseRead stops gnet polling the socket for reads (third_party/gnet
// patch 5): the device's bytes wait in the kernel and then its sending
// stalls. What gnet had read already stays in its inbound buffer, at
// most one read more than the session took.
// A TLS connection also stops reading the plaintext crypto/tls holds.
func (pc *plainConn) PauseRead() {
	if !pc.closed {
		if ts := pc.tls(); ts != nil {
			ts.paused = true
		}
		_ = pc.c.PauseRead()
	}
}

// ResumeRead polls the socket again; gnet calls OnTraffic at once for
// bytes it kept, so they are fed even if the device sends nothing more.
// A TLS connection may hold plaintext that gnet does not see: it is
// woken to feed it.
func (pc *plainConn) ResumeRead() {
	if !pc.closed {
		_ = pc.c.ResumeRead()
		if ts := pc.tls(); ts != nil && ts.paused {
			ts.paused = false
			_ = pc.c.Wake(nil)
		}
	}
}

// Close closes the connection; gnet writes what its outbound buffer
// holds first, as far as the socket takes it without waiting. A TLS
// connection ends without a close_notify: MQTT frames its packets, so the
// device cannot mistake a cut for the end of one, and the alert would
// only cost it bytes (docs/protocol.md).
func (pc *plainConn) Close() {
	if !pc.closed {
		_ = pc.c.Close()
	}
}

// Exec runs fn on the connection's loop. What the session writes there
// (for TLS, the records crypto/tls makes of it: loopWriter) waits in
// gnet's outbound buffer and leaves when the loop ends its round of tasks
// (FlushSoon, third_party/gnet patch 12): a subscriber sent many messages
// at once, each its own task, gets those of a round in one write.
func (pc *plainConn) Exec(fn func()) {
	_ = pc.c.EventLoop().Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		pc.deferring = true
		fn()
		pc.deferring = false
		if !pc.closed {
			pc.c.FlushSoon()
		}
		return nil
	}))
}

func (pc *plainConn) Mode() registry.Mode {
	if pc.tls() != nil {
		return registry.ModeTLS
	}
	return registry.ModePlain
}

func (pc *plainConn) Remote() string {
	if pc.x != nil && pc.x.remote != "" {
		return pc.x.remote
	}
	if pc.closed {
		return ""
	}
	if a := pc.c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

func (pc *plainConn) PeerIdentity() []string {
	if ts := pc.tls(); ts != nil {
		return ts.identity
	}
	return nil
}

func (pc *plainConn) ChannelBinding() []byte {
	if ts := pc.tls(); ts != nil {
		return ts.channelBinding()
	}
	return nil
}

// Local is the address the device reached, read from the socket (see
// socketLocal), so it is the same with released gnet, whose LocalAddr is
// the listener's (e.g. "[::]:1883").
func (pc *plainConn) Local() string {
	if pc.closed {
		return ""
	}
	return socketLocal(pc.c.Fd())
}

// gnetLogger routes gnet's own log lines into zap.
type gnetLogger struct{ s *zap.SugaredLogger }

func (l gnetLogger) Debugf(format string, args ...any) { l.s.Debugf(format, args...) }
func (l gnetLogger) Infof(format string, args ...any)  { l.s.Infof(format, args...) }
func (l gnetLogger) Warnf(format string, args ...any)  { l.s.Warnf(format, args...) }
func (l gnetLogger) Errorf(format string, args ...any) { l.s.Errorf(format, args...) }
func (l gnetLogger) Fatalf(format string, args ...any) { l.s.Errorf(format, args...) }
