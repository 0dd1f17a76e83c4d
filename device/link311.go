package device

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/control"
)

// quiesce311 is how long Disconnect may wait for the DISCONNECT to be
// written and the client's goroutines to end, in milliseconds. It returns
// as soon as they have.
const quiesce311 = 1000

// link311 is an MQTT 3.1.1 connection on paho.mqtt.golang.
type link311 struct {
	linkState
	client    mqtt.Client
	onCommand func(Command)
}

// dial311 runs CONNECT/CONNACK on conn, an open plain or TLS connection to
// addr. The link owns conn from here on, also on error.
func dial311(ctx context.Context, cfg *Config, m Mode, addr string, conn net.Conn, user, pass string, resume bool) (*link311, error) {
	l := &link311{linkState: newLinkState(m, addr), onCommand: cfg.OnCommand}
	var handed atomic.Bool
	o := mqtt.NewClientOptions().
		AddBroker("tcp://" + addr). // only a label: the connection is conn
		SetClientID(cfg.ClientID).
		SetProtocolVersion(4).
		// Clean session 0 keeps the session across moves; the Device's
		// first connection starts clean.
		SetCleanSession(cfg.CleanSession || !resume).
		SetAutoReconnect(false). // the Device owns reconnection
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetOrderMatters(true). // commands in order; each acknowledged after OnCommand returns
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.ConnectTimeout).
		SetDefaultPublishHandler(l.message). // commands arrive without a subscription
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			l.markLost(fmt.Errorf("%w: %w", ErrConnectionLost, err))
		}).
		SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
			if handed.Swap(true) {
				return nil, errors.New("device: connection already used")
			}
			return conn, nil
		})
	if user != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	l.client = mqtt.NewClient(o)
	tok := l.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		_ = conn.Close() // ends the CONNACK wait
		<-tok.Done()
	}
	if err := tok.Error(); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("device: MQTT connect to %s: %w", addr, err)
	}
	if err := ctx.Err(); err != nil {
		l.close()
		return nil, fmt.Errorf("device: MQTT connect to %s: %w", addr, err)
	}
	if ct, ok := tok.(*mqtt.ConnectToken); ok {
		l.present = ct.SessionPresent()
	}
	return l, nil
}

// message runs on paho's receive goroutine for every PUBLISH; paho sends
// the PUBACK after it returns.
func (l *link311) message(_ mqtt.Client, msg mqtt.Message) {
	topic := msg.Topic()
	if topic == control.ControlTopic {
		// Acknowledge before the Device can act on it, so the PUBACK is
		// queued ahead of the DISCONNECT that follows (paho's later
		// acknowledgement is then a no-op).
		msg.Ack()
		l.received(parseInstruction(msg.Payload()))
		return
	}
	if strings.HasPrefix(topic, control.ReservedPrefix) || l.onCommand == nil {
		return
	}
	l.waitReady()
	l.onCommand(Command{
		Topic: topic, Payload: msg.Payload(), QoS: msg.Qos(),
		OverTLS: l.m == ModeTLS, Dup: msg.Duplicate(),
	})
}

func (l *link311) publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	return l.wait(ctx, "publish "+topic, l.client.Publish(topic, qos, retain, payload))
}

func (l *link311) subscribe(ctx context.Context, subs []Subscription) error {
	if len(subs) == 0 {
		return nil
	}
	filters := make(map[string]byte, len(subs))
	for _, s := range subs {
		filters[s.Filter] = s.QoS
	}
	tok := l.client.SubscribeMultiple(filters, nil) // nil: messages reach the default handler
	if err := l.wait(ctx, "subscribe", tok); err != nil {
		return err
	}
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return nil
	}
	for filter, code := range st.Result() {
		if code >= 0x80 {
			return fmt.Errorf("%w: subscription %q", ErrRefused, filter)
		}
	}
	return nil
}

// wait waits for tok, the end of the connection or ctx. paho fails a
// token only when the connection is gone.
func (l *link311) wait(ctx context.Context, op string, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("device: %s: %w: %w", op, ErrConnectionLost, err)
		}
		return nil
	case <-l.lost():
		return fmt.Errorf("device: %s: %w", op, l.lostErr())
	case <-ctx.Done():
		return fmt.Errorf("device: %s: %w", op, ctx.Err())
	}
}

func (l *link311) close() {
	// First: operations still waiting on the connection end as lost, and
	// are retried on the next one.
	l.markLost(nil)
	l.client.Disconnect(quiesce311)
}
