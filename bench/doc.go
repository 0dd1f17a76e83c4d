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
// [RunConn], [RunMem], [RunUpgrade] and [RunSavings]) starts every worker
// as a child process (the hidden "worker" sub-command of dualbench, served
// by [RunWorker]), writes the worker's [WorkerSpec] as one JSON line on its
// stdin, and reads [WorkerEvent] JSON lines from its stdout: progress while
// connecting and holding, "ready" once every connection has been attempted,
// and "final" with encoded latency histograms after the worker has
// disconnected. A "stop" line on stdin, or end of file on stdin (the parent
// died), makes a worker disconnect and exit.
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
// # Devices
//
// With [ClientSpec.Device] every connection of a pool is a dualgate device
// ([DeviceConfig], docs/protocol.md): it sends the query with each plain
// CONNECT and spends bytes as the SDK does (§4.1), follows reconnect instructions (the 3.1.1 control message and the
// MQTT 5 DISCONNECT 0x9C with a Server Reference) to TLS and back to plain,
// keeps its own TLS session to resume, acknowledges commands, and times the
// ones whose payload carries a stamp ([StampCommand]) from the stamp to its
// PUBACK. A device on plain is a gnet connection like any idle client; only
// while it moves or sits on TLS does it have a goroutine.
//
// # Wire bytes
//
// [ReadTCPCounters] reads TCP_INFO of a socket and [WireModel] turns its
// payload and segment counts into IP-level bytes (52 header bytes per segment
// on loopback with TCP timestamps). [RunTraffic] drives one device step by
// step through a dualgate gateway and reads the counters of its own sockets
// between the steps (an accepted socket's counters miss the SYN-ACK):
// keepalive cycles on plain and TLS, commands, short sessions, and upgrade
// cycles (instruction on plain, the TLS connection with the command and the
// instruction back, the new plain connection), full and resumed, for each
// key exchange; then bytes per device per day and the break-even number of
// secure commands a day.
//
// # Latency through the upgrade
//
// [RunUpgrade] holds devices on plain and sends them secure commands through
// the gateway's HTTP API in rounds; each device times its commands (POST to
// PUBACK, with HdrHistogram), the gateway's own record of each command is
// read back, and GET /v1/stats is sampled for the devices by transport over
// time.
//
// # Savings
//
// [RunSavings] runs the same fleet three ways in one invocation, each server
// started fresh and measured by PID: dualgate on demand (all on plain, a
// fraction upgraded for one secure command, measured while on TLS and after
// the gateway sent them back), dualgate with every device on TLS, and a peer
// broker (Mosquitto, with the gateway's certificate) all on TLS. It reports
// memory per connection, the fleet ratios, and device bytes per day side by
// side.
//
// # Publishing
//
// [RunPub] measures publish throughput and latency, as emqtt-bench's pub
// and sub do: a few publishers, each a plain goroutine-driven connection,
// send at a rate (QoS 0, 1 or 2, an in-flight window bounded by the
// server's Receive Maximum) to one server, and one subscriber receives on
// the same or another server (through a gateway to its broker). Every
// payload starts with its send time on this process's monotonic clock,
// its publisher and its sequence number, so the subscriber counts losses
// and duplicates and records the end-to-end latency.
//
// # Reports
//
// With an output directory every measurement writes report.md, report.json
// and PNG charts (gonum/plot), and compares its figures with dualgate's
// goals ([Goal]): benchmarks, reported met or missed, not tests.
package bench
