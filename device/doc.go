// Package device is the device side of dualgate: an MQTT client that stays on
// cheap plain TCP while idle and moves to TLS only while something secret
// must travel, following the gateway's reconnect instructions.
//
// A Device connects on plain TCP, sends the query (on control.QueryTopic)
// with every plain CONNECT, and hands every command the
// gateway delivers to Config.OnCommand, subscribed or not. When the gateway
// has a secure command for it, it is told to reconnect over TLS: an MQTT
// 3.1.1 device by a PUBLISH on $dualgate/control with a JSON instruction, an
// MQTT 5 device by a DISCONNECT with reason code 0x9C (Use another server)
// and a Server Reference "tls://host:port". The Device disconnects cleanly,
// reconnects in the named mode at the named address (or at its configured
// endpoint for that mode when the instruction names none it can use); the
// gateway then delivers over TLS, without a query. After a quiet period the
// gateway sends it back to plain the same way. The session is kept across
// moves (Config.SessionExpiry): the Device subscribes to
// Config.Subscriptions on its first connection and again only where the
// gateway kept no session.
//
// # Rules the Device keeps
//
//   - Anti-downgrade: an instruction to use plain is obeyed only when it
//     arrived over TLS. One arriving over plain is never obeyed; it is
//     reported as EventDowngradeIgnored.
//   - PublishSensitive writes only to a TLS connection: it moves the device
//     to TLS first when it is on plain, and never falls back.
//   - A command is acknowledged (PUBACK) only after OnCommand returned, so a
//     device that crashes inside OnCommand gets the command again.
//   - After a lost connection the Device reconnects in the mode of the last
//     instruction, after a delay drawn at random between zero and an
//     exponentially growing bound (Config.Backoff: 0.5 s doubling to 60 s by
//     default), so a fleet does not reconnect all at once after a gateway
//     restart. A reconnect that obeys an instruction is immediate.
//   - With Config.Secret set, every CONNECT carries a fresh time-bound
//     HMAC token (user name: the client id): on plain an unbound v1 token
//     (control.MakeToken with a new random nonce), over TLS a v2 token bound
//     to that TLS connection by its exported keying material
//     (control.MakeBoundToken), which a copy cannot replay anywhere else and
//     which proves the client id for secure commands.
//   - With Config.CertFile and KeyFile set, every TLS handshake presents
//     that client certificate, which must name the client id (subject CN or
//     URI SAN urn:dualgate:client:<id>; New checks it). It is the device's
//     proof of its client id under the gateway's default --secure-identity
//     cert: without it (or a bound token under --secure-identity token) the
//     device may use TLS, but the gateway writes no secure command to it. A
//     resumed TLS session keeps the proof.
//
// # TLS costs
//
// The TLS client configuration keeps one session cache for the Device's
// whole life, so an upgrade after the first one resumes the TLS session
// (about 880 bytes less on the wire than a full handshake) unless
// Config.DisableResumption is set. Config.CurvePreferences chooses the key
// exchange groups: left empty, Go's default leads with the post-quantum
// hybrid X25519MLKEM768; []tls.CurveID{tls.X25519} makes every full
// handshake about 2.3 KB smaller, which counts on a metered cellular link,
// at the price of no protection against an adversary who records traffic
// now and breaks X25519 later with a quantum computer. The default stays
// the hybrid: a command's secrecy should outlive the device, and the
// hybrid's 2.3 KB per upgrade is paid only while a secure command travels,
// not per keepalive; a device on a tight data plan whose commands lose
// their value within years opts into X25519.
//
// The Device also spends few segments (each costs 52 bytes of headers and
// usually an acknowledgement): each MQTT 5 packet leaves in one write, the
// last TLS handshake flight leaves with the CONNECT, the plain query rides
// in the CONNECT's segment as QoS 0, no query is sent on TLS, no TLS
// close_notify is sent (MQTT's DISCONNECT ends the session), a server's
// DISCONNECT (the MQTT 5 reconnect instruction) is answered only by the
// close, not by a DISCONNECT the server has closed too early to read, that
// close is a reset once the gateway has closed its side and acknowledged
// everything (Linux: the gateway's acknowledgement of a FIN is saved, and
// nothing is left to lose), the kernel's acknowledgements are delayed to
// ride on the next packet (TCP_QUICKACK off, Linux; with the default
// Config.Dial from before the connect, so that TCP's last handshake
// segment rides on the first write), and, without a Config.TLS of your
// own, only TLS 1.3 is offered (a TLS 1.2 offer adds its cipher suites to
// every ClientHello). The transport pieces are shared with dualbench's devices
// (internal/devwire). docs/benchmarks.md §8 has the figures.
//
// # Goroutines and callbacks
//
// One goroutine owns the connection: it dials, obeys instructions, and
// calls OnEvent and OnModeChange, one call at a time; they must return
// promptly and must not call Stop. OnCommand runs on the MQTT client's
// receive goroutine, one command at a time in arrival order; it must return,
// since the acknowledgement waits for it. It may Publish a reply, but
// while it runs further commands wait (and on MQTT 3.1.1 so may the
// acknowledgements read behind them), so long work belongs on another
// goroutine. Stop ends every goroutine the Device started.
//
// The package speaks MQTT 3.1.1 through github.com/eclipse/paho.mqtt.golang
// and MQTT 5 through github.com/eclipse/paho.golang, chosen by
// Config.Version, with the same API. The clients' own reconnection is off:
// the Device decides where and how to reconnect.
package device
