package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("tlsmux: server closed")

// Defaults for the zero values of Config.
const (
	DefaultHandshakeTimeout      = 10 * time.Second
	DefaultHandshakeQueueTimeout = 5 * time.Second
)

// Accept error backoff: doubled from the first value up to the last.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Config configures a Server. New copies it and fills in defaults; the
// caller's struct is not changed or retained.
type Config struct {
	// TLS is required. It needs Certificates, GetCertificate or
	// GetConfigForClient; ClientAuth and ClientCAs turn on mTLS. The Server
	// uses this *tls.Config as it is, without copying it, so
	// SetSessionTicketKeys on it (TicketKeys) takes effect at once.
	// ServerTLSConfig builds the product default.
	TLS *tls.Config

	// HandshakeTimeout bounds a handshake, from the moment a worker takes
	// the connection. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	// MaxHandshakes is the most handshake workers, so the most handshakes
	// running at once. Default 4 * GOMAXPROCS. Workers start when
	// connections are queued and end when the queue is empty.
	MaxHandshakes int

	// HandshakeQueueTimeout is how long an accepted connection may wait for
	// a worker before it is closed, once its first TLS record arrived.
	// Default DefaultHandshakeQueueTimeout.
	HandshakeQueueTimeout time.Duration

	// HelloTimeout is how long an accepted connection may take to send its
	// first TLS record (the ClientHello), waiting without a worker; then it
	// is closed. Default DefaultHelloTimeout.
	HelloTimeout time.Duration

	// MaxHelloPerSource bounds the connections from one source address
	// (the PROXY header's when there is one) waiting for their first
	// record at once; more are closed at once. Default
	// DefaultMaxHelloPerSource; negative: no bound.
	MaxHelloPerSource int

	// Logger receives handshake failures (debug), accept errors (warn) and
	// Handoff panics (error). Default zap.NewNop().
	Logger *zap.Logger

	// Handoff is required. It takes the connection once the handshake is
	// done, on the handshake worker, so it must not wait long: it detaches
	// t (Transport.Detach), hands the socket to an event loop, and from
	// then on reads and writes c there through t, with no goroutine of its
	// own. The connection is then Handoff's: the Server keeps nothing of
	// it and does not close it at Shutdown or Close. A panic in Handoff is
	// recovered, logged and counted, and the accepted connection closed.
	Handoff func(c *tls.Conn, t *Transport, info ConnInfo)
}

// ConnInfo describes a handshaken connection.
type ConnInfo struct {
	// Remote is the peer's address as the listener reports it (the address
	// from a PROXY header when the listener decodes one).
	Remote net.Addr
	// Resumed reports a resumed session (session ticket).
	Resumed bool
	// Version is the TLS version (tls.VersionTLS12, tls.VersionTLS13).
	Version uint16
	// PeerIdentity lists the client ids the client certificate names, when
	// one was sent and verified (nil otherwise): its subject common name and
	// the id of each URI SAN urn:dualgate:client:<id>, in that order
	// without duplicates. DNS SANs and other URIs are not client ids and
	// are not listed.
	PeerIdentity []string
	// HandshakeDuration is the time the handshake took on its worker,
	// without the wait for a worker.
	HandshakeDuration time.Duration
}

// Stats are a Server's counters. Every accepted connection ends up in exactly
// one of HandshakesFull, HandshakesResumed, HandshakesFailed,
// HandshakesRefused, HelloTimeouts and HelloRefused, or is still counted in
// HelloWaiting, HandshakesQueued or HandshakesInFlight.
type Stats struct {
	Accepted          uint64 // connections accepted
	HandshakesFull    uint64 // full handshakes, handed over
	HandshakesResumed uint64 // resumed handshakes, handed over
	HandshakesFailed  uint64 // handshake errors, HandshakeTimeout included
	// HandshakesRefused counts connections closed without being handed
	// over although nothing was wrong with them: waited longer than
	// HandshakeQueueTimeout, or the Server was shutting down.
	HandshakesRefused uint64
	// HelloTimeouts counts connections closed for sending no TLS record
	// within HelloTimeout; HelloRefused those closed because their source
	// had MaxHelloPerSource connections waiting already.
	HelloTimeouts, HelloRefused uint64
	HelloWaiting                int    // connections waiting for their first record
	AcceptErrors                uint64 // Accept errors retried
	HandoffPanics               uint64 // panics recovered from Handoff
	HandshakesInFlight          int    // handshakes running on workers
	HandshakeWorkers            int    // worker goroutines running (0 at rest)
	HandshakesQueued            int    // connections waiting for a worker
}

// Server accepts TLS connections, runs their handshakes and hands them over
// to Config.Handoff. Its methods are safe for concurrent use.
type Server struct {
	cfg Config // defaults filled in; constant after New
	log *zap.Logger
	// stop is closed when the Server starts closing; it wakes the reaper
	// and accept loops sleeping in backoff.
	stop chan struct{}

	// Counters, updated without mu.
	accepted, full, resumed, failed, refused, acceptErrors, panics atomic.Uint64
	helloTimeouts, helloRefused                                    atomic.Uint64

	srcMu   sync.Mutex     // guards sources
	sources map[string]int // connections waiting for a first record, by source

	mu        sync.Mutex // guards the fields below
	queue     fifo
	reapTimer *time.Timer // fires when the queue's head expires
	started   bool        // reaper running
	// free lists the worker slots (indexes into inflight) with no worker.
	free      []int
	closing   bool // Shutdown or Close has begun
	listeners map[*net.Listener]struct{}
	inflight  []net.Conn            // per worker: the connection in handshake, or nil
	hello     map[net.Conn]struct{} // waiting for their first record (admit)
	// running counts the workers, the reaper and the goroutines waiting
	// for a first record; idle is closed once closing is set and running
	// is zero.
	running    int
	idle       chan struct{}
	idleClosed bool
}

// New returns a Server for cfg, which it checks and completes with defaults.
// The Server starts its goroutines on the first Serve.
func New(cfg Config) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("tlsmux: Config.TLS is required")
	}
	if len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil {
		return nil, errors.New("tlsmux: Config.TLS has no certificate (Certificates, GetCertificate or GetConfigForClient)")
	}
	if cfg.Handoff == nil {
		return nil, errors.New("tlsmux: Config.Handoff is required")
	}
	switch {
	case cfg.HandshakeTimeout < 0:
		return nil, fmt.Errorf("tlsmux: negative HandshakeTimeout %v", cfg.HandshakeTimeout)
	case cfg.HandshakeQueueTimeout < 0:
		return nil, fmt.Errorf("tlsmux: negative HandshakeQueueTimeout %v", cfg.HandshakeQueueTimeout)
	case cfg.MaxHandshakes < 0:
		return nil, fmt.Errorf("tlsmux: negative MaxHandshakes %d", cfg.MaxHandshakes)
	case cfg.HelloTimeout < 0:
		return nil, fmt.Errorf("tlsmux: negative HelloTimeout %v", cfg.HelloTimeout)
	}
	if cfg.HelloTimeout == 0 {
		cfg.HelloTimeout = DefaultHelloTimeout
	}
	if cfg.MaxHelloPerSource == 0 {
		cfg.MaxHelloPerSource = DefaultMaxHelloPerSource
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.HandshakeQueueTimeout == 0 {
		cfg.HandshakeQueueTimeout = DefaultHandshakeQueueTimeout
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = 4 * runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		stop:      make(chan struct{}),
		listeners: make(map[*net.Listener]struct{}),
		inflight:  make([]net.Conn, cfg.MaxHandshakes),
		hello:     make(map[net.Conn]struct{}),
		sources:   make(map[string]int),
		idle:      make(chan struct{}),
	}
	s.free = make([]int, cfg.MaxHandshakes)
	for i := range s.free {
		s.free[i] = cfg.MaxHandshakes - 1 - i // slot 0 is taken first
	}
	return s, nil
}

// Serve accepts connections on ln until Shutdown or Close, and then returns
// ErrServerClosed. Accept errors are logged and retried with a backoff from
// 5 ms to 1 s; if ln is closed by someone else, Serve returns an error
// wrapping net.ErrClosed. Serve closes ln before it returns. Several Serve
// calls on different listeners share the Server's workers.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.listeners[&ln] = struct{}{}
	s.startLocked()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, &ln)
		s.mu.Unlock()
		_ = ln.Close()
	}()

	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err == nil {
			delay = 0
			s.admit(conn)
			continue
		}
		if s.isClosing() {
			return ErrServerClosed
		}
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("tlsmux: accept: %w", err)
		}
		s.acceptErrors.Add(1)
		delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
		s.log.Warn("tlsmux: accept failed, retrying",
			zap.Stringer("listener", ln.Addr()), zap.Duration("backoff", delay), zap.Error(err))
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return ErrServerClosed
		}
	}
}

// Shutdown stops the Server: it closes the listeners and the connections
// still waiting for their first record, queued or in a handshake, and waits
// until the Server's goroutines (a Handoff running on a worker included)
// have returned or ctx is done. Connections already handed over are not
// the Server's: their owner ends them. When ctx ends first it returns an
// error wrapping ctx.Err(). Shutdown may be called again, and after Close.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.beginClose()
	if werr := s.wait(ctx); werr != nil {
		return werr
	}
	return err
}

// Close is Shutdown without a bound on the wait. Close is idempotent;
// calls after the first return nil. It must not be called from Handoff.
func (s *Server) Close() error {
	return s.Shutdown(context.Background())
}

// Stats returns the Server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Accepted:          s.accepted.Load(),
		HandshakesFull:    s.full.Load(),
		HandshakesResumed: s.resumed.Load(),
		HandshakesFailed:  s.failed.Load(),
		HandshakesRefused: s.refused.Load(),
		AcceptErrors:      s.acceptErrors.Load(),
		HandoffPanics:     s.panics.Load(),
		HelloTimeouts:     s.helloTimeouts.Load(),
		HelloRefused:      s.helloRefused.Load(),
	}
	s.mu.Lock()
	st.HelloWaiting = len(s.hello)
	st.HandshakesQueued = s.queue.len()
	st.HandshakeWorkers = s.cfg.MaxHandshakes - len(s.free)
	for _, c := range s.inflight {
		if c != nil {
			st.HandshakesInFlight++
		}
	}
	s.mu.Unlock()
	return st
}

// startLocked starts the reaper, once. s.mu is held.
func (s *Server) startLocked() {
	if s.started {
		return
	}
	s.started = true
	s.reapTimer = time.NewTimer(time.Hour)
	s.reapTimer.Stop()
	s.running++
	go s.reap()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// beginClose marks the Server closing, closes the listeners, refuses the
// queued connections and aborts the handshakes in flight. The first call
// returns the listeners' close error; later calls do nothing.
func (s *Server) beginClose() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	close(s.stop)
	var errs []error
	for ln := range s.listeners {
		if err := (*ln).Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
		delete(s.listeners, ln)
	}
	queued := s.queue.drain()
	for c := range s.hello {
		queued = append(queued, pending{conn: c})
		delete(s.hello, c)
	}
	for _, c := range s.inflight {
		if c != nil {
			// The worker sees its handshake fail and counts it.
			_ = c.Close()
		}
	}
	s.idleIfDoneLocked()
	s.mu.Unlock()

	s.refused.Add(uint64(len(queued)))
	for _, p := range queued {
		_ = p.conn.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tlsmux: close listeners: %w", err)
	}
	return nil
}

// wait waits for the workers, the reaper and the goroutines waiting for a
// first record, or ctx.
func (s *Server) wait(ctx context.Context) error {
	select {
	case <-s.idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tlsmux: shutdown: %w", ctx.Err())
	}
}

// done records the end of one of the Server's goroutines.
func (s *Server) done() {
	s.mu.Lock()
	s.running--
	s.idleIfDoneLocked()
	s.mu.Unlock()
}

func (s *Server) idleIfDoneLocked() {
	if s.closing && s.running == 0 && !s.idleClosed {
		s.idleClosed = true
		close(s.idle)
	}
}

// enqueue queues a connection whose first record arrived for a worker, or
// closes it when the Server is closing.
func (s *Server) enqueue(c net.Conn) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.refused.Add(1)
		_ = c.Close()
		return
	}
	if s.queue.len() == 0 {
		s.reapTimer.Reset(s.cfg.HandshakeQueueTimeout)
	}
	s.queue.push(pending{conn: c, deadline: time.Now().Add(s.cfg.HandshakeQueueTimeout)})
	if n := len(s.free); n > 0 {
		// A worker runs only while there is something queued: an idle
		// worker would keep the stack its handshakes grew (tens of KiB
		// each, docs/benchmarks.md §1).
		slot := s.free[n-1]
		s.free = s.free[:n-1]
		s.running++
		go s.work(slot)
	}
	s.mu.Unlock()
}

// reap closes the queued connections whose queue deadline passed. The queue
// is FIFO with one timeout, so its head always expires first and one timer,
// armed for the head, is enough.
func (s *Server) reap() {
	defer s.done()
	var expired []net.Conn
	for {
		select {
		case <-s.reapTimer.C:
		case <-s.stop:
			s.reapTimer.Stop()
			return
		}
		now := time.Now()
		s.mu.Lock()
		for s.queue.len() > 0 && !now.Before(s.queue.head().deadline) {
			expired = append(expired, s.queue.pop().conn)
		}
		if s.queue.len() > 0 {
			s.reapTimer.Reset(s.queue.head().deadline.Sub(now))
		}
		s.mu.Unlock()
		// Counted before closing: a client that sees its connection
		// closed also sees it in Stats.
		s.refused.Add(uint64(len(expired)))
		for i, c := range expired {
			_ = c.Close()
			expired[i] = nil
		}
		if n := len(expired); n > 0 {
			s.log.Debug("tlsmux: handshake queue timeout", zap.Int("closed", n),
				zap.Duration("timeout", s.cfg.HandshakeQueueTimeout))
		}
		expired = expired[:0]
	}
}

// work is handshake worker number slot: it takes queued connections, oldest
// first, until the queue is empty or the Server closes, and then gives its
// slot back.
func (s *Server) work(slot int) {
	defer s.done()
	for {
		s.mu.Lock()
		if s.queue.len() == 0 || s.closing {
			s.free = append(s.free, slot)
			s.mu.Unlock()
			return
		}
		p := s.queue.pop()
		if s.queue.len() == 0 {
			s.reapTimer.Stop()
		}
		if !time.Now().Before(p.deadline) {
			// Expired while the reaper's timer was late.
			s.mu.Unlock()
			s.refused.Add(1)
			_ = p.conn.Close()
			continue
		}
		s.inflight[slot] = p.conn
		s.mu.Unlock()
		s.handshake(slot, p.conn)
	}
}
