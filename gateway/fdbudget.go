package gateway

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// fdBudget keeps file descriptors in reserve for what must keep working
// when devices take every other one: the command store, the API, the
// bridge's broker connections, log files. Device sockets (plain and TLS)
// may use the process's descriptor limit less the reserve; a connection
// past that is closed at once, before it costs anything else, and counted.
// Accept errors (out of descriptors or kernel memory) are counted too:
// the listeners back off and keep running.
type fdBudget struct {
	limit   int64 // device sockets allowed; <= 0: no limit known
	reserve int64
	open    atomic.Int64 // device sockets open now

	shed         atomic.Uint64 // connections closed at accept: over the budget
	acceptErrors atomic.Uint64 // accept(2) failures the listeners backed off from

	logger  *zap.Logger
	logMu   sync.Mutex   // guards lastLog
	lastLog [2]time.Time // by kind: shed, accept error
}

// fdReserve is how many descriptors are kept from devices: 2 % of the
// limit, at least 64 and at most 512.
func fdReserve(limit int64) int64 { return min(max(limit/50, 64), 512) }

func newFDBudget(logger *zap.Logger) *fdBudget {
	b := &fdBudget{logger: logger}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur != unix.RLIM_INFINITY && rl.Cur < 1<<40 {
		lim := int64(rl.Cur)
		b.reserve = fdReserve(lim)
		b.limit = lim - b.reserve
		if b.limit < b.reserve {
			// A tiny limit: keep half for devices rather than none.
			b.limit, b.reserve = lim/2, lim-lim/2
		}
	}
	return b
}

// admit counts a new device socket, or reports that it must be closed.
func (b *fdBudget) admit() bool {
	if n := b.open.Add(1); b.limit > 0 && n > b.limit {
		b.open.Add(-1)
		b.shed.Add(1)
		b.warn(logShed, "descriptor budget for devices reached: new connection closed",
			zap.Int64("device_sockets", b.limit), zap.Int64("reserved", b.reserve))
		return false
	}
	return true
}

// release uncounts a device socket admitted before.
func (b *fdBudget) release() { b.open.Add(-1) }

// acceptError counts an accept(2) failure that the listener backs off from.
func (b *fdBudget) acceptError(err error) {
	b.acceptErrors.Add(1)
	b.warn(logAcceptError, "accept failed; backing off and accepting again", zap.Error(err),
		zap.Int64("device_sockets_open", b.open.Load()))
}

// Kinds of fdBudget log lines, each limited on its own.
const (
	logShed = iota
	logAcceptError
)

// warn logs a kind of line at most once a second, so that a storm cannot
// flood the log, and one kind cannot hide the other.
func (b *fdBudget) warn(kind int, msg string, fields ...zap.Field) {
	b.logMu.Lock()
	now := time.Now()
	if now.Sub(b.lastLog[kind]) < time.Second {
		b.logMu.Unlock()
		return
	}
	b.lastLog[kind] = now
	b.logMu.Unlock()
	b.logger.Warn(msg, fields...)
}

// listener wraps a listener whose connections are device sockets: those
// over the budget are closed at once, the others uncounted when closed.
func (b *fdBudget) listener(ln net.Listener) net.Listener { return &budgetListener{Listener: ln, b: b} }

type budgetListener struct {
	net.Listener
	b *fdBudget
}

func (l *budgetListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if isExhaustion(err) {
				l.b.acceptError(err)
			}
			return nil, err
		}
		if l.b.admit() {
			return &budgetConn{Conn: c, b: l.b}, nil
		}
		_ = c.Close()
	}
}

type budgetConn struct {
	net.Conn
	b    *fdBudget
	once sync.Once
}

func (c *budgetConn) Close() error {
	c.once.Do(c.b.release)
	return c.Conn.Close()
}

// handOver gives the socket's count to its next owner (a TLS connection
// moving to an event loop), who releases it: Close no longer does.
func (c *budgetConn) handOver() { c.once.Do(func() {}) }

// isExhaustion reports an accept error caused by running out of
// descriptors or kernel memory.
func isExhaustion(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// register exports the budget's figures.
func (b *fdBudget) register(reg *prometheus.Registry) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_accept_errors_total",
			Help: "accept(2) failures (out of descriptors or kernel memory) the listeners backed off from.",
		}, func() float64 { return float64(b.acceptErrors.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_connections_shed_total",
			Help: "Device connections closed at accept because the descriptor budget for devices was reached.",
		}, func() float64 { return float64(b.shed.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_device_sockets",
			Help: "Device sockets open (plain and TLS, handshakes included).",
		}, func() float64 { return float64(b.open.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_device_sockets_limit",
			Help: "Device sockets allowed: the descriptor limit less the reserve (0: no limit known).",
		}, func() float64 { return float64(max(b.limit, 0)) }),
	)
}
