package gateway

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/cluster"
	"github.com/dualgate/dualgate/gateway/dispatch"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/mqttcodec"
)

// clusterRegistry ties the sessions of this node to the cluster's
// registry (package cluster): each CONNECT is recorded with a session
// epoch, each end removes it, and the node acts on what other nodes tell
// it: a newer session of one of its devices elsewhere closes the local one
// (takeover across nodes), and a command stored elsewhere for a device
// held here is reconciled at once (routing). Recording never waits on
// Redis: cluster.Member queues and batches the writes.
type clusterRegistry struct {
	m   *cluster.Member
	g   *Gateway
	log *zap.Logger

	mu     sync.Mutex // guards epochs
	epochs map[*session.Session]uint64

	done    chan struct{}
	cancels sync.WaitGroup // cancels other nodes asked for, running
}

// joinCluster makes this node a member of the cluster's registry. The
// node's lease (openCluster) is held already.
func (g *Gateway) joinCluster() error {
	c := &clusterRegistry{g: g, log: g.logger.Named("cluster"), epochs: make(map[*session.Session]uint64), done: make(chan struct{})}
	joined := make(chan struct{})
	m, err := cluster.Join(g.cluster.rdb, cluster.Options{
		Prefix:         g.cfg.ClusterPrefix,
		Node:           g.cluster.id,
		AdvertisePlain: g.cfg.AdvertisePlain,
		AdvertiseTLS:   g.cfg.AdvertiseTLS,
		Timeout:        g.cfg.ClusterTimeout,
		NodeTTL:        g.cfg.ClusterNodeTTL,
		Logger:         c.log,
		Now:            g.env.Now,
		OnRejoin: func() {
			<-joined // c.m is set
			c.rejoin()
		},
	})
	if err != nil {
		return err
	}
	c.m = m
	close(joined)
	go c.events()
	g.members = c
	return nil
}

// online records a session that connected.
func (c *clusterRegistry) online(s *session.Session) {
	epoch := c.m.NextEpoch()
	c.mu.Lock()
	c.epochs[s] = epoch
	c.mu.Unlock()
	c.record(s, epoch)
}

func (c *clusterRegistry) record(s *session.Session, epoch uint64) {
	mode := cluster.ModePlain
	if s.Mode() == registry.ModeTLS {
		mode = cluster.ModeTLS
	}
	c.m.Online(cluster.Record{ClientID: s.ClientID(), Mode: mode, Protocol: s.Version(),
		Since: s.RegistryEntry().Since().UnixMilli(), Epoch: epoch})
}

// offline records a session that ended.
func (c *clusterRegistry) offline(s *session.Session) {
	c.mu.Lock()
	epoch, ok := c.epochs[s]
	delete(c.epochs, s)
	c.mu.Unlock()
	if ok {
		c.m.Offline(s.ClientID(), epoch)
	}
}

// rejoin records every local session again, with its epoch: Redis lost
// the records (its data, or this node's heartbeat ran out).
func (c *clusterRegistry) rejoin() {
	c.g.reg.Range(func(s *session.Session) bool {
		if e, ok := c.epoch(s); ok {
			c.record(s, e)
		}
		return true
	})
}

func (c *clusterRegistry) epoch(s *session.Session) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.epochs[s]
	return e, ok
}

// events acts on what other nodes say, until the member is closed.
func (c *clusterRegistry) events() {
	defer close(c.done)
	for ev := range c.m.Events() {
		switch ev := ev.(type) {
		case cluster.Takeover:
			s, ok := c.g.reg.Get(ev.ClientID)
			if !ok {
				continue
			}
			if e, ok := c.epoch(s); ok && e < ev.Epoch {
				c.log.Debug("session taken over on another node", zap.String("client", ev.ClientID))
				s.Kick(mqttcodec.SessionTakenOver, "a newer connection with the same client id on another node")
			}
		case cluster.CommandWaiting:
			if s, ok := c.g.reg.Get(ev.ClientID); ok {
				c.g.dispatcher.Query(s)
			}
		case cluster.CancelCommand:
			// Asked by another node's API: run it on the device's worker
			// here, ordered with this node's deliveries; the outcome goes
			// to the store, where the asking node reads it.
			c.cancels.Add(1)
			go func() {
				defer c.cancels.Done()
				ctx, cancel := context.WithTimeout(context.Background(), cancelWait)
				defer cancel()
				if _, err := c.g.dispatcher.Cancel(ctx, ev.CommandID); err != nil && !errors.Is(err, dispatch.ErrWritten) &&
					!errors.Is(err, dispatch.ErrFinished) && !errors.Is(err, store.ErrNotFound) {
					c.log.Warn("a cancel asked by another node did not run", zap.String("command", ev.CommandID), zap.Error(err))
				}
			}()
		}
	}
}

// commandStored tells the node holding a device, if another, that a
// command waits for it: the store is the truth, the message only saves
// the device a wait for its next query. It never blocks.
func (c *clusterRegistry) commandStored(clientID string) {
	if _, ok := c.g.reg.Get(clientID); ok {
		return // here: the dispatcher has it
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.g.cfg.ClusterTimeout)
		defer cancel()
		rec, ok, err := c.m.Get(ctx, clientID)
		if err != nil || !ok || rec.Node == c.m.Node() {
			return
		}
		if !c.m.NotifyAsync(rec.Node, cluster.CommandWaiting{ClientID: clientID}) {
			c.log.Warn("a command's node could not be told; the device gets it at its next query", zap.String("client", clientID))
		}
	}()
}

// nodeLive reports whether a node of the cluster has a live heartbeat:
// the dispatcher asks it of a command another node left in flight. It is
// called from the dispatcher's workers and its Start, never from an event
// loop.
func (c *clusterRegistry) nodeLive(node string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.g.cfg.ClusterTimeout)
	defer cancel()
	nodes, err := c.m.LiveNodes(ctx)
	if err != nil {
		return false, err
	}
	for _, n := range nodes {
		if n.ID == node {
			return true, nil
		}
	}
	return false, nil
}

// close leaves the registry (flushing what is queued), before the lease
// and the Redis client go.
func (c *clusterRegistry) close(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.m.Close(ctx); err != nil {
		c.log.Warn("cluster registry close", zap.Error(err))
	}
	<-c.done
}
