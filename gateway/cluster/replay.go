package cluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/auth"
)

// The replay memory of device tokens.
//
// An unbound (v1) device token travels in the clear on plain TCP: whoever
// records it could replay it within its window. Each gateway remembers the
// tokens it accepted (auth's replay cache); Replay is the memory the nodes
// of a cluster share, so a token accepted by one node is refused by every
// other. It is one key per client id:
//
//	PREFIX:LEN:{CLIENT}:replay  zset, member the first 16 bytes of an
//	                            accepted token's hmac, score its expiry
//	                            (unix seconds); expires Grace after the
//	                            latest expiry it holds
//
// named like the device's record (deviceKey): the client id is the hash
// tag, so every claim is one script on one key, in one Redis Cluster
// slot. The script drops the entries expired more than Grace ago, answers
// replayed if the token is there, device full if the client id holds
// PerDevice live tokens (the bound of the local cache, kept across the
// cluster), and records it otherwise. The entries are pruned by the
// clock of the node that claims: the nodes' clocks must agree within
// Grace (NTP does), or a node whose clock is ahead could drop a token
// another node still takes.
//
// Claim never waits: the claim is queued, a writer goroutine sends the
// queue in pipelines of up to BatchSize scripts (a reconnect storm of
// token devices costs a round trip per batch, not per device), and the
// answer comes through the callback. Every claim is answered within
// Timeout of Claim, whatever Redis does: past it, ClaimUnavailable (a
// timer per claim, stopped by the answer). A full queue (MaxPending)
// answers ClaimBusy at once. Redis with its append-only file keeps the
// memory across restarts of the gateways and of Redis; a Redis restarted
// without its data forgets the tokens of the last window.

// Defaults of ReplayOptions.
const (
	DefaultReplayGrace      = 5 * time.Second
	DefaultReplayBatch      = 256
	DefaultReplayMaxPending = 8192
)

// ReplayOptions configure a Replay.
type ReplayOptions struct {
	// Prefix starts every key (default DefaultPrefix), as Options.Prefix.
	Prefix string
	// Timeout bounds a claim, from Claim to its answer (default
	// DefaultTimeout): past it the claim is answered ClaimUnavailable.
	Timeout time.Duration
	// PerDevice bounds the live tokens of one client id (default
	// auth.DefaultReplayPerDevice).
	PerDevice int
	// Grace is how long an entry is kept past its expiry (default
	// DefaultReplayGrace): the skew allowed between the nodes' clocks.
	// Rounded up to whole seconds.
	Grace time.Duration
	// BatchSize is the most claims one round trip carries (default
	// DefaultReplayBatch).
	BatchSize int
	// MaxPending bounds the claims waiting for Redis (default
	// DefaultReplayMaxPending); past it a claim is answered ClaimBusy.
	MaxPending int
	// Logger (default none).
	Logger *zap.Logger
}

// ReplayStats counts what a Replay did.
type ReplayStats struct {
	Claims     uint64 // claims answered
	Replayed   uint64 // answered ClaimReplayed
	Full       uint64 // answered ClaimDeviceFull
	TimedOut   uint64 // answered ClaimUnavailable: Redis failed or did not answer in time
	Busy       uint64 // answered ClaimBusy: the queue was full
	RoundTrips uint64 // pipelines sent
}

// Replay is the token replay memory of a cluster in Redis; it implements
// auth.SharedReplay.
type Replay struct {
	rdb   redis.UniversalClient
	opts  ReplayOptions
	grace int64
	log   *zap.Logger

	mu      sync.Mutex
	queue   []*replayClaim
	closed  bool
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	stopped sync.Once

	claims, replayed, full, timedOut, busy, trips atomic.Uint64
	warned                                        atomic.Int64 // the second of the last warning
}

type replayClaim struct {
	key      string
	member   [16]byte
	expiry   int64
	now      int64
	deadline time.Time
	timer    *time.Timer
	answered atomic.Bool
	done     func(auth.ReplayClaim)
}

// replayScript claims one token; see Replay.
var replayScript = redis.NewScript(`
-- KEYS: the client id's replay zset
-- ARGV: member (16 bytes), expiry (unix s), now (unix s), grace (s), bound
local now = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - grace))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl = tonumber(last[2]) + grace - now
if ttl < 1 then ttl = 1 end
redis.call('EXPIRE', KEYS[1], ttl)
return 0
`)

// NewReplay starts the replay memory on the Redis client rdb, which it
// does not own: Close it before closing rdb.
func NewReplay(rdb redis.UniversalClient, opts ReplayOptions) (*Replay, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("cluster: prefix %q holds a brace", opts.Prefix)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.PerDevice <= 0 {
		opts.PerDevice = auth.DefaultReplayPerDevice
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultReplayGrace
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultReplayBatch
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultReplayMaxPending
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	r := &Replay{
		rdb:   rdb,
		opts:  opts,
		grace: int64((opts.Grace + time.Second - 1) / time.Second),
		log:   opts.Logger,
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go r.run()
	return r, nil
}

// replayKey is the key of a client id's replay zset.
func replayKey(prefix, clientID string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(clientID) + 16)
	b.WriteString(prefix)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(len(clientID)))
	b.WriteString(":{")
	b.WriteString(clientID)
	b.WriteString("}:replay")
	return b.String()
}

// Claim records key, a token of clientID valid until expiry (unix
// seconds) as seen at now, and calls done once, within Timeout, from
// another goroutine or, when the answer is known at once, before Claim
// returns: ClaimNew, ClaimReplayed, ClaimDeviceFull,
// ClaimUnavailable (Redis failed, did not answer in time, or the Replay is
// closed) or ClaimBusy (too many claims waiting). It never blocks.
func (r *Replay) Claim(clientID string, key [16]byte, expiry, now int64, done func(auth.ReplayClaim)) {
	c := &replayClaim{
		key:      replayKey(r.opts.Prefix, clientID),
		member:   key,
		expiry:   expiry,
		now:      now,
		deadline: time.Now().Add(r.opts.Timeout),
		done:     done,
	}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		r.answer(c, auth.ClaimUnavailable)
		return
	case len(r.queue) >= r.opts.MaxPending:
		r.mu.Unlock()
		r.answer(c, auth.ClaimBusy)
		return
	}
	c.timer = time.AfterFunc(r.opts.Timeout, func() { r.timeout(c) })
	r.queue = append(r.queue, c)
	first := len(r.queue) == 1
	r.mu.Unlock()
	if first {
		signal(r.kick)
	}
}

// answer gives c its answer unless it has one, and stops its timer.
// c.timer is set before c is queued.
func (r *Replay) answer(c *replayClaim, a auth.ReplayClaim) {
	if !c.answered.CompareAndSwap(false, true) {
		return
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	r.settle(c, a)
}

// timeout answers c ClaimUnavailable unless it has an answer: its timer
// fired (and may not have been set in c yet).
func (r *Replay) timeout(c *replayClaim) {
	if c.answered.CompareAndSwap(false, true) {
		r.settle(c, auth.ClaimUnavailable)
	}
}

func (r *Replay) settle(c *replayClaim, a auth.ReplayClaim) {
	r.claims.Add(1)
	switch a {
	case auth.ClaimReplayed:
		r.replayed.Add(1)
	case auth.ClaimDeviceFull:
		r.full.Add(1)
	case auth.ClaimUnavailable:
		r.timedOut.Add(1)
	case auth.ClaimBusy:
		r.busy.Add(1)
	}
	c.done(a)
}

// take removes up to n claims, oldest first.
func (r *Replay) take(n int) []*replayClaim {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = min(n, len(r.queue))
	if n == 0 {
		return nil
	}
	batch := make([]*replayClaim, n)
	copy(batch, r.queue)
	clear(r.queue[:n])
	r.queue = r.queue[n:]
	if len(r.queue) == 0 {
		r.queue = nil
	}
	return batch
}

func (r *Replay) run() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			for batch := r.take(r.opts.MaxPending); len(batch) > 0; batch = r.take(r.opts.MaxPending) {
				for _, c := range batch {
					r.answer(c, auth.ClaimUnavailable)
				}
			}
			return
		case <-r.kick:
		}
		for batch := r.take(r.opts.BatchSize); len(batch) > 0; batch = r.take(r.opts.BatchSize) {
			r.send(batch)
		}
	}
}

// send claims a batch in one pipeline. Claims already answered (timed
// out while queued) are not sent.
func (r *Replay) send(batch []*replayClaim) {
	live := batch[:0]
	for _, c := range batch {
		if !c.answered.Load() {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		return
	}
	// Each claim's timer answers it at its deadline; the batch may run
	// until the last one's.
	ctx, cancel := context.WithDeadline(context.Background(), live[len(live)-1].deadline)
	defer cancel()
	cmds := r.pipeline(ctx, live)
	var again []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		// Redis (or, in a Redis Cluster, some of its primaries)
		// restarted or flushed its scripts: those claims did not run.
		// Load the script and send them again.
		if err := replayScript.Load(ctx, r.rdb).Err(); err == nil {
			retry := make([]*replayClaim, len(again))
			for j, i := range again {
				retry[j] = live[i]
			}
			for j, c := range r.pipeline(ctx, retry) {
				cmds[again[j]] = c
			}
		}
	}
	var failed error
	for i, c := range live {
		n, err := cmds[i].Int()
		switch {
		case err != nil:
			failed = err
			r.answer(c, auth.ClaimUnavailable)
		case n == 1:
			r.answer(c, auth.ClaimReplayed)
		case n == 2:
			r.answer(c, auth.ClaimDeviceFull)
		default:
			r.answer(c, auth.ClaimNew)
		}
	}
	if sec := time.Now().Unix(); failed != nil && r.warned.Swap(sec) != sec { // once a second at most
		r.log.Warn("cluster: device token replay check failed: the tokens are refused (0x88)",
			zap.Int("tokens", len(live)), zap.Error(failed))
	}
}

func (r *Replay) pipeline(ctx context.Context, batch []*replayClaim) []*redis.Cmd {
	r.trips.Add(1)
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(batch))
	for i, c := range batch {
		cmds[i] = replayScript.EvalSha(ctx, pipe, []string{c.key},
			c.member[:], c.expiry, c.now, r.grace, r.opts.PerDevice)
	}
	_, _ = pipe.Exec(ctx)
	return cmds
}

// Stats returns the counters.
func (r *Replay) Stats() ReplayStats {
	return ReplayStats{
		Claims: r.claims.Load(), Replayed: r.replayed.Load(), Full: r.full.Load(),
		TimedOut: r.timedOut.Load(), Busy: r.busy.Load(), RoundTrips: r.trips.Load(),
	}
}

// Close stops the writer; claims still queued, and later ones, are
// answered ClaimUnavailable. It waits for a batch in flight (at most
// Timeout).
func (r *Replay) Close() {
	r.stopped.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		close(r.stop)
		<-r.done
	})
}
