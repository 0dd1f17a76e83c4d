package bridge

import (
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// ErrCommandRejected is what a SubmitCommand error wraps to say that the
// command will never be accepted (malformed, too large, expired): the bridge
// acknowledges the broker's message and drops it instead of having it sent
// again.
var ErrCommandRejected = errors.New("bridge: command rejected")

// command hands one message of the command subscription to SubmitCommand
// and acknowledges it to the broker only once the gateway holds it.
func (b *Bridge) command(l *lane, m mqtt.Message, topic string) {
	clientID, ok := b.cmd.extract(topic)
	if !ok {
		b.stats.commandsReject.Add(1)
		b.hot.Warn("command topic names no client id; dropped", zap.String("topic", topic))
		m.Ack()
		return
	}
	qos := min(m.Qos(), 1)
	secure := !b.plainAllowed(topic)
	err := b.submit(clientID, topic, m.Payload(), qos, secure)
	switch {
	case err == nil:
		m.Ack()
		b.stats.commands.Add(1)
	case errors.Is(err, ErrCommandRejected):
		m.Ack()
		b.stats.commandsReject.Add(1)
		b.hot.Warn("command rejected; dropped", zap.String("client", clientID), zap.String("topic", topic), zap.Error(err))
	default:
		b.stats.commandErrors.Add(1)
		if qos == 0 {
			b.hot.Warn("QoS 0 command not accepted; lost", zap.String("client", clientID),
				zap.String("topic", topic), zap.Error(err))
			return
		}
		b.hot.Warn("command not accepted; left unacknowledged for the broker to send again",
			zap.String("client", clientID), zap.String("topic", topic), zap.Error(err))
		l.redeliverLater()
	}
}

// submit calls SubmitCommand; a panic counts as a rejection.
func (b *Bridge) submit(clientID, topic string, payload []byte, qos byte, secure bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			b.hot.Error("panic in SubmitCommand", zap.String("client", clientID), zap.String("topic", topic),
				zap.String("panic", fmt.Sprint(r)))
			err = fmt.Errorf("%w: SubmitCommand panicked: %v", ErrCommandRejected, r)
		}
	}()
	return b.cfg.SubmitCommand(clientID, topic, payload, qos, secure)
}

// plainAllowed reports whether a command on topic may travel on plain TCP.
func (b *Bridge) plainAllowed(topic string) bool {
	tb := []byte(topic)
	for _, f := range b.cfg.PlainAllowed {
		if mqttcodec.MatchTopic([]byte(f), tb) {
			return true
		}
	}
	return false
}

// redeliverLater arranges for the connection to be cycled after
// CommandRetry: an MQTT 3.1.1 broker sends an unacknowledged message again
// only on a new connection.
func (l *lane) redeliverLater() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cmdTimer != nil || l.closed || l.b.closing.Load() {
		return
	}
	l.cmdTimer = time.AfterFunc(l.b.cfg.CommandRetry, l.cycleForCommands)
}

func (l *lane) cycleForCommands() {
	l.mu.Lock()
	l.cmdTimer = nil
	c := l.conn
	stop := l.closed || l.b.closing.Load()
	l.mu.Unlock()
	if stop || c == nil {
		return
	}
	l.b.stats.commandCycles.Add(1)
	l.b.log.Info("cycling the upstream connection so the broker sends unaccepted commands again",
		zap.String("client_id", l.id))
	interrupt(c)
}
