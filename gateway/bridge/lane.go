package bridge

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"
)

// lane is one connection of the pool with what it carries: a queue of
// device messages, its outbox of unacknowledged publishes, and, on some
// lanes, the command subscription or the devices' subscriptions.
//
// Goroutines per lane: the connector (until the first connection; paho
// reconnects after that), the sender (queue -> paho), the receiver (paho ->
// Deliver / SubmitCommand) and, on lanes holding subscriptions, the
// controller (SUBSCRIBE / UNSUBSCRIBE).
type lane struct {
	b        *Bridge
	id       string // MQTT client id
	cli      mqtt.Client
	box      *outbox
	commands bool      // holds the command subscription
	subs     *subTable // non-nil on the lane holding the devices' subscriptions
	// wipe: clear the broker's session for this client id before the
	// first connection, so that subscriptions of a previous run do not
	// linger. Never on the command lane: its unacknowledged commands
	// must survive a restart.
	wipe bool

	wake chan struct{}     // the sender has something to look at
	ctl  chan struct{}     // the controller has something to look at
	in   chan mqtt.Message // broker messages for the receiver

	connects atomic.Uint64
	cmdHeld  atomic.Bool // the broker acknowledged the command subscription on the latest connection

	mu         sync.Mutex // guards the fields below
	queue      fifo
	gate       bool     // after a connection is made, wait until what paho resends is acknowledged
	conn       net.Conn // the current network connection
	closed     bool
	needCmdSub bool
	cmdTimer   *time.Timer
}

func newLane(b *Bridge, idx int) *lane {
	l := &lane{
		b:    b,
		id:   b.cfg.ClientIDPrefix + "-" + strconv.Itoa(idx),
		wake: make(chan struct{}, 1),
		ctl:  make(chan struct{}, 1),
		in:   make(chan mqtt.Message, 256),
	}
	l.commands = b.cmd != nil && idx == 0
	if idx == b.cfg.PoolSize-1 {
		l.subs = newSubTable()
	}
	l.wipe = !l.commands
	l.box = newOutbox(l)
	l.cli = mqtt.NewClient(l.options(false))
	return l
}

// options builds the paho options of the lane's client, or of the
// short-lived client that clears its session (clean).
func (l *lane) options(clean bool) *mqtt.ClientOptions {
	c := &l.b.cfg
	o := mqtt.NewClientOptions()
	o.AddBroker(l.b.up.url.String())
	o.SetClientID(l.id)
	if c.Username != "" {
		o.SetUsername(c.Username)
		o.SetPassword(c.Password)
	}
	o.SetProtocolVersion(4)
	o.SetKeepAlive(c.KeepAlive)
	o.SetPingTimeout(min(10*time.Second, c.KeepAlive))
	o.SetConnectTimeout(c.ConnectTimeout)
	o.SetWriteTimeout(c.ConnectTimeout)
	o.SetConnectRetry(false)
	o.SetResumeSubs(false)
	if clean {
		o.SetCleanSession(true)
		o.SetAutoReconnect(false)
		o.SetStore(mqtt.NewMemoryStore())
		o.SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			return l.b.dial(u)
		})
		return o
	}
	o.SetCleanSession(false)
	o.SetAutoReconnect(true)
	o.SetMaxReconnectInterval(c.ReconnectMax)
	o.SetOrderMatters(true)
	o.SetAutoAckDisabled(true)
	o.SetStore(l.box)
	o.SetCustomOpenConnectionFn(l.dial)
	o.SetDefaultPublishHandler(l.onMessage)
	o.SetOnConnectHandler(l.onConnect)
	o.SetConnectionLostHandler(l.onLost)
	return o
}

// dial opens a network connection to the broker.
func (b *Bridge) dial(u *url.URL) (net.Conn, error) {
	d := net.Dialer{Timeout: b.cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	if u.Scheme == "tls" {
		return tls.DialWithDialer(&d, "tcp", u.Host, b.up.tls)
	}
	return d.Dial("tcp", u.Host)
}

// dial is paho's way to open the lane's connection. It remembers the
// connection (to cycle it) and closes the gate: paho resends what its store
// holds once the connection is up, and nothing new may go before that.
func (l *lane) dial(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
	c, err := l.b.dial(u)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.conn = c
	l.gate = true
	l.box.awaitResume()
	l.mu.Unlock()
	return c, nil
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

// connect makes the first connection, retrying with backoff; after it,
// paho reconnects by itself.
func (l *lane) connect() {
	defer l.b.wg.Done()
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := l.tryConnect()
		if err == nil {
			return
		}
		if errors.Is(err, ErrClosed) {
			return
		}
		if attempt&(attempt-1) == 0 { // attempts 1, 2, 4, 8...: the log stays short
			l.b.log.Warn("upstream broker unreachable; retrying in the background",
				zap.String("client_id", l.id), zap.Int("attempt", attempt), zap.Error(err))
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

func (l *lane) tryConnect() error {
	if l.wipe {
		if err := l.clearSession(); err != nil {
			return err
		}
		l.wipe = false
	}
	return l.wait(l.cli.Connect(), 0)
}

// clearSession connects once with clean session and leaves: the broker
// forgets what a previous run of this client id subscribed to.
func (l *lane) clearSession() error {
	c := mqtt.NewClient(l.options(true))
	if err := l.wait(c.Connect(), 0); err != nil {
		// Stopped while connecting: paho disconnects once the attempt ends.
		c.Disconnect(0)
		return err
	}
	c.Disconnect(50)
	return nil
}

// wait waits for a paho token, until Stop or, with timeout > 0, until the
// timeout.
func (l *lane) wait(tok mqtt.Token, timeout time.Duration) error {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-tok.Done():
		return tok.Error()
	case <-l.b.stop:
		return ErrClosed
	case <-expired:
		return errors.New("bridge: no answer from the broker in time")
	}
}

// onConnect runs (on its own goroutine) each time a connection is up.
func (l *lane) onConnect(mqtt.Client) {
	n := l.connects.Add(1)
	if n > 1 {
		l.b.stats.reconnects.Add(1)
	}
	l.b.log.Info("upstream connected", zap.String("client_id", l.id), zap.Uint64("connection", n))
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

func (l *lane) onLost(_ mqtt.Client, err error) {
	l.b.stats.losses.Add(1)
	l.b.log.Warn("upstream connection lost; reconnecting", zap.String("client_id", l.id), zap.Error(err))
}

// cycle ends the current connection; paho reconnects.
func (l *lane) cycle() {
	l.mu.Lock()
	c := l.conn
	l.mu.Unlock()
	if c != nil {
		interrupt(c)
	}
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
	return append(l.box.drain(), q...)
}
