package device

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/devwire"
)

// Errors of the Device's methods.
var (
	// ErrStopped: the Device was stopped.
	ErrStopped = errors.New("device: stopped")
	// ErrStarted: Start was called twice.
	ErrStarted = errors.New("device: already started")
	// ErrNoTLSEndpoint: PublishSensitive, or an instruction without a
	// usable address, needs a TLS address the Device does not know
	// (Config.TLSAddr is empty and no instruction named one).
	ErrNoTLSEndpoint = errors.New("device: no TLS endpoint known")
	// ErrBadTopic: a topic the Device does not publish to (empty, with a
	// wildcard, or reserved by the gateway).
	ErrBadTopic = errors.New("device: bad topic")
	// ErrBadQoS: a QoS other than 0 or 1.
	ErrBadQoS = errors.New("device: QoS must be 0 or 1")
)

// stableConnection is how long a connection must have lived for the
// reconnection backoff to start over from Backoff.Initial; a connection
// that keeps ending sooner (a gateway that accepts and then drops it) backs
// off as if every attempt had failed.
const stableConnection = 30 * time.Second

// Device is a dualgate device: an MQTT client that connects on plain TCP
// and moves between plain and TLS as the gateway instructs. Create it with
// New, run it with Start, end it with Stop. Its methods are safe for
// concurrent use.
type Device struct {
	cfg    Config // defaults filled in; never changed
	tls    *tls.Config
	logger *zap.Logger
	randN  func(int64) int64 // jitter source; [0, n)

	// life ends at Stop: it bounds every dial and wait of the Device.
	life    context.Context
	endLife context.CancelFunc
	// upgrade carries PublishSensitive's requests for TLS to the
	// connection goroutine.
	upgrade chan struct{}
	done    chan struct{} // closed when the connection goroutine has ended

	mu      sync.Mutex    // guards the fields below
	cur     link          // the live connection; nil while offline
	changed chan struct{} // closed and replaced when cur or stopped changes
	started bool
	stopped bool
	// sensitive counts PublishSensitive calls in progress: while one
	// waits, an instruction to go plain reconnects on TLS instead.
	sensitive int
	tlsAddr   string // the last TLS address that worked, else Config.TLSAddr
	lastErr   error  // the last connection attempt's error, for Start

	// subscribed: Config.Subscriptions were subscribed to on a connection
	// of this Device, so a later one that finds its session kept (Session
	// Present) need not again. The connection goroutine's only.
	subscribed bool
}

// New checks cfg and builds a Device. It connects nowhere yet.
func New(cfg Config) (*Device, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	life, end := context.WithCancel(context.Background())
	return &Device{
		cfg:     cfg,
		tls:     tc,
		logger:  cfg.Logger,
		randN:   mrand.Int64N,
		life:    life,
		endLife: end,
		upgrade: make(chan struct{}, 1),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		tlsAddr: cfg.TLSAddr,
	}, nil
}

// Start connects on plain TCP and queries the gateway. It returns once
// connected, or when ctx ends (then the Device is stopped and the error
// says what the last attempt met). Failed attempts are retried with the
// backoff meanwhile. ctx bounds only the start: the Device runs until Stop.
func (d *Device) Start(ctx context.Context) error {
	d.mu.Lock()
	switch {
	case d.stopped:
		d.mu.Unlock()
		return ErrStopped
	case d.started:
		d.mu.Unlock()
		return ErrStarted
	}
	d.started = true
	d.mu.Unlock()
	up := make(chan struct{})
	go d.run(up)
	select {
	case <-up:
		return nil
	case <-ctx.Done():
	}
	d.Stop()
	d.mu.Lock()
	last := d.lastErr
	d.mu.Unlock()
	if last != nil {
		return fmt.Errorf("device: start: %w (last attempt: %w)", ctx.Err(), last)
	}
	return fmt.Errorf("device: start: %w", ctx.Err())
}

// Stop disconnects cleanly (DISCONNECT) and returns when every goroutine
// the Device started has ended. It may be called more than once, and before
// Start; a stopped Device cannot start again. It must not be called from a
// callback.
func (d *Device) Stop() {
	d.mu.Lock()
	if !d.stopped {
		d.stopped = true
		d.broadcastLocked()
		d.endLife()
		if !d.started {
			d.started = true
			close(d.done)
		}
	}
	d.mu.Unlock()
	<-d.done
}

// Mode is the transport of the current connection: ModePlain, ModeTLS, or
// ModeOffline between connections.
func (d *Device) Mode() Mode {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur == nil {
		return ModeOffline
	}
	return d.cur.mode()
}

// Publish sends payload to topic on the current connection, plain or TLS,
// waiting for one while offline. With QoS 1 it returns when the gateway
// acknowledged; a connection lost first is replaced and the message sent
// again (it may then arrive twice). For anything that must not cross a
// plain socket, use PublishSensitive.
func (d *Device) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	if err := checkPublish(topic, qos); err != nil {
		return err
	}
	return d.publish(ctx, false, topic, payload, qos)
}

// PublishSensitive is Publish over TLS only: on plain, the Device first
// reconnects over TLS (disconnecting cleanly, subscribing again and
// querying, as on an instruction), then publishes. It never writes the
// message to a plain connection, and waits (within ctx) rather than fall
// back. The Device stays on TLS afterwards until the gateway's quiet period
// sends it back to plain.
func (d *Device) PublishSensitive(ctx context.Context, topic string, payload []byte, qos byte) error {
	if err := checkPublish(topic, qos); err != nil {
		return err
	}
	d.mu.Lock()
	switch {
	case d.stopped:
		d.mu.Unlock()
		return ErrStopped
	case d.tlsAddr == "":
		d.mu.Unlock()
		return ErrNoTLSEndpoint
	}
	d.sensitive++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.sensitive--
		d.mu.Unlock()
	}()
	return d.publish(ctx, true, topic, payload, qos)
}

func checkPublish(topic string, qos byte) error {
	if topic == "" || strings.ContainsAny(topic, "+#") || strings.HasPrefix(topic, control.ReservedPrefix) {
		return fmt.Errorf("%w: %q", ErrBadTopic, topic)
	}
	if qos > 1 {
		return ErrBadQoS
	}
	return nil
}

// publish sends on a connection that suits (TLS when secure), moving to
// another one when the connection ends under the message.
func (d *Device) publish(ctx context.Context, secure bool, topic string, payload []byte, qos byte) error {
	var stale link
	for {
		l, err := d.linkFor(ctx, secure, stale)
		if err != nil {
			return err
		}
		if secure && l.mode() != ModeTLS {
			// linkFor returns only TLS links for secure messages; this is
			// the last line, kept next to the write it guards.
			return fmt.Errorf("device: refusing to send a sensitive message over %s", l.mode())
		}
		err = l.publish(ctx, topic, payload, qos, false)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !errors.Is(err, ErrConnectionLost) {
			return err
		}
		d.logger.Debug("connection lost under a publish; trying the next one",
			zap.String("client", d.cfg.ClientID), zap.String("topic", topic), zap.Error(err))
		stale = l
	}
}

// linkFor waits for a live connection other than stale, over TLS when
// secure, asking the connection goroutine for TLS when needed.
func (d *Device) linkFor(ctx context.Context, secure bool, stale link) (link, error) {
	for {
		d.mu.Lock()
		cur, changed, stopped := d.cur, d.changed, d.stopped
		d.mu.Unlock()
		if stopped {
			return nil, ErrStopped
		}
		if cur != nil && cur != stale {
			if !secure || cur.mode() == ModeTLS {
				return cur, nil
			}
		}
		if secure && (cur == nil || cur.mode() != ModeTLS) {
			select {
			case d.upgrade <- struct{}{}:
			default: // a request is already waiting
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			want := "a"
			if secure {
				want = "a TLS"
			}
			return nil, fmt.Errorf("device: waiting for %s connection: %w", want, ctx.Err())
		}
	}
}

// broadcastLocked wakes everything waiting for a change. d.mu is held.
func (d *Device) broadcastLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

func (d *Device) setLink(l link) {
	d.mu.Lock()
	d.cur = l
	if l != nil && l.mode() == ModeTLS {
		d.tlsAddr = l.addr()
	}
	d.broadcastLocked()
	d.mu.Unlock()
}

// plan is where the next connection goes.
type plan struct {
	mode   Mode
	addr   string // the instructed address; "" for the configured endpoint
	reason string // why this mode, for OnModeChange
	now    bool   // connect at once (an instruction), not after the backoff
}

// run is the connection goroutine: it connects, serves the connection
// until it ends or an instruction moves the device, and reconnects, until
// Stop. up is closed after the first connect and query.
func (d *Device) run(up chan<- struct{}) {
	defer close(d.done)
	p := plan{mode: ModePlain, now: true}
	prev := ModeOffline // the mode of the last connection
	attempt := 0        // failed attempts and short-lived connections in a row
	var wait time.Duration
	for {
		if !p.now {
			var stop bool
			if p, stop = d.sleep(wait, p); stop {
				return
			}
		}
		addr := p.addr
		if addr == "" {
			addr = d.endpoint(p.mode)
		}
		l, state, err := d.connect(p.mode, addr)
		if err != nil {
			if d.life.Err() != nil {
				return
			}
			wait = d.cfg.Backoff.delay(attempt, d.randN)
			attempt++
			d.mu.Lock()
			d.lastErr = err
			d.mu.Unlock()
			d.emit(Event{Kind: EventConnectFailed, Mode: p.mode, Addr: addr, Err: err, Delay: wait})
			if p.addr != "" && d.endpoint(p.mode) != "" {
				p.addr = "" // the instructed address failed: back to the configured one
			}
			if p.mode == ModeTLS && p.reason == ReasonSensitivePublish && !d.sensitiveWaiting() {
				// The device went for TLS on its own, and nothing waits for
				// it any more: back to plain, where the gateway can reach it.
				p = plan{mode: ModePlain}
			}
			p.now = false
			continue
		}
		upAt := time.Now()
		d.setLink(l)
		if prev != ModeOffline && prev != l.mode() {
			d.logger.Info("mode change", zap.String("client", d.cfg.ClientID),
				zap.String("from", string(prev)), zap.String("to", string(l.mode())), zap.String("reason", p.reason))
			if d.cfg.OnModeChange != nil {
				d.cfg.OnModeChange(prev, l.mode(), p.reason)
			}
		}
		prev = l.mode()
		d.emit(Event{Kind: EventConnected, Mode: l.mode(), Addr: l.addr(), TLS: state})
		l.ready()
		d.setup(l)
		if up != nil {
			close(up)
			up = nil
		}
		next, stop := d.serve(l)
		d.setLink(nil)
		l.close()
		if stop {
			return
		}
		if !next.now {
			if time.Since(upAt) >= stableConnection {
				attempt = 0
			}
			wait = d.cfg.Backoff.delay(attempt, d.randN)
			attempt++
			d.emit(Event{Kind: EventConnectionLost, Mode: l.mode(), Addr: l.addr(), Err: l.lostErr(), Delay: wait})
		}
		p = next
	}
}

// sleep waits before the next attempt. A PublishSensitive waiting for TLS
// cuts it short and turns a plain plan into a TLS one.
func (d *Device) sleep(wait time.Duration, p plan) (plan, bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return p, false
		case <-d.upgrade:
			if p.mode != ModeTLS && d.sensitiveWaiting() {
				return plan{mode: ModeTLS, reason: ReasonSensitivePublish}, false
			}
		case <-d.life.Done():
			return p, true
		}
	}
}

// connect dials addr, runs the TLS handshake in TLS mode, and the MQTT
// CONNECT.
func (d *Device) connect(m Mode, addr string) (link, *tls.ConnectionState, error) {
	if addr == "" {
		return nil, nil, ErrNoTLSEndpoint
	}
	ctx, cancel := context.WithTimeout(d.life, d.cfg.ConnectTimeout)
	defer cancel()
	raw, err := d.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("device: dial %s: %w", addr, err)
	}
	devwire.DelayAcks(raw)
	conn := raw
	var state *tls.ConnectionState
	if m == ModeTLS {
		// The handshake's last flight leaves with the CONNECT.
		fc := devwire.NewFlightConn(raw)
		tc := tls.Client(fc, d.tlsFor(addr))
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, nil, fmt.Errorf("device: TLS handshake with %s: %w", addr, err)
		}
		fc.Release()
		st := tc.ConnectionState()
		state, conn = &st, &devwire.CloseRaw{Conn: tc, Raw: raw}
	} else {
		conn = &firstWriteConn{Conn: raw, extra: devwire.QueryPacket(d.cfg.Version)}
	}
	user, pass, err := d.credentials(state)
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("device: %s: %w", addr, err)
	}
	var l link
	if d.cfg.Version == 5 {
		l, err = dial5(ctx, &d.cfg, m, addr, conn, user, pass, d.subscribed)
	} else {
		l, err = dial311(ctx, &d.cfg, m, addr, conn, user, pass, d.subscribed)
	}
	if err != nil {
		return nil, nil, err
	}
	return l, state, nil
}

// endpoint is the address to use for a mode when no instruction named one.
func (d *Device) endpoint(m Mode) string {
	if m == ModeTLS {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.tlsAddr
	}
	return d.cfg.PlainAddr
}

// tlsFor is the TLS configuration for a connection to addr: the server
// name is the configured one, else addr's host. The session cache is
// shared by all.
func (d *Device) tlsFor(addr string) *tls.Config {
	if d.tls.ServerName != "" {
		return d.tls
	}
	tc := d.tls.Clone()
	tc.ServerName, _, _ = net.SplitHostPort(addr)
	return tc
}

// credentials are the CONNECT user name and password: the client id and a
// fresh token, or nothing without a secret. Over TLS (state non-nil) the
// token is bound to the connection by its exported keying material, so
// that nobody who sees it can use it on another connection; on plain it is
// an unbound one, which the gateway takes on plain only.
func (d *Device) credentials(state *tls.ConnectionState) (string, string, error) {
	if d.cfg.Secret == nil {
		return "", "", nil
	}
	now, nonce := time.Now(), rand.Text()
	if state == nil {
		return d.cfg.ClientID, control.MakeToken(d.cfg.Secret, d.cfg.ClientID, now, nonce), nil
	}
	exporter, err := state.ExportKeyingMaterial(control.ExporterLabel, nil, control.ExporterLen)
	if err != nil {
		// crypto/tls refuses to export from TLS 1.2 without the extended
		// master secret; the gateway would refuse the token anyway.
		return "", "", fmt.Errorf("TLS connection exports no keying material for the token (TLS 1.2 without extended master secret?): %w", err)
	}
	return d.cfg.ClientID, control.MakeBoundToken(d.cfg.Secret, d.cfg.ClientID, now, nonce, exporter), nil
}

// setup subscribes on a new connection when it must. A failure is
// reported; a connection that ended meanwhile is left to serve.
//
// It subscribes on the Device's first connection and wherever the gateway
// kept no session; a move between plain and TLS keeps it (SessionExpiry),
// so the SUBSCRIBE and its SUBACK are not paid per move. The query needs
// no round trip of its own: on plain it left with the CONNECT (QoS 0, in
// the same segment), and on TLS the gateway delivers what waits as soon
// as the CONNECT proves the client id (docs/protocol.md).
func (d *Device) setup(l link) {
	if d.subscribed && l.sessionPresent() && !d.cfg.CleanSession {
		return
	}
	ctx, cancel := context.WithTimeout(d.life, d.cfg.ConnectTimeout)
	defer cancel()
	err := l.subscribe(ctx, d.cfg.Subscriptions)
	switch {
	case err == nil:
		d.subscribed = !d.cfg.CleanSession
	case l.lostErr() == nil && d.life.Err() == nil:
		d.emit(Event{Kind: EventSubscribeFailed, Mode: l.mode(), Addr: l.addr(), Err: err})
	}
}

// serve waits on a connection until it ends, an instruction moves the
// device, PublishSensitive asks for TLS, or Stop. It returns where to go
// next, or stop.
func (d *Device) serve(l link) (plan, bool) {
	for {
		select {
		case <-d.life.Done():
			return plan{}, true
		case in := <-l.instructions():
			if p, ok := d.obey(l, in); ok {
				return p, false
			}
		case <-d.upgrade:
			// A request whose publish has given up meanwhile is dropped.
			if l.mode() != ModeTLS && d.sensitiveWaiting() {
				return plan{mode: ModeTLS, reason: ReasonSensitivePublish, now: true}, false
			}
		case <-l.lost():
			// An instruction queued before the loss wins: an MQTT 5
			// instruction is a DISCONNECT.
			if p, ok := d.queued(l); ok {
				return p, false
			}
			// Keep the mode (and the address that worked) across a drop.
			return plan{mode: l.mode(), addr: l.addr()}, false
		}
	}
}

// queued obeys the first instruction waiting on l that moves the device.
func (d *Device) queued(l link) (plan, bool) {
	for {
		select {
		case in := <-l.instructions():
			if p, ok := d.obey(l, in); ok {
				return p, true
			}
		default:
			return plan{}, false
		}
	}
}

// obey decides on an instruction received on l: where to go, or (false)
// nowhere.
func (d *Device) obey(l link, in instruction) (plan, bool) {
	if in.err != nil {
		d.emit(Event{Kind: EventBadInstruction, Mode: l.mode(), Addr: l.addr(), Err: in.err})
		return plan{}, false
	}
	if in.mode == ModePlain && !in.overTLS {
		// Anti-downgrade: plain is obeyed only when the instruction came
		// over TLS. The address is not used either.
		d.emit(Event{Kind: EventDowngradeIgnored, Mode: in.mode, Addr: in.addr, Reason: in.reason})
		return plan{}, false
	}
	if in.addr == "" && d.endpoint(in.mode) == "" {
		d.emit(Event{Kind: EventBadInstruction, Mode: l.mode(), Addr: l.addr(), Reason: in.reason,
			Err: fmt.Errorf("instruction to use %s names no usable address: %w", in.mode, ErrNoTLSEndpoint)})
		return plan{}, false
	}
	if in.mode == ModePlain && d.sensitiveWaiting() {
		d.logger.Info("instruction to use plain while a sensitive publish waits: reconnecting over TLS",
			zap.String("client", d.cfg.ClientID))
		return plan{mode: ModeTLS, addr: l.addr(), reason: ReasonSensitivePublish, now: true}, true
	}
	d.emit(Event{Kind: EventInstruction, Mode: in.mode, Addr: in.addr, Reason: in.reason})
	return plan{mode: in.mode, addr: in.addr, reason: in.reason, now: true}, true
}

func (d *Device) sensitiveWaiting() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sensitive > 0
}

// emit logs an event and hands it to OnEvent.
func (d *Device) emit(ev Event) {
	fields := []zap.Field{zap.String("client", d.cfg.ClientID), zap.String("mode", string(ev.Mode))}
	if ev.Addr != "" {
		fields = append(fields, zap.String("addr", ev.Addr))
	}
	if ev.Reason != "" {
		fields = append(fields, zap.String("reason", ev.Reason))
	}
	if ev.Delay > 0 {
		fields = append(fields, zap.Duration("retry_in", ev.Delay))
	}
	if ev.Err != nil {
		fields = append(fields, zap.Error(ev.Err))
	}
	switch ev.Kind {
	case EventDowngradeIgnored:
		d.logger.Warn("instruction to use plain received over plain: ignored", fields...)
	case EventBadInstruction:
		d.logger.Warn("control message not understood: ignored", fields...)
	case EventConnectFailed, EventConnectionLost, EventSubscribeFailed, EventQueryFailed:
		d.logger.Info(ev.Kind.String(), fields...)
	case EventInstruction:
		d.logger.Info("reconnect instruction", fields...)
	default:
		if ev.TLS != nil {
			fields = append(fields, zap.Bool("resumed", ev.TLS.DidResume), zap.Stringer("group", ev.TLS.CurveID))
		}
		d.logger.Debug(ev.Kind.String(), fields...)
	}
	if d.cfg.OnEvent != nil {
		d.cfg.OnEvent(ev)
	}
}
