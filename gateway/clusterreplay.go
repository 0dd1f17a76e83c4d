package gateway

import (
	"fmt"
	"time"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/cluster"
)

// shareReplay makes the token replay memory the cluster's (--cluster with
// --auth token): an unbound token a node accepted is refused by every
// other within its window. The local cache stays the first filter; the
// CONNECT of a token it takes waits for Redis without its event loop
// waiting (auth.Result.Pending), at most --cluster-timeout, and without an
// answer gets what --token-replay-unavailable says. The node's lease
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
	// Without a replay log (cluster mode) nothing else frees the local
	// cache's expired tokens of devices that do not come back.
	g.replaySweep = make(chan struct{})
	g.replaySwept = make(chan struct{})
	go sweepReplay(g.tokens, auth.DefaultFlushInterval, g.replaySweep, g.replaySwept)
	return nil
}

// sweepReplay frees the expired tokens of the local cache every period,
// as the replay log's writer does on a single gateway, until stop.
func sweepReplay(t *auth.Tokens, period time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			t.ReplayLen()
		}
	}
}

// stopReplay stops sharing: later tokens get what
// --token-replay-unavailable says, as when Redis does not answer. Before
// the Redis client closes.
func (g *Gateway) stopReplay() {
	if g.replay == nil {
		return
	}
	g.replay.Close()
	if g.replaySweep != nil {
		close(g.replaySweep)
		<-g.replaySwept
		g.replaySweep = nil
	}
}
