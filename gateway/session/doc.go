// Package session is dualgate's one MQTT server state machine.
//
// Both transports feed it: the plain listener from its gnet event loop, the
// TLS listener from each connection's goroutine. A Session never does I/O by
// itself: it takes bytes (Feed), decodes them with mqttcodec, acts, and writes
// encoded packets through the Transport it was built with. Everything about
// MQTT behaviour toward devices lives here, once: CONNECT and CONNACK,
// authentication, keepalive and CONNECT deadlines, subscriptions and their
// options, QoS 1 and 2 flows both ways, MQTT 5 message properties and expiry,
// topic aliases, takeover, will messages, persistent sessions and their
// message queues, and the delivery of commands, routed messages and control
// instructions.
//
// # Ownership
//
// A Session's fields belong to its owner: the event loop of a plain
// connection, or the goroutine holding the TLS connection's mutex. Every
// method except Exec, ClientID and Subscriptions must be called by the owner.
// Other goroutines reach a session with Exec, which the transport runs in
// owner context (gnet's EventLoop().Execute, or under the TLS mutex).
//
// # Authentication that waits
//
// Env.Auth decides at once, except when the verdict needs a remote check
// (auth.Result.Pending: in cluster mode, a plain v1 token checked against
// the cluster's replay memory in Redis). The session then stops reading
// the device (what it sent after its CONNECT waits with the transport),
// keeps what the rest of the CONNECT needs out of the read buffer, and
// finishes the CONNECT in owner context, through Exec, when the verdict
// comes; then reads again, in order. Its owner never waits. The CONNECT
// deadline still runs meanwhile.
//
// # Deadlines
//
// A session keeps one deadline (CONNECT, keepalive, or the grace period after
// a reconnect instruction) as an int. The transport's periodic sweep calls
// Tick; there is no timer per connection.
//
// # Flow control
//
// A device is held back by not reading it, never by closing it over a
// window it was not told of: Transport.PauseRead and ResumeRead, driven by
// Session.PauseReading and ResumeReading with a ReadPause reason (the
// session's own, for an MQTT 3.1.1 device with Env.ReceiveMaximum
// publishes waiting; PauseUpstream, for the bridge). Toward a device,
// routed QoS 1 messages beyond its Receive Maximum wait in a bounded queue
// and stay with a kept session until acknowledged; commands are refused
// with ErrInflightFull and retried by the dispatcher. flow.go has the
// rules.
//
// # Messages and their properties
//
// What an MQTT 5 device publishes keeps its properties (payload format,
// content type, response topic, correlation data, user properties in
// order: MessageProps, copied out of the codec's buffer) and its Message
// Expiry Interval as an absolute time (Message.Expires; an interval of 0
// is no expiry). A Will likewise; its expiry counts from when it is
// published. Toward an MQTT 5 device the properties go out again with the
// seconds left (rounded up) and one Subscription Identifier per matching
// subscription; an MQTT 3.1.1 device gets none. A message whose expiry
// passes before it is written (at once, from the queue, or from a kept
// session) is dropped and counted (Stats.MessagesExpired,
// StoreStats.QueueExpired) [MQTT-3.3.2-5], except a QoS 2 message already
// sent once, to which expiry no longer applies [MQTT-4.3.3-7].
//
// # Subscriptions
//
// A subscription keeps its options (No Local, Retain As Published, Retain
// Handling) and the SUBSCRIBE's Subscription Identifier; QoS up to 2 is
// granted. "$share/group/filter" is accepted, from 3.1.1 devices too,
// unless Env.NoSharedSubscriptions (SUBACK 0x9E, 3.1.1 0x80); the topic
// authorization judges the filter it shares. The session holds the new
// subscriptions at once, asks Hooks.Subscribed to put their routes in
// place and stops reading the device until ready is called; then the
// SUBACK leaves, the subscriptions whose routes failed undone and their
// failure codes in it.
//
// # Routed messages
//
// Route takes a message routed to the device (not a command) through
// MatchDelivery: one copy per session, at the lower of the message's QoS
// and the highest granted by the matching subscriptions, with their
// identifiers and the retain flag they call for; shared subscriptions get
// only what is given to them by name (Delivery.Filter), No Local keeps a
// device's own messages from it. Deliver then writes it (CheckTransport
// decides what may reach the socket). QoS 2 runs its four packets toward
// the device (PUBREC, PUBREL, PUBCOMP), holding its window slot until
// the PUBCOMP; commands stay QoS 1.
//
// Exactly once on the device leg holds within a session, resumptions and
// takeovers included. Toward the device, a QoS 2 message unacknowledged
// goes out again with its packet identifier and DUP, one whose PUBREC
// came only as a PUBREL. From the device, the identifiers of QoS 2
// messages acknowledged with PUBREC and not yet released stay with the
// session, so one sent again is acknowledged, not delivered twice. It
// ends with the session: a session not kept (expiry 0, Clean Start,
// evicted, expired) drops what it had not had acknowledged. And it has
// two seams: a message handed to a successor that already uses its
// packet identifier goes out under a new one, and a device's QoS 2
// message whose PUBREC had not been sent yet (the Sink had not
// acknowledged it) when its connection ended reaches the Sink again if
// the device sends it again.
//
// # Persistent sessions
//
// Closed gives a persistent session's subscriptions and the routed
// messages it had not had acknowledged (with their packet identifiers and
// whether they were released) to the Store (Kept); a session taken over
// by a connection that resumed it hands them to its successor instead.
// While kept, routed QoS 1/2 messages for it are queued in the store
// (Store.Enqueue), bounded per session (StoreLimits.Messages, 0:
// DefaultMaxQueued) and in bytes with the rest of the store
// (StoreLimits.Bytes), with a policy for the overflow (OverflowDropNew by
// default, or OverflowDropOldest): a full queue drops its own messages,
// it never evicts a session. When the device comes back, the messages
// sent before go out again first, with their identifiers, then the queued
// ones, in order; identifiers still held are never handed out anew.
// Store.OnEnd reports a kept session that ends without its device, so
// its routes can go.
package session
