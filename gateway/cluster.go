package gateway

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/tlsmux"
)

// Cluster mode: with --cluster the pending commands live in Redis
// (store.Redis), so every node that shares the Redis reads and writes the
// same commands, and a command outlives the node that accepted it. The
// node's name (--node-id) is held in Redis by a lease that the node renews
// (--cluster-node-ttl), so two running gateways cannot take the same name.
// The TLS sessions live in Redis too (clustersessions.go), or with
// --tls-sessions tickets and no --tls-ticket-keys the session ticket
// keys, so a device resumes its TLS session on any node. The registry of
// connected devices, routing, takeover and draining to peers are in
// clusterwire.go (package cluster); a command in flight on a node that
// dies is taken back by the node its device reconnects to (package
// dispatch, nodes.go). See docs/operations.md, "Cluster mode (Redis)".

// Node names and shared ticket keys. The lease on a node's name lives
// --cluster-node-ttl, as its heartbeat, renewed every third of it; the
// ticket keys are read as often.
const (
	maxNodeIDLen = 64
	// minNodeTTL and maxNodeTTL bound --cluster-node-ttl: below a second
	// a loaded node misses its renewal and reads dead.
	minNodeTTL = time.Second
	maxNodeTTL = 5 * time.Minute
	// defaultClusterTicketRotate is the rotation of the shared ticket keys
	// without --tls-ticket-rotate.
	defaultClusterTicketRotate = time.Hour
	minClusterTicketRotate     = time.Minute
)

// validateCluster checks the cluster settings, without connecting.
func (c *Config) validateCluster() error {
	if c.Cluster == "" {
		switch {
		case c.ClusterWaitReplicas != 0:
			return errors.New("--cluster-wait-replicas needs --cluster")
		case c.NodeID != "":
			return errors.New("--node-id needs --cluster")
		}
		return nil
	}
	if err := store.CheckRedisURL(c.Cluster); err != nil {
		return fmt.Errorf("--cluster: %w", err)
	}
	if c.NodeID != "" {
		if err := checkNodeID(c.NodeID); err != nil {
			return fmt.Errorf("--node-id %q: %w", c.NodeID, err)
		}
	}
	if c.ClusterPrefix == "" || strings.ContainsAny(c.ClusterPrefix, "{}") {
		return fmt.Errorf("--cluster-prefix %q: want a non-empty prefix without braces", c.ClusterPrefix)
	}
	if c.ClusterWaitReplicas < 0 || c.ClusterWaitReplicas > 16 {
		return fmt.Errorf("--cluster-wait-replicas %d: want 0..16", c.ClusterWaitReplicas)
	}
	if c.ClusterWaitTimeout < 10*time.Millisecond || c.ClusterWaitTimeout > time.Minute {
		return fmt.Errorf("--cluster-wait-timeout %s: want 10ms to 1m", c.ClusterWaitTimeout)
	}
	if c.ClusterTimeout < 100*time.Millisecond || c.ClusterTimeout > time.Minute {
		return fmt.Errorf("--cluster-timeout %s: want 100ms to 1m", c.ClusterTimeout)
	}
	if c.ClusterNodeTTL < minNodeTTL || c.ClusterNodeTTL > maxNodeTTL {
		return fmt.Errorf("--cluster-node-ttl %s: want %s to %s", c.ClusterNodeTTL, minNodeTTL, maxNodeTTL)
	}
	if c.TicketKeys == "" && c.TicketRotate != 0 && c.TicketRotate < minClusterTicketRotate {
		return fmt.Errorf("--tls-ticket-rotate %s: the ticket keys shared through --cluster rotate at most once a minute", c.TicketRotate)
	}
	return nil
}

// checkNodeID allows what a host name, a pod name or a Redis key can hold
// without quoting: letters, digits, '.', '-', '_'.
func checkNodeID(id string) error {
	if id == "" || len(id) > maxNodeIDLen {
		return fmt.Errorf("want 1 to %d characters", maxNodeIDLen)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("character %q: want letters, digits, '.', '-' or '_'", r)
		}
	}
	return nil
}

// nodeID is --node-id, or the host name.
func (c *Config) nodeID() (string, error) {
	if c.NodeID != "" {
		return c.NodeID, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("--node-id not given and no host name: %w", err)
	}
	if err := checkNodeID(host); err != nil {
		return "", fmt.Errorf("--node-id not given and the host name %q cannot be one (%w): give --node-id", host, err)
	}
	return host, nil
}

// clusterNode is this gateway's membership of the cluster: the lease on its
// name, renewed until close.
type clusterNode struct {
	id    string
	key   string
	token string // this process's value of the lease
	ttl   time.Duration
	rdb   redis.UniversalClient
	log   *zap.Logger

	// tickets, when not nil, are the TLS session ticket keys kept in
	// Redis under ticketKey, rotated every rotate by whichever node sees
	// the time first.
	tickets   *tlsmux.TicketKeys
	ticketKey string
	rotate    time.Duration

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// syncTickets is the ticket keys' one script: it makes the keys if there
// are none, rotates them when the last rotation (by Redis' clock) is a
// period old, and returns them, newest first, as 32-byte keys back to back.
// The newest key is the next one: nodes decrypt with it but encrypt with
// the second, so that every node has a key for a while before any node
// encrypts with it, and a ticket resumes on a node that has not yet read
// the latest rotation.
var syncTickets = redis.NewScript(`
-- KEYS: the ticket keys hash (keys, at)
-- ARGV: 64 random bytes (two keys, for a first set or one rotation), rotation period ms, keys kept
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keys = redis.call('HGET', KEYS[1], 'keys')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
if not keys or #keys < 64 or #keys % 32 ~= 0 then
  keys = ARGV[1]
  redis.call('HSET', KEYS[1], 'keys', keys, 'at', now)
elseif now - at >= tonumber(ARGV[2]) then
  keys = string.sub(ARGV[1], 1, 32) .. keys
  local keep = tonumber(ARGV[3]) * 32
  if #keys > keep then keys = string.sub(keys, 1, keep) end
  redis.call('HSET', KEYS[1], 'keys', keys, 'at', now)
end
return keys
`)

// newClusterTickets makes the placeholder ticket keys a cluster node's TLS
// config starts with; openCluster replaces them with the shared ones
// before any listener opens.
func newClusterTickets(log *zap.Logger) (*tlsmux.TicketKeys, error) {
	var k [32]byte
	_, _ = rand.Read(k[:])
	return tlsmux.NewTicketKeys([][32]byte{k}, log)
}

// syncTickets reads (and when due, rotates) the shared ticket keys and
// applies them.
func (n *clusterNode) syncTickets(ctx context.Context) error {
	var fresh [64]byte
	_, _ = rand.Read(fresh[:])
	raw, err := syncTickets.Run(ctx, n.rdb, []string{n.ticketKey},
		fresh[:], n.rotate.Milliseconds(), tlsmux.DefaultTicketKeysKept+1).Text()
	if err != nil {
		return fmt.Errorf("cluster: session ticket keys: %w", err)
	}
	if len(raw) < 64 || len(raw)%32 != 0 || len(raw) > 32*tlsmux.MaxTicketKeys {
		return fmt.Errorf("cluster: session ticket keys in redis are %d bytes", len(raw))
	}
	keys := make([][32]byte, len(raw)/32)
	for i := range keys {
		copy(keys[i][:], raw[32*i:])
	}
	// Encrypt with the second, decrypt with all: see syncTickets.
	keys[0], keys[1] = keys[1], keys[0]
	return n.tickets.Set(keys)
}

// renewLease extends the lease if this process still holds it; 0 means
// another process holds the name.
var renewLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)

// releaseLease deletes the lease if this process holds it.
var releaseLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// openCluster connects to --cluster, takes the node's name and opens the
// command store on the same Redis. On success the store owns the client
// and must be closed after the node.
func (g *Gateway) openCluster() (*clusterNode, store.Store, error) {
	cfg := g.cfg
	id, err := cfg.nodeID()
	if err != nil {
		return nil, nil, err
	}
	rdb, err := store.NewRedisClient(cfg.Cluster, cfg.ClusterWaitTimeout)
	if err != nil {
		return nil, nil, fmt.Errorf("--cluster: %w", err)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	n := &clusterNode{
		id:    id,
		key:   cfg.ClusterPrefix + ":node:" + id,
		token: hex.EncodeToString(tok[:]),
		ttl:   cfg.ClusterNodeTTL,
		rdb:   rdb,
		log:   g.logger,
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ClusterTimeout)
	defer cancel()
	ok, err := rdb.SetNX(ctx, n.key, n.token, n.ttl).Result()
	if err != nil {
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("cluster: redis at %s does not answer: %w", redactURL(cfg.Cluster), err)
	}
	if !ok {
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("cluster: node id %q is held by another running gateway (its lease ends within %s of that gateway stopping); give each node its own --node-id", id, n.ttl)
	}
	st, err := store.OpenRedis(rdb, store.Options{Limit: cfg.CommandLimit, Logger: g.logger}, store.RedisOptions{
		Prefix:       cfg.ClusterPrefix,
		Timeout:      cfg.ClusterTimeout,
		WaitReplicas: cfg.ClusterWaitReplicas,
		WaitTimeout:  cfg.ClusterWaitTimeout,
	})
	if err != nil {
		_ = releaseLease.Run(ctx, rdb, []string{n.key}, n.token).Err()
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("command store: %w", err)
	}
	if g.clusterSessions != nil {
		g.clusterSessions.rdb = rdb
	}
	if g.clusterTickets != nil {
		n.tickets, n.ticketKey = g.clusterTickets, cfg.ClusterPrefix+":tls:ticket-keys"
		n.rotate = cmp.Or(cfg.TicketRotate, defaultClusterTicketRotate)
		if err := n.syncTickets(ctx); err != nil {
			_ = releaseLease.Run(ctx, rdb, []string{n.key}, n.token).Err()
			_ = st.Close()
			return nil, nil, err
		}
	}
	go n.renew(cfg.ClusterTimeout)
	g.logger.Info("cluster mode: pending commands in redis",
		zap.String("node", id), zap.String("redis", redactURL(cfg.Cluster)))
	return n, st, nil
}

// renew keeps the lease until close; a Redis away longer than the lease
// lets another process take the name, which is logged when seen.
func (n *clusterNode) renew(timeout time.Duration) {
	defer close(n.done)
	t := time.NewTicker(n.ttl / 3)
	defer t.Stop()
	lost := false
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		res, err := renewLease.Run(ctx, n.rdb, []string{n.key}, n.token, n.ttl.Milliseconds()).Int()
		if err == nil && res == 0 {
			// Expired while Redis was away: take it again if free.
			var ok bool
			ok, err = n.rdb.SetNX(ctx, n.key, n.token, n.ttl).Result()
			if err == nil && !ok && !lost {
				n.log.Error("cluster: another gateway took this node id while redis was away; give each node its own --node-id",
					zap.String("node", n.id))
			}
			lost = err == nil && !ok
		}
		if err != nil {
			n.log.Warn("cluster: node lease not renewed, redis unavailable", zap.String("node", n.id), zap.Error(err))
		} else if n.tickets != nil {
			if err := n.syncTickets(ctx); err != nil {
				n.log.Warn("cluster: session ticket keys not read; keeping the current ones", zap.Error(err))
			}
		}
		cancel()
	}
}

// close stops renewing and gives the name back; the store, which owns the
// client, is closed after.
func (n *clusterNode) close(timeout time.Duration) {
	n.once.Do(func() {
		close(n.stop)
		<-n.done
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := releaseLease.Run(ctx, n.rdb, []string{n.key}, n.token).Err(); err != nil {
			n.log.Warn("cluster: node lease not released; it ends by itself", zap.String("node", n.id), zap.Error(err))
		}
	})
}

// redactURL is a Redis URL without its password.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}
