// Package bridge connects dualgate to an upstream (cloud) MQTT broker such
// as EMQX, HiveMQ or Mosquitto, over a few connections instead of one per
// device.
//
// A Bridge holds a small pool (Config.PoolSize, default 2) of MQTT 3.1.1
// connections made with paho.mqtt.golang, named ClientIDPrefix-0 ...
// ClientIDPrefix-N-1, with persistent sessions (clean session off): what
// the broker queued for the gateway survives a broker restart, and QoS 1
// traffic is resent both ways after a reconnect. paho reconnects with
// exponential backoff up to Config.ReconnectMax.
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
//   - QoS 1 (and 2, sent upstream at QoS 1): the device's PUBACK (PUBREC)
//     is sent only once the broker acknowledged. While the broker is
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
// # paho's store
//
// The bridge gives paho a Store of its own rather than paho's MemoryStore
// or FileStore. paho deletes a stored publish when its PUBACK arrives, and
// that is how the bridge learns the broker has a message: paho's tokens
// cannot tell, since a resend after a reconnect completes the original
// token before the broker answers. The store also lists publishes in the
// order they were sent, which a resend must keep (MemoryStore lists them
// in map order, FileStore by file modification time; FileStore also writes
// a file per message and panics on an I/O error). It need not be durable:
// a message it holds has not been acknowledged to its device.
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
// QoS 1 messages are acknowledged to the broker when Deliver returns.
//
// Retained messages: every Subscribe, even for a filter already held,
// sends a SUBSCRIBE upstream, so that the broker sends the filter's
// retained messages again [MQTT-3.8.4-3]. A broker marks retained only
// messages sent because of a SUBSCRIBE [MQTT-3.3.1-9], so each retained
// message that arrives is attributed to the subscribers whose SUBSCRIBE
// caused it and handed to Config.DeliverRetained with them alone: devices
// already subscribed do not get it twice. Subscribers arriving before the
// SUBSCRIBE is sent share it. Limits: a retained message is attributed only
// within Config.RetainedWindow of the SUBACK; the copies the broker sends
// when the bridge subscribes again after a reconnect are dropped (the
// devices had them); an MQTT 3.1.1 broker does not say which subscription
// a message answers, so when two new subscriptions of overlapping filters
// are pending at once, each matching copy goes to one of them in turn.
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
// again (an MQTT 3.1.1 broker resends only on a new connection). An error
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
// broker session, so that subscriptions of a previous run do not linger;
// devices subscribe again when they reconnect. Connection 0 keeps its
// session when commands are on: commands the broker sent and the gateway
// had not accepted are sent again after a gateway restart.
//
// # Observability
//
// Stats and Ready give the state for /readyz and /v1/stats. Logs about
// single messages go through a sampler (5 identical lines a second, then
// one in 1000).
package bridge
