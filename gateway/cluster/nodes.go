package cluster

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Node is a live node: its name and the addresses it advertises.
type Node struct {
	ID    string
	Plain string // advertised plain MQTT address
	TLS   string // advertised TLS address
	Since int64  // Unix milliseconds its process joined
}

// beatScript renews the node's heartbeat and says whether it was there.
var beatScript = redis.NewScript(`
-- KEYS: the node's heartbeat hash, the nodes zset
-- ARGV: plain, tls, since, ttl ms, node, now ms
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'plain', ARGV[1], 'tls', ARGV[2], 'since', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
return existed
`)

// nodesScript returns the live nodes (name, plain, tls, since, four
// values each) and the names of the dead ones: in the nodes zset without
// a heartbeat.
var nodesScript = redis.NewScript(`
-- KEYS: the nodes zset; ARGV: prefix
local live, dead = {}, {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HMGET', ARGV[1] .. ':alive:' .. n, 'plain', 'tls', 'since')
  if h[3] then
    table.insert(live, n)
    table.insert(live, h[1] or '')
    table.insert(live, h[2] or '')
    table.insert(live, h[3])
  else
    table.insert(dead, n)
  end
end
return {live, dead}
`)

// sweepScript deletes, from a page of a node's index, the records that
// name the node and are older than a bound (” for any); members that do
// not name the node any more leave the index too. With dead set, it does
// nothing if the node is live, and takes a node with an empty index out
// of the nodes zset. It returns the next cursor (” when done) and the
// number of records deleted.
var sweepScript = redis.NewScript(`
-- KEYS: the node's index, the nodes zset
-- ARGV: prefix, node, cursor, page, epoch bound (20 digits) or '', dead '1'/'0'
local p, node = ARGV[1], ARGV[2]
if ARGV[6] == '1' and redis.call('EXISTS', p .. ':alive:' .. node) == 1 then return {'', 0} end
local function older(a, b)
  local ah, bh = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if ah ~= bh then return ah < bh end
  return tonumber(string.sub(a, 11, 20)) < tonumber(string.sub(b, 11, 20))
end
local from = '-'
if ARGV[3] ~= '' then from = '(' .. ARGV[3] end
local page = tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, page)
local n = 0
for _, id in ipairs(ids) do
  local k = p .. ':' .. #id .. ':{' .. id .. '}:dev'
  local cur = redis.call('GET', k)
  local bar = cur and string.find(cur, '|', 21, true)
  if bar and string.sub(cur, 21, bar - 1) == node then
    if ARGV[5] == '' or older(string.sub(cur, 1, 20), ARGV[5]) then
      redis.call('DEL', k)
      redis.call('ZREM', KEYS[1], id)
      n = n + 1
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
if #ids < page then
  if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], node) end
  return {'', n}
end
return {ids[#ids], n}
`)

// leaveScript removes the node's heartbeat: it is gone at once.
var leaveScript = redis.NewScript(`
-- KEYS: the node's heartbeat hash, the nodes zset; ARGV: node
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
`)

// heartbeat renews the node's key every NodeTTL/3 and, after each
// renewal, sweeps a page of the records left by dead nodes and, until it
// is done, by this node's previous run.
func (m *Member) heartbeat() {
	defer m.wg.Done()
	every := m.opts.NodeTTL / 3
	since := strconv.FormatInt(m.opts.Now().UnixMilli(), 10)
	first := true
	ownCursor, ownDone := "", false
	deadCursor := map[string]string{}
	var wait time.Duration
	for {
		ctx, cancel := m.ctx(context.Background())
		existed, err := beatScript.Run(ctx, m.rdb, []string{m.keys.alive, m.keys.nodes},
			m.opts.AdvertisePlain, m.opts.AdvertiseTLS, since, m.opts.NodeTTL.Milliseconds(),
			m.opts.Node, m.opts.Now().UnixMilli()).Int()
		if err == nil && existed == 0 && !first {
			m.c.rejoins.Add(1)
			m.log.Warn("cluster: this node's heartbeat was gone from redis (redis lost its data, or was away longer than the node ttl); announcing the devices again",
				zap.String("node", m.opts.Node), zap.Duration("ttl", m.opts.NodeTTL))
			if m.opts.OnRejoin != nil {
				m.opts.OnRejoin()
			}
		}
		if err == nil {
			first = false
			if !ownDone {
				ownCursor, ownDone, err = m.sweep(ctx, m.opts.Node, ownCursor, epochArg(m.startEpoch), false)
			}
		}
		if err == nil {
			err = m.sweepDead(ctx, deadCursor)
		}
		cancel()
		d := every
		if err != nil {
			m.c.errors.Add(1)
			m.log.Warn("cluster: heartbeat not renewed, redis unavailable", zap.String("node", m.opts.Node), zap.Error(err))
			wait = m.backoff(wait)
			d = min(wait, every)
		} else {
			wait = 0
		}
		if !m.sleep(d) {
			return
		}
	}
}

// sweep deletes a page of a node's records: of a dead node, or of this
// node's previous run (older than bound).
func (m *Member) sweep(ctx context.Context, node, cursor, bound string, dead bool) (string, bool, error) {
	d := "0"
	if dead {
		d = "1"
	}
	if m.cluster {
		return m.clusterSweep(ctx, node, cursor, bound, dead)
	}
	res, err := sweepScript.Run(ctx, m.rdb, []string{indexKey(m.np, node), m.keys.nodes},
		m.opts.Prefix, node, cursor, sweepPage, bound, d).Slice()
	if err != nil {
		return cursor, false, err
	}
	if len(res) != 2 {
		return cursor, false, fmt.Errorf("cluster: sweep: unexpected answer %v", res)
	}
	next, _ := res[0].(string)
	n, _ := res[1].(int64)
	m.c.swept.Add(uint64(n))
	return next, next == "", nil
}

// sweepDead sweeps one page of each dead node's records; cursors holds
// where each sweep is.
func (m *Member) sweepDead(ctx context.Context, cursors map[string]string) error {
	_, dead, err := m.nodes(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(dead))
	for _, n := range dead {
		seen[n] = true
		next, done, err := m.sweep(ctx, n, cursors[n], "", true)
		if err != nil {
			return err
		}
		if done {
			delete(cursors, n)
		} else {
			cursors[n] = next
		}
	}
	for n := range cursors {
		if !seen[n] {
			delete(cursors, n)
		}
	}
	return nil
}

// nodes returns the live nodes and the names of the dead ones.
func (m *Member) nodes(ctx context.Context) ([]Node, []string, error) {
	res, err := nodesScript.Run(ctx, m.rdb, []string{m.keys.nodes}, m.np).Slice()
	if err != nil {
		return nil, nil, err
	}
	if len(res) != 2 {
		return nil, nil, fmt.Errorf("cluster: nodes: unexpected answer %v", res)
	}
	flat, _ := res[0].([]any)
	live := make([]Node, 0, len(flat)/4)
	for i := 0; i+3 < len(flat); i += 4 {
		var n Node
		n.ID, _ = flat[i].(string)
		n.Plain, _ = flat[i+1].(string)
		n.TLS, _ = flat[i+2].(string)
		s, _ := flat[i+3].(string)
		n.Since, _ = strconv.ParseInt(s, 10, 64)
		live = append(live, n)
	}
	if m.cluster {
		names := make([]string, len(live))
		for i, n := range live {
			names[i] = n.ID
		}
		m.live.Store(&names)
	}
	deadAny, _ := res[1].([]any)
	dead := make([]string, 0, len(deadAny))
	for _, d := range deadAny {
		if s, ok := d.(string); ok {
			dead = append(dead, s)
		}
	}
	return live, dead, nil
}

// LiveNodes returns the nodes whose heartbeat is in Redis, this one
// included once its first heartbeat is written, in name order. One round
// trip, within Options.Timeout.
func (m *Member) LiveNodes(ctx context.Context) ([]Node, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := m.ctx(ctx)
	defer cancel()
	live, _, err := m.nodes(ctx)
	if err != nil {
		return nil, m.unavailable("live nodes", err)
	}
	return live, nil
}

// leave removes this node's heartbeat; its records are swept by the
// others (or by this node's next run).
func (m *Member) leave(ctx context.Context) error {
	if err := leaveScript.Run(ctx, m.rdb, []string{m.keys.alive, m.keys.nodes}, m.opts.Node).Err(); err != nil {
		m.log.Warn("cluster: heartbeat not removed; it expires by itself", zap.String("node", m.opts.Node), zap.Error(err))
		return m.unavailable("leave", err)
	}
	return nil
}

// sweepDeviceScript deletes a device's record if it names node and is
// older than a bound (” for any): 1 deleted, 2 kept (newer), 0 not the
// node's.
var sweepDeviceScript = redis.NewScript(`
-- KEYS: the device key; ARGV: node, epoch bound (20 digits) or ''
local function older(a, b)
  local ah, bh = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if ah ~= bh then return ah < bh end
  return tonumber(string.sub(a, 11, 20)) < tonumber(string.sub(b, 11, 20))
end
local cur = redis.call('GET', KEYS[1])
local bar = cur and string.find(cur, '|', 21, true)
if not bar or string.sub(cur, 21, bar - 1) ~= ARGV[1] then return 0 end
if ARGV[2] == '' or older(string.sub(cur, 1, 20), ARGV[2]) then redis.call('DEL', KEYS[1]) return 1 end
return 2
`)

// clusterSweep is sweep on a Redis Cluster: a page of the node's index,
// then a script per device (pipelined), then the index.
func (m *Member) clusterSweep(ctx context.Context, node, cursor, bound string, dead bool) (string, bool, error) {
	idx := indexKey(m.np, node)
	from := "-"
	if cursor != "" {
		from = "(" + cursor
	}
	pipe := m.rdb.Pipeline()
	alive := pipe.Exists(ctx, aliveKey(m.np, node))
	page := pipe.ZRangeByLex(ctx, idx, &redis.ZRangeBy{Min: from, Max: "+", Count: sweepPage})
	if _, err := pipe.Exec(ctx); err != nil {
		return cursor, false, err
	}
	if dead && alive.Val() == 1 {
		return "", true, nil
	}
	ids := page.Val()
	if len(ids) > 0 {
		pipe := m.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(ids))
		for i, id := range ids {
			cmds[i] = sweepDeviceScript.EvalSha(ctx, pipe, []string{deviceKey(m.opts.Prefix, id)}, node, bound)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			if redis.HasErrorPrefix(err, "NOSCRIPT") {
				_ = sweepDeviceScript.Load(ctx, m.rdb).Err()
			}
			return cursor, false, err
		}
		var out []any
		n := 0
		for i, c := range cmds {
			switch c.Val() {
			case int64(1):
				n++
				out = append(out, ids[i])
			case int64(0):
				out = append(out, ids[i])
			}
		}
		if len(out) > 0 {
			if err := m.rdb.ZRem(ctx, idx, out...).Err(); err != nil {
				return cursor, false, err
			}
		}
		m.c.swept.Add(uint64(n))
	}
	if len(ids) < sweepPage {
		if dead {
			if n, err := m.rdb.Exists(ctx, idx).Result(); err == nil && n == 0 {
				_ = m.rdb.ZRem(ctx, m.keys.nodes, node).Err()
			}
		}
		return "", true, nil
	}
	return ids[len(ids)-1], false, nil
}
