package gateway

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The single-port listener (--listen-mux) tells the two kinds of
// connection apart by their first byte, after a PROXY header if one is
// configured: 0x16 starts a TLS handshake record, anything else is plain
// MQTT. TLS connections go to the TLS server, whose handshake workers hand
// them to the gnet engine once the handshake is done (tlsconn.go); plain
// ones are handed to the engine at once (it takes over a duplicate of the
// socket). An idle connection of either kind keeps no goroutine here. The bytes are only
// peeked (MSG_PEEK): nothing is read before the hand-over.
//
// Until its first bytes arrive, a connection holds one goroutine parked in
// Go's network poller (no timer, no polling), and a slot in muxGate: at most
// --mux-pending connections wait at once, at most --tls-hello-per-source
// from one address outside --proxy-trusted (a trusted balancer carries
// every device's connections), each for at most --tls-hello-timeout. Past
// a bound, the new connection is closed at once on the accept loop;
// every refusal is counted by reason (dualgate_mux_refused_total).

const tlsRecordHandshake = 0x16

// Why the mux closed a connection before routing it.
const (
	muxRefusedTotal   = iota // --mux-pending connections were waiting
	muxRefusedSource         // --tls-hello-per-source from its address were waiting
	muxRefusedTimeout        // nothing within --tls-hello-timeout
	muxRefusedReasons
)

var muxRefusedNames = [muxRefusedReasons]string{"total", "source", "timeout"}

// muxGate bounds the connections waiting for their first bytes.
type muxGate struct {
	total     int // --mux-pending
	perSource int // --tls-hello-per-source; < 0: no bound
	timeout   time.Duration
	refused   [muxRefusedReasons]atomic.Uint64

	mu      sync.Mutex // guards the fields below
	waiting map[net.Conn]string
	sources map[string]int
	closed  bool
}

func newMuxGate(total, perSource int, timeout time.Duration) *muxGate {
	return &muxGate{total: total, perSource: perSource, timeout: timeout,
		waiting: make(map[net.Conn]string), sources: make(map[string]int)}
}

// take admits c to wait for its first bytes; src is its address when the
// per-source bound applies ("" when not).
func (m *muxGate) take(c net.Conn, src string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return false
	case len(m.waiting) >= m.total:
		m.refused[muxRefusedTotal].Add(1)
		return false
	case src != "" && m.perSource >= 0 && m.sources[src] >= m.perSource:
		m.refused[muxRefusedSource].Add(1)
		return false
	}
	m.waiting[c] = src
	if src != "" {
		m.sources[src]++
	}
	return true
}

func (m *muxGate) release(c net.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	src, ok := m.waiting[c]
	if !ok {
		return
	}
	delete(m.waiting, c)
	if src != "" {
		if m.sources[src]--; m.sources[src] <= 0 {
			delete(m.sources, src)
		}
	}
}

// close admits no more connections and wakes those waiting (their read
// fails at once), so that their goroutines end.
func (m *muxGate) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for c := range m.waiting {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
}

// waitingNow is how many connections wait for their first bytes.
func (m *muxGate) waitingNow() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.waiting)
}

func (g *Gateway) startMux() error {
	ln, err := net.Listen("tcp", g.cfg.ListenMux)
	if err != nil {
		return fmt.Errorf("mux listener: %w", err)
	}
	g.muxLn = ln
	g.muxGate = newMuxGate(g.cfg.MuxPending, g.cfg.TLSHelloPerIP, g.cfg.TLSHello)
	g.muxTLS = newChanListener(ln.Addr())
	g.serveTLSOn(g.muxTLS)
	g.wg.Add(1)
	go g.acceptMux(ln)
	return nil
}

// MuxAddr is the single-port listener's address ("" when there is none).
func (g *Gateway) MuxAddr() string {
	if g.muxLn == nil {
		return ""
	}
	return g.muxLn.Addr().String()
}

func (g *Gateway) acceptMux(ln net.Listener) {
	defer g.wg.Done()
	defer g.muxGate.close() // the listener closes at Shutdown
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			g.logger.Warn("mux accept", zap.Error(err), zap.Duration("retry_in", delay))
			select {
			case <-time.After(delay):
				continue
			case <-g.stop:
				return
			}
		}
		delay = 0
		untrusted := g.proxy.mode != ProxyOff && !g.proxy.trusts(c.RemoteAddr())
		if untrusted && g.proxy.mode == ProxyRequired {
			g.proxy.refuse("mux", addrString(c.RemoteAddr()), whyRequired)
			_ = c.Close()
			continue
		}
		// A balancer in --proxy-trusted carries every device's
		// connections: only the total bound applies to it.
		src := ""
		if g.proxy.mode == ProxyOff || untrusted {
			src = hostOf(c.RemoteAddr())
		}
		// Set before the connection is admitted, so that the gate's
		// close (at Shutdown) comes after it and wins.
		_ = c.SetReadDeadline(time.Now().Add(g.muxGate.timeout))
		if !g.muxGate.take(c, src) {
			_ = c.Close()
			continue
		}
		// A goroutine parked until the first bytes arrive, then the
		// connection belongs to gnet or to the TLS server.
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.routeMux(c, untrusted)
		}()
	}
}

// hostOf is the host part of a remote address.
func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

func (g *Gateway) routeMux(c net.Conn, untrusted bool) {
	isTLS, err := g.sniff(c, untrusted)
	g.muxGate.release(c)
	if err == nil {
		err = c.SetReadDeadline(time.Time{})
	}
	if errors.Is(err, errUntrustedProxy) {
		g.proxy.refuse("mux", addrString(c.RemoteAddr()), whyHeader)
		_ = c.Close()
		return
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			g.muxGate.refused[muxRefusedTimeout].Add(1)
		}
		g.logger.Debug("mux: connection closed before it said what it is", zap.Error(err))
		_ = c.Close()
		return
	}
	if isTLS {
		g.counters.muxed[registryTLS].Add(1)
		if !g.muxTLS.deliver(c) {
			_ = c.Close()
		}
		return
	}
	g.counters.muxed[registryPlain].Add(1)
	sock, ok := c.(*net.TCPConn) // the mux listener's own, unwrapped
	if !ok {
		g.logger.Error("mux: plain hand-over: not a TCP socket; closing", zap.String("type", fmt.Sprintf("%T", c)))
		_ = c.Close()
		return
	}
	failed := func(err error) { g.logger.Debug("mux: plain hand-over failed", zap.Error(err)) }
	if err := g.enroll(sock, nil, failed); err != nil {
		failed(err)
	}
}

// errUntrustedProxy is sniff's answer for a PROXY header from a source
// outside --proxy-trusted.
var errUntrustedProxy = errors.New("PROXY header from an untrusted source")

// sniff peeks at the connection's first bytes and says whether it is TLS.
// It waits in Go's network poller until bytes arrive or the connection's
// read deadline passes. From an untrusted source, a PROXY header is
// errUntrustedProxy.
func (g *Gateway) sniff(c net.Conn, untrusted bool) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	// Enough for a v1 header and the byte after it; grown to a v2 header's
	// announced length (TLVs can make it long) plus one.
	buf := make([]byte, proxyV1MaxLen+1)
	proxied := g.proxy.mode != ProxyOff && !untrusted
	var (
		isTLS bool
		serr  error
	)
	// decide reads what is there: done reports an answer (or an error);
	// grown that buf was too short to hold the whole PROXY header.
	decide := func(b []byte) (done, grown bool) {
		skip := 0
		if untrusted {
			present, maybe := proxySignature(b)
			if present {
				serr = errUntrustedProxy
				return true, false
			}
			if maybe {
				skip = -1 // too short to tell
			}
		}
		if proxied {
			h, err := proxyHeaderLen(b)
			switch {
			case errors.Is(err, errNoProxyHeader):
			case err != nil:
				serr = err
				return true, false
			case h == 0:
				skip = -1 // the header is not whole yet
			default:
				skip = h
			}
			if h >= len(buf) {
				buf = make([]byte, h+1)
				grown = true
			}
		}
		if skip >= 0 && len(b) > skip {
			isTLS = b[skip] == tlsRecordHandshake
			return true, false
		}
		return false, grown
	}
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, perr := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case errors.Is(perr, unix.EAGAIN):
				return false // wait for the poller
			case perr != nil:
				serr = perr
				return true
			case n == 0:
				serr = errors.New("closed")
				return true
			}
			done, grown := decide(buf[:n])
			if done {
				return true
			}
			if !grown {
				// More bytes are needed: they come with a new edge.
				return false
			}
		}
	})
	if err != nil {
		return false, err
	}
	return isTLS, serr
}

// registerMuxMetrics exports the single-port listener's refusals and the
// connections waiting for their first bytes.
func registerMuxMetrics(reg *prometheus.Registry, m *muxGate) {
	for i, name := range muxRefusedNames {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "dualgate_mux_refused_total",
			Help:        "Connections on the single-port listener closed before they were routed, by reason (total: --mux-pending were waiting; source: --tls-hello-per-source from its address were waiting; timeout: nothing within --tls-hello-timeout).",
			ConstLabels: prometheus.Labels{"reason": name},
		}, func() float64 { return float64(m.refused[i].Load()) }))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_mux_waiting",
		Help: "Connections on the single-port listener waiting for their first bytes.",
	}, func() float64 { return float64(m.waitingNow()) }))
}

// chanListener is a net.Listener fed by the mux with TLS connections.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
