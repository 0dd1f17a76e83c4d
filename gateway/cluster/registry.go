package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Mode is how a device is connected.
type Mode string

// The modes.
const (
	ModePlain Mode = "plain"
	ModeTLS   Mode = "tls"
)

// Record is where a device is connected: the node, how, since when, and
// the epoch of the session.
type Record struct {
	ClientID string
	Node     string // the node holding the session (Online sets its own)
	Mode     Mode
	Protocol uint8  // MQTT protocol level: 4 (3.1.1) or 5
	Since    int64  // Unix milliseconds of the CONNECT
	Epoch    uint64 // the session's epoch (NextEpoch)
}

// epochDigits is the width of an epoch in a record: every uint64 fits in
// 20 decimal digits, and the scripts compare two halves of 10 digits as
// Lua numbers (exact below 2^53).
const epochDigits = 20

// encode is the value of a device's key:
//
//	EPOCH(20 digits) NODE '|' MODE(p|t) PROTOCOL(digit) '|' SINCE(decimal ms)
func (r Record) encode(node string) string {
	b := make([]byte, 0, epochDigits+len(node)+20)
	var e [epochDigits]byte
	s := strconv.AppendUint(e[:0], r.Epoch, 10)
	for range epochDigits - len(s) {
		b = append(b, '0')
	}
	b = append(b, s...)
	b = append(b, node...)
	b = append(b, '|')
	if r.Mode == ModeTLS {
		b = append(b, 't')
	} else {
		b = append(b, 'p')
	}
	b = append(b, '0'+r.Protocol%10, '|')
	b = strconv.AppendInt(b, r.Since, 10)
	return string(b)
}

// decodeRecord parses a device's value.
func decodeRecord(clientID, v string) (Record, error) {
	bad := fmt.Errorf("cluster: record of %q is damaged: %q", clientID, v)
	if len(v) < epochDigits+5 {
		return Record{}, bad
	}
	e, err := strconv.ParseUint(v[:epochDigits], 10, 64)
	if err != nil {
		return Record{}, bad
	}
	node, rest, ok := strings.Cut(v[epochDigits:], "|")
	if !ok || len(rest) < 3 || rest[2] != '|' {
		return Record{}, bad
	}
	since, err := strconv.ParseInt(rest[3:], 10, 64)
	if err != nil {
		return Record{}, bad
	}
	r := Record{ClientID: clientID, Node: node, Epoch: e, Since: since, Protocol: rest[1] - '0', Mode: ModePlain}
	if rest[0] == 't' {
		r.Mode = ModeTLS
	}
	return r, nil
}

// epochArg is e as the scripts take it: 20 digits.
func epochArg(e uint64) string {
	s := strconv.FormatUint(e, 10)
	return strings.Repeat("0", epochDigits-len(s)) + s
}

// Online records that this node holds a session of rec.ClientID from now
// on (rec.Node is ignored: it is this node). It only queues the write: the
// writer sends it within FlushDelay, with others, and sends the node that
// held the device before a Takeover in the same script. rec.Epoch must
// come from NextEpoch at the CONNECT.
func (m *Member) Online(rec Record) {
	m.put(op{online: true, rec: rec})
}

// Offline records that this node's session of clientID with this epoch
// ended. A record of a newer session (here or on another node) is kept.
// It only queues the write.
func (m *Member) Offline(clientID string, epoch uint64) {
	m.put(op{rec: Record{ClientID: clientID, Epoch: epoch}})
}

func (m *Member) put(o op) {
	if m.closed.Load() || o.rec.ClientID == "" || o.rec.Epoch == 0 {
		m.c.dropped.Add(1)
		return
	}
	m.clk.observe(o.rec.Epoch)
	m.c.enqueued.Add(1)
	merged, dropped := m.q.put(o, m.opts.BatchSize)
	if merged {
		m.c.coalesced.Add(1)
	}
	if dropped > 0 {
		m.c.dropped.Add(uint64(dropped))
	}
}

// Flush waits until the queue is empty, every write and notification in
// Redis (or dropped), or until ctx ends: at shutdown, once no session is
// left to write, or in tests.
func (m *Member) Flush(ctx context.Context) error {
	for {
		n, idle := m.q.state()
		if idle == nil {
			return nil
		}
		signal(m.q.full)
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("cluster: flush with %d writes queued: %w", n, ctx.Err())
		}
	}
}

// batchScript applies a batch of registry writes. For each device it reads
// the record and:
//
//   - Online: writes the record unless a live node holds a newer session
//     (a higher epoch; at equal epochs the greater node name), and then
//     moves the device from the previous node's index to this node's and,
//     if that node is live, adds Takeover to its inbox. If it loses, it
//     adds Takeover with the newer epoch to this node's own inbox, so
//     this node closes its older session.
//   - Offline: deletes the record if it is this node's with this epoch or
//     an older one, and takes the device out of this node's index unless
//     a newer session of this node holds it.
//
// Every write is idempotent: a batch whose answer was lost can be sent
// again (a Takeover may then be sent twice, which its receiver ignores).
// It returns one code per write: 0 written, 1 written and Takeover sent,
// 2 refused (a newer session holds the device), 3 Offline of an older
// session (nothing deleted).
var batchScript = redis.NewScript(batchSource)

const batchSource = `
-- KEYS: the device keys, one per write
-- ARGV: prefix, this node, inbox MAXLEN, then per write:
--       '1' (online) or '0' (offline), client id, epoch (20 digits), record or ''
local p, me, maxlen = ARGV[1], ARGV[2], ARGV[3]
local function older(a, b)
  local ah, bh = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if ah ~= bh then return ah < bh end
  return tonumber(string.sub(a, 11, 20)) < tonumber(string.sub(b, 11, 20))
end
local myidx = p .. ':idx:' .. me
local out = {}
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 4
  local id, e = ARGV[j + 2], ARGV[j + 3]
  local cur = redis.call('GET', KEYS[i])
  local cn, ce
  local bar = cur and string.find(cur, '|', 21, true)
  if bar then
    ce = string.sub(cur, 1, 20)
    cn = string.sub(cur, 21, bar - 1)
  else
    cur = nil -- none, or damaged: written over
  end
  local r = 0
  if ARGV[j + 1] == '1' then
    local live = cur and (cn == me or redis.call('EXISTS', p .. ':alive:' .. cn) == 1)
    if live and (older(e, ce) or (e == ce and me < cn)) then
      if cn ~= me then
        redis.call('XADD', p .. ':inbox:' .. me, 'MAXLEN', '~', maxlen, '*', 'k', 't', 'c', id, 'e', ce, 'f', cn)
      end
      r = 2
    else
      redis.call('SET', KEYS[i], ARGV[j + 4])
      redis.call('ZADD', myidx, 0, id)
      if cur and cn ~= me then
        redis.call('ZREM', p .. ':idx:' .. cn, id)
        if live then
          redis.call('XADD', p .. ':inbox:' .. cn, 'MAXLEN', '~', maxlen, '*', 'k', 't', 'c', id, 'e', e, 'f', me)
          r = 1
        end
      end
    end
  else
    if cur and cn == me then
      if older(e, ce) then
        r = 3
      else
        redis.call('DEL', KEYS[i])
        redis.call('ZREM', myidx, id)
      end
    else
      redis.call('ZREM', myidx, id)
    end
  end
  out[i] = r
end
return out
`

// writer sends the queued writes and notifications in batches until the
// Member stops.
func (m *Member) writer() {
	defer m.wg.Done()
	select {
	case <-m.reading:
	case <-m.stop:
		return
	}
	var wait time.Duration
	for {
		select {
		case <-m.stop:
			return
		case <-m.q.full:
		case <-m.q.kick:
			// Gather for FlushDelay unless a batch fills first.
			t := time.NewTimer(m.opts.FlushDelay)
			select {
			case <-t.C:
			case <-m.q.full:
			case <-m.stop:
			}
			t.Stop()
		}
		for {
			ops, notes := m.q.take(m.opts.BatchSize)
			if len(ops) == 0 && len(notes) == 0 && len(m.backlog) == 0 {
				break
			}
			retryOps, retryNotes := m.write(ops, notes)
			if m.cluster {
				m.q.hold(len(m.backlog) / 4)
			}
			if d := m.q.settle(len(ops)+len(notes), retryOps, retryNotes); d > 0 {
				m.c.dropped.Add(uint64(d))
			}
			if len(retryOps)+len(retryNotes)+len(m.backlog) == 0 {
				wait = 0
				continue
			}
			wait = m.backoff(wait)
			if !m.sleep(wait) {
				return
			}
		}
	}
}

// write sends one batch in one round trip: the registry script and an
// XADD per notification, pipelined. It returns what must be sent again.
func (m *Member) write(ops []op, notes []note) ([]op, []note) {
	ctx, cancel := m.ctx(context.Background())
	defer cancel()
	m.c.batches.Add(1)
	if m.cluster {
		return m.clusterWrite(ctx, ops, notes)
	}
	pipe := m.rdb.Pipeline()
	var keys []string
	var args []any
	var script *redis.Cmd
	if len(ops) > 0 {
		keys = make([]string, len(ops))
		args = make([]any, 0, 3+4*len(ops))
		args = append(args, m.opts.Prefix, m.opts.Node, m.opts.InboxLen)
		for i, o := range ops {
			keys[i] = deviceKey(m.opts.Prefix, o.rec.ClientID)
			if o.online {
				args = append(args, "1", o.rec.ClientID, epochArg(o.rec.Epoch), o.rec.encode(m.opts.Node))
			} else {
				args = append(args, "0", o.rec.ClientID, epochArg(o.rec.Epoch), "")
			}
		}
		script = batchScript.EvalSha(ctx, pipe, keys, args...)
	}
	xadds := make([]*redis.StringCmd, len(notes))
	for i, n := range notes {
		xadds[i] = pipe.XAdd(ctx, m.xaddArgs(n.node, n.ev))
	}
	_, err := pipe.Exec(ctx)
	if script != nil && redis.HasErrorPrefix(script.Err(), "NOSCRIPT") {
		// Redis restarted or flushed its scripts: nothing of the script
		// ran. Load it and run it again on its own.
		if err = batchScript.Load(ctx, m.rdb).Err(); err == nil {
			script = batchScript.EvalSha(ctx, m.rdb, keys, args...)
			err = script.Err()
		} else {
			script = redis.NewCmd(ctx)
			script.SetErr(err)
		}
	}
	var retryNotes []note
	for i, x := range xadds {
		if x.Err() != nil {
			retryNotes = append(retryNotes, notes[i])
		} else {
			m.c.eventsSent.Add(1)
		}
	}
	var retryOps []op
	if script != nil {
		switch {
		case script.Err() == nil:
			m.settleOps(ops, script.Val())
		case transient(script.Err()):
			retryOps = ops
		default:
			// Redis refused the script (a key of another type under
			// the prefix...): sending it again would fail again. Each
			// write on its own finds the ones to drop.
			m.c.errors.Add(1)
			retryOps = m.writeEach(ctx, ops, keys, args)
		}
	}
	if len(retryOps)+len(retryNotes) > 0 {
		m.c.errors.Add(1)
		if err == nil {
			err = script.Err()
		}
		m.log.Warn("cluster: registry writes not made, retrying", zap.Int("writes", len(retryOps)),
			zap.Int("events", len(retryNotes)), zap.Error(err))
	}
	return retryOps, retryNotes
}

// transient tells whether a failed call may succeed if sent again: a
// network error or timeout, or a reply of a Redis that is loading, a
// replica, busy, or out of memory.
func transient(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true
	}
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT", "OOM"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// writeEach sends the writes of a batch that Redis refused one script per
// write, pipelined, drops (and logs) those refused again and returns
// those to retry.
func (m *Member) writeEach(ctx context.Context, ops []op, keys []string, args []any) []op {
	pipe := m.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ops))
	for i := range ops {
		a := append(append(make([]any, 0, 7), args[:3]...), args[3+4*i:3+4*i+4]...)
		cmds[i] = batchScript.EvalSha(ctx, pipe, keys[i:i+1], a...)
	}
	_, _ = pipe.Exec(ctx)
	var retry []op
	for i, c := range cmds {
		switch err := c.Err(); {
		case err == nil:
			m.settleOps(ops[i:i+1], c.Val())
		case transient(err):
			retry = append(retry, ops[i])
		default:
			m.c.dropped.Add(1)
			m.log.Error("cluster: registry write refused by redis, dropped",
				zap.String("client", ops[i].rec.ClientID), zap.Error(err))
		}
	}
	return retry
}

// settleOps counts the answers of batchScript.
func (m *Member) settleOps(ops []op, val any) {
	codes, _ := val.([]any)
	m.c.flushed.Add(uint64(len(ops)))
	for _, c := range codes {
		switch c {
		case int64(1):
			m.c.takeovers.Add(1)
		case int64(2):
			m.c.refused.Add(1)
		}
	}
}

// getScript reads a device's record and whether its node is live.
var getScript = redis.NewScript(`
-- KEYS: the device key; ARGV: prefix
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
local bar = string.find(cur, '|', 21, true)
if not bar then return {cur, 0} end
return {cur, redis.call('EXISTS', ARGV[1] .. ':alive:' .. string.sub(cur, 21, bar - 1))}
`)

// Get returns where a device is connected; false when it is not connected
// anywhere: no record, or a record of a node that is not live (its
// heartbeat expired: dead, or cut from Redis for NodeTTL). It reads Redis
// (one round trip), within Options.Timeout; what this node has queued
// and not yet written is not seen.
func (m *Member) Get(ctx context.Context, clientID string) (Record, bool, error) {
	if m.closed.Load() {
		return Record{}, false, ErrClosed
	}
	ctx, cancel := m.ctx(ctx)
	defer cancel()
	if m.cluster {
		return m.clusterGet(ctx, clientID)
	}
	res, err := getScript.Run(ctx, m.rdb, []string{deviceKey(m.opts.Prefix, clientID)}, m.opts.Prefix).Slice()
	if errors.Is(err, redis.Nil) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, m.unavailable("get", err)
	}
	if len(res) != 2 {
		return Record{}, false, fmt.Errorf("cluster: get %q: unexpected answer %v", clientID, res)
	}
	v, _ := res[0].(string)
	rec, err := decodeRecord(clientID, v)
	if err != nil {
		return Record{}, false, err
	}
	m.clk.observe(rec.Epoch)
	if live, _ := res[1].(int64); live != 1 {
		return Record{}, false, nil
	}
	return rec, true, nil
}

// listScript reads a page of a node's index, in client id order, with
// the records; members without a record of that node are dropped from
// the index on the way.
var listScript = redis.NewScript(`
-- KEYS: the node's index
-- ARGV: prefix, node, mode ('' any, 'p', 't'), cursor ('' from the start), limit
local p, node, mode = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. ':alive:' .. node) == 0 then return {'', {}} end
local from = '-'
if ARGV[4] ~= '' then from = '(' .. ARGV[4] end
local limit = tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  local cur = redis.call('GET', p .. ':' .. #id .. ':{' .. id .. '}:dev')
  local bar = cur and string.find(cur, '|', 21, true)
  if bar and string.sub(cur, 21, bar - 1) == node then
    if mode == '' or string.sub(cur, bar + 1, bar + 1) == mode then
      table.insert(out, id)
      table.insert(out, cur)
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
local next = ''
if #ids == limit then next = ids[#ids] end
return {next, out}
`)

// MaxListLimit bounds List's limit.
const MaxListLimit = 10_000

// List returns a page of the devices connected to node, in client id
// order, with mode "" (any), "plain" or "tls"; cursor is "" for the
// first page and then the cursor returned, which is "" after the last
// page. A page holds at most limit records, fewer when the mode filters
// some out (a short page is not the end: the cursor says). Every device
// connected throughout the listing is returned exactly once; a device
// that connects or leaves meanwhile may or may not be. A node that is not
// live lists nothing.
//
// Cost: one round trip and one script per page, O(log N + limit) in
// Redis for a node holding N devices (ZRANGEBYLEX on the node's index,
// then a GET per member); the script holds Redis for a few microseconds
// per member (limit 1,000: a few milliseconds).
func (m *Member) List(ctx context.Context, node, mode string, cursor string, limit int) ([]Record, string, error) {
	if m.closed.Load() {
		return nil, "", ErrClosed
	}
	if checkNode(node) != nil {
		return nil, "", fmt.Errorf("cluster: list: node %q is not a node name", node)
	}
	var mc string
	switch Mode(mode) {
	case "":
	case ModePlain:
		mc = "p"
	case ModeTLS:
		mc = "t"
	default:
		return nil, "", fmt.Errorf("cluster: list: mode %q: want \"\", %q or %q", mode, ModePlain, ModeTLS)
	}
	if limit <= 0 || limit > MaxListLimit {
		return nil, "", fmt.Errorf("cluster: list: limit %d: want 1..%d", limit, MaxListLimit)
	}
	ctx, cancel := m.ctx(ctx)
	defer cancel()
	if m.cluster {
		return m.clusterList(ctx, node, mc, cursor, limit)
	}
	res, err := listScript.Run(ctx, m.rdb, []string{indexKey(m.np, node)},
		m.opts.Prefix, node, mc, cursor, limit).Slice()
	if err != nil {
		return nil, "", m.unavailable("list", err)
	}
	if len(res) != 2 {
		return nil, "", fmt.Errorf("cluster: list: unexpected answer %v", res)
	}
	next, _ := res[0].(string)
	flat, _ := res[1].([]any)
	out := make([]Record, 0, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		id, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		rec, err := decodeRecord(id, v)
		if err != nil {
			return nil, "", err
		}
		out = append(out, rec)
	}
	return out, next, nil
}

// On a Redis Cluster a batch is two steps. The device step runs
// deviceScript once per hash slot of the batch's devices (pipelined: the
// client sends one round trip per primary, in parallel): it decides and
// writes each record. The node step then runs nodeScript once on the node
// keys' slot: the indexes, and the Takeover events for the nodes whose
// devices moved (if they are live) or for this node (an Online that
// lost). A node step Redis did not take is kept and sent again with the
// next batch's (Member.backlog): the device step's answer (which node
// held the device) is not found again once the record is written.

// deviceScript is the device step of a batch: the device keys of one
// slot. Per write it returns {code, node, epoch}: 0 written (node: the
// node that held the device before, or ”), 2 refused (a newer session
// on node, with epoch), 3 Offline of an older session, 4 Offline deleted
// the record, 5 Offline of a record that is not this node's.
var deviceScript = redis.NewScript(`
-- KEYS: the device keys of one slot, one per write
-- ARGV: this node, ' live nodes ' (or '' when unknown: all live), then per write:
--       '1' (online) or '0' (offline), client id, epoch (20 digits), record or ''
local me, live = ARGV[1], ARGV[2]
local function older(a, b)
  local ah, bh = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if ah ~= bh then return ah < bh end
  return tonumber(string.sub(a, 11, 20)) < tonumber(string.sub(b, 11, 20))
end
local out = {}
for i = 1, #KEYS do
  local j = 2 + (i - 1) * 4
  local e = ARGV[j + 3]
  local cur = redis.call('GET', KEYS[i])
  local cn, ce
  local bar = cur and string.find(cur, '|', 21, true)
  if bar then
    ce = string.sub(cur, 1, 20)
    cn = string.sub(cur, 21, bar - 1)
  else
    cur = nil
  end
  local r, n, x = 0, '', ''
  if ARGV[j + 1] == '1' then
    local alive = cur and (cn == me or live == '' or string.find(live, ' ' .. cn .. ' ', 1, true))
    if alive and (older(e, ce) or (e == ce and me < cn)) then
      r, n, x = 2, cn, ce
    else
      redis.call('SET', KEYS[i], ARGV[j + 4])
      if cur and cn ~= me then n = cn end
    end
  elseif cur and cn == me then
    if older(e, ce) then r = 3 else redis.call('DEL', KEYS[i]) r = 4 end
  else
    r = 5
  end
  out[i] = {r, n, x}
end
return out
`)

// nodeScript is the node step of a batch, on the node keys' slot. It
// returns the number of Takeover events sent to other nodes.
var nodeScript = redis.NewScript(`
-- KEYS: this node's index (every node key is in its slot)
-- ARGV: node key prefix, this node, inbox MAXLEN, then per entry: kind, client id, node, epoch
--   'a': add to this node's index; node, when not '', held the device: out of its
--        index, and Takeover{client, epoch} to it if it is live
--   'r': an Online refused: Takeover{client, epoch} from node to this node
--   'd': out of this node's index
local p, me, maxlen = ARGV[1], ARGV[2], ARGV[3]
local sent = 0
for j = 4, #ARGV, 4 do
  local k, id, n, e = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  if k == 'a' then
    redis.call('ZADD', KEYS[1], 0, id)
    if n ~= '' then
      redis.call('ZREM', p .. ':idx:' .. n, id)
      if redis.call('EXISTS', p .. ':alive:' .. n) == 1 then
        redis.call('XADD', p .. ':inbox:' .. n, 'MAXLEN', '~', maxlen, '*', 'k', 't', 'c', id, 'e', e, 'f', me)
        sent = sent + 1
      end
    end
  elseif k == 'r' then
    redis.call('XADD', p .. ':inbox:' .. me, 'MAXLEN', '~', maxlen, '*', 'k', 't', 'c', id, 'e', e, 'f', n)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return sent
`)

// clusterWrite is write on a Redis Cluster: the device step, the
// notifications, then the node step.
func (m *Member) clusterWrite(ctx context.Context, ops []op, notes []note) ([]op, []note) {
	live := ""
	if names := m.live.Load(); names != nil {
		live = " " + strings.Join(*names, " ") + " "
	}
	// Group the writes by slot: a script's keys must share one.
	groups := map[uint16][]int{}
	var order []uint16
	for i, o := range ops {
		s := keySlot(deviceKey(m.opts.Prefix, o.rec.ClientID))
		if _, ok := groups[s]; !ok {
			order = append(order, s)
		}
		groups[s] = append(groups[s], i)
	}
	pipe := m.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(order))
	for g, s := range order {
		idx := groups[s]
		keys := make([]string, len(idx))
		args := make([]any, 0, 2+4*len(idx))
		args = append(args, m.opts.Node, live)
		for k, i := range idx {
			o := ops[i]
			keys[k] = deviceKey(m.opts.Prefix, o.rec.ClientID)
			if o.online {
				args = append(args, "1", o.rec.ClientID, epochArg(o.rec.Epoch), o.rec.encode(m.opts.Node))
			} else {
				args = append(args, "0", o.rec.ClientID, epochArg(o.rec.Epoch), "")
			}
		}
		cmds[g] = deviceScript.EvalSha(ctx, pipe, keys, args...)
	}
	xadds := make([]*redis.StringCmd, len(notes))
	for i, n := range notes {
		xadds[i] = pipe.XAdd(ctx, m.xaddArgs(n.node, n.ev))
	}
	var err error
	if len(cmds)+len(xadds) > 0 {
		_, err = pipe.Exec(ctx)
	}
	var retryNotes []note
	for i, x := range xadds {
		if x.Err() != nil {
			retryNotes = append(retryNotes, notes[i])
		} else {
			m.c.eventsSent.Add(1)
		}
	}
	var retryOps []op
	noscript := false
	step := m.backlog
	m.backlog = nil
	// settle adds the node step of ops[i] from its device script's answer.
	settle := func(i int, one []any) {
		m.c.flushed.Add(1)
		if len(one) != 3 {
			return
		}
		code, _ := one[0].(int64)
		node, _ := one[1].(string)
		epoch, _ := one[2].(string)
		id := ops[i].rec.ClientID
		switch code {
		case 0:
			step = append(step, "a", id, node, epochArg(ops[i].rec.Epoch))
		case 2:
			m.c.refused.Add(1)
			if node != m.opts.Node {
				step = append(step, "r", id, node, epoch)
			}
		case 4, 5:
			step = append(step, "d", id, "", "")
		}
	}
	for g, s := range order {
		idx := groups[s]
		c := cmds[g]
		switch {
		case c.Err() == nil:
			res, _ := c.Val().([]any)
			for k, i := range idx {
				var one []any
				if k < len(res) {
					one, _ = res[k].([]any)
				}
				settle(i, one)
			}
		case transient(c.Err()):
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				noscript = true
			}
			for _, i := range idx {
				retryOps = append(retryOps, ops[i])
			}
		default:
			// Redis refused the script (a key of another type under the
			// prefix...): each write of the slot on its own finds the
			// ones to drop.
			m.c.errors.Add(1)
			for _, i := range idx {
				o := ops[i]
				online, rec := "0", ""
				if o.online {
					online, rec = "1", o.rec.encode(m.opts.Node)
				}
				res, err := deviceScript.Run(ctx, m.rdb, []string{deviceKey(m.opts.Prefix, o.rec.ClientID)},
					m.opts.Node, live, online, o.rec.ClientID, epochArg(o.rec.Epoch), rec).Slice()
				switch {
				case err == nil:
					one, _ := at(res, 0).([]any)
					settle(i, one)
				case transient(err):
					retryOps = append(retryOps, o)
				default:
					m.c.dropped.Add(1)
					m.log.Error("cluster: registry write refused by redis, dropped",
						zap.String("client", o.rec.ClientID), zap.Error(err))
				}
			}
		}
	}
	if noscript {
		_ = deviceScript.Load(ctx, m.rdb).Err()
	}
	if len(step) > 0 {
		args := append([]any{m.np, m.opts.Node, m.opts.InboxLen}, step...)
		sent, serr := nodeScript.Run(ctx, m.rdb, []string{m.keys.index}, args...).Int64()
		switch {
		case serr == nil:
			m.c.takeovers.Add(uint64(sent))
		case transient(serr):
			m.backlog = step
			err = errors.Join(err, serr)
		default:
			// A node key of another type: sending it again would fail
			// again.
			m.c.errors.Add(1)
			m.c.dropped.Add(uint64(len(step) / 4))
			m.log.Error("cluster: registry index updates refused by redis, dropped",
				zap.Int("updates", len(step)/4), zap.Error(serr))
		}
	}
	if len(retryOps)+len(retryNotes)+len(m.backlog) > 0 {
		m.c.errors.Add(1)
		m.log.Warn("cluster: registry writes not made, retrying", zap.Int("writes", len(retryOps)),
			zap.Int("events", len(retryNotes)), zap.Int("index_updates", len(m.backlog)/4), zap.Error(err))
	}
	return retryOps, retryNotes
}

func at(s []any, i int) any {
	if i < len(s) {
		return s[i]
	}
	return nil
}

// keySlot is the Redis Cluster hash slot of a key: CRC16 (XMODEM) of its
// hash tag (the bytes between the first '{' and the next '}', if any) or
// of the key, modulo 16384.
func keySlot(key string) uint16 {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

// clusterGet is Get on a Redis Cluster: the record, then its node's
// heartbeat.
func (m *Member) clusterGet(ctx context.Context, clientID string) (Record, bool, error) {
	v, err := m.rdb.Get(ctx, deviceKey(m.opts.Prefix, clientID)).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, m.unavailable("get", err)
	}
	rec, err := decodeRecord(clientID, v)
	if err != nil {
		return Record{}, false, err
	}
	m.clk.observe(rec.Epoch)
	live, err := m.rdb.Exists(ctx, aliveKey(m.np, rec.Node)).Result()
	if err != nil {
		return Record{}, false, m.unavailable("get", err)
	}
	if live != 1 {
		return Record{}, false, nil
	}
	return rec, true, nil
}

// clusterList is List on a Redis Cluster: a page of the node's index
// and its heartbeat, then the records (a round trip per primary, in
// parallel); members without a record of that node leave the index.
func (m *Member) clusterList(ctx context.Context, node, mc, cursor string, limit int) ([]Record, string, error) {
	from := "-"
	if cursor != "" {
		from = "(" + cursor
	}
	idx := indexKey(m.np, node)
	pipe := m.rdb.Pipeline()
	alive := pipe.Exists(ctx, aliveKey(m.np, node))
	page := pipe.ZRangeByLex(ctx, idx, &redis.ZRangeBy{Min: from, Max: "+", Count: int64(limit)})
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, "", m.unavailable("list", err)
	}
	ids := page.Val()
	if alive.Val() != 1 || len(ids) == 0 {
		return nil, "", nil
	}
	vals, stale, err := m.records(ctx, ids)
	if err != nil {
		return nil, "", m.unavailable("list", err)
	}
	out := make([]Record, 0, len(ids))
	for i, id := range ids {
		if vals[i] == "" {
			continue
		}
		rec, err := decodeRecord(id, vals[i])
		if err != nil {
			return nil, "", err
		}
		if rec.Node != node {
			stale = append(stale, id)
			continue
		}
		if mc == "" || (mc == "t") == (rec.Mode == ModeTLS) {
			out = append(out, rec)
		}
	}
	if len(stale) > 0 {
		_ = m.rdb.ZRem(ctx, idx, toAny(stale)...).Err()
	}
	next := ""
	if len(ids) == limit {
		next = ids[len(ids)-1]
	}
	return out, next, nil
}

// records reads the records of client ids, pipelined; "" where there is
// none, and those ids.
func (m *Member) records(ctx context.Context, ids []string) ([]string, []string, error) {
	pipe := m.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.Get(ctx, deviceKey(m.opts.Prefix, id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, err
	}
	vals := make([]string, len(ids))
	var missing []string
	for i, g := range gets {
		if g.Err() != nil {
			missing = append(missing, ids[i])
			continue
		}
		vals[i] = g.Val()
	}
	return vals, missing, nil
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
