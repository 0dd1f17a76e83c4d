// Package session is dualgate's one MQTT server state machine.
//
// Both transports feed it: the plain listener from its gnet event loop, the
// TLS listener from each connection's goroutine. A Session never does I/O by
// itself: it takes bytes (Feed), decodes them with mqttcodec, acts, and writes
// encoded packets through the Transport it was built with. Everything about
// MQTT behaviour toward devices lives here, once: CONNECT and CONNACK,
// authentication, keepalive and CONNECT deadlines, subscriptions, QoS 1 and 2
// flows, topic aliases, takeover, will messages, persistent sessions, and the
// delivery of commands and control instructions.
//
// # Ownership
//
// A Session's fields belong to its owner: the event loop of a plain
// connection, or the goroutine holding the TLS connection's mutex. Every
// method except Exec, ClientID and Subscriptions must be called by the owner.
// Other goroutines reach a session with Exec, which the transport runs in
// owner context (gnet's EventLoop().Execute, or under the TLS mutex).
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
package session
