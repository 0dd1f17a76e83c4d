// Package auth decides whether a device's MQTT CONNECT is accepted.
//
// An [Authenticator] takes a [Request] (client id, user name, password,
// transport, verified client-certificate identities, time) and returns a
// [Result] carrying the MQTT 5 CONNACK reason code. [AllowAll] accepts
// everything, for development. [Tokens] accepts a device that proves it holds
// its device secret with a time-bound HMAC-SHA256 token, or, optionally, that
// presents a client certificate naming its client id.
//
// [IdentityPolicy] (--secure-identity) decides, after an Authenticator
// accepted a TLS CONNECT, whether the connection proved its client id, so
// that secure commands may be written to it: a verified client certificate
// naming the id ([CertNamesClient]), a channel-bound token
// (Result.Proven), either, or nothing at all. A certificate naming another
// id is refused with 0x87 under every policy but none.
//
// # Tokens
//
// A device authenticates with
//
//	user name: the client id, or empty
//	password:  v1.<ts>.<nonce>.<mac>    on plain TCP
//	           v2.<ts>.<nonce>.<mac>    over TLS
//
// where
//
//	ts       = the device's current time in unix seconds, in decimal: 1 to 12
//	           digits, no sign, no leading zero
//	nonce    = 8 to 32 characters of [A-Za-z0-9], fresh for every CONNECT
//	           (random; 16 or more characters recommended)
//	mac      = lowercase hex (64 digits) of HMAC-SHA256(key = device secret, message)
//	message  = "v1" LF client-id LF ts LF nonce                  (v1)
//	           "v2" LF client-id LF ts LF nonce LF exporter      (v2)
//	exporter = the 32 bytes of keying material exported from the TLS
//	           connection the CONNECT is sent on (RFC 5705; RFC 8446
//	           section 7.5), with label "EXPORTER-dualgate-token"
//	           ([control.ExporterLabel]) and no context
//
// LF is the single byte 0x0A, the client id is the exact bytes of the CONNECT
// client identifier, ts and nonce are the exact characters of the password,
// and exporter is raw bytes, not hex; nothing else is in the message (no
// trailing LF). [control.MakeToken] and [control.MakeBoundToken] are the
// reference implementations.
//
// A v2 token is bound to its TLS connection: its HMAC covers keying material
// that only the two ends of that connection know, so a copy sent on any
// other connection fails. The gateway takes a v2 token over TLS only, and
// there it is the proof of the client id that secure commands need
// (Result.Proven). A v1 token is taken on plain TCP only: it travels in the
// clear, so whoever records it could otherwise open a TLS session with it.
// Over TLS 1.2 without the extended master secret (RFC 7627) there is no
// exporter; the gateway refuses v2 tokens there, and the device should use
// TLS 1.3 or a client certificate.
//
// Worked examples. Device secret (32 bytes, hex)
// 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f, client
// id "car-0042", time 2026-01-01T00:00:00Z (ts 1767225600), nonce
// "k3Jd9QxA2mPz". The v1 HMAC message is the 33 bytes
// "v1\ncar-0042\n1767225600\nk3Jd9QxA2mPz" and the password is
//
//	v1.1767225600.k3Jd9QxA2mPz.b565bfeea5a5a11a2e5e8815cee73d678c25fb0ecbc56231df292852069efbf2
//
// On a TLS connection whose exporter is the bytes a0 a1 a2 ... bf (32
// bytes), the v2 HMAC message is "v2\ncar-0042\n1767225600\nk3Jd9QxA2mPz\n"
// followed by those 32 bytes (66 bytes in all), and the password is
//
//	v2.1767225600.k3Jd9QxA2mPz.ed1880c72e5d776853fc39b1ebb8a22149e8b01fe3c82710360070131e7ac16b
//
// # Device secrets
//
// A device secret is at least 16 bytes ([MinSecretLen]); 32 random bytes are
// recommended. The gateway finds it in one of two places:
//
//   - the secrets file, one "<client-id> <hex secret>" per line (see
//     [ParseSecrets] for the exact format, [LoadSecretsFile] to read one);
//   - a fleet master key, from which every device's secret is derived as
//     HMAC-SHA256(key = master key, message = client id) ([control.DeriveSecret]), so
//     the gateway needs no per-device file. With master key
//     6d61737465722d6b65792d666f722d746573742d766563746f72732d30303031 (the
//     ASCII text "master-key-for-test-vectors-0001"), the secret of
//     "car-0042" is
//     18501038028d11fc36623049168f8d1e57ba1e443adb3ad8b46857a9d8718dd6.
//
// A secret in the file wins over a derived one.
//
// # Checks and reason codes
//
// [Tokens.Authenticate] checks, in this order, and answers with the first
// failure:
//
//  1. The client id is not empty, else 0x85 (client identifier not valid): a
//     token is bound to a client id, so a server-assigned id cannot carry one.
//  2. The user name is empty or equal to the client id, else 0x86 (bad user
//     name or password).
//  3. With TokenConfig.AcceptClientCert, a TLS CONNECT whose verified client
//     certificate names the client id (its subject common name or a URI SAN
//     urn:dualgate:client:<id>; DNS SANs never count, see [CertNamesClient])
//     is accepted; the password is not looked at.
//  4. A password is present, else 0x87 (not authorized).
//  5. The password has the syntax above, else 0x86.
//  6. The version fits the transport, else 0x87: v1 on plain, v2 over TLS,
//     and over TLS the connection exports keying material.
//  7. |now - ts| <= window (default 60 s, either way; now in whole unix
//     seconds), else 0x86. A device refused here should check its clock.
//  8. The client id has a secret (in the file or by the master key) and the
//     mac matches it, compared in constant time, else 0x86. An unknown client
//     id costs the same HMAC computation as a known one.
//  9. A v2 token is accepted here, Proven.
//  10. With a replay log (TokenConfig.Dir): a v1 token's time is later than
//     the floor left by a run that stopped without writing its log, and not
//     later than the log's durable mark, else 0x89 (server busy; see below).
//  11. The v1 token was not accepted before, else 0x87 (not authorized); the
//     client id holds fewer than TokenConfig.ReplayPerDevice live tokens,
//     else 0x89; the cache holds fewer than TokenConfig.ReplayCapacity, else
//     0x89. A token is remembered until its time is more than the window in
//     the past, when step 7 refuses it anyway; so every token is accepted at
//     most once.
//  12. With a shared replay memory ([Tokens.ShareReplay], cluster mode): the
//     cluster had not recorded the v1 token, else 0x87; the client id holds
//     fewer than its bound of live tokens there, else 0x89. The verdict is
//     then [Pending]: see below.
//
// A device refused with 0x86 or 0x87 makes a new token (new nonce, current
// time) before it tries again; one refused with 0x89 retries with back-off.
//
// # Replay cache and its bound
//
// Accepted v1 tokens are remembered in memory per client id (the first 16
// bytes of their mac and their expiry), in 64 shards chosen by a keyed hash
// of the client id, which only spreads lock contention. A v2 token needs no
// memory: it is bound to one TLS connection, which carries one CONNECT.
//
// Only tokens whose mac verified reach the cache, so a device can add tokens
// for its own client id only. Each client id holds at most
// TokenConfig.ReplayPerDevice live tokens (default
// [DefaultReplayPerDevice], 32: a device connecting on plain a few times a
// minute needs two or three); beyond that its new tokens are refused with
// 0x89 until its oldest expire, while every other client id is unaffected.
// A full cache refuses rather than forgets, because forgetting would let a
// recorded token be replayed within its window.
//
// Memory: an entry costs 24 bytes, a client id about 70 bytes (its map slot
// and slice header) plus its own length; 32,768 devices with 4 live tokens
// each measure 165 to 190 bytes per device. The bound is
// TokenConfig.ReplayCapacity entries in all (default
// [DefaultReplayCapacity], 2^20): at most about 95 MB plus the client ids
// when every entry is another device's, about 26 MB when devices hold 32
// each; and ReplayPerDevice x 24 bytes (768 by default) per client id.
// Reaching the global bound takes valid tokens of 2^20 / ReplayPerDevice
// devices (32,768 by default) within one window.
//
// # Replay log: restarts and crashes
//
// With TokenConfig.Dir (the gateway's data directory) the cache survives a
// restart in the file [ReplayLogFile]. Nothing on the connection path
// touches the disk: an accepted token is queued in memory, and a writer
// goroutine appends the queue and a high-water mark H = now + window + 4 s
// every TokenConfig.FlushInterval (default 1 s), then fsyncs. A new run reads
// the file back into the cache, rewrites it compactly, and the file is
// compacted again whenever it has doubled (and is over 1 MiB). The
// directory is locked: one process at a time.
//
// The crash rule. A v1 token is accepted only if its time is at most the
// last mark known to be on disk. A token accepted and then lost in a crash
// (before its write) therefore has a time at most the last mark in the
// file. A clean stop ([Tokens.Close]) writes everything and a clean-stop
// record; a run that finds no clean-stop record at the end takes the last
// mark as a floor and refuses, with 0x89, every v1 token whose time is not
// later than it. The devices' retries succeed once their clock passes the
// floor: at most window + 4 s + one flush interval after the crash, less the
// time the restart took. A clean stop carries a floor still in force over
// to the next run. A disk that stops taking writes lets the mark fall
// behind: v1 tokens dated beyond it are refused with 0x89 until a write
// succeeds (current tokens after about window + 4 s). v2 tokens over TLS
// are never affected.
//
// A second gateway with the same secrets but its own data directory has
// its own cache: a v1 token recorded on plain and replayed within its
// window there opens a plain session for the client id, never a TLS one;
// no secure command is written to plain, and the session cannot follow the
// instruction to TLS. A shared cache is for cluster mode.
//
// # Shared replay memory (cluster mode)
//
// The gateways of a cluster share the memory of accepted v1 tokens
// ([SharedReplay]; package cluster keeps it in Redis), so a token accepted
// by one is refused by every other within its window. The local cache
// stays the first filter: a replay on the same gateway is refused at once,
// without asking. A token the local cache takes is claimed in the shared
// memory, and Authenticate returns a [Pending] verdict (Result.Pending)
// instead of waiting: the session stops reading the device and answers
// the CONNECT when the claim settles it, from another goroutine. The
// claim is bounded in time by the shared memory (the cluster's timeout);
// without an answer in time the token is refused with 0x88 (server
// unavailable; 3.1.1 0x03), since a token that cannot be checked could be
// a replay, unless TokenConfig.ReplayUnavailableLocal takes the local
// cache's word for it. Only v1 tokens wait: v2 tokens, client certificates, refusals
// and a gateway without a shared memory answer at once, with no
// allocation beyond the synchronous path's. The replay log is for a single
// gateway; in cluster mode the shared memory (Redis with its append-only
// file) is what survives restarts.
//
// Secrets and tokens are never logged, and no error message of this package
// quotes one. Result.Msg is for the operator's log, not for the device.
package auth
