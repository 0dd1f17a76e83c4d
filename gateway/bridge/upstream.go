package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/dualgate/dualgate/gateway/session"
)

// The protocols a Bridge speaks to the broker (Config.Protocol).
const (
	Protocol5   = "5"
	Protocol311 = "3.1.1"
)

// errUnsupportedProtocol is what conn.connect returns when the broker
// refused an MQTT 5 CONNECT for its protocol version: the bridge then
// speaks MQTT 3.1.1 on every connection.
var errUnsupportedProtocol = errors.New("bridge: the broker does not support MQTT 5")

// conn is one connection of the pool to the broker, in the protocol the
// bridge speaks: conn311 (paho.mqtt.golang) or conn5 (paho.golang). The
// lanes, the buffer, the spill, the subscriptions and the commands are
// written once against it.
//
// Publishes of QoS 1 and 2 are acknowledged through the lane (lane.acked,
// lane.nacked), per message, in the order they were sent; what the broker
// had not acknowledged when a connection ended is sent again, first and in
// its order, on the next one.
type conn interface {
	protocol() string
	// connect makes a connection (clearing the broker's session first
	// when the lane asks so). It blocks until the CONNACK or a failure.
	connect() error
	// lost returns a channel closed when the connection made by the
	// latest successful connect ends, or nil when the client reconnects
	// by itself (paho.mqtt.golang).
	lost() <-chan struct{}
	open() bool
	// publish hands e to the client, with its topic and payload read
	// back. It reports false when the client did not take it (the
	// connection is down): e goes back to the queue.
	publish(e *entry, topic string, payload []byte) bool
	// fits reports whether e's PUBLISH is within the broker's Maximum
	// Packet Size (MQTT 5 CONNACK; a 3.1.1 broker cannot say one), and
	// that size, 0 for none.
	fits(e *entry, topic string, payload []byte) (ok bool, limit uint32)
	// cork holds what publish writes until uncork, which sends it in
	// one go: the sender's bursts (a no-op where the client writes on a
	// goroutine of its own).
	cork()
	uncork()
	// subscribe sends one SUBSCRIBE and returns a reason code per filter,
	// in order (a QoS granted, or a failure >= 0x80).
	subscribe(ctx context.Context, subs []upSub, id int) ([]byte, error)
	unsubscribe(ctx context.Context, filters []string) error
	// cycle ends the current network connection; the client reconnects.
	cycle()
	disconnect()
	// inflight counts publishes sent and not acknowledged; window is how
	// many the broker admits at once; settled reports that nothing the
	// client resends after a reconnect is still owed (new publishes wait
	// for it).
	inflight() int
	window() int
	settled() bool
	// drain takes back what was sent and not acknowledged, in order.
	drain() []*entry
	// sharedOK and subIDsOK report what the broker's CONNACK allowed.
	sharedOK() bool
	subIDsOK() bool
}

// upSub is one filter of a SUBSCRIBE, broker side.
type upSub struct {
	filter         string
	qos            byte
	noLocal        bool
	retainAsPub    bool
	retainHandling byte
}

// inMsg is a message from the broker, whichever the protocol.
type inMsg struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
	dup     bool
	id      uint16 // packet identifier
	props   *session.MessageProps
	expires time.Time
	subIDs  []int // MQTT 5 Subscription Identifiers
	ack     func()
}
