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
//	password:  v1.<ts>.<nonce>.<mac>
//
// where
//
//	ts    = the device's current time in unix seconds, in decimal: 1 to 12
//	        digits, no sign, no leading zero
//	nonce = 8 to 32 characters of [A-Za-z0-9], fresh for every CONNECT
//	        (random; 16 or more characters recommended)
//	mac   = lowercase hex (64 digits) of
//	        HMAC-SHA256(key = device secret,
//	                    message = "v1" LF client-id LF ts LF nonce)
//
// LF is the single byte 0x0A, the client id is the exact bytes of the CONNECT
// client identifier, and ts and nonce are the exact characters of the
// password; nothing else is in the message (no trailing LF). A device needs
// HMAC-SHA256, hex and a clock good to within the window; [control.MakeToken] is the
// reference implementation.
//
// Worked example. Device secret (32 bytes, hex)
// 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f, client
// id "car-0042", time 2026-01-01T00:00:00Z (ts 1767225600), nonce
// "k3Jd9QxA2mPz". The HMAC message is the 33 bytes
// "v1\ncar-0042\n1767225600\nk3Jd9QxA2mPz" and the password is
//
//	v1.1767225600.k3Jd9QxA2mPz.b565bfeea5a5a11a2e5e8815cee73d678c25fb0ecbc56231df292852069efbf2
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
//  6. |now - ts| <= window (default 300 s; now in whole unix seconds), else
//     0x86. A device refused here should check its clock.
//  7. The client id has a secret (in the file or by the master key) and the
//     mac matches it, compared in constant time, else 0x86. An unknown client
//     id costs the same HMAC computation as a known one.
//  8. The token was not accepted before, else 0x87 (not authorized). A token
//     is remembered until its time is more than the window in the past, when
//     step 6 refuses it anyway; so every token is accepted at most once.
//
// A device refused with 0x86 or 0x87 makes a new token (new nonce, current
// time) before it tries again.
//
// # Replay cache and its bound
//
// Accepted tokens are remembered in memory (by the first 16 bytes of their
// mac), sharded by that mac and filed into buckets by expiry time, so expiry
// costs a few map drops per window, never a scan. The number remembered is
// bounded (TokenConfig.ReplayCapacity, default [DefaultReplayCapacity]);
// each costs 20 to 40 bytes of heap, depending on how full its map is. At the bound the gateway refuses new tokens with 0x89
// (server busy) rather than forget remembered ones: forgetting would let a
// captured token be replayed within its window, exactly when an attacker
// floods the gateway, while refusing only delays devices connecting beyond
// the budget until older tokens expire (at most twice the window). Only
// tokens with a valid mac are remembered, so nobody without a device secret
// can fill the cache. A device refused with 0x89 retries with back-off. The
// same answer is given, for a while, after the gateway's clock steps back by
// more than an eighth of the window.
//
// Secrets and tokens are never logged, and no error message of this package
// quotes one. Result.Msg is for the operator's log, not for the device.
package auth
