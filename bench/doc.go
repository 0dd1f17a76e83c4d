// Package bench measures an MQTT server from outside: it holds many idle
// client connections, reads the server's memory from /proc by PID, reads the
// kernel's TCP counters of its own sockets, and reports latency histograms
// and least-squares fits.
//
// It speaks MQTT through the project's codec (mqttcodec) and never imports the
// gateway: dualgate, Mosquitto or any other broker is measured the same way.
//
// # Processes
//
// One process may hold at most 20,000 open files on the machines this tool is
// made for, so a run of N connections is spread over worker processes, each
// holding at most [FleetConfig.PerWorker] connections. The parent (see
// [RunConn] and [RunMem]) starts every worker as a child process (the hidden
// "worker" sub-command of dualbench, served by [RunWorker]), writes the
// worker's [WorkerSpec] as one JSON line on its stdin, and reads
// [WorkerEvent] JSON lines from its stdout: progress while connecting, "ready"
// once every connection has been attempted, and "final" with encoded latency
// histograms after the worker has disconnected. A "stop" line on stdin, or
// end of file on stdin (the parent died), makes a worker disconnect and exit.
//
// # Clients
//
// Plain connections are driven by one gnet client event loop per worker: no
// goroutine and no read buffer per connection. Each socket is dialed with a
// bound source address (127.0.0.2, 127.0.0.3, ... spread the ~28k ephemeral
// ports per source address), then enrolled into the event loop, which sends
// CONNECT and waits for CONNACK. At most [ClientConfig.InFlight] connections
// are between dial and CONNACK at once, so that a connect storm does not
// overflow the server's accept queue (a dropped SYN costs a second). A
// periodic sweep sends PINGREQ before each keepalive elapses (the server's
// keepalive when an MQTT 5 CONNACK sets one) and enforces the CONNACK
// deadline; there is no timer per connection. TLS connections use crypto/tls with one goroutine per
// connection, optionally resuming sessions from a cache shared by the worker.
//
// # Memory figures
//
// [ProcFS] reads VmRSS from /proc/PID/status, Rss and Pss from
// /proc/PID/smaps_rollup, the number of open descriptors, and the kernel's
// socket-related slab caches from /proc/slabinfo (root only; see
// [SocketSlabCaches] for the caches counted). On loopback both ends of every
// connection live in the same kernel, so the slab delta of N connections
// covers 2N sockets; reports give it per connection and per socket.
//
// # Wire bytes
//
// [ReadTCPCounters] reads TCP_INFO of a socket and [WireModel] turns its
// payload and segment counts into IP-level bytes (52 header bytes per segment
// on loopback with TCP timestamps).
package bench
