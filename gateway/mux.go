package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The single-port listener (--listen-mux) tells the two kinds of
// connection apart by their first byte, after a PROXY header if one is
// configured: 0x16 starts a TLS handshake record, anything else is plain
// MQTT. TLS connections go to the TLS server; plain ones are handed to the
// gnet engine (which takes over a duplicate of the socket), so an idle
// plain connection keeps no goroutine here either. The bytes are only
// peeked (MSG_PEEK): nothing is read before the hand-over.

const (
	tlsRecordHandshake = 0x16
	muxSniffTimeout    = 10 * time.Second
)

func (g *Gateway) startMux() error {
	ln, err := net.Listen("tcp", g.cfg.ListenMux)
	if err != nil {
		return fmt.Errorf("mux listener: %w", err)
	}
	g.muxLn = ln
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
		// A short-lived goroutine waits for the first bytes, then the
		// connection belongs to gnet or to the TLS server.
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.routeMux(c)
		}()
	}
}

func (g *Gateway) routeMux(c net.Conn) {
	untrusted := g.proxy.mode != ProxyOff && !g.proxy.trusts(c.RemoteAddr())
	if untrusted && g.proxy.mode == ProxyRequired {
		g.proxy.refuse("mux", addrString(c.RemoteAddr()), whyRequired)
		_ = c.Close()
		return
	}
	isTLS, err := g.sniff(c, untrusted)
	if errors.Is(err, errUntrustedProxy) {
		g.proxy.refuse("mux", addrString(c.RemoteAddr()), whyHeader)
		_ = c.Close()
		return
	}
	if err != nil {
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
	ctx := gnet.NewNetConnContext(context.Background(), c)
	res, err := g.plain.eng.Register(ctx)
	if err != nil {
		_ = c.Close()
		return
	}
	if r := <-res; r.Err != nil {
		g.logger.Debug("mux: plain hand-over failed", zap.Error(r.Err))
	}
}

// errUntrustedProxy is sniff's answer for a PROXY header from a source
// outside --proxy-trusted.
var errUntrustedProxy = errors.New("PROXY header from an untrusted source")

// sniff peeks at the connection's first bytes and says whether it is TLS.
// From an untrusted source, a PROXY header is errUntrustedProxy.
func (g *Gateway) sniff(c net.Conn, untrusted bool) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	deadline := time.Now().Add(muxSniffTimeout)
	// Enough for a v1 header and the byte after it; grown to a v2 header's
	// announced length (TLVs can make it long) plus one.
	buf := make([]byte, proxyV1MaxLen+1)
	proxied := g.proxy.mode != ProxyOff && !untrusted
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		var n int
		var perr error
		if err := rc.Control(func(fd uintptr) {
			n, _, perr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		}); err != nil {
			return false, err
		}
		switch {
		case perr != nil && !errors.Is(perr, unix.EAGAIN):
			return false, perr
		case perr == nil && n == 0:
			return false, errors.New("closed")
		case n > 0:
			b := buf[:n]
			skip := 0
			if untrusted {
				present, maybe := proxySignature(b)
				if present {
					return false, errUntrustedProxy
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
					return false, err
				case h == 0:
					skip = -1 // the header is not whole yet
				default:
					skip = h
				}
				if h >= len(buf) {
					buf = make([]byte, h+1)
				}
			}
			if skip >= 0 && len(b) > skip {
				return b[skip] == tlsRecordHandshake, nil
			}
		}
		if time.Now().After(deadline) {
			return false, errors.New("nothing sent in time")
		}
		select {
		case <-time.After(wait):
		case <-g.stop:
			return false, errors.New("gateway stopping")
		}
	}
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
