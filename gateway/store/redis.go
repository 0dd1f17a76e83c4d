package store

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// ErrUnavailable is a Redis that cannot be reached or does not answer in
// time, or a write its replicas did not confirm. The call may be retried;
// the store reconnects by itself.
var ErrUnavailable = errors.New("store: redis unavailable")

// Defaults of RedisOptions.
const (
	DefaultRedisPrefix  = "dg"
	DefaultRedisTimeout = 2 * time.Second
	DefaultWaitTimeout  = time.Second
)

// RedisOptions configure a Redis store in addition to Options (of which
// Limit and Logger apply).
type RedisOptions struct {
	// Prefix starts every key (default DefaultRedisPrefix); two gateway
	// fleets sharing one Redis database use two prefixes. No braces.
	Prefix string
	// Timeout bounds each call of the store, reconnection included
	// (default DefaultRedisTimeout), plus WaitTimeout with WaitReplicas:
	// past it the call fails with ErrUnavailable instead of waiting for
	// Redis.
	Timeout time.Duration
	// WaitReplicas, when above zero, makes every Put and Transition wait
	// (Redis WAIT) until this many replicas have the change, at most
	// WaitTimeout. A Put they do not confirm fails with ErrUnavailable
	// (the command may still be on the primary and be delivered; a retry
	// by the caller may then deliver it twice, never lose it).
	WaitReplicas int
	// WaitTimeout bounds each WAIT (default DefaultWaitTimeout).
	WaitTimeout time.Duration
}

func (o RedisOptions) withDefaults() RedisOptions {
	if o.Prefix == "" {
		o.Prefix = DefaultRedisPrefix
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultRedisTimeout
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	return o
}

// Redis is the Store kept in a Redis database (standalone, or a primary
// found through Sentinel) or a Redis Cluster, shared by the gateways of a
// cluster. On one primary every change is one Lua script, atomic in Redis;
// on a Redis Cluster it is steps of one slot each (rediscluster.go). See
// the package documentation for the keys.
type Redis struct {
	// constant after OpenRedis
	rdb    redis.UniversalClient
	opts   RedisOptions
	limit  int
	log    *zap.Logger
	global redisGlobalKeys
	// cluster: the client is a Redis Cluster's; the shared indexes are
	// split in buckets (rediscluster.go).
	cluster bool

	sweepMu sync.Mutex // one sweep at a time

	closed atomic.Bool
}

var _ Store = (*Redis)(nil)

// redisGlobalKeys are the keys shared by every client.
type redisGlobalKeys struct {
	ids     string // hash: command id -> client id
	expiry  string // zset, score 0, member timeKey(ExpiresAt)+id: non-final with a TTL
	fin     string // zset, score 0, member timeKey(finished)+id: final commands
	counts  string // hash: status -> count
	clients string // zset, score 0, member client id: clients with non-final commands
	origins string // hash: origin -> number of commands holding it
	layout  string // string: the layout version of the keys ("2": every client has its list key)
}

// redisLayout is the layout version of the keys: 2 added the per-client
// list key of every command (List).
const redisLayout = "2"

// OpenRedis returns a store on the Redis client rdb, which it closes on
// Close: one primary (a *redis.Client or Sentinel's), or a Redis Cluster
// (a *redis.ClusterClient, whose every primary it checks). It checks that
// Redis answers, refuses a Redis Cluster node reached as one server (its
// other slots would fail) and a Redis that evicts any key when its memory
// is full, and warns when Redis keeps no append-only file.
func OpenRedis(rdb redis.UniversalClient, opts Options, ropts RedisOptions) (*Redis, error) {
	o := opts.withDefaults()
	ro := ropts.withDefaults()
	if strings.ContainsAny(ro.Prefix, "{}") {
		return nil, fmt.Errorf("%w: redis key prefix %q holds a brace", ErrInvalid, ro.Prefix)
	}
	p := ro.Prefix + ":"
	r := &Redis{
		rdb: rdb, opts: ro, limit: o.Limit, log: o.Logger,
		global: redisGlobalKeys{
			ids: p + "ids", expiry: p + "exp", fin: p + "fin", counts: p + "counts",
			clients: p + "clients", origins: p + "origins", layout: p + "layout",
		},
	}
	ctx, cancel := r.ctx()
	defer cancel()
	cc, cluster := rdb.(*redis.ClusterClient)
	r.cluster = cluster
	var infos []map[string]string
	if cluster {
		var mu sync.Mutex
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			info, err := c.Info(ctx, "server", "persistence", "cluster", "replication", "memory").Result()
			mu.Lock()
			infos = append(infos, parseInfo(info))
			mu.Unlock()
			return err
		})
		if err != nil {
			return nil, r.unavailable("open", err)
		}
	} else {
		info, err := rdb.Info(ctx, "server", "persistence", "cluster", "replication", "memory").Result()
		if err != nil {
			return nil, r.unavailable("open", err)
		}
		infos = append(infos, parseInfo(info))
	}
	for _, fields := range infos {
		if err := r.checkInfo(fields); err != nil {
			return nil, err
		}
	}
	fields := infos[0]
	if cluster {
		if err := r.loadScripts(ctx); err != nil {
			return nil, r.unavailable("open", err)
		}
	} else if err := r.indexByClient(); err != nil {
		return nil, err
	}
	counts, err := r.Stats()
	if err != nil {
		return nil, err
	}
	r.log.Info("command store opened on redis",
		zap.String("redis", fields["redis_version"]),
		zap.Bool("cluster", cluster),
		zap.Int("primaries", len(infos)),
		zap.String("prefix", ro.Prefix),
		zap.Bool("aof", fields["aof_enabled"] == "1"),
		zap.Int("wait_replicas", ro.WaitReplicas),
		zap.Int("non_final", counts.NonFinal()),
		zap.Int("clients", counts.Clients),
		zap.Int("limit", r.limit))
	return r, nil
}

// checkInfo checks the INFO of one primary.
func (r *Redis) checkInfo(fields map[string]string) error {
	ro := r.opts
	if fields["cluster_enabled"] == "1" && !r.cluster {
		return errors.New("store: this Redis runs in cluster mode: name the cluster with redis+cluster://host:port?addr=host:port... (see docs/operations.md, Cluster mode)")
	}
	if policy := fields["maxmemory_policy"]; strings.HasPrefix(policy, "allkeys-") {
		return fmt.Errorf("store: this Redis evicts any key when full (maxmemory-policy %s), pending commands included; set maxmemory-policy noeviction: see docs/operations.md, Cluster mode", policy)
	}
	if fields["aof_enabled"] != "1" {
		r.log.Warn("redis keeps no append-only file (appendonly no): pending commands are lost if Redis restarts; see docs/operations.md, Cluster mode",
			zap.String("redis", fields["redis_version"]))
	}
	if ro.WaitReplicas > 0 {
		if n, _ := strconv.Atoi(fields["connected_slaves"]); n < ro.WaitReplicas {
			r.log.Warn("redis has fewer replicas than --cluster-wait-replicas: new commands are refused until they connect",
				zap.Int("replicas", n), zap.Int("wanted", ro.WaitReplicas))
		}
	}
	return nil
}

// indexByClient brings keys of layout 1 (before List) to layout 2: every
// command gets its member in its client's list key. It runs once per
// Redis (the layout key says it ran) and is harmless if two gateways run
// it at once, or if it is cut short and runs again.
func (r *Redis) indexByClient() error {
	ctx := context.Background()
	v, err := r.rdb.Get(ctx, r.global.layout).Result()
	if err == nil && v == redisLayout {
		return nil
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return r.unavailable("open", err)
	}
	n := 0
	iter := r.rdb.HScan(ctx, r.global.ids, 0, "", 1000).Iterator()
	for iter.Next(ctx) {
		id := iter.Val()
		if !iter.Next(ctx) {
			break
		}
		client := iter.Val()
		rec, err := r.rdb.Get(ctx, r.recordKey(client, id)).Bytes()
		if errors.Is(err, redis.Nil) {
			continue // pruned meanwhile
		}
		if err != nil {
			return r.unavailable("open: index commands by client", err)
		}
		c, err := decodeCommand(rec)
		if err != nil {
			return fmt.Errorf("store: command %s: %w", id, err)
		}
		if err := r.rdb.ZAdd(ctx, r.listKey(client), redis.Z{Member: hexTimeKey(c.CreatedAt, c.ID)}).Err(); err != nil {
			return r.unavailable("open: index commands by client", err)
		}
		n++
	}
	if err := iter.Err(); err != nil {
		return r.unavailable("open: index commands by client", err)
	}
	if err := r.rdb.Set(ctx, r.global.layout, redisLayout, 0).Err(); err != nil {
		return r.unavailable("open", err)
	}
	if n > 0 {
		r.log.Info("commands indexed by client for listing (redis key layout 1 to 2)", zap.Int("commands", n))
	}
	return nil
}

// parseInfo splits the lines of INFO into a map.
func parseInfo(info string) map[string]string {
	out := make(map[string]string)
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// ctx bounds one call: Timeout, plus WaitTimeout when a write may wait for
// replicas (the WAIT's own answer must not be cut short).
func (r *Redis) ctx() (context.Context, context.CancelFunc) {
	d := r.opts.Timeout
	if r.opts.WaitReplicas > 0 {
		d += r.opts.WaitTimeout
	}
	return context.WithTimeout(context.Background(), d)
}

// unavailable wraps an error of the Redis client.
func (r *Redis) unavailable(op string, err error) error {
	if r.closed.Load() || errors.Is(err, redis.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// clientKey is the key of one of a client's records: every key of a client
// carries its id as the hash tag, after the id's length so that no two
// (client, suffix) pairs make the same key whatever bytes the id holds.
func (r *Redis) clientKey(clientID, suffix string) string {
	var b strings.Builder
	b.Grow(len(r.opts.Prefix) + len(clientID) + len(suffix) + 12)
	b.WriteString(r.opts.Prefix)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(len(clientID)))
	b.WriteString(":{")
	b.WriteString(clientID)
	b.WriteString("}:")
	b.WriteString(suffix)
	return b.String()
}

// queueKey: zset, score 0, member timeKey(CreatedAt)+id: the client's
// non-final commands, oldest first.
func (r *Redis) queueKey(clientID string) string { return r.clientKey(clientID, "q") }

// listKey: zset, score 0, member timeKey(CreatedAt)+id: every command of
// the client, final ones until they are pruned (List).
func (r *Redis) listKey(clientID string) string { return r.clientKey(clientID, "a") }

// recordKey: string, the command's record (the binary encoding of Bolt).
func (r *Redis) recordKey(clientID, id string) string { return r.clientKey(clientID, "c:"+id) }

// hexTimeKey is t as 16 lower-case hex digits whose byte order is time
// order, followed by id: a member of the sorted sets kept in byte order.
func hexTimeKey(t time.Time, id string) string {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(t.UnixNano())^(1<<63))
	return hex.EncodeToString(k[:]) + id
}

const hexTimeLen = 16

// putScript stores a new command unless its id exists or its client is
// full. It returns {0} (stored), {1} (id exists) or {2, n} (full with n).
var putScript = redis.NewScript(`
-- KEYS: ids, queue, record, expiry, counts, clients, origins, list
-- ARGV: id, client, record, queue member, expiry member or "", origin or "", status, limit
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1} end
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[8]) then return {2, n} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[4])
redis.call('ZADD', KEYS[8], 0, ARGV[4])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[4], 0, ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[6], 1) end
if n == 0 then redis.call('ZADD', KEYS[6], 0, ARGV[2]) end
redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
return {0}
`)

// moveScript writes a command after a transition, if its record is still
// the one the transition was computed from (compare and set on the
// record's SHA-1). It returns 1 (written), 0 (the command is gone) or -1
// (it changed meanwhile: read it again).
var moveScript = redis.NewScript(`
-- KEYS: record, queue, expiry, finished, counts, clients
-- ARGV: sha1 of the record read, new record, from, to, final "1"/"0",
--       queue member, expiry member or "", finished member, client
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if redis.sha1hex(cur) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[6])
  if ARGV[7] ~= '' then redis.call('ZREM', KEYS[3], ARGV[7]) end
  redis.call('ZADD', KEYS[4], 0, ARGV[8])
  if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('ZREM', KEYS[6], ARGV[9]) end
end
redis.call('HINCRBY', KEYS[5], ARGV[3], -1)
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
return 1
`)

// pruneScript deletes a final command, once: 1 deleted, 0 already gone.
var pruneScript = redis.NewScript(`
-- KEYS: record, finished, ids, origins, counts, list
-- ARGV: finished member, id, origin or "", status, list member
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[6], ARGV[5])
redis.call('HDEL', KEYS[3], ARGV[2])
if ARGV[3] ~= '' then
  if redis.call('HINCRBY', KEYS[4], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[4], ARGV[3]) end
end
redis.call('HINCRBY', KEYS[5], ARGV[4], -1)
return 1
`)

// write runs a script that changes data and, when replicas must confirm,
// WAIT on the same connection. confirmed is false when fewer replicas than
// WaitReplicas acknowledged within WaitTimeout.
func (r *Redis) write(ctx context.Context, s *redis.Script, keys []string, args ...any) (res any, confirmed bool, err error) {
	if r.opts.WaitReplicas <= 0 {
		res, err = s.Run(ctx, r.rdb, keys, args...).Result()
		return res, true, err
	}
	c, err := r.waitClient(ctx, keys[0])
	if err != nil {
		return nil, false, err
	}
	for range 2 {
		pipe := c.Pipeline()
		cmd := s.EvalSha(ctx, pipe, keys, args...)
		// The client's read timeout must exceed WaitTimeout: see
		// NewRedisClient.
		wait := pipe.Do(ctx, "wait", r.opts.WaitReplicas, r.opts.WaitTimeout.Milliseconds())
		_, err = pipe.Exec(ctx)
		if err != nil && redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			// Redis restarted and forgot the script: nothing ran.
			if err := s.Load(ctx, r.rdb).Err(); err != nil {
				return nil, false, err
			}
			continue
		}
		if cmd.Err() != nil {
			return nil, false, cmd.Err()
		}
		res = cmd.Val()
		if wait.Err() != nil {
			return res, false, nil
		}
		n, _ := wait.Int64()
		return res, n >= int64(r.opts.WaitReplicas), nil
	}
	return nil, false, err
}

// Put implements Store.
func (r *Redis) Put(c *Command) error {
	if r.closed.Load() {
		return ErrClosed
	}
	d, err := prepare(c)
	if err != nil {
		return err
	}
	rec := appendCommand(make([]byte, 0, recordSize(d)), d)
	if r.cluster {
		return r.clusterPut(d, rec)
	}
	expiry := ""
	if !d.ExpiresAt.IsZero() {
		expiry = hexTimeKey(d.ExpiresAt, d.ID)
	}
	g := r.global
	ctx, cancel := r.ctx()
	defer cancel()
	res, confirmed, err := r.write(ctx, putScript,
		[]string{g.ids, r.queueKey(d.ClientID), r.recordKey(d.ClientID, d.ID), g.expiry, g.counts, g.clients, g.origins, r.listKey(d.ClientID)},
		d.ID, d.ClientID, rec, hexTimeKey(d.CreatedAt, d.ID), expiry, d.Origin, string(d.Status), r.limit)
	if err != nil {
		return r.unavailable("put "+d.ID, err)
	}
	out, _ := res.([]any)
	code, _ := at0(out).(int64)
	switch code {
	case 1:
		return fmt.Errorf("%w: %s", ErrExists, d.ID)
	case 2:
		var n int64
		if len(out) > 1 {
			n, _ = out[1].(int64)
		}
		return fmt.Errorf("%w: %s has %d (limit %d)", ErrFull, d.ClientID, n, r.limit)
	}
	if !confirmed {
		return fmt.Errorf("%w: command %s is on the primary but fewer than %d replicas confirmed it within %s; it may still be delivered",
			ErrUnavailable, d.ID, r.opts.WaitReplicas, r.opts.WaitTimeout)
	}
	return nil
}

func at0(s []any) any {
	if len(s) == 0 {
		return nil
	}
	return s[0]
}

// Get implements Store.
func (r *Redis) Get(id string) (*Command, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := r.ctx()
	defer cancel()
	c, _, err := r.load(ctx, id)
	return c, err
}

// load reads a command and the SHA-1 of its record.
func (r *Redis) load(ctx context.Context, id string) (*Command, string, error) {
	if r.cluster {
		return r.clusterLoad(ctx, id)
	}
	client, err := r.rdb.HGet(ctx, r.global.ids, id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, "", r.unavailable("get "+id, err)
	}
	return r.loadRecord(ctx, client, id)
}

// loadRecord reads the record of client's command id.
func (r *Redis) loadRecord(ctx context.Context, client, id string) (*Command, string, error) {
	rec, err := r.rdb.Get(ctx, r.recordKey(client, id)).Bytes()
	if errors.Is(err, redis.Nil) {
		// Pruned between the two reads.
		return nil, "", fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, "", r.unavailable("get "+id, err)
	}
	c, err := decodeCommand(rec)
	if err != nil {
		return nil, "", fmt.Errorf("store: command %s: %w", id, err)
	}
	sum := sha1.Sum(rec)
	return c, hex.EncodeToString(sum[:]), nil
}

// Pending implements Store.
func (r *Redis) Pending(clientID string) ([]*Command, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	if clientID == "" {
		return nil, nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	members, err := r.rdb.ZRange(ctx, r.queueKey(clientID), 0, -1).Result()
	if err != nil {
		return nil, r.unavailable("pending", err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	keys := make([]string, len(members))
	for i, m := range members {
		if len(m) <= hexTimeLen {
			return nil, fmt.Errorf("%w: queue member %q", ErrCorrupt, m)
		}
		keys[i] = r.recordKey(clientID, m[hexTimeLen:])
	}
	recs, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, r.unavailable("pending", err)
	}
	out := make([]*Command, 0, len(recs))
	for i, v := range recs {
		s, ok := v.(string)
		if !ok {
			// Finished and pruned between the two reads.
			continue
		}
		c, err := decodeCommand([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("store: command %s: %w", members[i][hexTimeLen:], err)
		}
		if !c.Status.Final() {
			out = append(out, c)
		}
	}
	return out, nil
}

// List implements Store: a reverse range of the client's list key, from
// the cursor, and the records of that page.
func (r *Redis) List(clientID, cursor string, limit int) ([]*Command, string, error) {
	if r.closed.Load() {
		return nil, "", ErrClosed
	}
	if err := checkLimit(limit); err != nil {
		return nil, "", err
	}
	pos, after, err := parseCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	if clientID == "" {
		return nil, "", nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	maxMember := "+"
	if after {
		maxMember = "(" + hex.EncodeToString(pos[:8]) + string(pos[8:])
	}
	// One more than the page: whether it exists decides the next cursor.
	members, err := r.rdb.ZRevRangeByLex(ctx, r.listKey(clientID), &redis.ZRangeBy{
		Min: "-", Max: maxMember, Count: int64(limit) + 1,
	}).Result()
	if err != nil {
		return nil, "", r.unavailable("list", err)
	}
	more := len(members) > limit
	if more {
		members = members[:limit]
	}
	if len(members) == 0 {
		return nil, "", nil
	}
	keys := make([]string, len(members))
	for i, m := range members {
		if len(m) <= hexTimeLen {
			return nil, "", fmt.Errorf("%w: list member %q", ErrCorrupt, m)
		}
		keys[i] = r.recordKey(clientID, m[hexTimeLen:])
	}
	recs, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, "", r.unavailable("list", err)
	}
	out := make([]*Command, 0, len(recs))
	for i, v := range recs {
		s, ok := v.(string)
		if !ok {
			continue // pruned between the two reads
		}
		c, err := decodeCommand([]byte(s))
		if err != nil {
			return nil, "", fmt.Errorf("store: command %s: %w", members[i][hexTimeLen:], err)
		}
		out = append(out, c)
	}
	next := ""
	if more {
		// The position of the page's last member, listed or pruned.
		m := members[len(members)-1]
		t, err := hex.DecodeString(m[:hexTimeLen])
		if err != nil {
			return nil, "", fmt.Errorf("%w: list member %q", ErrCorrupt, m)
		}
		next = encodeCursor(append(t, m[hexTimeLen:]...))
	}
	return out, next, nil
}

// CountPending implements Store.
func (r *Redis) CountPending(clientID string) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if clientID == "" {
		return 0, nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	n, err := r.rdb.ZCard(ctx, r.queueKey(clientID)).Result()
	if err != nil {
		return 0, r.unavailable("count pending", err)
	}
	return int(n), nil
}

// casRetries bounds the rereads of a command changed by another caller
// during a transition.
const casRetries = 16

// Transition implements Store.
func (r *Redis) Transition(id string, to Status, at time.Time, note string) (*Command, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := r.ctx()
	defer cancel()
	return r.transition(ctx, id, to, at, note)
}

func (r *Redis) transition(ctx context.Context, id string, to Status, at time.Time, note string) (*Command, error) {
	for range casRetries {
		c, sum, err := r.load(ctx, id)
		if err != nil {
			return nil, err
		}
		from := c.Status
		if err := move(c, to, at, note); err != nil {
			return nil, err
		}
		if r.cluster {
			res, confirmed, err := r.clusterMove(ctx, c, sum)
			if err != nil {
				return nil, r.unavailable("transition "+id, err)
			}
			if done, c, err := r.moved(res, confirmed, c, id, to); done {
				return c, err
			}
			continue
		}
		final, expiry, finished := "0", "", ""
		if to.Final() {
			final = "1"
			finished = hexTimeKey(c.FinishedAt(), c.ID)
			if !c.ExpiresAt.IsZero() {
				expiry = hexTimeKey(c.ExpiresAt, c.ID)
			}
		}
		g := r.global
		res, confirmed, err := r.write(ctx, moveScript,
			[]string{r.recordKey(c.ClientID, id), r.queueKey(c.ClientID), g.expiry, g.fin, g.counts, g.clients},
			sum, appendCommand(make([]byte, 0, recordSize(c)), c), string(from), string(to), final,
			hexTimeKey(c.CreatedAt, c.ID), expiry, finished, c.ClientID)
		if err != nil {
			return nil, r.unavailable("transition "+id, err)
		}
		code, _ := res.(int64)
		if done, c, err := r.moved(code, confirmed, c, id, to); done {
			return c, err
		}
	}
	return nil, fmt.Errorf("%w: transition %s: the command kept changing under %d attempts", ErrUnavailable, id, casRetries)
}

// moved interprets the answer of a transition's write: done unless the
// command changed meanwhile (another caller, another gateway), when it is
// read again.
func (r *Redis) moved(code int64, confirmed bool, c *Command, id string, to Status) (bool, *Command, error) {
	switch code {
	case 1:
		if !confirmed {
			r.log.Warn("a command's transition is on the redis primary but its replicas did not confirm it in time",
				zap.String("id", id), zap.String("status", string(to)), zap.Int("wait_replicas", r.opts.WaitReplicas))
		}
		return true, c, nil
	case 0:
		return true, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return false, nil, nil
}

// Expire implements Store.
func (r *Redis) Expire(now time.Time) ([]*Command, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	if !storable(now) {
		return nil, fmt.Errorf("%w: time %s out of range", ErrInvalid, now)
	}
	ctx, cancel := r.ctx()
	defer cancel()
	// Members up to now inclusive: every member of an expiry at or before
	// now is below the key of now plus one nanosecond.
	var members []string
	var err error
	if maxMember := "(" + hexTimeKey(now.Add(time.Nanosecond), ""); r.cluster {
		members, err = r.lexRange(ctx, func(b bucketKeys) string { return b.expiry }, maxMember)
	} else {
		members, err = r.rdb.ZRangeByLex(ctx, r.global.expiry, &redis.ZRangeBy{Min: "-", Max: maxMember}).Result()
	}
	if err != nil {
		return nil, r.unavailable("expire", err)
	}
	// Each command gets the whole timeout: a thousand commands expiring at
	// once are a thousand calls.
	var out []*Command
	for _, m := range members {
		if len(m) <= hexTimeLen {
			return out, fmt.Errorf("%w: expiry member %q", ErrCorrupt, m)
		}
		ctx, cancel := r.ctx()
		c, err := r.transition(ctx, m[hexTimeLen:], StatusExpired, now, noteExpired)
		cancel()
		switch {
		case errors.Is(err, ErrBadTransition), errors.Is(err, ErrNotFound):
			// Finished by another caller meanwhile.
			continue
		case err != nil:
			return out, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Prune implements Store.
func (r *Redis) Prune(before time.Time) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if !storable(before) {
		return 0, fmt.Errorf("%w: time %s out of range", ErrInvalid, before)
	}
	ctx, cancel := r.ctx()
	defer cancel()
	var members []string
	var err error
	if maxMember := "(" + hexTimeKey(before, ""); r.cluster {
		if err := r.sweep(time.Now()); err != nil {
			return 0, err
		}
		members, err = r.lexRange(ctx, func(b bucketKeys) string { return b.fin }, maxMember)
	} else {
		members, err = r.rdb.ZRangeByLex(ctx, r.global.fin, &redis.ZRangeBy{Min: "-", Max: maxMember}).Result()
	}
	if err != nil {
		return 0, r.unavailable("prune", err)
	}
	n := 0
	for _, m := range members {
		if len(m) <= hexTimeLen {
			return n, fmt.Errorf("%w: finished member %q", ErrCorrupt, m)
		}
		deleted, err := r.prune(m)
		if err != nil {
			return n, err
		}
		if deleted {
			n++
		}
	}
	return n, nil
}

// prune deletes the final command of a member of the finished index.
func (r *Redis) prune(member string) (bool, error) {
	if r.cluster {
		return r.clusterPrune(member)
	}
	ctx, cancel := r.ctx()
	defer cancel()
	id := member[hexTimeLen:]
	c, _, err := r.load(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	g := r.global
	res, err := pruneScript.Run(ctx, r.rdb,
		[]string{r.recordKey(c.ClientID, id), g.fin, g.ids, g.origins, g.counts, r.listKey(c.ClientID)},
		member, id, c.Origin, string(c.Status), hexTimeKey(c.CreatedAt, c.ID)).Result()
	if err != nil {
		return false, r.unavailable("prune", err)
	}
	return res == int64(1), nil
}

// Stats implements Store.
func (r *Redis) Stats() (Counts, error) {
	if r.closed.Load() {
		return Counts{}, ErrClosed
	}
	ctx, cancel := r.ctx()
	defer cancel()
	if r.cluster {
		return r.clusterStats(ctx)
	}
	var all *redis.MapStringStringCmd
	var clients *redis.IntCmd
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		all = p.HGetAll(ctx, r.global.counts)
		clients = p.ZCard(ctx, r.global.clients)
		return nil
	})
	if err != nil {
		return Counts{}, r.unavailable("stats", err)
	}
	var counts Counts
	for k, v := range all.Val() {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || !Status(k).Valid() {
			return Counts{}, fmt.Errorf("%w: count %s = %q", ErrCorrupt, k, v)
		}
		counts.add(Status(k), n)
	}
	counts.Clients = int(clients.Val())
	return counts, nil
}

// Clients implements Store.
func (r *Redis) Clients() ([]string, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := r.ctx()
	defer cancel()
	// Equal scores: Redis orders the members by their bytes.
	var out []string
	if r.cluster {
		cmds, err := eachBucket(ctx, r, func(p redis.Pipeliner, b bucketKeys) *redis.StringSliceCmd {
			return p.ZRange(ctx, b.clients, 0, -1)
		})
		if err != nil {
			return nil, r.unavailable("clients", err)
		}
		for _, c := range cmds {
			out = append(out, c.Val()...)
		}
		slices.Sort(out)
	} else {
		var err error
		if out, err = r.rdb.ZRange(ctx, r.global.clients, 0, -1).Result(); err != nil {
			return nil, r.unavailable("clients", err)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// HasOrigin implements Store.
func (r *Redis) HasOrigin(origin string) (bool, error) {
	if r.closed.Load() {
		return false, ErrClosed
	}
	if origin == "" {
		return false, nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	if r.cluster {
		cmds, err := eachBucket(ctx, r, func(p redis.Pipeliner, b bucketKeys) *redis.BoolCmd {
			return p.HExists(ctx, b.origins, origin)
		})
		if err != nil {
			return false, r.unavailable("origin", err)
		}
		return slices.ContainsFunc(cmds, func(c *redis.BoolCmd) bool { return c.Val() }), nil
	}
	ok, err := r.rdb.HExists(ctx, r.global.origins, origin).Result()
	if err != nil {
		return false, r.unavailable("origin", err)
	}
	return ok, nil
}

// Close implements Store: it closes the Redis client.
func (r *Redis) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	if err := r.rdb.Close(); err != nil {
		return fmt.Errorf("store: close redis: %w", err)
	}
	r.log.Info("command store on redis closed")
	return nil
}
