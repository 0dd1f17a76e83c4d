package bridge

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// conn311 is a pool connection in MQTT 3.1.1, made with paho.mqtt.golang,
// which reconnects by itself. The lane's outbox is its Store: that is how
// the bridge learns per message that the broker acknowledged it.
type conn311 struct {
	l   *lane
	cli mqtt.Client

	mu sync.Mutex
	nc net.Conn // the current network connection
}

func newConn311(l *lane) *conn311 {
	c := &conn311{l: l}
	c.cli = mqtt.NewClient(c.options(false))
	return c
}

func (c *conn311) protocol() string { return Protocol311 }

// options builds the paho options of the lane's client, or of the
// short-lived client that clears its session (clean).
func (c *conn311) options(clean bool) *mqtt.ClientOptions {
	l := c.l
	cfg := &l.b.cfg
	o := mqtt.NewClientOptions()
	o.AddBroker(l.b.up.url.String())
	o.SetClientID(l.id)
	if cfg.Username != "" {
		o.SetUsername(cfg.Username)
		o.SetPassword(cfg.Password)
	}
	o.SetProtocolVersion(4)
	o.SetKeepAlive(cfg.KeepAlive)
	o.SetPingTimeout(min(10*time.Second, cfg.KeepAlive))
	o.SetConnectTimeout(cfg.ConnectTimeout)
	o.SetWriteTimeout(cfg.ConnectTimeout)
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
	o.SetMaxReconnectInterval(cfg.ReconnectMax)
	o.SetOrderMatters(true)
	o.SetAutoAckDisabled(true)
	o.SetStore(l.box)
	o.SetCustomOpenConnectionFn(c.dial)
	o.SetDefaultPublishHandler(c.onMessage)
	o.SetOnConnectHandler(func(mqtt.Client) { l.connected() })
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { l.lostConnection(err) })
	return o
}

// dial is paho's way to open the lane's connection. It remembers the
// connection (to cycle it) and closes the gate: paho resends what its store
// holds once the connection is up, and nothing new may go before that.
func (c *conn311) dial(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
	nc, err := c.l.b.dial(u)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nc = nc
	c.mu.Unlock()
	c.l.closeGate()
	// paho.mqtt.golang writes each packet with a system call of its own;
	// through flushConn what accumulates while one is written goes in
	// the next one.
	return newFlushConn(nc), nil
}

func (c *conn311) connect() error {
	if c.l.wipe {
		if err := c.clearSession(); err != nil {
			return err
		}
	}
	return c.l.wait(c.cli.Connect(), 0)
}

// clearSession connects once with clean session and leaves: the broker
// forgets what a previous run of this client id subscribed to.
func (c *conn311) clearSession() error {
	cc := mqtt.NewClient(c.options(true))
	if err := c.l.wait(cc.Connect(), 0); err != nil {
		// Stopped while connecting: paho disconnects once the attempt ends.
		cc.Disconnect(0)
		return err
	}
	cc.Disconnect(50)
	return nil
}

func (c *conn311) lost() <-chan struct{} { return nil }

func (c *conn311) open() bool { return c.cli.IsConnectionOpen() }

func (c *conn311) publish(e *entry, topic string, payload []byte) bool {
	if e.qos == 0 {
		c.cli.Publish(topic, 0, e.retain, payload)
		return true
	}
	box := c.l.box
	box.expect(e)
	c.cli.Publish(topic, e.qos, e.retain, payload)
	// true: paho stored it, and sends it, or resends it after a
	// reconnect, until the broker acknowledges it (outbox.Del).
	return box.taken(e)
}

func (c *conn311) fits(*entry, string, []byte) (bool, uint32) { return true, 0 }

// cork and uncork do nothing: paho.mqtt.golang writes on a goroutine of
// its own, a packet at a time.
func (c *conn311) cork()   {}
func (c *conn311) uncork() {}

func (c *conn311) subscribe(ctx context.Context, subs []upSub, _ int) ([]byte, error) {
	up := make(map[string]byte, len(subs))
	for _, s := range subs {
		up[s.filter] = s.qos
	}
	tok := c.cli.SubscribeMultiple(up, nil)
	if err := c.l.waitCtx(ctx, tok); err != nil {
		return nil, err
	}
	res := tok.(*mqtt.SubscribeToken).Result()
	codes := make([]byte, len(subs))
	for i, s := range subs {
		rc, ok := res[s.filter]
		if !ok {
			return nil, errors.New("bridge: SUBACK without a result for a filter")
		}
		codes[i] = rc
	}
	return codes, nil
}

func (c *conn311) unsubscribe(ctx context.Context, filters []string) error {
	return c.l.waitCtx(ctx, c.cli.Unsubscribe(filters...))
}

func (c *conn311) cycle() {
	c.mu.Lock()
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		interrupt(nc)
	}
}

func (c *conn311) disconnect() { c.cli.Disconnect(250) }

func (c *conn311) inflight() int { return c.l.box.len() }

func (c *conn311) window() int { return c.l.b.cfg.MaxInflight }

func (c *conn311) settled() bool { return c.l.box.settled() }

func (c *conn311) drain() []*entry { return c.l.box.drain() }

func (c *conn311) sharedOK() bool { return false }

func (c *conn311) subIDsOK() bool { return false }

// onMessage is paho's handler: it hands the message to the receiver, which
// acknowledges it once handled. Blocking here (the receiver is behind)
// slows the broker down through TCP, which is what should happen.
func (c *conn311) onMessage(_ mqtt.Client, m mqtt.Message) {
	in := inMsg{topic: m.Topic(), payload: m.Payload(), qos: m.Qos(), retain: m.Retained(),
		dup: m.Duplicate(), id: m.MessageID(), ack: m.Ack}
	select {
	case c.l.in <- in:
	case <-c.l.b.stop:
		// Not acknowledged: the broker sends it again next time.
	}
}
