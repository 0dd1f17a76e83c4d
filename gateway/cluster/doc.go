// Package cluster is what the gateways of a cluster share in Redis beside
// the pending commands: a registry of which device is connected to which
// node, how (plain or TLS, MQTT 3.1.1 or 5) and with which session epoch;
// the nodes' heartbeats and advertised addresses; and an inbox per node
// through which nodes ask each other to reconcile a device's commands or
// to close a session another node has taken over. Each node still owns its
// sockets: cross-node work is a message to the owning node.
//
// # Nothing waits on Redis
//
// Online and Offline (at CONNECT and at disconnect) only put the write in
// a queue, one write per device: a second write of a device still queued
// replaces the first if its epoch is higher (at equal epochs, the
// disconnect wins), so a device that flaps costs one write. A writer
// goroutine sends the queue in batches of up to BatchSize, FlushDelay
// after the first write or at once when a batch's worth is queued: a
// batch is one round trip, one EVALSHA of a script that applies every
// write of the batch. 10,000 CONNECTs in a burst are about twenty round
// trips (TestOnlineBatches). A script holds Redis while it runs: a batch
// of 500 about 2.5 ms, 4 to 6 ms when every write is a takeover (on a
// shared 2-core machine: 5 and 8 to 12 microseconds per write), which
// bounds the pause other clients of the Redis see during a reconnect
// storm. NotifyAsync queues events the same way, sent in the
// same pipeline. The queue is bounded (MaxPending devices, MaxNotes
// events); when full, the oldest write is dropped and counted
// (Stats.Dropped). While Redis fails, the writer retries the batch with a
// backoff (up to MaxBackoff) and the queue keeps coalescing; every write
// is idempotent, so a batch whose answer was lost is simply sent again.
// Reads (Get, List, LiveNodes, Notify) go to Redis within Options.Timeout
// and fail with ErrUnavailable past it; they are for goroutines that may
// wait (the API, the dispatcher), never for an event loop.
//
// # Epochs
//
// A session's epoch orders the sessions of one client id: the newer
// connection wins. NextEpoch needs no round trip: it is a hybrid logical
// clock, the wall clock's Unix nanoseconds or one more than the last epoch
// handed out or seen, whichever is larger. On one node epochs strictly
// increase, whatever the wall clock does. Across nodes, a device that
// moves from node A to node B gets a higher epoch on B unless B's clock is
// behind A's by more than the time between the two CONNECTs (a TCP and an
// MQTT handshake at least; usually the keepalive or a reconnect back-off,
// seconds). With NTP the skew is milliseconds. If it happens anyway, the
// result is still consistent: Redis keeps the highest epoch, the Online
// that loses is refused by the script and its own node is sent a Takeover
// carrying the winning epoch, so exactly one session survives (possibly
// the older by real time). Every node raises its clock to the epochs it
// reads (Get, Takeover events), so the device's next CONNECT on B wins;
// an epoch more than a minute ahead of its own clock it does not follow.
// Epochs of two nodes that are equal (same nanosecond) are ordered by node
// name. An INCR per CONNECT would order by arrival in Redis, but the
// CONNECT would have to wait for it, or the node would learn its epoch
// only after the session started.
//
// # Keys
//
// PREFIX is Options.Prefix (the gateway's --cluster-prefix, "dg"). A
// client id is a hash tag, after its length, as the command store names a
// client's keys: a device's record sits in the same Redis Cluster slot as
// its pending commands.
//
//	PREFIX:LEN:{CLIENT}:dev  string, the device's record:
//	                         EPOCH(20 digits) NODE "|" MODE(p|t) PROTOCOL "|" SINCE(ms)
//	PREFIX:idx:NODE          zset, score 0, member client id: the devices
//	                         NODE holds, in byte order (List pages on it)
//	PREFIX:alive:NODE        hash plain, tls, since; expires NodeTTL after
//	                         the last heartbeat (every NodeTTL/3): a node is
//	                         live while it exists
//	PREFIX:nodes             zset, member node name, score its last
//	                         heartbeat (ms): the nodes to look at, live or dead
//	PREFIX:inbox:NODE        stream, MAXLEN ~ InboxLen: the events for NODE,
//	                         fields k (w|t), c (client id), e (epoch), f (sender)
//
// PREFIX:node:NODE is not this package's: it is the lease on the node's
// name that the gateway holds (a string), which keeps two running
// gateways from using one name.
//
// A record is a string rather than a hash: one GET, and the epoch first at
// a fixed width so the scripts compare it without parsing the rest (two
// halves of 10 digits, as Lua numbers are exact only below 2^53). An idle
// connected device (17-byte client id) costs about 270 bytes of Redis
// memory (BenchmarkIdleDeviceMemory): its record about 120 (MEMORY
// USAGE), its member of the node's index about 125, the rest the key
// table. The index is a sorted set, not a set, so that List pages by
// client id with ZRANGEBYLEX from the last id returned and lists every
// device exactly once (SSCAN may return a member twice); listing without
// an index, by SCAN over every device key, would save those 125 bytes and
// cost a pass over all the devices of all the nodes per listing.
//
// The scripts touch a device's key together with node keys (its index,
// another node's index and inbox, a heartbeat), which are in other slots,
// and build the names of keys they learn from a record. On one Redis
// primary (standalone, or Sentinel) that is one script per batch. On a
// Redis Cluster (the client a *redis.ClusterClient) every node key is
// named PREFIX:{PREFIX:n}:... (one slot for all node keys), and a batch is
// two steps: deviceScript per hash slot of the batch's devices (pipelined,
// one round trip per primary) decides and writes the records, with the
// live nodes the heartbeat last read; then nodeScript, on the node keys'
// slot, updates the indexes and sends the Takeover events (it checks each
// previous node's heartbeat itself). A node step Redis did not take is
// kept (Member.backlog) and sent with the next node step. Get, List and the
// sweep read the node keys and the records in separate round trips
// (TestClusterOnlineBatches, TestClusterTakeoverAcrossNodes,
// TestClusterNodeDeath).
//
// # The batch script
//
// For each write of a batch it reads the device's record. Online writes
// the record unless a live node holds a newer session, adds the device to
// this node's index and, if the record named another node, takes it out
// of that node's index and, if that node is live, adds Takeover{client,
// new epoch} to its inbox: node A learns that node B took its device in
// the round trip of B's write, and closes its older session within
// milliseconds (TestTakeoverAcrossNodes). An Online that loses (a newer
// session on a live node) writes nothing and adds Takeover{client, newer
// epoch} to this node's own inbox. Offline deletes the record if it is
// this node's with this epoch or an older one; a newer record is kept
// (TestEpochOrdering).
//
// # Liveness and dead nodes
//
// Get and List treat a record whose node is not live as offline: a node
// that dies takes its devices offline NodeTTL after its last heartbeat
// (TestNodeDeath), and one that closes (Close), at once. The records stay
// until a live node's heartbeat sweeps them, a page of 500 per dead node
// per heartbeat, checking the node is still dead. A node that starts
// sweeps the records left by its previous run under the same name (older
// than its first epoch): it holds no sessions yet.
//
// # Inbox
//
// Each node reads its stream with XREAD BLOCK from the last id it read,
// kept in memory. It starts from the stream's end as it is when the node
// joins, not from a stored position: a node that starts holds no
// sessions, so a Takeover sent to its previous run concerns a session
// that is gone, and a command waiting for a device is in the store, found
// when the device connects or queries. The writer waits until the reader
// knows the end, so no event of this run is skipped. Delivery is at least
// once (a batch sent again may repeat a Takeover); the store and the
// node's own sessions are the truth, so a receiver checks before acting.
// Events wait in the stream while the receiver does not read Events.
//
// # What each Redis failure loses
//
//   - Redis unreachable or hung: nothing is lost while the queue has room.
//     Writes wait in memory (one per device), events of NotifyAsync too;
//     reads fail within Timeout; the heartbeat is not renewed, so after
//     NodeTTL the other nodes (if they still reach Redis) see this node's
//     devices offline until its next heartbeat. A full queue drops the
//     oldest writes (counted): those devices' records stay as they were
//     until their next CONNECT or disconnect.
//   - Redis restarted with its data (append-only file): nothing; the
//     scripts are loaded again, the writer and reader resume.
//   - Redis restarted without its data, or failed over to a replica that
//     had not received the last writes: the registry loses those records
//     and the events not yet read. The heartbeat notices its key gone and
//     calls Options.OnRejoin: the gateway calls Online again for each
//     device it holds. Until then those devices read as offline (a command
//     for them waits in the store until they query or reconnect).
//   - This node crashes: its queued writes are lost (the devices it held
//     are disconnected anyway); its records read as offline once its
//     heartbeat expires.
//
// # Wiring
//
// At startup, after the gateway's lease on its name: Join (it returns at
// once), and a goroutine ranging over Events that hands each event to
// the loop owning the session (Takeover: close the session of ClientID if
// its epoch is older; CommandWaiting: reconcile the device's pending
// commands from the store). At CONNECT, on the event loop: epoch :=
// NextEpoch(), kept in the session, then Online(Record{...}). At
// disconnect: Offline(clientID, epoch). When a command arrives for a
// device not connected here: Get, then NotifyAsync(node,
// CommandWaiting{...}) (or Notify, from the API's goroutine). At SIGTERM,
// after the sessions are closed (their Offline queued): Close with the
// drain's deadline, which writes the queue and removes the heartbeat.
package cluster
