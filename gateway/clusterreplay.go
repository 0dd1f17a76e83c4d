package gateway

import (
	"fmt"

	"github.com/dualgate/dualgate/gateway/cluster"
)

// shareReplay makes the token replay memory the cluster's (--cluster with
// --auth token): an unbound token a node accepted is refused by every
// other within its window. The local cache stays the first filter; the
// CONNECT of a token it takes waits for Redis without its event loop
// waiting (auth.Result.Pending), at most --cluster-timeout, and is
// refused with 0x88 (3.1.1 0x03) without an answer. The node's lease
// (openCluster) is held already.
func (g *Gateway) shareReplay() error {
	if g.tokens == nil || g.cluster == nil {
		return nil
	}
	r, err := cluster.NewReplay(g.cluster.rdb, cluster.ReplayOptions{
		Prefix:  g.cfg.ClusterPrefix,
		Timeout: g.cfg.ClusterTimeout,
		Logger:  g.logger.Named("cluster"),
	})
	if err != nil {
		return fmt.Errorf("token replay memory: %w", err)
	}
	g.replay = r
	g.tokens.ShareReplay(r)
	return nil
}

// stopReplay stops sharing: later tokens are refused (0x88) rather than
// left unchecked. Before the Redis client closes.
func (g *Gateway) stopReplay() {
	if g.replay != nil {
		g.replay.Close()
	}
}
