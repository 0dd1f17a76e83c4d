package gateway

import "sync/atomic"

// Indexes of per-mode counters.
const (
	registryPlain = 0
	registryTLS   = 1
)

// counters are the transports' own figures (the sessions keep theirs in
// session.Stats). Safe for concurrent use.
type counters struct {
	proxyErrors atomic.Uint64 // connections closed for a missing or malformed PROXY header
	// proxyUntrusted counts connections refused for sending a PROXY
	// header (or, with --proxy-protocol required, for connecting at all)
	// from outside --proxy-trusted.
	proxyUntrusted atomic.Uint64
	muxed          [2]atomic.Uint64 // single-port connections routed to plain, tls
	drained        atomic.Uint64    // sessions moved off by a drain
}
