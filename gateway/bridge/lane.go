package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// lane is one connection of the pool with what it carries: a queue of
// device messages, its outbox of unacknowledged publishes, and, on some
// lanes, the command subscription or the devices' subscriptions.
//
// Goroutines per lane: the connector (until the first connection in MQTT
// 3.1.1, whose client reconnects after that; for ever in MQTT 5), the
// sender (queue -> client), the receiver (client -> Deliver /
// SubmitCommand), and, on
// lanes holding subscriptions, the controller (SUBSCRIBE / UNSUBSCRIBE).
type lane struct {
	b        *Bridge
	id       string // MQTT client id
	cur      atomic.Pointer[connRef]
	box      *outbox   // the MQTT 3.1.1 client's store
	commands bool      // holds the command subscription
	subs     *subTable // non-nil on the lane holding the devices' subscriptions
	// wipe: clear the broker's session for this client id before the
	// first connection, so that subscriptions of a previous run do not
	// linger. Never on the command lane: its unacknowledged commands
	// must survive a restart.
	wipe bool

	wake chan struct{} // the sender has something to look at
	ctl  chan struct{} // the controller has something to look at
	in   chan inMsg    // broker messages for the receiver

	connects atomic.Uint64
	cycled   atomic.Bool // the lane itself ended the connection (cycle)
	cmdHeld  atomic.Bool // the broker acknowledged the command subscription on the latest connection

	mu         sync.Mutex // guards the fields below
	queue      fifo
	gate       bool // after a connection is made, wait until what paho resends is acknowledged
	closed     bool
	needCmdSub bool
	cmdTimer   *time.Timer
}

// connRef holds a lane's connection (replaced once, by the MQTT 3.1.1
// one, when the broker refuses MQTT 5).
type connRef struct{ conn }

func newLane(b *Bridge, idx int) *lane {
	l := &lane{
		b:    b,
		id:   b.cfg.ClientIDPrefix + "-" + strconv.Itoa(idx),
		wake: make(chan struct{}, 1),
		ctl:  make(chan struct{}, 1),
		in:   make(chan inMsg, 256),
	}
	l.commands = b.cmd != nil && idx == 0
	if idx == b.cfg.PoolSize-1 {
		l.subs = newSubTable()
	}
	l.wipe = !l.commands
	l.box = newOutbox(l)
	if b.cfg.Protocol == Protocol311 {
		l.cur.Store(&connRef{newConn311(l)})
	} else {
		l.cur.Store(&connRef{newConn5(l)})
	}
	return l
}

// dial opens a network connection to the broker.
func (b *Bridge) dial(u *url.URL) (net.Conn, error) {
	d := net.Dialer{Timeout: b.cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	if u.Scheme == "tls" {
		return tls.DialWithDialer(&d, "tcp", u.Host, b.up.tls)
	}
	return d.Dial("tcp", u.Host)
}

// c is the lane's connection.
func (l *lane) c() conn { return l.cur.Load().conn }

// closeGate is called when a network connection is made: the client
// resends what its store holds once it is up, and nothing new may go
// before that.
func (l *lane) closeGate() {
	l.mu.Lock()
	l.gate = true
	l.box.awaitResume()
	l.mu.Unlock()
}

// start launches the lane's goroutines.
func (l *lane) start() {
	ctl := l.commands || l.subs != nil
	n := 3
	if ctl {
		n++
	}
	l.b.wg.Add(n)
	go l.connect()
	go l.send()
	go l.receive()
	if ctl {
		go l.control()
	}
}

// connect keeps the lane connected: it makes the first connection,
// retrying with backoff, and, for a client that does not reconnect by
// itself, every later one: at once after a connection that lasted
// (stableConnection) or that the lane cycled, with the same backoff after
// one the broker ended sooner (paho.mqtt.golang backs off likewise after
// losses in a row).
func (l *lane) connect() {
	defer l.b.wg.Done()
	delay := firstRetry
	short := 0 // connections in a row the broker ended soon after they were made
	for attempt := 1; ; attempt++ {
		if l.b.fellBack.Load() && l.c().protocol() == Protocol5 && !l.c().open() {
			l.cur.Store(&connRef{newConn311(l)})
		}
		err := l.c().connect()
		if err == nil {
			l.wipe = false
			down := l.c().lost()
			if down == nil {
				return // paho.mqtt.golang reconnects by itself
			}
			up := time.Now()
			select {
			case <-down:
			case <-l.b.stop:
				return
			}
			l.lostConnection(errors.New("connection closed"))
			attempt = 0
			if l.cycled.Swap(false) || time.Since(up) >= stableConnection {
				delay, short = firstRetry, 0
				continue
			}
			// Ended soon after it was made: something the broker refuses
			// at every connection (a packet it closes on, resent each
			// time; a broker that takes connections and drops them;
			// another client taking the session). Reconnecting at once
			// would hammer it in a loop.
			if short++; short >= shortInARow && short&(short-1) == 0 { // 4, 8, 16...: the log stays short
				l.b.log.Warn("the upstream broker keeps closing this connection soon after accepting it: "+
					"if another gateway or client connects with the same client id, the broker hands the session "+
					"back and forth between them; give each gateway its own --upstream-client-id",
					zap.String("client_id", l.id), zap.Int("in_a_row", short))
			}
		} else {
			if errors.Is(err, ErrClosed) {
				return
			}
			if errors.Is(err, errUnsupportedProtocol) && l.b.cfg.Protocol == Protocol5 {
				l.b.fallBack()
				attempt = 0
				continue
			}
			if attempt&(attempt-1) == 0 { // attempts 1, 2, 4, 8...: the log stays short
				l.b.log.Warn("upstream broker unreachable; retrying in the background",
					zap.String("client_id", l.id), zap.Int("attempt", attempt), zap.Error(err))
			}
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.b.stop:
			t.Stop()
			return
		}
		delay = min(delay*2, l.b.cfg.ReconnectMax)
	}
}

const (
	// firstRetry is the first wait before connecting again; it doubles
	// up to Config.ReconnectMax.
	firstRetry = 100 * time.Millisecond
	// stableConnection is how long a connection must have lasted for the
	// next one to be made at once after it ends.
	stableConnection = 10 * time.Second
	// shortInARow connections in a row ended sooner than
	// stableConnection are logged with the likeliest cause.
	shortInARow = 4
)

// wait waits for a paho token, until Stop or, with timeout > 0, until the
// timeout.
func (l *lane) wait(tok mqtt.Token, timeout time.Duration) error {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return l.waitCtx(ctx, tok)
}

// waitCtx waits for a paho token, until Stop or ctx ends.
func (l *lane) waitCtx(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-l.b.stop:
		return ErrClosed
	case <-ctx.Done():
		return errors.New("bridge: no answer from the broker in time")
	}
}

// connected runs each time a connection is up.
func (l *lane) connected() {
	l.b.proto.Store(l.c().protocol())
	n := l.connects.Add(1)
	if n > 1 {
		l.b.stats.reconnects.Add(1)
	}
	l.b.log.Info("upstream connected", zap.String("client_id", l.id), zap.Uint64("connection", n),
		zap.String("protocol", l.c().protocol()))
	l.mu.Lock()
	l.needCmdSub = l.commands
	l.cmdHeld.Store(false)
	l.mu.Unlock()
	if l.subs != nil {
		// The broker may have lost the session: subscribe again to all.
		l.subs.resubscribeAll()
	}
	signal(l.wake)
	signal(l.ctl)
}

// serverDisconnect logs why the broker closed the connection (an MQTT 5
// DISCONNECT), which the loss itself does not say.
func (l *lane) serverDisconnect(d *paho.Disconnect) {
	rc := mqttcodec.ReasonCode(d.ReasonCode)
	fields := []zap.Field{zap.String("client_id", l.id), zap.Stringer("reason", rc)}
	if d.Properties != nil && d.Properties.ReasonString != "" {
		fields = append(fields, zap.String("reason_string", d.Properties.ReasonString))
	}
	msg := "the upstream broker closed the connection"
	if rc == mqttcodec.SessionTakenOver {
		// Two gateways (or a gateway and another client) with one client
		// id take the session from each other at every connection.
		msg = "the upstream broker closed the connection: another client connected with the same client id; give each gateway its own --upstream-client-id"
	}
	l.b.hot.Warn(msg, fields...)
}

func (l *lane) lostConnection(err error) {
	l.b.stats.losses.Add(1)
	l.b.log.Warn("upstream connection lost; reconnecting", zap.String("client_id", l.id), zap.Error(err))
}

// cycle ends the current connection; it is made again.
func (l *lane) cycle() {
	l.cycled.Store(true)
	l.c().cycle()
}

// interrupt makes paho see the connection fail. Closing it would not do:
// paho takes "use of closed network connection" for its own doing and
// does not reconnect. A read deadline in the past fails the pending read
// with a timeout, which paho handles as a lost connection (it sets no read
// deadline of its own once connected).
func interrupt(c net.Conn) {
	_ = c.SetReadDeadline(time.Unix(1, 0))
}

func (l *lane) stopTimers() {
	l.mu.Lock()
	if l.cmdTimer != nil {
		l.cmdTimer.Stop()
		l.cmdTimer = nil
	}
	l.mu.Unlock()
}

// close refuses further messages and returns what is still waiting:
// first what was sent and not acknowledged, then the queue.
func (l *lane) close() []*entry {
	l.mu.Lock()
	l.closed = true
	q := slices.DeleteFunc(l.queue.drain(), func(e *entry) bool { return e.refused })
	l.mu.Unlock()
	return append(l.c().drain(), q...)
}
