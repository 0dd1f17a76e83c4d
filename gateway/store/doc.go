// Package store keeps dualgate's pending commands durably.
//
// A command is a remote-control message addressed to one device (client id).
// The dispatcher stores it before the HTTP API answers 202, and records every
// step of its delivery here, so that no command is lost across reconnects,
// gateway restarts or crashes. Store is the interface the gateway uses; Bolt
// (one bbolt file, commands.db, in the data directory) is the production
// implementation of a gateway alone, Redis the one of a cluster of gateways
// (--cluster), and Memory the in-memory one with the same semantics, for
// tests. All three pass one conformance suite.
//
// # States
//
// A command starts pending (or in the non-final status it was put with) and
// ends delivered, expired, failed or cancelled:
//
//	          put
//	           │
//	           v       instruct upgrade        ┌───────────┐
//	      ┌─────────┐ ───────────────────────> │ upgrading │
//	      │ pending │ <─────────────────────── └───────────┘
//	      └─────────┘  left without upgrading,       │
//	        │    ^     instruction retried           │
//	written │    │ connection lost                   │ written on TLS
//	        v    │ before PUBACK                     │
//	      ┌─────────┐ <──────────────────────────────┘
//	      │  sent   │
//	      └─────────┘
//	           │ PUBACK
//	           v
//	       delivered
//
//	pending, upgrading, sent ── TTL elapsed ──> expired
//	pending, upgrading, sent ── given up ─────> failed
//	pending, upgrading ──────── cancelled ────> cancelled   (never from sent:
//	                                                          it was written)
//
// Every move is checked (ErrBadTransition otherwise) and appended to the
// command's History. A move to sent counts a delivery attempt (Attempts; a
// second attempt goes out with DUP set); a move to delivered sets DeliveredAt.
// History keeps the first entry and the latest MaxHistory-1, so a device that
// keeps dropping its connection cannot grow a record without bound.
//
// # Order
//
// Pending lists a client's commands oldest first: by CreatedAt, then by ID.
// List pages through all of a client's commands, final ones included until
// pruned, in the opposite order, newest first; its cursor is a position in
// that order (time, id), so a command present for the whole listing is
// listed once, whatever is put or pruned between pages.
// IDs made by NewID sort by creation only to the millisecond, and callers may
// bring their own IDs (an upstream system's, for idempotent retries), so the
// creation time, not the ID, decides the order.
//
// # The bbolt file
//
// One read-write transaction per call, committed with fsync before the call
// returns; with Options.BatchDelay, the Puts and Transitions of concurrent
// callers share one transaction and one fsync, and each caller still
// returns only once its change is on disk. Buckets:
//
//	commands  id -> record (binary, see below)
//	pending   client id, 0x00, created (8 bytes), id -> nil   non-final only
//	expiry    expires (8 bytes), id -> nil                    non-final with a TTL
//	finished  finished (8 bytes), id -> nil                   final only
//	byclient  client id, 0x00, created (8 bytes), id -> nil   every command, for List
//	counts    status name -> count; "clients" -> clients with non-final commands
//	meta      "schema" -> layout version (2; a version 1 file gets byclient when opened)
//
// Times in keys are Unix nanoseconds, big-endian with the sign bit flipped,
// so byte order is time order. A client id never holds 0x00 (MQTT strings
// forbid U+0000), so CountPending (and the limit check of Put) is a prefix
// scan of the pending index that reads no record, Pending reads the records
// of that one client, Expire and Prune read only the commands they change,
// and Stats reads the counts bucket alone. All indexes and counts
// change in the same transaction as the record.
//
// Records use a small versioned binary encoding rather than JSON: payloads are
// arbitrary bytes (JSON would base64 them, a third larger), the record is
// never read by anything but this package, and an append-style encoder with a
// bounds-checked decoder cost about a tenth of encoding/json's time
// (BenchmarkRecord). The leading version byte leaves room to change it.
//
// # A damaged file
//
// bbolt maps the file into memory and trusts its meta pages: a file cut
// short behind them used to crash the process with SIGBUS at the first read
// of a missing page. OpenBolt first reads the meta pages with plain reads,
// checks their checksums, that the file holds every page the last
// transaction uses, and the root and freelist pages; it fails with
// ErrDamaged, naming the file and what to do, instead of mapping it. Every
// bbolt call then runs with the runtime's panic-on-fault set and a recover,
// so damage found later (a page of junk, a file cut short under a running
// gateway) is an ErrDamaged error from that call, not a crash. An existing
// file of 0 bytes is refused with ErrEmptyFile rather than initialised:
// taking it for a new store would drop the commands it held without a word.
// A new file is created under a temporary name and linked into place, so a
// crash during creation never leaves such a file behind. Check (dualgate
// store check) reads a file without changing it and reports its health,
// bbolt's page check included.
//
// # Redis
//
// Redis keeps the same records (the binary encoding above) and indexes, as
// keys under a prefix P (default "dg"). A client's keys carry its id as the
// Redis Cluster hash tag, after the id's length so that no id, whatever
// bytes it holds, can reach another client's keys:
//
//	P:<len>:{<client>}:q          zset, score 0, member time(created) id: the client's non-final commands, oldest first
//	P:<len>:{<client>}:a          zset, score 0, member time(created) id: all the client's commands, for List
//	P:<len>:{<client>}:c:<id>     string: the record
//	P:ids                          hash: id -> client id (Get and Transition know only the id; ids are unique across clients)
//	P:exp                          zset, score 0, member time(expires) id: non-final with a TTL
//	P:fin                          zset, score 0, member time(finished) id: final commands, for Prune
//	P:counts                       hash: status -> count
//	P:clients                      zset, score 0, member client id: clients with non-final commands
//	P:origins                      hash: origin -> number of commands holding it
//	P:layout                       "2" once every command has its :a member (keys written before List get theirs at open)
//
// time is 16 hex digits of Unix nanoseconds with the sign bit flipped:
// members of equal score sort by their bytes (ZRANGEBYLEX), so by time,
// then id, to the nanosecond (a float score could not hold nanoseconds).
// Put is one Lua script (check id and limit, write record, indexes and
// counts: atomic in Redis). Transition reads the record, applies the move
// in Go, and writes it with a script that first checks the record's SHA-1
// is still the one read (compare and set: two gateways moving one command
// at once cannot both win; the loser reads again). Expire and Prune walk
// their index and move or delete each command the same way. With
// RedisOptions.WaitReplicas every change is followed, on the same
// connection, by WAIT.
//
// The shared indexes (P:ids, P:exp...) make every change touch two hash
// slots: on one Redis primary (alone or under Sentinel) a change is one
// script. On a Redis Cluster (a *redis.ClusterClient) the shared indexes
// are split in 16 buckets, P:{P:bNN}:ids, exp, fin, counts, origins,
// clients and cver (a command's entries in the bucket of its id, a
// client's clients entry in the bucket of its id), and a change is steps,
// each one script on one slot: Put claims the id in its bucket, writes
// the record, queue and list with the client's version (P:<len>:{<client>}:v,
// raised by every change), then indexes it; a transition writes the record
// and indexes it. An index step applies only if its version is newer than
// the one indexed, so late, repeated or reordered steps are harmless. An
// id's entry "VER STATUS LEN CLIENT ORIGIN" (STATUS "~MS" for a claim)
// keeps what a Prune cut short needs to finish. Prune sweeps a page of
// each bucket: a claim without a record older than a minute is dropped,
// an entry behind its record is indexed again (rediscluster.go,
// TestRedisClusterRepair). Nothing has a Redis TTL: a
// command leaves Redis by Prune, so the store refuses a Redis whose
// maxmemory-policy could evict any key (allkeys-*).
//
// OpenBolt fails with ErrLocked when another process holds the file: bbolt takes
// an exclusive flock, released by the kernel when the holder exits, even by
// kill -9, so a crashed gateway never leaves a stale lock behind.
package store
