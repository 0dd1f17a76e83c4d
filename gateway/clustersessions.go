package gateway

import (
	"context"
	"encoding/hex"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/dualgate/dualgate/tlsmux"
)

// redisSessions keeps the TLS sessions of a cluster (--tls-sessions
// server with --cluster) in its Redis, so a device resumes on any node and
// no node's memory holds them: one key per session,
// PREFIX:tls:{ID}:session (the id, hex, as hash tag: Redis Cluster puts a
// session wherever its id hashes), written with its lifetime (SET PX) and
// taken once (GETDEL). Every call waits at most --cluster-timeout, on a
// handshake worker, never on an event loop; an error is a miss (a full
// handshake). After an error the sessions skip Redis for as long again
// (misses at once), so that a hung Redis costs one handshake the timeout
// now and then, not every handshake twice. The states are secrets, as the
// ticket keys Redis holds in tickets mode.
type redisSessions struct {
	prefix  string
	timeout time.Duration
	// rdb is set by openCluster, before any listener opens.
	rdb redis.UniversalClient
	// skipUntil (unix nanoseconds) is the end of the pause after an error.
	skipUntil atomic.Int64
}

func (r *redisSessions) key(id tlsmux.SessionID) string {
	return r.prefix + ":tls:{" + hex.EncodeToString(id[:]) + "}:session"
}

// errNoRedis is a handshake that came before the cluster's Redis was open,
// or while the sessions skip it after an error.
var errNoRedis = errors.New("cluster: redis not asked for TLS sessions (it failed a moment ago)")

// usable reports whether Redis is to be asked now.
func (r *redisSessions) usable() bool {
	return r.rdb != nil && time.Now().UnixNano() >= r.skipUntil.Load()
}

// failed starts a pause after err, unless err is nil.
func (r *redisSessions) failed(err error) error {
	if err != nil {
		r.skipUntil.Store(time.Now().Add(r.timeout).UnixNano())
	}
	return err
}

// Put implements tlsmux.SessionStore.
func (r *redisSessions) Put(id tlsmux.SessionID, state []byte, ttl time.Duration) error {
	if !r.usable() {
		return errNoRedis
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	return r.failed(r.rdb.Set(ctx, r.key(id), state, ttl).Err())
}

// Take implements tlsmux.SessionStore.
func (r *redisSessions) Take(id tlsmux.SessionID) ([]byte, error) {
	if !r.usable() {
		return nil, errNoRedis
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	b, err := r.rdb.GetDel(ctx, r.key(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, r.failed(err)
}

// registerSessionMetrics exports the server-side TLS sessions' figures
// (--tls-sessions server).
func (g *Gateway) registerSessionMetrics(reg *prometheus.Registry, counter func(name, help string, f func() uint64)) {
	s := g.sessions
	if s == nil {
		return
	}
	for _, r := range []struct {
		result string
		pick   func(tlsmux.SessionStats) uint64
	}{{"hit", func(st tlsmux.SessionStats) uint64 { return st.Hits }}, {"miss", func(st tlsmux.SessionStats) uint64 { return st.Misses }}} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_tls_sessions_lookups_total", Help: "TLS resumptions by whether their server-side session was found (miss: unknown, already used, expired, evicted or unreadable; a full handshake follows).",
			ConstLabels: prometheus.Labels{"result": r.result},
		}, func() float64 { return float64(r.pick(s.Stats())) }))
	}
	counter("dualgate_tls_sessions_stored_total", "Server-side TLS sessions stored (one per handshake).", func() uint64 { return s.Stats().Stored })
	counter("dualgate_tls_sessions_errors_total", "Server-side TLS session writes and reads that failed (Redis unavailable): a miss, or a ticket that will miss.", func() uint64 { return s.Stats().Errors })
	if m := g.memSessions; m != nil {
		counter("dualgate_tls_sessions_evicted_total", "Server-side TLS sessions dropped, oldest first, to stay within --tls-session-cache-mb.", func() uint64 { return m.Stats().Evicted })
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_tls_sessions", Help: "Server-side TLS sessions held in memory.",
		}, func() float64 { return float64(m.Stats().Entries) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_tls_sessions_bytes", Help: "Memory the server-side TLS sessions take, states and per-entry overhead (bound: --tls-session-cache-mb).",
		}, func() float64 { return float64(m.Stats().Bytes) }))
	}
}
