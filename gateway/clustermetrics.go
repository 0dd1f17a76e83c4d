package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dualgate/dualgate/gateway/cluster"
)

// registerClusterMetrics exports, with --cluster, the registry's writes to
// Redis and the token replay memory's claims.
func (g *Gateway) registerClusterMetrics(reg *prometheus.Registry, counter func(name, help string, f func() uint64)) {
	if g.members != nil {
		m := g.members.m
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_cluster_registry_queued", Help: "Registry writes (CONNECTs and disconnects) waiting for Redis.",
		}, func() float64 { return float64(m.Stats().Queued) }))
		for _, c := range []struct {
			name, help string
			pick       func(cluster.Stats) uint64
		}{
			{"dualgate_cluster_registry_writes_total", "Registry writes Redis applied.", func(s cluster.Stats) uint64 { return s.Flushed }},
			{"dualgate_cluster_registry_batches_total", "Round trips that carried registry writes or events.", func(s cluster.Stats) uint64 { return s.Batches }},
			{"dualgate_cluster_registry_dropped_total", "Registry writes and events lost to a full queue (Redis away too long).", func(s cluster.Stats) uint64 { return s.Dropped }},
			{"dualgate_cluster_redis_errors_total", "Failed Redis calls of the registry and the inbox (retried).", func(s cluster.Stats) uint64 { return s.Errors }},
			{"dualgate_cluster_takeovers_total", "Sessions on other nodes this node's CONNECTs took over.", func(s cluster.Stats) uint64 { return s.Takeovers }},
			{"dualgate_cluster_events_sent_total", "Events written to other nodes' inboxes (routing, takeover, cancel).", func(s cluster.Stats) uint64 { return s.EventsSent }},
			{"dualgate_cluster_events_received_total", "Events read from this node's inbox.", func(s cluster.Stats) uint64 { return s.EventsRecv }},
			{"dualgate_cluster_rejoins_total", "Times Redis had lost this node's records and they were written again.", func(s cluster.Stats) uint64 { return s.Rejoins }},
		} {
			pick := c.pick
			counter(c.name, c.help, func() uint64 { return pick(m.Stats()) })
		}
	}
	if g.replay != nil {
		r := g.replay
		for _, c := range []struct {
			name, help string
			pick       func(cluster.ReplayStats) uint64
		}{
			{"dualgate_cluster_token_claims_total", "Unbound device tokens checked against the cluster's replay memory in Redis.", func(s cluster.ReplayStats) uint64 { return s.Claims }},
			{"dualgate_cluster_token_replays_total", "Of those, tokens another node (or this one) had accepted: refused as replays.", func(s cluster.ReplayStats) uint64 { return s.Replayed }},
			{"dualgate_cluster_token_unavailable_total", "Of those, claims Redis did not answer within --cluster-timeout (see --token-replay-unavailable).", func(s cluster.ReplayStats) uint64 { return s.TimedOut }},
			{"dualgate_cluster_token_busy_total", "Of those, claims refused because too many were waiting for Redis.", func(s cluster.ReplayStats) uint64 { return s.Busy }},
		} {
			pick := c.pick
			counter(c.name, c.help, func() uint64 { return pick(r.Stats()) })
		}
	}
}
