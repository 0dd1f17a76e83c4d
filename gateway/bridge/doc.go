// Package bridge connects dualgate to an upstream (cloud) MQTT broker such
// as EMQX, HiveMQ or Mosquitto, over a few connections instead of one per
// device.
//
// A Bridge holds a small pool (Config.PoolSize, default 2) of connections
// named ClientIDPrefix-0 ... ClientIDPrefix-N-1, with persistent sessions:
// what the broker queued for the gateway survives a reconnection, and QoS 1
// and 2 traffic is resent both ways after a reconnect. They reconnect with
// exponential backoff up to Config.ReconnectMax.
//
// # Protocols
//
// The bridge speaks MQTT 5 (Config.Protocol "5", the default) with
// eclipse/paho.golang, or MQTT 3.1.1 ("3.1.1") with paho.mqtt.golang.
// With "5", a broker that refuses the MQTT 5 CONNECT as an unsupported
// protocol version (CONNACK 0x84, or the 3.1.1 code 0x01) makes the whole
// bridge speak 3.1.1 from then on, logged once. Bridge.Protocol and
// Stats.Protocol tell which is in use ("" before the first CONNACK).
//
// Both sit behind one internal interface, conn: connect, publish with the
// broker's answer learned per message in the order sent, subscribe and
// unsubscribe with a result per filter, received messages acknowledged by
// the bridge when it is done with them. The lanes, the buffer, the spill,
// the subscription table and the commands are written once against it.
//
// MQTT 5 uses paho's Client directly, not autopaho: a paho.Client is one
// network connection, and the lane's own loop (the one that already made
// the first 3.1.1 connection) reconnects it with backoff, reads the raw
// CONNACK (for the fallback, Shared Subscription Available, Subscription
// Identifier Available, Receive Maximum) and keeps one paho session state
// across connections. autopaho would hide the Client whose asynchronous
// publish the bridge needs, and its own queue would be a second buffer
// beside the bridge's. The session is persistent: Clean Start off and a
// Session Expiry Interval of 0xFFFFFFFF (never), as clean session off in
// 3.1.1; the connections that start from a clean session (see Restarts)
// send Clean Start on their first connection.
//
// # Uplink: device to broker
//
// The Bridge is the gateway's session.Sink. Publish never blocks. A device's
// message goes upstream on the same topic, with Config.TopicPrefix in
// front. Which topics a device may publish on (its own space, never the
// command space) is the gateway's topic authorization, package acl, which
// decides before a message reaches the Bridge.
//
// Devices are spread over the pool by client id, so one device's messages
// always travel on one connection, in order.
//
//   - QoS 1 and 2, sent upstream at the device's QoS: the device's PUBACK
//     (PUBREC for QoS 2) is sent only once the broker acknowledged: its
//     PUBACK, or for QoS 2 its PUBCOMP (the end of the exchange, which is
//     what both clients report; the broker has the message from its
//     PUBREC on, so this costs one round trip of latency, not safety). A
//     broker's failure code (MQTT 5: a PUBACK or PUBREC >= 0x80, e.g. 0x87
//     not authorized) is handed to the device as the reason. A broker
//     whose CONNACK gives a Maximum QoS below the message's gets it at
//     that QoS (at 0, written counts as taken). While the broker is
//     unreachable, messages wait in a bounded buffer and go out in order
//     when it returns. After a reconnect, the publishes the broker had not
//     acknowledged are resent first, in their order, before anything new.
//   - When the buffer is full, the device is pushed back: its ack gets
//     0x97 (quota exceeded) at once. Nothing is dropped silently.
//   - QoS 0: sent when the device's connection to the broker is up,
//     dropped and counted by reason (Stats.DroppedQoS0 and the Dropped*
//     fields) when it is down, when the device already holds its share
//     of the memory buffer (Config.DeviceBufferMessages and
//     DeviceBufferBytes, 1/16 of it by default), or when the buffer is
//     full. A device that floods thus loses its own messages, and the
//     others keep their room: no device's telemetry is dropped because
//     another publishes faster than the broker takes.
//
// On MQTT 5 the message's properties (payload format, content type,
// response topic, correlation data, user properties in order) go with it,
// and its Message Expiry Interval is what is left of it (from
// session.Message.Expires) when it is handed to the client; a resend
// after a reconnect keeps the interval of the first send. A message that
// expired before it could be sent is not sent: it is acknowledged to the
// device as taken (the broker would have dropped it) and counted
// (Stats.Expired). MQTT 3.1.1 carries no properties.
//
// Publish runs on the publishing device's event loop, so it never
// touches the disk and never waits on the network: see the spill writer
// below.
//
// # The buffer and the spill files
//
// The buffer holds up to Config.BufferMessages messages and
// Config.BufferBytes bytes in memory. Past that, with Config.BufferDir set,
// QoS 1 messages spill to append-only segment files there (up to
// Config.SpillMessages and Config.SpillBytes, and leaving
// Config.SpillKeepFree bytes free on the file system, which the command
// store may share). Past a bound, or on a full disk, the newest publish is
// refused with QuotaExceeded and counted (Stats.SpillFull); a failed
// write leaves a segment that is never appended to again, so nothing
// after it depends on it. An append-only log suits a
// first-in, first-out buffer: writes and reads are sequential, no
// transaction or fsync is paid per message, and a segment file is deleted
// as soon as the broker acknowledged all of it, so the disk is given back
// (a B+tree such as bbolt would pay copy-on-write pages and a sync per
// commit and never shrink its file).
//
// The spill writer, a goroutine of the Bridge, does every spill write:
// Publish only puts the message in its lane's queue, in its place, with
// its bytes in a bounded hand-off (Config.SpillQueue and
// SpillQueueBytes), and the writer moves the bytes to disk. If the sender
// reaches the message first, it goes from memory. When the hand-off is
// full (the disk is slow), the publish is refused with QuotaExceeded at
// once (Stats.HandoffFull): a device is pushed back, never an event loop
// made to wait. A spill refusal (a cap, a full disk) is answered by the
// writer, and the message is skipped in the queue.
//
// What survives a gateway restart: a buffered message has not been
// acknowledged to its device, so the device still owes it and sends it
// again after reconnecting (QoS 1 retry); the spill files are not synced
// per message for that reason. At Stop, everything still waiting (memory and
// disk) is rewritten into one segment and fsynced, acknowledged to the
// devices, and sent at the next Start before anything new. After a crash,
// the segments on disk are replayed whole: messages the broker had already
// acknowledged may go again (at least once, never lost).
//
// A spill record carries the QoS (2 included), and, when the message has
// properties or an expiry, both in an extension flagged in the record's
// flags byte: records written before it are read as they were.
//
// # Acknowledgements per message
//
// MQTT 5: the bridge publishes with paho.golang's PublishWithOptions and
// PublishMethod_AsyncSend, which returns once the publish is in paho's
// session state, without a goroutine waiting per message. A QoS 1 or 2
// publish without properties and not retained, the common case, skips
// PublishWithOptions (publishPlain): it is added to the same session
// state, then encoded with the gateway's codec and written whole under
// paho's write lock, without paho's context, channel and buffers per
// publish. The session
// state is paho's in-memory State wrapped (track): its AddToSession gives
// the State, for a publish, one response channel per connection instead
// of the one paho made for the call (which nobody reads after an
// asynchronous send), and records which entry the packet identifier
// stands for; the wrapper's PacketReceived empties the channel right
// after the State filled it and answers the devices there, on paho's
// reading goroutine (no hand-off to another goroutine per answer). The
// channel holds MaxInflight answers and the lane never has more
// publishes out, so the State, which sends while holding its lock, never
// waits on it. paho resends what its State holds, in the order it was
// stored, while it handles the CONNACK, before any new publish can be
// written; when the broker kept no session (Session Present 0), the State
// forgets it, and the wrapper puts the entries back at the head of the
// queue. This was preferred to the blocking Publish (a goroutine per
// message in flight) and to autopaho's queue (a second buffer). A
// publish the broker closes the connection on is resent at every
// connection, the lane's later messages behind it: a connection lost
// soon after it was made counts against the oldest publish in flight on
// it (track.ConnectionLost; on MQTT 3.1.1 each resend of the oldest,
// outbox.Get), and at maxResends the publish is given up and refused to
// its device. paho's State has no call to drop a publish: the wrapper
// hands it a PUBACK 0x80 for it between connections (track.giveUp). A
// publish over the broker's Maximum Packet Size is never sent (fits).
// paho writes each packet on the
// caller's goroutine, a system call each; the connection's writes go
// through a goroutine of its own (flushConn) that sends what accumulated
// in one call, so the sender prepares the next publishes meanwhile (MQTT
// 5 QoS 1 uplink went from about 50,000 to about 80,000 msg/s on the
// benchmark), and its reads go through a buffer. The sender corks that
// writer while it hands paho a burst of publishes (up to maxBurst, or
// until the queue is empty or the broker's window full), so the burst
// leaves in one system call and the writer is woken once per burst.
// While publishes are in flight a burst starts only when at least two
// may go (minBurst): with the broker's window full, sending one publish
// per acknowledgement keeps every hop at one message per system call.
// MQTT 3.1.1: paho.mqtt.golang writes each packet on its own goroutine, a
// system call each; its connection goes through a flushConn too (no
// corking: the sender does not write).
//
// The bridge acknowledges the broker's messages itself once handled: the
// wrapper's Ack, which paho calls as soon as its handler returned, does
// nothing, and the receiver calls the State's Ack when Deliver or
// SubmitCommand returned, on the connection the message came on (after a
// reconnect the broker sends it again). paho's manual acknowledgement
// mode was not used: it sends acknowledgements on a timer (50 ms by
// default) and holds all of them behind one left unacknowledged, such as
// a command SubmitCommand failed on.
//
// MQTT 3.1.1: the bridge gives paho.mqtt.golang a Store of its own
// rather than paho's MemoryStore or FileStore. paho deletes a stored publish when its PUBACK arrives, and
// that is how the bridge learns the broker has a message: paho's tokens
// cannot tell, since a resend after a reconnect completes the original
// token before the broker answers. The store also lists publishes in the
// order they were sent, which a resend must keep (MemoryStore lists them
// in map order, FileStore by file modification time; FileStore also writes
// a file per message and panics on an I/O error). It need not be durable:
// a message it holds has not been acknowledged to its device. For QoS 2,
// paho replaces the stored PUBLISH with its PUBREL when the PUBREC comes;
// the store keeps the entry and its place, and Del of the PUBREL (the
// PUBCOMP) is the acknowledgement.
//
// # Downlink: broker to devices
//
// Subscribe and Unsubscribe keep a reference count per filter: the first
// device subscribing to a filter makes the bridge subscribe upstream, the
// last one leaving (unsubscribe, or the gateway's disconnect handling)
// unsubscribes. All device subscriptions live on the last connection of
// the pool, so that a broker that sends one copy of a message per
// connection for overlapping filters (Mosquitto 2 does) sends it once;
// messages from it are handed to Config.Deliver, in the broker's order,
// for the gateway to match against its local subscriptions and fan out.
// QoS 1 and 2 messages are acknowledged to the broker when Deliver
// returns (PUBACK; PUBREC for QoS 2, paho then answers the PUBREL). On
// MQTT 5 a message keeps its QoS (up to 2), its properties (Message.Props)
// and its expiry (Message.Expires, from the Message Expiry Interval
// received). Device subscriptions are sent with No Local 0 and, when
// retained messages are attributed by identifier (below), Retain As
// Published 1, so that Message.Retained tells that a live message was
// published with retain.
//
// Subscribe's done is called once the broker's SUBACK for the filter came,
// with the lower of the requested and granted QoS (up to 2), or the
// broker's refusal code (the filter is then forgotten for the subscribers
// that asked); at once when the filter is already held, acknowledged and
// granted at least the QoS asked; and with 0x80 (UnspecifiedError, the
// closest MQTT 5 code for "no answer") when no SUBACK came within
// Config.SubscribeTimeout, the broker unreachable included (the
// subscription is still sent when the broker returns). Filters starting
// with '$', other than "$share/...", stay local: done gets the QoS at
// once.
//
// Overlapping filters: Mosquitto 2 sends an MQTT 3.1.1 client one copy of
// a message its filters match several times, but an MQTT 5 client one
// copy per matching subscription, each with that subscription's
// identifier. On MQTT 5 every device filter is its own SUBSCRIBE with its
// own Subscription Identifier, the table knows which held filters overlap
// (some topic matches both), and of the copies of one message only the
// one of the matching filter with the lowest identifier is delivered;
// identifiers grow, so a filter being added never takes the role from one
// already held. Limit: a copy in flight while the filter with the lowest
// identifier is unsubscribed may be delivered twice or, with a copy of
// the removed filter already dropped, once late.
//
// Shared subscriptions: a device's "$share/group/filter" is held upstream
// as "$share/group/" + TopicPrefix + filter, reference counted like other
// filters. The broker sends its messages to one member of the group, with
// the shared subscription's identifier: they reach Deliver with
// Message.Shared set to the device's filter, for that group only, apart
// from the copy a plain subscription gets. A copy that carries the
// identifiers of several subscriptions (a broker may send one copy for
// overlapping ones) reaches Deliver once per shared subscription, with
// Shared set, and once with Shared "" if a plain one is among them.
// paho.golang's decoder keeps only the last identifier of a PUBLISH, so
// the MQTT 5 connection reads through a small parser of the packet
// framing (subIDReader) that keeps them all; Mosquitto 2 sends one copy
// per subscription, each with one. On MQTT 3.1.1, or when the broker's
// CONNACK says Shared Subscription Available 0
// (Bridge.SharedSubscriptions), done gets 0x9E
// (SharedSubscriptionsNotSupported) and nothing is sent.
//
// Retained messages, MQTT 5 (the broker offers Subscription Identifiers
// and the pool has 2 connections or more): attribution is exact. The
// devices' subscriptions ask for no retained messages (Retain Handling
// 2). A Subscribe with retained set (the caller decides from the device's
// Retain Handling) makes a fetch: the filter is subscribed on connection 0
// with Retain Handling 0 and an identifier of its own, and the retained
// messages that come with that identifier (and the retain flag) go to
// DeliverRetained with exactly the subscribers of that fetch, never to
// earlier ones. Messages on the fetch without the retain flag (live ones;
// the fetch does not ask Retain As Published) are dropped: the devices'
// subscription brings them. The fetch is unsubscribed as soon as its
// SUBACK came: the broker has then sent, or queued for the connection, the
// retained messages it answers with (Mosquitto delivers what it queued),
// and the live traffic of the filter is not sent twice for longer than a
// round trip; its identifier attributes what is still on its way until
// Config.RetainedWindow is over. The fetches go one after another on the
// controller's goroutine, so a later fetch of the same filter is not
// undone by an earlier one's UNSUBSCRIBE. Subscribers arriving before the
// fetch is sent share it.
//
// Retained messages, MQTT 3.1.1 (and MQTT 5 without identifiers or with
// one connection): a heuristic. Every Subscribe, even for a filter
// already held, sends a SUBSCRIBE upstream, so that the broker sends the filter's
// retained messages again [MQTT-3.8.4-3]. A broker marks retained only
// messages sent because of a SUBSCRIBE [MQTT-3.3.1-9], so each retained
// message that arrives is attributed to the subscribers whose SUBSCRIBE
// caused it and handed to Config.DeliverRetained with them alone: devices
// already subscribed do not get it twice. Subscribers arriving before the
// SUBSCRIBE is sent share it. Limits: a retained message is attributed only
// within Config.RetainedWindow of the SUBACK; the copies the broker sends
// when the bridge subscribes again after a reconnect are dropped (the
// devices had them); the broker does not say which subscription a message
// answers, so when two new subscriptions of overlapping filters are
// pending at once, each matching copy goes to one of them in turn.
//
// # Commands
//
// With Config.SubmitCommand set, connection 0 holds one shared subscription
// for the command filter (default devices/{client}/commands/#, sent as
// $share/dualgate/devices/+/commands/#), so that several gateways on one
// broker each take a command once. The client id is read from the topic;
// the command is secure unless its topic matches one of
// Config.PlainAllowed. The broker's message is acknowledged only after
// SubmitCommand returned nil (the command is durable in the gateway's
// store). On any other error it stays unacknowledged: after
// Config.CommandRetry the connection is cycled and the broker sends it
// again (a broker resends only on a new connection, in MQTT 3.1.1 and 5).
// On MQTT 5 the command subscription has its own Subscription Identifier,
// so that a fetch of retained messages on the same connection covering the
// command space is not taken for commands. An error
// wrapping ErrCommandRejected drops it for good. Command messages that
// arrive through a device's subscription (a filter covering the command
// space) are dropped: commands reach devices only through the dispatcher,
// which alone knows whether the connection is TLS.
//
// A command from the broker runs once:
//
//   - A retained message on the command topic is never a command. The
//     broker sends it again at every SUBSCRIBE, so at every gateway restart
//     and reconnection: it is acknowledged, dropped and counted
//     (Stats.CommandsRetained), and logged through the sampler. A message
//     published with retain while the gateway is subscribed reaches it
//     without the flag [MQTT-3.3.1-9] and is a command like any other.
//   - Each command is stored with its Origin, the SHA-256 of its topic,
//     packet identifier and payload, in the same write as the command
//     (stored, then acknowledged). A crash or a lost connection between
//     the two makes the broker send the message again, with DUP set and
//     the same packet identifier [MQTT-4.4.0-1]: the bridge asks
//     Config.KnownCommand, and a redelivery whose Origin is known is
//     acknowledged, dropped and counted (Stats.CommandsDuplicate). A
//     message without DUP is always a new command, even with the topic and
//     payload of an earlier one: an operator may send "unlock" twice. The
//     store forgets an origin with its command, when the command's
//     retention ends.
//
// With PoolSize 1 the command subscription and the devices' subscriptions
// share the connection, and a device filter covering the command space
// makes such a command arrive twice; keep PoolSize at 2 or more.
//
// # Restarts
//
// The connection holding the devices' subscriptions (and every connection
// other than connection 0 when commands are on) starts by clearing its
// broker session (MQTT 3.1.1: a short clean-session connection first;
// MQTT 5: Clean Start on its first connection), so that subscriptions of a previous run do not linger;
// devices subscribe again when they reconnect. Connection 0 keeps its
// session when commands are on: commands the broker sent and the gateway
// had not accepted are sent again after a gateway restart.
//
// Mosquitto 2.0.11 does not restore MQTT 5 sessions from its persistence
// file: after a broker restart its CONNACK says Session Present 0. The
// bridge then sends again what it had not seen acknowledged and subscribes
// again, but what the broker took for the gateway while the bridge was
// not subscribed again is lost on the broker's side (MQTT 3.1.1 sessions
// are restored).
//
// # Observability
//
// Stats and Ready give the state for /readyz and /v1/stats. Logs about
// single messages go through a sampler (5 identical lines a second, then
// one in 1000).
package bridge
