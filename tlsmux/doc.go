// Package tlsmux terminates TLS for dualgate's secure listener. It accepts TCP
// connections, runs the TLS handshake, and hands each handshaken *tls.Conn
// over to an event loop that serves it without a goroutine. It knows nothing
// of MQTT.
//
// # The handshake path
//
// A Server runs every handshake on one of at most MaxHandshakes worker
// goroutines, started when a connection is queued and ended when the queue
// is empty, so that a gateway at rest keeps no stack grown by handshakes.
// The workers are the handshake concurrency limit: an accepted
// connection waits in a FIFO queue for a free worker, and one that waits longer
// than HandshakeQueueTimeout is closed (counted in Stats.HandshakesRefused) by
// a single reaper goroutine with one timer, whatever the workers are doing.
// The accept loop never blocks on a worker. A handshake runs under a deadline
// (HandshakeTimeout) that is cleared when it succeeds.
//
// Every tls.Conn the Server makes runs over a Transport. After a
// successful handshake the Server gives the connection to Config.Handoff,
// on the worker; the stack a handshake grows (the certificate
// verification, the key exchange) stays with the worker, and goes when the
// worker ends. Handoff keeps no goroutine: it detaches the Transport
// (Transport.Detach collects what the accepted connection's wrappers read
// ahead) and moves the socket to an event loop, which then lends the
// Transport the bytes it reads and reads the tls.Conn until ErrWouldBlock,
// a temporary net.Error after which crypto/tls keeps a partial record and
// carries on. That is how dualgate serves TLS devices.
//
// # What an idle connection keeps
//
// The Server keeps nothing of a connection it handed over (the owner
// closes it). The handshake state, ConnectionState and anything the
// handshake needed are dropped when the worker returns; ConnInfo is built
// once and handed over, and the owner decides what to keep. There is no
// bufio, and the read and handshake buffers crypto/tls keeps inside
// tls.Conn (sized by the largest record and handshake message received so
// far: after the handshake, the ClientHello) are given back by
// ReleaseBuffers, which the owner calls between reads. What remains is the
// tls.Conn with its record-layer cipher states, the Transport and the
// socket; the parsed client certificate is dropped after the handshake
// (ReleasePeerCertificates), what it proves being in ConnInfo.
//
// # Configuration
//
// ServerTLSConfig builds the product's default tls.Config: TLS 1.2 and 1.3,
// session resumption on, optional client-certificate verification, optional
// X25519-only key exchange (Go's default hybrid X25519MLKEM768 costs about
// 2.3 KB more on the wire per full handshake). CertReloader swaps the server certificate without dropping
// connections (on SIGHUP or when the files change). Sessions keeps session
// states on the server, in a SessionStore (MemorySessions, or a store
// shared by gateways), and gives devices a 16-byte id as ticket, taken once;
// TicketKeys instead shares the keys of stateless tickets among gateways
// through a file, so a device resumes its session on any gateway behind the
// load balancer.
//
// # Lifecycle
//
// Server follows net/http.Server: Serve(listener) until Shutdown or Close,
// accept errors retried with backoff, ErrServerClosed afterwards. Shutdown
// and Close end what is the Server's (the listeners, and the connections
// not handed over yet), not the connections handed over.
package tlsmux
