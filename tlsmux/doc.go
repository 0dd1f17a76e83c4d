// Package tlsmux terminates TLS for dualgate's secure listener. It accepts TCP
// connections, runs the TLS handshake, and hands each handshaken *tls.Conn to
// a handler. It knows nothing of MQTT.
//
// # The handshake path
//
// A Server runs every handshake on one of MaxHandshakes long-lived worker
// goroutines. The workers are the handshake concurrency limit: an accepted
// connection waits in a FIFO queue for a free worker, and one that waits longer
// than HandshakeQueueTimeout is closed (counted in Stats.HandshakesRefused) by
// a single reaper goroutine with one timer, whatever the workers are doing.
// The accept loop never blocks on a worker. A handshake runs under a deadline
// (HandshakeTimeout) that is cleared when it succeeds.
//
// Only after a successful handshake does the Server start the connection's own
// goroutine, which calls the Handler. So the stack a handshake grows (the
// certificate verification, the key exchange) stays with the worker, and the
// long-lived goroutine of an idle connection starts small.
//
// # What an idle connection keeps
//
// Per connection the Server keeps one entry in its set of live connections
// (to close them on Close) and the goroutine running the Handler. The
// handshake state, ConnectionState and anything the handshake needed are
// dropped when the worker returns; ConnInfo is built once and handed to the
// Handler, which decides what to keep. There is no bufio, and the read and
// handshake buffers crypto/tls keeps inside tls.Conn (sized by the largest
// record and handshake message received so far: after the handshake, the
// ClientHello) are given back by ReleaseBuffers, which the Handler calls
// between reads. What remains is the handler goroutine's stack, the
// tls.Conn with its record-layer cipher states, the peer certificates of an
// mTLS client, and the socket.
//
// # Configuration
//
// ServerTLSConfig builds the product's default tls.Config: TLS 1.2 and 1.3,
// session tickets on, optional client-certificate verification, optional
// X25519-only key exchange (Go's default hybrid X25519MLKEM768 costs about
// 2.3 KB more on the wire per full handshake). CertReloader swaps the server certificate without dropping
// connections (on SIGHUP or when the files change). TicketKeys shares session
// ticket keys among gateways through a file, so a device resumes its session
// on any gateway behind the load balancer.
//
// # Lifecycle
//
// Server follows net/http.Server: Serve(listener) until Shutdown or Close,
// accept errors retried with backoff, ErrServerClosed afterwards.
package tlsmux
