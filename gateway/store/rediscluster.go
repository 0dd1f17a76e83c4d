package store

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// On a Redis Cluster every script touches the keys of one hash slot: a
// client's own keys (hash tag the client id), or one bucket of the shared
// indexes (hash tag P:bNN, clusterBuckets of them). A change is then two
// or three steps, each atomic, made in an order that a reader tolerates
// and that a sweep (part of Prune) repairs when a gateway dies between
// them; see the package documentation, "Redis Cluster".

// clusterBuckets is the number of buckets of the shared indexes. It is
// part of the key layout: changing it moves every index entry.
const clusterBuckets = 16

// claimAge is how old a claim on an id without a record must be before
// the sweep drops it: far longer than a Put takes.
const claimAge = time.Minute

// sweepPage is how many entries of each bucket's id index a Prune looks at.
const sweepPage = 500

// bucketOf is the bucket of a command id or client id.
func bucketOf(s string) int { return int(crc32.ChecksumIEEE([]byte(s)) % clusterBuckets) }

// bucketKeys are the keys of one bucket of the shared indexes.
type bucketKeys struct {
	ids     string // hash: id -> "VER STATUS LEN CLIENT ORIGIN" (see idEntry)
	expiry  string // zset, as redisGlobalKeys.expiry, for the bucket's ids
	fin     string // zset, as redisGlobalKeys.fin
	counts  string // hash: status -> count of the bucket's ids
	origins string // hash: origin -> number of the bucket's ids holding it
	clients string // zset, score 0: the bucket's clients with non-final commands
	cver    string // hash: client id -> version of the last clients update applied
}

func newBucketKeys(prefix string, b int) bucketKeys {
	p := fmt.Sprintf("%s:{%s:b%02d}:", prefix, prefix, b)
	return bucketKeys{
		ids: p + "ids", expiry: p + "exp", fin: p + "fin", counts: p + "counts",
		origins: p + "origins", clients: p + "clients", cver: p + "cver",
	}
}

// verKey: hash, field "#" the client's version, raised by every script
// that changes one of its records (it orders the index steps of the
// client's changes), and per command id the version of its record's last
// change (the sweep compares it with the version indexed).
func (r *Redis) verKey(clientID string) string { return r.clientKey(clientID, "v") }

// idEntry is the value of an id in its bucket's id index: the version of
// the change last indexed, its status (or "~MS" for a claim made at MS
// Unix milliseconds, before the record is written), and the client and
// origin (which a Prune finishing a cut-short one needs without the
// record).
type idEntry struct {
	ver    int64
	status string
	client string
	origin string
}

func (e idEntry) tail() string {
	return strconv.Itoa(len(e.client)) + " " + e.client + e.origin
}

func (e idEntry) encode() string {
	return strconv.FormatInt(e.ver, 10) + " " + e.status + " " + e.tail()
}

func parseIDEntry(v string) (idEntry, error) {
	bad := fmt.Errorf("%w: id index entry %q", ErrCorrupt, v)
	ver, rest, ok := strings.Cut(v, " ")
	if !ok {
		return idEntry{}, bad
	}
	status, rest, ok := strings.Cut(rest, " ")
	if !ok {
		return idEntry{}, bad
	}
	ln, rest, ok := strings.Cut(rest, " ")
	if !ok {
		return idEntry{}, bad
	}
	n, err := strconv.Atoi(ln)
	if err != nil || n < 0 || n > len(rest) {
		return idEntry{}, bad
	}
	e := idEntry{status: status, client: rest[:n], origin: rest[n:]}
	if e.ver, err = strconv.ParseInt(ver, 10, 64); err != nil {
		return idEntry{}, bad
	}
	return e, nil
}

func (e idEntry) claim() bool { return strings.HasPrefix(e.status, "~") }

// claimScript reserves a command id for a client: ids are unique across
// clients. It returns {0} (claimed) or {1, entry} (held).
var claimScript = redis.NewScript(`
-- KEYS: the id's bucket ids; ARGV: id, claim entry
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {1, cur} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {0}
`)

// unclaimScript drops a claim that is still the one made.
var unclaimScript = redis.NewScript(`
-- KEYS: the id's bucket ids; ARGV: id, claim entry
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
return 0
`)

// clientPutScript is putScript's part on the client's keys. It returns
// {0, queue length, version}, {1} (the record exists) or {2, n} (full).
var clientPutScript = redis.NewScript(`
-- KEYS: queue, record, list, versions
-- ARGV: record, queue member, limit, id
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then return {2, n} end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
local v = redis.call('HINCRBY', KEYS[4], '#', 1)
redis.call('HSET', KEYS[4], ARGV[4], v)
return {0, n + 1, v}
`)

// clientMoveScript is moveScript's part on the client's keys: {1, queue
// length, version} (written), 0 (gone) or -1 (changed meanwhile).
var clientMoveScript = redis.NewScript(`
-- KEYS: record, queue, versions
-- ARGV: sha1 of the record read, new record, final '1'/'0', queue member, id
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if redis.sha1hex(cur) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] == '1' then redis.call('ZREM', KEYS[2], ARGV[4]) end
local v = redis.call('HINCRBY', KEYS[3], '#', 1)
redis.call('HSET', KEYS[3], ARGV[5], v)
return {1, redis.call('ZCARD', KEYS[2]), v}
`)

// clientStateScript reads, for the sweep, whether a command's record
// exists, the version of its last change, and its client's queue length
// and version: {exists, command version, queue length, client version}.
var clientStateScript = redis.NewScript(`
-- KEYS: record, queue, versions; ARGV: id
local v = redis.call('HMGET', KEYS[3], ARGV[1], '#')
return {redis.call('EXISTS', KEYS[1]), tonumber(v[1] or '0'), redis.call('ZCARD', KEYS[2]), tonumber(v[2] or '0')}
`)

// indexScript brings an id's entry in its bucket to a change of version
// VER, unless a later change is indexed already: counts, expiry and
// finished members, origins. Applying it twice, or after a later one,
// changes nothing. 1 applied, 0 not.
var indexScript = redis.NewScript(`
-- KEYS: ids, expiry, finished, counts, origins
-- ARGV: id, version, status, final '1'/'0', expiry member or '', finished member or '', origin or '', entry tail
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local cv, cs = 0, nil
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local sp2 = string.find(cur, ' ', sp + 1, true)
  cv = tonumber(string.sub(cur, 1, sp - 1))
  cs = string.sub(cur, sp + 1, sp2 - 1)
  if string.sub(cs, 1, 1) == '~' then cs = nil end
end
if tonumber(ARGV[2]) <= cv then return 0 end
if cs then
  redis.call('HINCRBY', KEYS[4], cs, -1)
elseif ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
end
redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[8])
if ARGV[4] == '1' then
  if ARGV[5] ~= '' then redis.call('ZREM', KEYS[2], ARGV[5]) end
  redis.call('ZADD', KEYS[3], 0, ARGV[6])
elseif ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[2], 0, ARGV[5])
end
return 1
`)

// clientsScript sets whether a client has non-final commands in its
// bucket's clients index, unless a later version of the client is there
// already. 1 applied, 0 not.
var clientsScript = redis.NewScript(`
-- KEYS: clients, versions; ARGV: client, version, queue length
local cv = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= cv then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('ZADD', KEYS[1], 0, ARGV[1]) else redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
`)

// unindexScript takes a pruned (final) command out of its bucket: 1, or
// 0 if it was already out.
var unindexScript = redis.NewScript(`
-- KEYS: ids, finished, counts, origins
-- ARGV: id, finished member
redis.call('ZREM', KEYS[2], ARGV[2])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local sp = string.find(cur, ' ', 1, true)
local sp2 = string.find(cur, ' ', sp + 1, true)
local sp3 = string.find(cur, ' ', sp2 + 1, true)
local st = string.sub(cur, sp + 1, sp2 - 1)
local n = tonumber(string.sub(cur, sp2 + 1, sp3 - 1))
local origin = string.sub(cur, sp3 + 1 + n)
redis.call('HDEL', KEYS[1], ARGV[1])
if string.sub(st, 1, 1) ~= '~' then
  if redis.call('HINCRBY', KEYS[3], st, -1) <= 0 then redis.call('HDEL', KEYS[3], st) end
  if origin ~= '' then
    if redis.call('HINCRBY', KEYS[4], origin, -1) <= 0 then redis.call('HDEL', KEYS[4], origin) end
  end
end
return 1
`)

// clientPruneScript deletes a pruned command's record, list member and
// version.
var clientPruneScript = redis.NewScript(`
-- KEYS: record, list, versions; ARGV: list member or '', id
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
`)

// waitClient is the client a write and its WAIT go through: on a cluster,
// the primary holding the write's slot (WAIT counts the replicas of the
// connection's node).
func (r *Redis) waitClient(ctx context.Context, key string) (redis.Cmdable, error) {
	cc, ok := r.rdb.(*redis.ClusterClient)
	if !ok {
		return r.rdb, nil
	}
	return cc.MasterForKey(ctx, key)
}

// index runs indexScript and clientsScript for a change of version ver of
// c (status c.Status), in one round trip per node.
func (r *Redis) index(ctx context.Context, c *Command, ver, queueLen int64, clients bool) error {
	b := newBucketKeys(r.opts.Prefix, bucketOf(c.ID))
	final, expiry, finished := "0", "", ""
	if !c.ExpiresAt.IsZero() {
		expiry = hexTimeKey(c.ExpiresAt, c.ID)
	}
	if c.Status.Final() {
		final, finished = "1", hexTimeKey(c.FinishedAt(), c.ID)
	}
	keys := []string{b.ids, b.expiry, b.fin, b.counts, b.origins}
	args := []any{c.ID, ver, string(c.Status), final, expiry, finished, c.Origin,
		idEntry{client: c.ClientID, origin: c.Origin}.tail()}
	cb := newBucketKeys(r.opts.Prefix, bucketOf(c.ClientID))
	if r.opts.WaitReplicas > 0 {
		if _, ok, err := r.write(ctx, indexScript, keys, args...); err != nil || !ok {
			return errors.Join(err, r.notConfirmed())
		}
		if clients {
			if _, ok, err := r.write(ctx, clientsScript, []string{cb.clients, cb.cver}, c.ClientID, ver, queueLen); err != nil || !ok {
				return errors.Join(err, r.notConfirmed())
			}
		}
		return nil
	}
	pipe := r.rdb.Pipeline()
	idx := indexScript.EvalSha(ctx, pipe, keys, args...)
	var cl *redis.Cmd
	if clients {
		cl = clientsScript.EvalSha(ctx, pipe, []string{cb.clients, cb.cver}, c.ClientID, ver, queueLen)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && (redis.HasErrorPrefix(idx.Err(), "NOSCRIPT") || cl != nil && redis.HasErrorPrefix(cl.Err(), "NOSCRIPT")) {
		// A node restarted and forgot the scripts: the scripts are
		// idempotent, run them again with their source.
		if err = indexScript.Run(ctx, r.rdb, keys, args...).Err(); err == nil && clients {
			err = clientsScript.Run(ctx, r.rdb, []string{cb.clients, cb.cver}, c.ClientID, ver, queueLen).Err()
		}
	}
	return err
}

func (r *Redis) notConfirmed() error {
	return fmt.Errorf("fewer than %d replicas confirmed within %s", r.opts.WaitReplicas, r.opts.WaitTimeout)
}

// clusterPut is Put on a Redis Cluster: claim the id in its bucket, write
// the record and the client's queue and list, then index it. A Put cut
// short after the claim leaves a claim without a record (the id is taken
// until the sweep drops it, claimAge later); after the record, a command
// that is deliverable but not yet in the counts and the expiry index (the
// sweep indexes it).
func (r *Redis) clusterPut(d *Command, rec []byte) error {
	ctx, cancel := r.ctx()
	defer cancel()
	b := newBucketKeys(r.opts.Prefix, bucketOf(d.ID))
	claim := idEntry{status: "~" + strconv.FormatInt(time.Now().UnixMilli(), 10), client: d.ClientID, origin: d.Origin}.encode()
	res, ok, err := r.write(ctx, claimScript, []string{b.ids}, d.ID, claim)
	if err != nil {
		return r.unavailable("put "+d.ID, err)
	}
	if !ok {
		return fmt.Errorf("%w: command %s: fewer than %d replicas confirmed its id within %s; nothing stored",
			ErrUnavailable, d.ID, r.opts.WaitReplicas, r.opts.WaitTimeout)
	}
	out, _ := res.([]any)
	claimed := at0(out) == int64(0)
	if !claimed {
		held, _ := out[1].(string)
		e, err := parseIDEntry(held)
		if err != nil {
			return err
		}
		if e.client != d.ClientID {
			return fmt.Errorf("%w: %s", ErrExists, d.ID)
		}
		// This client's: a Put of the same id, or one cut short after its
		// claim. The client's script tells.
	}
	unclaim := func() {
		if claimed {
			_ = unclaimScript.Run(ctx, r.rdb, []string{b.ids}, d.ID, claim).Err()
		}
	}
	res, confirmed, err := r.write(ctx, clientPutScript,
		[]string{r.queueKey(d.ClientID), r.recordKey(d.ClientID, d.ID), r.listKey(d.ClientID), r.verKey(d.ClientID)},
		rec, hexTimeKey(d.CreatedAt, d.ID), r.limit, d.ID)
	if err != nil {
		return r.unavailable("put "+d.ID, err)
	}
	out, _ = res.([]any)
	switch at0(out) {
	case int64(1):
		unclaim()
		return fmt.Errorf("%w: %s", ErrExists, d.ID)
	case int64(2):
		unclaim()
		n, _ := out[1].(int64)
		return fmt.Errorf("%w: %s has %d (limit %d)", ErrFull, d.ClientID, n, r.limit)
	}
	if len(out) < 3 {
		return fmt.Errorf("%w: put %s: answer %v", ErrCorrupt, d.ID, out)
	}
	n, _ := out[1].(int64)
	ver, _ := out[2].(int64)
	if !confirmed {
		return fmt.Errorf("%w: command %s is on the primary but fewer than %d replicas confirmed it within %s; it may still be delivered",
			ErrUnavailable, d.ID, r.opts.WaitReplicas, r.opts.WaitTimeout)
	}
	if err := r.index(ctx, d, ver, n, true); err != nil {
		// Stored and deliverable: the sweep indexes it.
		r.log.Warn("a new command is stored but not yet indexed (counts, expiry); the next prune indexes it",
			zap.String("id", d.ID), zap.Error(err))
	}
	return nil
}

// clusterLoad reads a command by id: its entry in the bucket, then its
// record. An entry without a record (a claim, or a command being pruned)
// is not found.
func (r *Redis) clusterLoad(ctx context.Context, id string) (*Command, string, error) {
	v, err := r.rdb.HGet(ctx, newBucketKeys(r.opts.Prefix, bucketOf(id)).ids, id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, "", r.unavailable("get "+id, err)
	}
	e, err := parseIDEntry(v)
	if err != nil {
		return nil, "", err
	}
	return r.loadRecord(ctx, e.client, id)
}

// clusterMove writes a transition computed from the record of SHA-1 sum:
// 1 written, 0 gone, -1 changed meanwhile.
func (r *Redis) clusterMove(ctx context.Context, c *Command, sum string) (int64, bool, error) {
	final := "0"
	if c.Status.Final() {
		final = "1"
	}
	res, confirmed, err := r.write(ctx, clientMoveScript,
		[]string{r.recordKey(c.ClientID, c.ID), r.queueKey(c.ClientID), r.verKey(c.ClientID)},
		sum, appendCommand(make([]byte, 0, recordSize(c)), c), final, hexTimeKey(c.CreatedAt, c.ID), c.ID)
	if err != nil {
		return 0, false, err
	}
	out, ok := res.([]any)
	if !ok {
		code, _ := res.(int64)
		return code, confirmed, nil
	}
	if len(out) < 3 {
		return 0, false, fmt.Errorf("%w: transition %s: answer %v", ErrCorrupt, c.ID, out)
	}
	n, _ := out[1].(int64)
	ver, _ := out[2].(int64)
	if err := r.index(ctx, c, ver, n, true); err != nil {
		r.log.Warn("a command's transition is stored but not yet indexed; the next prune indexes it",
			zap.String("id", c.ID), zap.String("status", string(c.Status)), zap.Error(err))
	}
	return 1, confirmed, nil
}

// eachBucket runs one read per bucket in a pipeline (go-redis sends one
// per node) and returns the commands.
func eachBucket[T redis.Cmder](ctx context.Context, r *Redis, f func(p redis.Pipeliner, b bucketKeys) T) ([]T, error) {
	pipe := r.rdb.Pipeline()
	out := make([]T, clusterBuckets)
	for i := range clusterBuckets {
		out[i] = f(pipe, newBucketKeys(r.opts.Prefix, i))
	}
	_, err := pipe.Exec(ctx)
	return out, err
}

// lexRange reads, from every bucket, the members of an index below max,
// merged in byte order.
func (r *Redis) lexRange(ctx context.Context, key func(bucketKeys) string, maxMember string) ([]string, error) {
	cmds, err := eachBucket(ctx, r, func(p redis.Pipeliner, b bucketKeys) *redis.StringSliceCmd {
		return p.ZRangeByLex(ctx, key(b), &redis.ZRangeBy{Min: "-", Max: maxMember})
	})
	if err != nil {
		return nil, err
	}
	var all []string
	for _, c := range cmds {
		all = append(all, c.Val()...)
	}
	slices.Sort(all)
	return all, nil
}

// clusterPrune deletes a final command of a bucket's finished index: its
// record and list member, then its entry in the bucket (the entry keeps
// the origin, so a prune cut short between the two is finished by the
// next).
func (r *Redis) clusterPrune(member string) (bool, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	id := member[hexTimeLen:]
	b := newBucketKeys(r.opts.Prefix, bucketOf(id))
	v, err := r.rdb.HGet(ctx, b.ids, id).Result()
	if errors.Is(err, redis.Nil) {
		return false, r.rdb.ZRem(ctx, b.fin, member).Err()
	}
	if err != nil {
		return false, r.unavailable("prune", err)
	}
	e, err := parseIDEntry(v)
	if err != nil {
		return false, err
	}
	listMember := ""
	if c, _, err := r.loadRecord(ctx, e.client, id); err == nil {
		listMember = hexTimeKey(c.CreatedAt, c.ID)
	} else if !errors.Is(err, ErrNotFound) {
		return false, err
	}
	if _, _, err := r.write(ctx, clientPruneScript, []string{r.recordKey(e.client, id), r.listKey(e.client), r.verKey(e.client)}, listMember, id); err != nil {
		return false, r.unavailable("prune", err)
	}
	res, _, err := r.write(ctx, unindexScript, []string{b.ids, b.fin, b.counts, b.origins}, id, member)
	if err != nil {
		return false, r.unavailable("prune", err)
	}
	return res == int64(1), nil
}

// sweep goes once over every bucket's id index, a page of sweepPage
// entries at a time (a round trip for the page, one per primary for the
// states of its commands): an entry behind its record's last change (a
// change cut short before its index step) is indexed again from the
// record, every client of the page gets its clients entry again (applied
// only if its version is newer), and a claim without a record older than
// claimAge is dropped.
func (r *Redis) sweep(now time.Time) error {
	r.sweepMu.Lock()
	defer r.sweepMu.Unlock()
	for i := range clusterBuckets {
		var cursor uint64
		for {
			ctx, cancel := r.ctx()
			next, err := r.sweepPage(ctx, i, cursor, now)
			cancel()
			if err != nil {
				return err
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	return nil
}

// sweepPage repairs one page of bucket i's id index and returns the next
// cursor (0 at the end).
func (r *Redis) sweepPage(ctx context.Context, i int, cursor uint64, now time.Time) (uint64, error) {
	b := newBucketKeys(r.opts.Prefix, i)
	kv, next, err := r.rdb.HScan(ctx, b.ids, cursor, "", sweepPage).Result()
	if err != nil {
		return 0, r.unavailable("sweep", err)
	}
	type entry struct {
		id, raw string
		e       idEntry
		state   *redis.Cmd
	}
	entries := make([]entry, 0, len(kv)/2)
	pipe := r.rdb.Pipeline()
	for j := 0; j+1 < len(kv); j += 2 {
		e, err := parseIDEntry(kv[j+1])
		if err != nil {
			r.log.Warn("damaged id index entry left as is", zap.String("id", kv[j]), zap.Error(err))
			continue
		}
		entries = append(entries, entry{id: kv[j], raw: kv[j+1], e: e,
			state: clientStateScript.EvalSha(ctx, pipe,
				[]string{r.recordKey(e.client, kv[j]), r.queueKey(e.client), r.verKey(e.client)}, kv[j])})
	}
	if len(entries) == 0 {
		return next, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			// A primary restarted and forgot the scripts: the next
			// Prune sweeps.
			_ = r.loadScripts(ctx)
		}
		return 0, r.unavailable("sweep", err)
	}
	type clientState struct{ ver, queue int64 }
	clients := map[string]clientState{}
	for _, en := range entries {
		st, _ := en.state.Slice()
		if len(st) != 4 {
			return 0, fmt.Errorf("%w: sweep: answer %v", ErrCorrupt, st)
		}
		exists, _ := st[0].(int64)
		cmdVer, _ := st[1].(int64)
		queue, _ := st[2].(int64)
		clientVer, _ := st[3].(int64)
		clients[en.e.client] = clientState{ver: clientVer, queue: queue}
		if exists == 0 {
			if en.e.claim() {
				ms, _ := strconv.ParseInt(en.e.status[1:], 10, 64)
				if now.Sub(time.UnixMilli(ms)) > claimAge {
					_ = unclaimScript.Run(ctx, r.rdb, []string{b.ids}, en.id, en.raw).Err()
				}
			}
			// Otherwise a command being pruned: Prune finishes it.
			continue
		}
		if !en.e.claim() && cmdVer <= en.e.ver {
			continue
		}
		c, _, err := r.loadRecord(ctx, en.e.client, en.id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if err := r.index(ctx, c, cmdVer, queue, false); err != nil {
			return 0, r.unavailable("sweep", err)
		}
		r.log.Info("command indexed by the sweep (a change was cut short before its index step)",
			zap.String("id", en.id), zap.String("status", string(c.Status)))
	}
	pipe = r.rdb.Pipeline()
	for client, st := range clients {
		cb := newBucketKeys(r.opts.Prefix, bucketOf(client))
		clientsScript.EvalSha(ctx, pipe, []string{cb.clients, cb.cver}, client, st.ver, st.queue)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			_ = r.loadScripts(ctx)
		}
		return 0, r.unavailable("sweep", err)
	}
	return next, nil
}

// clusterScripts are the scripts of a Redis Cluster that run in
// pipelines (by SHA only).
var clusterScripts = []*redis.Script{clientStateScript, clientsScript, indexScript}

// loadScripts loads them on every primary.
func (r *Redis) loadScripts(ctx context.Context) error {
	for _, s := range clusterScripts {
		if err := s.Load(ctx, r.rdb).Err(); err != nil {
			return err
		}
	}
	return nil
}

// clusterStats sums the buckets' counts and clients.
func (r *Redis) clusterStats(ctx context.Context) (Counts, error) {
	pipe := r.rdb.Pipeline()
	all := make([]*redis.MapStringStringCmd, clusterBuckets)
	cl := make([]*redis.IntCmd, clusterBuckets)
	for i := range clusterBuckets {
		b := newBucketKeys(r.opts.Prefix, i)
		all[i] = pipe.HGetAll(ctx, b.counts)
		cl[i] = pipe.ZCard(ctx, b.clients)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return Counts{}, r.unavailable("stats", err)
	}
	var counts Counts
	for i := range clusterBuckets {
		for k, v := range all[i].Val() {
			n, err := strconv.Atoi(v)
			if err != nil || !Status(k).Valid() {
				return Counts{}, fmt.Errorf("%w: count %s = %q", ErrCorrupt, k, v)
			}
			if n > 0 {
				counts.add(Status(k), n)
			}
		}
		counts.Clients += int(cl[i].Val())
	}
	return counts, nil
}
