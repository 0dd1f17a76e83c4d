package session

import "sync/atomic"

// Stats counts what sessions do. All fields are safe for concurrent use; the
// gateway exposes them through /v1/stats and /metrics.
type Stats struct {
	Accepted               atomic.Uint64 // connections that reached a session
	Connects               atomic.Uint64 // CONNECTs accepted
	Refused                [256]atomic.Uint64
	Disconnects            atomic.Uint64
	Takeovers              atomic.Uint64
	ConnectTimeouts        atomic.Uint64
	ConnectsWaited         atomic.Uint64 // CONNECTs whose verdict waited on a remote check (auth.Result.Pending)
	KeepAliveTimeouts      atomic.Uint64
	ProtocolErrors         atomic.Uint64
	MalformedPackets       atomic.Uint64
	PacketsIn              atomic.Uint64
	PacketsOut             atomic.Uint64
	BytesIn, BytesOut      [2]atomic.Uint64 // MQTT bytes by transport, indexed by registry.Mode
	PublishesIn            atomic.Uint64
	SubscribeRefused       atomic.Uint64 // filters refused by the topic authorization
	SubscribeTooLong       atomic.Uint64 // filters refused for passing Env.MaxTopicLen
	WillRefused            atomic.Uint64 // CONNECTs refused for their Will topic
	Deliveries             atomic.Uint64 // commands written to devices
	Instructions           atomic.Uint64 // reconnect instructions sent
	InstructionGraceClosed atomic.Uint64 // 3.1.1 devices closed after the grace period
	Panics                 atomic.Uint64 // session panics contained to their connection
	SlowReaderClosed       atomic.Uint64 // devices disconnected for not reading (Env.MaxOutbound)
	ReadPauses             atomic.Uint64 // times the gateway stopped reading a device (flow control)
	ReceiveMaximumExceeded atomic.Uint64 // MQTT 5 devices disconnected (0x93) for more QoS 1/2 in flight than advertised
	QoS2Unreleased         atomic.Uint64 // MQTT 3.1.1 devices closed past Env.MaxQoS2Unreleased
	Queued                 atomic.Uint64 // routed messages that waited for room in a device's Receive Maximum
	QueueDropped           atomic.Uint64 // routed messages dropped: the device's queue was full
	MessagesExpired        atomic.Uint64 // messages dropped because their Message Expiry Interval passed before they were written
	// RefusedOnPlain counts secure commands and secure data that
	// CheckTransport kept off a plain socket.
	RefusedOnPlain atomic.Uint64
	// RefusedUnproven counts secure commands kept off a TLS session whose
	// client id was not proven (--secure-identity).
	RefusedUnproven atomic.Uint64
}

// RefusedTotal sums the refusals over every reason code.
func (st *Stats) RefusedTotal() uint64 {
	var n uint64
	for i := range st.Refused {
		n += st.Refused[i].Load()
	}
	return n
}
