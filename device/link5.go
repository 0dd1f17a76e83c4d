package device

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"

	"github.com/dualgate/dualgate/internal/control"
)

// MQTT 5 DISCONNECT reason codes that carry a Server Reference.
const (
	reasonUseAnotherServer = 0x9C
	reasonServerMoved      = 0x9D
)

// link5 is an MQTT 5 connection on paho.golang.
type link5 struct {
	linkState
	client    *paho.Client
	conn      net.Conn
	sess      session.SessionManager
	closeOnce sync.Once
	onCommand func(Command)
	// serverGone: the server sent DISCONNECT (and closes the connection,
	// MQTT-3.14.4-2): close writes no DISCONNECT back.
	serverGone atomic.Bool
}

// watchSession is paho's in-memory session state that also sees a server
// DISCONNECT, synchronously on the receive goroutine, before paho reports
// the connection lost: so a reconnect instruction is always queued before
// the loss is.
type watchSession struct {
	session.SessionManager
	l *link5
}

func (w *watchSession) ConnectionLost(dp *packets.Disconnect) error {
	if dp != nil {
		w.l.serverGone.Store(true)
		w.l.serverDisconnect(dp)
	}
	return w.SessionManager.ConnectionLost(dp)
}

// dial5 runs CONNECT/CONNACK on conn, an open plain or TLS connection to
// addr. The link owns conn from here on, also on error.
func dial5(ctx context.Context, cfg *Config, m Mode, addr string, conn net.Conn, user, pass string, resume bool) (*link5, error) {
	l := &link5{linkState: newLinkState(m, addr), conn: conn, onCommand: cfg.OnCommand}
	l.sess = &watchSession{SessionManager: state.NewInMemory(), l: l}
	// paho counts neither the CONNECT nor the CONNACK as traffic, so its
	// pinger would send a PINGREQ as soon as the connection is up: a
	// PINGREQ, a PINGRESP and their segments for nothing on every
	// connection. Counted here, the first PINGREQ waits a keepalive.
	pinger := paho.NewDefaultPinger()
	pinger.PacketSent()
	pinger.PacketReceived()
	l.client = paho.NewClient(paho.ClientConfig{
		PingHandler: pinger,
		ClientID:    cfg.ClientID,
		// paho writes from several goroutines, each packet between
		// Lock and Unlock; packetConn serializes them and sends each
		// packet in one write.
		Conn:              &packetConn{Conn: conn},
		Session:           l.sess,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){l.message},
		OnServerDisconnect: func(d *paho.Disconnect) {
			l.markLost(fmt.Errorf("%w: server DISCONNECT, reason 0x%02X", ErrConnectionLost, d.ReasonCode))
		},
		OnClientError: func(err error) {
			l.markLost(fmt.Errorf("%w: %w", ErrConnectionLost, err))
		},
		PacketTimeout: cfg.ConnectTimeout,
	})
	cp := &paho.Connect{
		ClientID:   cfg.ClientID,
		KeepAlive:  uint16(cfg.KeepAlive / time.Second),
		CleanStart: true,
	}
	if !cfg.CleanSession {
		// Clean Start stays set on the Device's first connection (what
		// a gateway kept from an earlier run is not ours to trust).
		expiry := uint32(min(cfg.SessionExpiry/time.Second, math.MaxUint32))
		cp.CleanStart = !resume
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &expiry}
	}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
		cp.Password, cp.PasswordFlag = []byte(pass), true
	}
	ack, err := l.client.Connect(ctx, cp)
	if err != nil {
		// Connect closed conn and started nothing that outlives it.
		_ = l.sess.Close()
		l.markLost(err)
		if ack != nil {
			return nil, fmt.Errorf("device: MQTT connect to %s: reason 0x%02X: %w", addr, ack.ReasonCode, err)
		}
		return nil, fmt.Errorf("device: MQTT connect to %s: %w", addr, err)
	}
	l.present = ack.SessionPresent
	return l, nil
}

// serverDisconnect reads a reconnect instruction from a server DISCONNECT.
// Only 0x9C and 0x9D carry one.
func (l *link5) serverDisconnect(dp *packets.Disconnect) {
	if dp.ReasonCode != reasonUseAnotherServer && dp.ReasonCode != reasonServerMoved {
		return
	}
	var ref, reason string
	if dp.Properties != nil {
		ref, reason = dp.Properties.ServerReference, dp.Properties.ReasonString
	}
	if ref == "" {
		l.received(instruction{err: fmt.Errorf("DISCONNECT 0x%02X without a Server Reference", dp.ReasonCode)})
		return
	}
	l.received(parseServerReference(ref, reason))
}

// message runs on paho's receive goroutine for every PUBLISH; paho sends
// the PUBACK after it returns.
func (l *link5) message(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	if p.Topic == control.ControlTopic {
		// MQTT 5 devices are told by DISCONNECT; a control PUBLISH is
		// obeyed by the same rules all the same.
		l.received(parseInstruction(p.Payload))
		return true, nil
	}
	if strings.HasPrefix(p.Topic, control.ReservedPrefix) || l.onCommand == nil {
		return true, nil
	}
	l.waitReady()
	l.onCommand(Command{
		Topic: p.Topic, Payload: p.Payload, QoS: p.QoS,
		OverTLS: l.m == ModeTLS, Dup: p.Duplicate(),
	})
	return true, nil
}

func (l *link5) publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	ctx, cancel := l.opContext(ctx)
	defer cancel()
	resp, err := l.client.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: payload})
	switch {
	case err == nil:
		return nil
	case resp != nil && resp.ReasonCode >= 0x80:
		return fmt.Errorf("%w: PUBLISH %s: reason 0x%02X", ErrRefused, topic, resp.ReasonCode)
	case errors.Is(err, paho.ErrInvalidArguments):
		return fmt.Errorf("device: publish %s: %w", topic, err)
	}
	return l.failed5("publish "+topic, err)
}

// failed5 is failed, also for paho's errors of a connection that is going:
// the session may know before the loss reaches markLost.
func (l *link5) failed5(op string, err error) error {
	if errors.Is(err, session.ErrNoConnection) || errors.Is(err, paho.ErrConnectionLost) ||
		errors.Is(err, paho.ErrNetworkErrorAfterStored) {
		return fmt.Errorf("device: %s: %w: %w", op, ErrConnectionLost, err)
	}
	return l.failed(op, err)
}

func (l *link5) subscribe(ctx context.Context, subs []Subscription) error {
	if len(subs) == 0 {
		return nil
	}
	opts := make([]paho.SubscribeOptions, len(subs))
	for i, s := range subs {
		opts[i] = paho.SubscribeOptions{Topic: s.Filter, QoS: s.QoS}
	}
	ctx, cancel := l.opContext(ctx)
	defer cancel()
	ack, err := l.client.Subscribe(ctx, &paho.Subscribe{Subscriptions: opts})
	if err != nil {
		if ack != nil {
			return fmt.Errorf("%w: SUBSCRIBE: %w", ErrRefused, err)
		}
		return l.failed5("subscribe", err)
	}
	return nil
}

func (l *link5) close() {
	l.closeOnce.Do(func() {
		// First: operations still waiting on the connection end as lost,
		// and are retried on the next one.
		l.markLost(nil)
		if l.serverGone.Load() {
			// The server said DISCONNECT (a reconnect instruction)
			// and closes: a DISCONNECT back would only cost the
			// device a segment, and the server's kernel a reset to
			// answer it with, whenever it came before paho closed
			// the connection itself. Close it now, without a word.
			_ = l.conn.Close()
		} else {
			// Disconnect writes DISCONNECT (harmlessly failing when
			// the connection has gone) and closes the connection.
			_ = l.client.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
		<-l.client.Done()
		_ = l.sess.Close()
	})
}
