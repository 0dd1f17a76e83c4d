package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/devwire"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Defaults of ClientConfig.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultInFlight       = 32
	DefaultMaxPacket      = 1 << 20
	DefaultClientIDPrefix = "dualbench-"
)

// ClientConfig describes the idle clients one Pool holds. The zero value of
// every optional field picks the documented default.
type ClientConfig struct {
	// Addr is the server's host:port.
	Addr string
	// MQTTVersion is 4 (3.1.1, the default) or 5.
	MQTTVersion byte
	// KeepAlive is sent in CONNECT and is the PINGREQ period; it is rounded
	// down to whole seconds. Zero sends no PINGREQ.
	KeepAlive time.Duration
	// ClientIDPrefix is followed by the connection's global index.
	ClientIDPrefix string
	// Username and Password are sent when Username is not empty.
	Username, Password string
	// PersistentSession clears Clean Session (3.1.1) / Clean Start (5).
	PersistentSession bool
	// ConnectTimeout bounds dial, TLS handshake and CONNACK together.
	ConnectTimeout time.Duration
	// TLS, when set, makes every connection a crypto/tls client with this
	// configuration; its ClientSessionCache, if any, is shared by the pool.
	TLS *tls.Config
	// SourceAddrs are bound before connect, connection i using
	// SourceAddrs[i % len]. Empty lets the kernel choose.
	SourceAddrs []netip.Addr
	// Rate is the connection attempts per second; zero or less is
	// unlimited.
	Rate float64
	// InFlight is how many connections may be between dial and CONNACK
	// at once. It keeps a connect storm from overflowing the server's
	// accept queue, where dropped SYNs cost a second each.
	InFlight int
	// MaxPacket is the largest packet accepted from the server.
	MaxPacket uint32
	// Device, when set, makes every connection a dualgate device (see
	// DeviceConfig).
	Device *DeviceConfig
}

func (c ClientConfig) withDefaults() (ClientConfig, error) {
	if c.Addr == "" {
		return c, errors.New("bench: client: no server address")
	}
	if c.MQTTVersion == 0 {
		c.MQTTVersion = mqttcodec.V311
	}
	if c.MQTTVersion != mqttcodec.V311 && c.MQTTVersion != mqttcodec.V5 {
		return c, fmt.Errorf("bench: client: MQTT version %d: want 4 (3.1.1) or 5", c.MQTTVersion)
	}
	if c.KeepAlive < 0 || c.KeepAlive > 65535*time.Second {
		return c, fmt.Errorf("bench: client: keepalive %v out of range 0..65535s", c.KeepAlive)
	}
	c.KeepAlive = c.KeepAlive.Truncate(time.Second)
	if c.ClientIDPrefix == "" {
		c.ClientIDPrefix = DefaultClientIDPrefix
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.InFlight <= 0 {
		c.InFlight = DefaultInFlight
	}
	if c.MaxPacket == 0 {
		c.MaxPacket = DefaultMaxPacket
	}
	c.SourceAddrs = append([]netip.Addr(nil), c.SourceAddrs...)
	return c, nil
}

// PoolStats are the counters of a Pool. Connected counts connections that
// got a successful CONNACK; Live those still open; Failed those that never
// got one (by reason in Failures); Dropped those the server closed after
// the CONNACK (by reason in Drops).
type PoolStats struct {
	Attempted int64 `json:"attempted"`
	Connected int64 `json:"connected"`
	Live      int64 `json:"live"`
	Failed    int64 `json:"failed"`
	Dropped   int64 `json:"dropped"`
	Resumed   int64 `json:"resumed,omitempty"`
	PingsSent int64 `json:"pings_sent"`
	Pongs     int64 `json:"pongs"`
	Publishes int64 `json:"publishes,omitempty"`
	// Device counters (DeviceConfig): reconnect instructions received,
	// those ignored (same mode, anti-downgrade, malformed), moves to TLS
	// and back to plain completed (CONNACK on the new connection), moves
	// retried, commands received and acknowledged, and the connections on
	// TLS right now.
	Instructions int64 `json:"instructions,omitempty"`
	Ignored      int64 `json:"ignored_instructions,omitempty"`
	Upgrades     int64 `json:"upgrades,omitempty"`
	Downgrades   int64 `json:"downgrades,omitempty"`
	MoveRetries  int64 `json:"move_retries,omitempty"`
	Commands     int64 `json:"commands,omitempty"`
	CommandAcks  int64 `json:"command_acks,omitempty"`
	OnTLS        int64 `json:"on_tls,omitempty"`
	// LastCommandAck is when the last command PUBACK was written, Unix ns.
	LastCommandAck int64 `json:"last_command_ack_ns,omitempty"`

	Failures map[string]int64 `json:"failures,omitempty"`
	Drops    map[string]int64 `json:"drops,omitempty"`
	// FirstDial and LastConnack are Unix nanoseconds, zero if none.
	FirstDial   int64 `json:"first_dial_ns,omitempty"`
	LastConnack int64 `json:"last_connack_ns,omitempty"`
}

// Add accumulates o into s (used to sum workers).
func (s *PoolStats) Add(o PoolStats) {
	s.Attempted += o.Attempted
	s.Connected += o.Connected
	s.Live += o.Live
	s.Failed += o.Failed
	s.Dropped += o.Dropped
	s.Resumed += o.Resumed
	s.PingsSent += o.PingsSent
	s.Pongs += o.Pongs
	s.Publishes += o.Publishes
	s.Instructions += o.Instructions
	s.Ignored += o.Ignored
	s.Upgrades += o.Upgrades
	s.Downgrades += o.Downgrades
	s.MoveRetries += o.MoveRetries
	s.Commands += o.Commands
	s.CommandAcks += o.CommandAcks
	s.OnTLS += o.OnTLS
	s.LastCommandAck = max(s.LastCommandAck, o.LastCommandAck)
	s.Failures = addCounts(s.Failures, o.Failures)
	s.Drops = addCounts(s.Drops, o.Drops)
	if o.FirstDial != 0 && (s.FirstDial == 0 || o.FirstDial < s.FirstDial) {
		s.FirstDial = o.FirstDial
	}
	s.LastConnack = max(s.LastConnack, o.LastConnack)
}

func addCounts(dst, src map[string]int64) map[string]int64 {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = make(map[string]int64, len(src))
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}

// ConnectRate is the connections per second from the first dial to the last
// CONNACK; zero when unknown.
func (s PoolStats) ConnectRate() float64 {
	d := s.RampDuration()
	if d <= 0 || s.Connected == 0 {
		return 0
	}
	return float64(s.Connected) / d.Seconds()
}

// RampDuration is the time from the first dial to the last CONNACK.
func (s PoolStats) RampDuration() time.Duration {
	if s.FirstDial == 0 || s.LastConnack < s.FirstDial {
		return 0
	}
	return time.Duration(s.LastConnack - s.FirstDial)
}

// Connection states.
const (
	stateConnecting int32 = iota // dialing, handshaking or waiting for CONNACK
	stateConnected               // CONNACK accepted
	stateFailed                  // closed before a successful CONNACK
	stateClosing                 // we are disconnecting it
	stateClosed                  // closed after the CONNACK
	stateMoving                  // a device leaving its connection for another mode, until the new CONNACK
)

// link is the transport of one connection: a gnet connection or a TLS one.
type link struct {
	gc gnet.Conn // plain: writes go through AsyncWrite
	tc *tls.Conn // TLS: writes serialised by wmu
	// raw, for a device's TLS link, is the TCP connection under tc: the
	// device closes it without a close_notify (docs/protocol.md §4.1).
	raw net.Conn
	wmu sync.Mutex
	// counted is set while the link is counted in Pool.onTLS.
	counted atomic.Bool
}

const tlsWriteTimeout = 10 * time.Second

// write sends b, which must not change afterwards; safe from any goroutine.
func (l *link) write(b []byte) error {
	if l.gc != nil {
		return l.gc.AsyncWrite(b, nil)
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.tc.SetWriteDeadline(time.Now().Add(tlsWriteTimeout)); err != nil {
		return err
	}
	_, err := l.tc.Write(b)
	return err
}

// disconnect sends b (a DISCONNECT) and closes.
func (l *link) disconnect(b []byte) {
	if l.gc != nil {
		if err := l.gc.AsyncWrite(b, func(c gnet.Conn, _ error) error { return c.Close() }); err != nil {
			_ = l.gc.Close()
		}
		return
	}
	_ = l.write(b)
	l.closeTLS()
}

func (l *link) close() {
	if l.gc != nil {
		_ = l.gc.Close()
		return
	}
	l.closeTLS()
}

// closeTLS closes a TLS link: a device's without close_notify.
func (l *link) closeTLS() {
	if l.raw != nil {
		_ = l.raw.Close()
		return
	}
	_ = l.tc.Close()
}

// clientConn is one connection's state, shared by the goroutine that reads
// it (event loop or TLS reader) and the sweep: every field that both touch
// is atomic.
//
// A device (DeviceConfig) changes links when told to: link is nil while it
// is between connections, and events of a link that is no longer the
// current one are ignored.
type clientConn struct {
	idx       int
	dialAt    atomic.Int64 // Unix ns of the current connection's dial
	state     atomic.Int32
	sentAt    atomic.Int64 // CONNECT written, Unix ns
	lastPing  atomic.Int64 // last PINGREQ (or CONNACK), Unix ns
	srvReason atomic.Int32 // MQTT 5 DISCONNECT reason from the server, -1 if none
	srvKA     atomic.Int32 // MQTT 5 Server Keep Alive from CONNACK in seconds, plus 1; 0 if none
	link      atomic.Pointer[link]

	// Device moves: where to, and the failed attempts of this move.
	target    atomic.Pointer[moveTarget]
	moveTries atomic.Int32
	// sessions is the device's own TLS session cache (DeviceConfig.Resume),
	// made at its first move to TLS. Moves of one device never overlap.
	sessions tls.ClientSessionCache
}

// Pool holds idle MQTT connections of one process. Create it with NewPool,
// fill it with Connect, read Stats at any time, and release it with Close.
type Pool struct {
	cfg    ClientConfig
	addr   string         // resolved server address
	server netip.AddrPort // the same, for connectFD
	log    *zap.Logger

	// Latency histograms: dial start to CONNACK, CONNECT to CONNACK, and
	// the TLS handshake alone.
	connect, connack, handshake *Latency

	pingreq, disconnectPkt []byte // immutable, shared by all writes
	queryPkt               []byte // device query (QoS 0, sent with the plain CONNECT); immutable

	attempted, connected, live, failed, dropped atomic.Int64
	resumed, pings, pongs, publishes            atomic.Int64
	resolved                                    atomic.Int64
	firstDial, lastConnack                      atomic.Int64
	openPlain                                   atomic.Int64 // gnet connections between OnOpen and OnClose

	// Device counters (see PoolStats) and the latency of stamped commands,
	// from the stamp to the PUBACK.
	instructions, ignored, upgrades, downgrades atomic.Int64
	moveRetries, commands, commandAcks, onTLS   atomic.Int64
	lastCommandAck                              atomic.Int64
	command                                     *Latency

	notify   chan struct{} // a connection resolved or a plain one closed; capacity 1
	inflight chan struct{} // one token per connection not yet resolved; capacity InFlight

	client    *gnet.Client   // plain connections' event loop; nil for TLS without Device
	tlsWG     sync.WaitGroup // one per TLS connection goroutine and per device move
	life      context.Context
	endLife   context.CancelFunc // cancels life: Close has begun
	sweepStop chan struct{}      // closed by Close to end the sweep
	sweepDone chan struct{}      // closed when the sweep has ended
	closeOnce sync.Once
	closeErr  error // set once, by the first Close

	mu       sync.Mutex    // guards the fields below
	conns    []*clientConn // connections not yet failed or closed
	failures map[string]int64
	drops    map[string]int64
	closing  bool // Close has begun: no more goroutines start
}

// NewPool starts an empty pool: the gnet event loop (plain) and the sweep
// that sends PINGREQ and enforces the CONNACK deadline.
func NewPool(cfg ClientConfig, log *zap.Logger) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	raddr, err := net.ResolveTCPAddr("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("bench: resolve %s: %w", cfg.Addr, err)
	}
	ap := raddr.AddrPort()
	p := &Pool{
		cfg:           cfg,
		addr:          raddr.String(),
		server:        netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		log:           log,
		connect:       NewLatency(),
		connack:       NewLatency(),
		handshake:     NewLatency(),
		command:       NewLatency(),
		pingreq:       mqttcodec.AppendPingreq(nil),
		disconnectPkt: mqttcodec.AppendDisconnect(nil, cfg.MQTTVersion, &mqttcodec.Disconnect{ReasonCode: mqttcodec.NormalDisconnection}),
		queryPkt:      devwire.QueryPacket(cfg.MQTTVersion),
		notify:        make(chan struct{}, 1),
		inflight:      make(chan struct{}, cfg.InFlight),
		failures:      make(map[string]int64),
		drops:         make(map[string]int64),
		sweepStop:     make(chan struct{}),
		sweepDone:     make(chan struct{}),
	}
	p.life, p.endLife = context.WithCancel(context.Background())
	if cfg.TLS == nil || cfg.Device != nil {
		p.client, err = gnet.NewClient(&plainHandler{pool: p},
			gnet.WithLogger(log.Named("gnet").Sugar()),
			gnet.WithNumEventLoop(1),
			gnet.WithReadBufferCap(16<<10),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		)
		if err != nil {
			p.endLife()
			return nil, fmt.Errorf("bench: gnet client: %w", err)
		}
		if err := p.client.Start(); err != nil {
			p.endLife()
			return nil, fmt.Errorf("bench: start gnet client: %w", err)
		}
	}
	go p.sweepLoop()
	return p, nil
}

// Connect opens n connections with global indices first .. first+n-1 at the
// configured rate, and returns once every one of them has connected or
// failed, or when ctx ends (connections not yet dialed are then not
// attempted). Connect must not run concurrently with itself or Close.
func (p *Pool) Connect(ctx context.Context, first, n int) error {
	lim := rate.NewLimiter(rate.Inf, 1)
	if p.cfg.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(p.cfg.Rate), max(1, int(p.cfg.Rate/100)))
	}
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		waitErr atomic.Pointer[error]
	)
	base := p.attempted.Load()
	for range min(p.cfg.InFlight, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := lim.Wait(ctx); err != nil {
					waitErr.CompareAndSwap(nil, &err)
					return
				}
				// The token is returned when the connection resolves.
				select {
				case p.inflight <- struct{}{}:
				case <-ctx.Done():
					err := ctx.Err()
					waitErr.CompareAndSwap(nil, &err)
					return
				}
				p.open(ctx, first+i)
			}
		}()
	}
	wg.Wait()
	target := p.attempted.Load()
	for p.resolved.Load() < target {
		select {
		case <-p.notify:
		case <-ctx.Done():
			return fmt.Errorf("bench: connect: %w", ctx.Err())
		}
	}
	if done := target - base; done < int64(n) {
		err := ctx.Err()
		if e := waitErr.Load(); e != nil {
			err = *e
		}
		return fmt.Errorf("bench: connect: %d of %d attempted: %w", done, n, err)
	}
	return nil
}

// open dials connection idx and hands it to the event loop or to its TLS
// goroutine.
func (p *Pool) open(ctx context.Context, idx int) {
	now := time.Now().UnixNano()
	cc := &clientConn{idx: idx}
	cc.dialAt.Store(now)
	cc.srvReason.Store(-1)
	p.attempted.Add(1)
	p.firstDial.CompareAndSwap(0, now)
	p.mu.Lock()
	p.conns = append(p.conns, cc)
	p.mu.Unlock()

	if p.cfg.TLS == nil && p.cfg.Device == nil {
		// The socket goes to the event loop with its connect under way;
		// OnOpen sends CONNECT, which waits in gnet's buffer if the
		// handshake is not done yet.
		fd, err := p.connectFD(idx)
		if err != nil {
			p.fail(cc, classify(err), err)
			return
		}
		if err := p.client.EnrollFD(fd, cc); err != nil {
			_ = unix.Close(fd)
			p.fail(cc, ReasonEnroll, err)
		}
		return
	}
	nc, err := p.dial(ctx, idx, p.addr)
	if err != nil {
		p.fail(cc, classify(err), err)
		return
	}
	if p.cfg.TLS != nil {
		p.tlsWG.Add(1)
		go func() {
			defer p.tlsWG.Done()
			p.runTLS(cc, nc, p.cfg.TLS)
		}()
		return
	}
	// EnrollContext duplicates the descriptor into the event loop and
	// closes nc; OnOpen sends CONNECT.
	if _, err := p.client.EnrollContext(nc, cc); err != nil {
		p.fail(cc, ReasonEnroll, err)
	}
}

// connectFD starts connection idx's TCP connection to the server, from its
// source address if the pool has several, without Go's dialer: a
// non-blocking socket and connect(2), handed to the event loop as a
// descriptor (gnet's Client.EnrollFD). Go's dialer waits for the connect
// in the runtime's poller, asks the socket its error and both addresses,
// and the descriptor then had to be duplicated into the event loop and
// the original closed: the load generator spent more CPU per connection
// than the server it measured (docs/benchmarks.md §2.1).
func (p *Pool) connectFD(idx int) (int, error) {
	// A socket address of its own: unix.Connect writes into it.
	sa := sockaddrOf(p.server.Addr(), int(p.server.Port()))
	family := unix.AF_INET
	if _, v6 := sa.(*unix.SockaddrInet6); v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if len(p.cfg.SourceAddrs) > 0 {
		// IP_BIND_ADDRESS_NO_PORT: see bindNoPort.
		a := p.cfg.SourceAddrs[idx%len(p.cfg.SourceAddrs)]
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			_ = unix.Close(fd)
			return -1, os.NewSyscallError("setsockopt", err)
		}
		if err := unix.Bind(fd, sockaddrOf(a, 0)); err != nil {
			_ = unix.Close(fd)
			return -1, os.NewSyscallError("bind", err)
		}
	}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// sockaddrOf is a's socket address with port.
func sockaddrOf(a netip.Addr, port int) unix.Sockaddr {
	if a.Is4() || a.Is4In6() {
		return &unix.SockaddrInet4{Port: port, Addr: a.Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: port, Addr: a.As16()}
}

// dial opens connection idx's TCP connection to addr, from its source
// address if the pool has several. A device leaves quickack mode before
// the connect and after it, as the SDK does (internal/devwire): the ACK of
// the SYN-ACK rides on its first write, and later ACKs on its next
// packet. The socket option survives EnrollContext's dup.
func (p *Pool) dial(ctx context.Context, idx int, addr string) (net.Conn, error) {
	d := net.Dialer{
		Timeout:   p.cfg.ConnectTimeout,
		KeepAlive: -1, // no TCP keepalive probes: they would add wire bytes
	}
	if la := sourceFor(p.cfg.SourceAddrs, idx); la != nil {
		d.LocalAddr = la
		d.Control = bindNoPort
	}
	if p.cfg.Device != nil {
		d.Control = deviceControl(d.Control)
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if p.cfg.Device != nil {
		devwire.DelayAcks(nc) // TCP's handshake turned quickack back on
	}
	return nc, nil
}

// bindNoPort sets IP_BIND_ADDRESS_NO_PORT so that binding a source address
// defers the choice of port to connect(), where the kernel can reuse a port
// for different destinations: ~28k connections per source address and
// destination, not ~28k per source address.
func bindNoPort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// deviceControl adds devwire.DelayAcksControl to a Dialer's Control.
func deviceControl(next func(network, address string, rc syscall.RawConn) error) func(string, string, syscall.RawConn) error {
	return func(network, address string, rc syscall.RawConn) error {
		if err := devwire.DelayAcksControl(network, address, rc); err != nil {
			return err
		}
		if next == nil {
			return nil
		}
		return next(network, address, rc)
	}
}

func (p *Pool) clientID(idx int) []byte {
	return strconv.AppendInt([]byte(p.cfg.ClientIDPrefix), int64(idx), 10)
}

func (p *Pool) connectPacket(idx int) []byte {
	c := &mqttcodec.Connect{
		ProtocolName:    []byte("MQTT"),
		ProtocolVersion: p.cfg.MQTTVersion,
		CleanStart:      !p.cfg.PersistentSession,
		KeepAlive:       uint16(p.cfg.KeepAlive / time.Second),
		ClientID:        p.clientID(idx),
	}
	if p.cfg.Username != "" {
		c.UsernameFlag, c.Username = true, []byte(p.cfg.Username)
		if p.cfg.Password != "" {
			c.PasswordFlag, c.Password = true, []byte(p.cfg.Password)
		}
	}
	return mqttcodec.AppendConnect(nil, c)
}

// resolve counts a connection as resolved, returns its in-flight token, and
// wakes Connect.
func (p *Pool) resolve() {
	<-p.inflight
	p.resolved.Add(1)
	p.signal()
}

// signal wakes Connect or Close.
func (p *Pool) signal() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// fail resolves a connecting connection as failed and closes it.
func (p *Pool) fail(cc *clientConn, reason string, err error) {
	if !cc.state.CompareAndSwap(stateConnecting, stateFailed) {
		return
	}
	p.failed.Add(1)
	p.mu.Lock()
	p.failures[reason]++
	p.mu.Unlock()
	if reason == ReasonOther || reason == ReasonEnroll {
		p.log.Debug("connection failed", zap.Int("conn", cc.idx), zap.String("reason", reason), zap.Error(err))
	}
	if l := cc.link.Load(); l != nil {
		l.close()
	}
	p.resolve()
}

// connFailed ends a connection that has not got its CONNACK: a first
// connection fails; a device's move to another mode is retried. Events of
// a link that is no longer the current one are ignored.
func (p *Pool) connFailed(cc *clientConn, l *link, reason string, err error) {
	switch cc.state.Load() {
	case stateConnecting:
		p.fail(cc, reason, err)
	case stateMoving:
		if cc.link.Load() == l {
			p.moveFailed(cc, l, reason, err)
		}
	case stateClosing:
		// Close began while this connection was being made.
		if cc.link.Load() == l && cc.state.CompareAndSwap(stateClosing, stateClosed) {
			p.uncount(l)
			p.live.Add(-1)
		}
	}
}

// connackOK records a successful CONNACK on link l: a first connection is
// resolved as connected, a device's move is complete. It returns false when
// the connection was not waiting for one.
func (p *Pool) connackOK(cc *clientConn, l *link) bool {
	now := time.Now().UnixNano()
	switch {
	case cc.state.CompareAndSwap(stateConnecting, stateConnected):
		cc.lastPing.Store(now)
		p.connect.Record(time.Duration(now - cc.dialAt.Load()))
		p.connack.Record(time.Duration(now - cc.sentAt.Load()))
		p.connected.Add(1)
		p.live.Add(1)
		storeMax(&p.lastConnack, now)
		p.resolve()
	case cc.link.Load() == l && cc.state.CompareAndSwap(stateMoving, stateConnected):
		cc.lastPing.Store(now)
		cc.moveTries.Store(0)
		if l.tc != nil {
			p.upgrades.Add(1)
		} else {
			p.downgrades.Add(1)
		}
	default:
		return false
	}
	if l.tc != nil && !l.counted.Swap(true) {
		p.onTLS.Add(1)
	}
	return true
}

// storeMax raises v to n if n is larger.
func storeMax(v *atomic.Int64, n int64) {
	for {
		last := v.Load()
		if n <= last || v.CompareAndSwap(last, n) {
			return
		}
	}
}

// uncount takes link l out of the count of TLS connections.
func (p *Pool) uncount(l *link) {
	if l != nil && l.counted.Swap(false) {
		p.onTLS.Add(-1)
	}
}

// closed records the end of link l, whoever closed it. The end of a link
// that is no longer the connection's current one (a device that moved on)
// is ignored.
func (p *Pool) closed(cc *clientConn, l *link, err error) {
	if cc.link.Load() != l {
		return
	}
	p.uncount(l)
	switch {
	case cc.state.Load() == stateConnecting || cc.state.Load() == stateMoving:
		reason := ReasonClosedEarly
		if c := classify(err); c != ReasonClosed && c != ReasonOther {
			reason = c
		}
		p.connFailed(cc, l, reason, err)
	case cc.state.CompareAndSwap(stateConnected, stateClosed):
		p.live.Add(-1)
		p.dropped.Add(1)
		reason := classify(err)
		if rc := cc.srvReason.Load(); rc >= 0 {
			reason = disconnectReason(mqttcodec.ReasonCode(rc))
		}
		p.mu.Lock()
		p.drops[reason]++
		p.mu.Unlock()
	case cc.state.CompareAndSwap(stateClosing, stateClosed):
		p.live.Add(-1)
	}
}

// handle acts on one packet from the server on link l. It returns false
// when the connection must be closed.
func (p *Pool) handle(cc *clientConn, l *link, pkt *mqttcodec.Packet) bool {
	switch pkt.Type {
	case mqttcodec.CONNACK:
		if rc := pkt.Connack.ReasonCode; rc != 0 {
			p.connFailed(cc, l, connackReason(p.cfg.MQTTVersion, rc), nil)
			return false
		}
		// The server's keepalive replaces the client's [MQTT-3.2.2-21].
		if props := &pkt.Connack.Properties; props.Has(mqttcodec.PropServerKeepAlive) {
			cc.srvKA.Store(int32(props.ServerKeepAlive) + 1)
		}
		if !p.connackOK(cc, l) {
			return false
		}
	case mqttcodec.PINGRESP:
		p.pongs.Add(1)
	case mqttcodec.PUBLISH:
		p.publishes.Add(1)
		pub := &pkt.Publish
		if p.cfg.Device != nil && string(pub.Topic) == control.ControlTopic {
			return p.onInstruction(cc, l, pub)
		}
		var ackErr error
		if pub.QoS == 1 {
			ack := mqttcodec.AppendAck(nil, p.cfg.MQTTVersion, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: pub.PacketID})
			ackErr = l.write(ack)
		}
		if p.cfg.Device != nil {
			p.onCommand(pub.Payload, ackErr == nil)
		}
		if ackErr != nil {
			return false
		}
	case mqttcodec.DISCONNECT:
		d := &pkt.Disconnect
		cc.srvReason.Store(int32(d.ReasonCode))
		if p.cfg.Device != nil && d.ReasonCode == mqttcodec.UseAnotherServer && d.Properties.Has(mqttcodec.PropServerReference) {
			p.onServerReference(cc, l, string(d.Properties.ServerReference))
		}
		return false
	}
	return true
}

// sweepInterval is the period of the sweep: a quarter of the keepalive and
// of the connect timeout, between 50 ms and 1 s.
func (p *Pool) sweepInterval() time.Duration {
	d := time.Second
	if ka := p.cfg.KeepAlive / 4; ka > 0 {
		d = min(d, ka)
	}
	d = min(d, p.cfg.ConnectTimeout/4)
	return max(d, 50*time.Millisecond)
}

func (p *Pool) sweepLoop() {
	defer close(p.sweepDone)
	t := time.NewTicker(p.sweepInterval())
	defer t.Stop()
	var scratch []*clientConn
	for {
		select {
		case <-p.sweepStop:
			return
		case now := <-t.C:
			scratch = p.sweep(now.UnixNano(), scratch[:0])
		}
	}
}

// sweep sends PINGREQ to connections whose keepalive has elapsed and fails
// plain connections that waited for their CONNACK too long. It returns
// scratch for reuse.
func (p *Pool) sweep(now int64, scratch []*clientConn) []*clientConn {
	p.mu.Lock()
	kept := p.conns[:0]
	for _, cc := range p.conns {
		if s := cc.state.Load(); s == stateFailed || s == stateClosed {
			continue
		}
		kept = append(kept, cc)
	}
	clear(p.conns[len(kept):])
	p.conns = kept
	scratch = append(scratch, kept...)
	p.mu.Unlock()

	// A PINGREQ goes out on the last sweep before the keepalive elapses:
	// a client must send something within the keepalive [MQTT-3.1.2-23].
	interval := int64(p.sweepInterval())
	timeout := int64(p.cfg.ConnectTimeout)
	for _, cc := range scratch {
		switch cc.state.Load() {
		case stateConnecting, stateMoving:
			// TLS connections enforce the deadline on their socket; a
			// device between connections has none to check yet.
			if l := cc.link.Load(); l != nil && l.tc == nil && now-cc.dialAt.Load() > timeout {
				p.connFailed(cc, l, ReasonConnackTime, nil)
			}
		case stateConnected:
			ka := int64(p.cfg.KeepAlive)
			if s := cc.srvKA.Load(); s > 0 {
				ka = int64(s-1) * int64(time.Second)
			}
			if ka == 0 || now-cc.lastPing.Load() < ka-interval {
				continue
			}
			if l := cc.link.Load(); l != nil {
				cc.lastPing.Store(now)
				if l.write(p.pingreq) == nil {
					p.pings.Add(1)
				}
			}
		}
	}
	clear(scratch)
	return scratch
}

// waitPlainClosed waits until every gnet connection has seen OnClose.
func (p *Pool) waitPlainClosed(ctx context.Context) error {
	for p.openPlain.Load() > 0 {
		select {
		case <-p.notify:
		case <-ctx.Done():
			return fmt.Errorf("bench: close: %d plain connections still open: %w", p.openPlain.Load(), ctx.Err())
		}
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	failures := maps.Clone(p.failures)
	drops := maps.Clone(p.drops)
	p.mu.Unlock()
	return PoolStats{
		Attempted: p.attempted.Load(),
		Connected: p.connected.Load(),
		Live:      p.live.Load(),
		Failed:    p.failed.Load(),
		Dropped:   p.dropped.Load(),
		Resumed:   p.resumed.Load(),
		PingsSent: p.pings.Load(),
		Pongs:     p.pongs.Load(),
		Publishes: p.publishes.Load(),

		Instructions:   p.instructions.Load(),
		Ignored:        p.ignored.Load(),
		Upgrades:       p.upgrades.Load(),
		Downgrades:     p.downgrades.Load(),
		MoveRetries:    p.moveRetries.Load(),
		Commands:       p.commands.Load(),
		CommandAcks:    p.commandAcks.Load(),
		OnTLS:          p.onTLS.Load(),
		LastCommandAck: p.lastCommandAck.Load(),

		Failures:    failures,
		Drops:       drops,
		FirstDial:   p.firstDial.Load(),
		LastConnack: p.lastConnack.Load(),
	}
}

// Histograms returns the pool's latency histograms: dial start to CONNACK,
// CONNECT to CONNACK, and the TLS handshake.
func (p *Pool) Histograms() (connect, connack, handshake *Latency) {
	return p.connect, p.connack, p.handshake
}

// CommandLatency is the histogram of stamped commands (see StampCommand):
// from the stamp to the device's PUBACK.
func (p *Pool) CommandLatency() *Latency { return p.command }

// Close sends DISCONNECT on every live connection, closes them all, and
// waits for them (and the event loop) to finish until ctx ends, after which
// what remains is closed without waiting. Close is safe to call twice.
func (p *Pool) Close(ctx context.Context) error {
	p.closeOnce.Do(func() { p.closeErr = p.close(ctx) })
	return p.closeErr
}

func (p *Pool) close(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	p.endLife() // aborts devices' dials in progress
	close(p.sweepStop)
	<-p.sweepDone

	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()

	for _, cc := range conns {
		l := cc.link.Load()
		switch {
		case cc.state.CompareAndSwap(stateConnected, stateClosing):
			if l != nil {
				l.disconnect(p.disconnectPkt)
			}
		case cc.state.Load() == stateConnecting:
			p.fail(cc, ReasonInterrupted, nil)
		case cc.state.CompareAndSwap(stateMoving, stateClosing):
			// The move's goroutine or its new link sees the state and
			// finishes the connection.
			if l != nil {
				l.close()
			}
		}
	}

	// TLS connections and device moves first: a move may still hand a
	// plain connection to the event loop.
	var err error
	tlsDone := make(chan struct{})
	go func() {
		p.tlsWG.Wait()
		close(tlsDone)
	}()
	select {
	case <-tlsDone:
	case <-ctx.Done():
		for _, cc := range conns {
			if l := cc.link.Load(); l != nil {
				l.close()
			}
		}
		<-tlsDone
		err = fmt.Errorf("bench: close: TLS connections still open: %w", ctx.Err())
	}
	if perr := p.waitPlainClosed(ctx); perr != nil && err == nil {
		err = perr
	}
	if p.client != nil {
		if serr := p.client.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("bench: stop event loop: %w", serr)
		}
	}
	return err
}

// protocolError fails or drops the connection of link l, whose server sent
// bytes that do not decode.
func (p *Pool) protocolError(cc *clientConn, l *link, err error) {
	p.log.Debug("undecodable packet from server", zap.Int("conn", cc.idx), zap.Error(err))
	if cc.link.Load() != l {
		return
	}
	if s := cc.state.Load(); s == stateConnecting || s == stateMoving {
		p.connFailed(cc, l, ReasonProtocol, err)
		return
	}
	switch {
	case cc.state.CompareAndSwap(stateConnected, stateClosed):
		p.uncount(l)
		p.live.Add(-1)
		p.dropped.Add(1)
		p.mu.Lock()
		p.drops[ReasonProtocol]++
		p.mu.Unlock()
	case cc.state.CompareAndSwap(stateClosing, stateClosed):
		p.uncount(l)
		p.live.Add(-1)
	}
}
