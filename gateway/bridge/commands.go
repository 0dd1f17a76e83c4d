package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// ErrCommandRejected is what a SubmitCommand error wraps to say that the
// command will never be accepted (malformed, too large, expired): the bridge
// acknowledges the broker's message and drops it instead of having it sent
// again.
var ErrCommandRejected = errors.New("bridge: command rejected")

// Command is a command taken from the broker.
type Command struct {
	// ClientID is the device's client id, read from the topic.
	ClientID string
	// Topic is the command's topic as the device sees it (TopicPrefix
	// removed).
	Topic   string
	Payload []byte
	QoS     byte
	// Secure is false only for topics matching Config.PlainAllowed.
	Secure bool
	// Origin names the broker's message: the same message sent again
	// (DUP) has the same Origin. See commandOrigin.
	Origin string
}

// commandOrigin is the Origin of a broker message: "mqtt:" and the
// SHA-256, in hex, of its topic, packet identifier and payload. A broker
// redelivers a message with its original packet identifier
// [MQTT-4.4.0-1]; an identical command published again gets a new one, so
// a second "unlock" whose first delivery to the gateway was cut is not
// taken for a copy of an earlier "unlock". The MQTT 3.1.1 connection to
// the broker carries no property that could name the command instead.
func commandOrigin(topic string, packetID uint16, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(topic))
	h.Write([]byte{0, byte(packetID >> 8), byte(packetID)})
	h.Write(payload)
	return "mqtt:" + hex.EncodeToString(h.Sum(nil))
}

// command hands one message of the command subscription to SubmitCommand
// and acknowledges it to the broker only once the gateway holds it. A
// retained message is never a command, and a redelivery of a command
// already stored is acknowledged and dropped.
func (b *Bridge) command(l *lane, m inMsg, topic string) {
	if m.retain {
		// The broker sends the retained message of the command topic at
		// every SUBSCRIBE: after each restart and reconnection.
		b.stats.commandsRetained.Add(1)
		b.hot.Warn("retained message on the command topic is not a command; dropped (publish commands without retain)",
			zap.String("topic", topic))
		m.ack()
		return
	}
	clientID, ok := b.cmd.extract(topic)
	if !ok {
		b.stats.commandsReject.Add(1)
		b.hot.Warn("command topic names no client id; dropped", zap.String("topic", topic))
		m.ack()
		return
	}
	qos := min(m.qos, 1)
	c := Command{ClientID: clientID, Topic: topic, Payload: m.payload, QoS: qos, Secure: !b.plainAllowed(topic),
		Origin: commandOrigin(topic, m.id, m.payload)}
	if m.dup && m.qos > 0 && b.cfg.KnownCommand != nil {
		known, err := b.known(c.Origin)
		switch {
		case err != nil:
			b.stats.commandErrors.Add(1)
			b.hot.Warn("cannot tell whether a redelivered command was taken already; left unacknowledged for the broker to send again",
				zap.String("client", clientID), zap.String("topic", topic), zap.Error(err))
			l.redeliverLater()
			return
		case known:
			b.stats.commandsDuplicate.Add(1)
			b.hot.Info("redelivered command was taken already; acknowledged and dropped",
				zap.String("client", clientID), zap.String("topic", topic), zap.String("origin", c.Origin))
			m.ack()
			return
		}
	}
	err := b.submit(c)
	switch {
	case err == nil:
		if !b.cfg.dropCommandAcks {
			m.ack()
		}
		b.stats.commands.Add(1)
	case errors.Is(err, ErrCommandRejected):
		m.ack()
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
func (b *Bridge) submit(c Command) (err error) {
	defer func() {
		if r := recover(); r != nil {
			b.hot.Error("panic in SubmitCommand", zap.String("client", c.ClientID), zap.String("topic", c.Topic),
				zap.String("panic", fmt.Sprint(r)))
			err = fmt.Errorf("%w: SubmitCommand panicked: %v", ErrCommandRejected, r)
		}
	}()
	return b.cfg.SubmitCommand(c)
}

// known calls KnownCommand; a panic counts as an error.
func (b *Bridge) known(origin string) (ok bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bridge: KnownCommand panicked: %v", r)
		}
	}()
	return b.cfg.KnownCommand(origin)
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
// CommandRetry: a broker sends an unacknowledged message again only on a
// new connection (MQTT 3.1.1 and 5 alike). In MQTT 5, paho sends
// acknowledgements in the order the messages came, so the commands after
// an unaccepted one are acknowledged only after the cycle, when the broker
// sends them again with DUP set and KnownCommand drops those stored.
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
	stop := l.closed || l.b.closing.Load()
	l.mu.Unlock()
	if stop || !l.c().open() {
		return
	}
	l.b.stats.commandCycles.Add(1)
	l.b.log.Info("cycling the upstream connection so the broker sends unaccepted commands again",
		zap.String("client_id", l.id))
	l.cycle()
}
