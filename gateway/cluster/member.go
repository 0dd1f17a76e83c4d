package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// ErrUnavailable is a Redis that cannot be reached or does not answer
// within Options.Timeout. Reads return it; writes queue and are retried.
var ErrUnavailable = errors.New("cluster: redis unavailable")

// ErrClosed is a call on a Member after Close.
var ErrClosed = errors.New("cluster: closed")

// Defaults of Options.
const (
	DefaultPrefix     = "dg"
	DefaultTimeout    = 2 * time.Second
	DefaultBatchSize  = 500
	DefaultFlushDelay = 2 * time.Millisecond
	DefaultMaxPending = 200_000
	DefaultMaxNotes   = 10_000
	DefaultNodeTTL    = 15 * time.Second
	DefaultInboxLen   = 10_000
	DefaultReadBlock  = time.Second
	DefaultMaxBackoff = 2 * time.Second
	minBackoff        = 20 * time.Millisecond
	maxNodeLen        = 64
	// sweepPage is how many index members one janitor call looks at.
	sweepPage = 500
	// eventBuffer is the capacity of the Events channel.
	eventBuffer = 1024
)

// Options configure a Member. Node is required.
type Options struct {
	// Prefix starts every key (default DefaultPrefix), as
	// store.RedisOptions.Prefix: the same value on every node. No braces.
	Prefix string
	// Node is this gateway's name, unique among the running nodes (the
	// gateway's --node-id, held by its lease): letters, digits, '.', '-',
	// '_', at most 64.
	Node string
	// AdvertisePlain and AdvertiseTLS are the addresses devices use to
	// reach this node, published with its heartbeat.
	AdvertisePlain, AdvertiseTLS string
	// Timeout bounds each Redis call (default DefaultTimeout): a read
	// fails with ErrUnavailable past it, a write is retried. The
	// client's own read and write timeouts bound a call too (1 s for a
	// client of store.NewRedisClient); a go-redis client heeds a
	// context's deadline on its socket only with ContextTimeoutEnabled.
	// A blocking read of the inbox is made shorter than the client's
	// read timeout (see ReadBlock).
	Timeout time.Duration
	// BatchSize is the most registry writes and notifications one round
	// trip carries (default DefaultBatchSize); the writer sends as soon as
	// that many are queued.
	BatchSize int
	// FlushDelay is how long the writer gathers writes after the first
	// one before it sends a batch that is not full (default
	// DefaultFlushDelay).
	FlushDelay time.Duration
	// MaxPending bounds the registry writes waiting for Redis, one per
	// device (default DefaultMaxPending); past it the oldest is dropped
	// and counted.
	MaxPending int
	// MaxNotes bounds the notifications of NotifyAsync waiting for Redis
	// (default DefaultMaxNotes); past it NotifyAsync refuses and counts.
	MaxNotes int
	// NodeTTL is how long the node's heartbeat key lives without renewal
	// (default DefaultNodeTTL): a node silent that long is dead to the
	// others. The heartbeat renews it every NodeTTL/3.
	NodeTTL time.Duration
	// InboxLen is the approximate bound of each node's inbox stream
	// (default DefaultInboxLen; XADD MAXLEN ~).
	InboxLen int64
	// ReadBlock is how long one read of the inbox waits for events
	// (default DefaultReadBlock; at most half the client's read timeout,
	// for a *redis.Client); Close waits for it at most.
	ReadBlock time.Duration
	// MaxBackoff bounds the wait between retries while Redis fails
	// (default DefaultMaxBackoff).
	MaxBackoff time.Duration
	// OnRejoin, when set, is called (on the heartbeat's goroutine) when
	// the node's heartbeat finds its key gone: Redis lost its data, or
	// the node could not renew it for NodeTTL. The records of the devices
	// the node holds may be gone or stale: the gateway calls Online again
	// for each of them, with their epochs.
	OnRejoin func()
	// Logger (default none).
	Logger *zap.Logger
	// Now is the wall clock of the epochs (default time.Now).
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return o, fmt.Errorf("cluster: prefix %q holds a brace", o.Prefix)
	}
	if err := checkNode(o.Node); err != nil {
		return o, fmt.Errorf("cluster: node %q: %w", o.Node, err)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.FlushDelay <= 0 {
		o.FlushDelay = DefaultFlushDelay
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.MaxNotes <= 0 {
		o.MaxNotes = DefaultMaxNotes
	}
	if o.NodeTTL <= 0 {
		o.NodeTTL = DefaultNodeTTL
	}
	if o.InboxLen <= 0 {
		o.InboxLen = DefaultInboxLen
	}
	if o.ReadBlock <= 0 {
		o.ReadBlock = DefaultReadBlock
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// checkNode allows what checkNodeID of the gateway allows; '|' and ':'
// never appear, which the record encoding and the keys rely on.
func checkNode(id string) error {
	if id == "" || len(id) > maxNodeLen {
		return fmt.Errorf("want 1 to %d characters", maxNodeLen)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("character %q: want letters, digits, '.', '-' or '_'", r)
		}
	}
	return nil
}

// Stats are a Member's counters since Join, for metrics. Queued and
// QueuedNotes are gauges; the rest only grow.
type Stats struct {
	Queued      int    // registry writes waiting for Redis now
	QueuedNotes int    // NotifyAsync events waiting for Redis now
	Enqueued    uint64 // Online and Offline calls taken
	Coalesced   uint64 // of which replaced, or were replaced by, a write of the same device still queued
	Flushed     uint64 // registry writes Redis has applied (or found stale)
	Refused     uint64 // Online writes that lost to a newer session elsewhere (a Takeover went to this node)
	Batches     uint64 // round trips that carried writes or notifications
	Dropped     uint64 // writes and notifications lost to a full queue, to Close, or invalid
	Errors      uint64 // failed Redis calls (each retried write counts once per attempt)
	Takeovers   uint64 // Takeover events the writer's scripts sent to other nodes
	EventsSent  uint64 // events of Notify and NotifyAsync written
	EventsRecv  uint64 // events read from this node's inbox
	Rejoins     uint64 // heartbeats that found the node's key gone
	Swept       uint64 // records of dead nodes (or of this node's previous run) deleted
}

type counters struct {
	enqueued, coalesced, flushed, refused, batches, dropped, errors,
	takeovers, eventsSent, eventsRecv, rejoins, swept atomic.Uint64
}

// Member is this gateway's part of the cluster: its registry writes, its
// heartbeat, its inbox. Its methods are safe for concurrent use; Online,
// Offline, NotifyAsync and NextEpoch never wait on Redis.
type Member struct {
	rdb redis.UniversalClient
	// cluster: rdb is a Redis Cluster's; the scripts that span a device
	// and the node keys are split (see the package documentation).
	cluster bool
	// np starts the node keys: Prefix on one primary; on a Redis
	// Cluster, Prefix:{Prefix:n}, which puts every node key in one slot.
	np   string
	opts Options
	log  *zap.Logger
	keys keys
	clk  clock
	// startEpoch is the first epoch of this run: records of this node
	// older than it are left from a previous run and swept.
	startEpoch uint64

	q queue
	// live is the names of the live nodes the heartbeat last read, on a
	// Redis Cluster: the device script decides with it whether a record's
	// node is live (nil: not yet read, every node is taken as live).
	live atomic.Pointer[[]string]
	// backlog holds the node-key steps of batches that Redis did not take
	// (Redis Cluster only); the writer alone uses it.
	backlog []any

	events chan Event
	block  time.Duration // of each inbox read: readBlock
	// reading is closed once the inbox reader knows where the inbox ends:
	// the writer, whose scripts may write to this node's inbox, waits for
	// it so that no event of this run is skipped.
	reading chan struct{}
	c       counters

	stop     chan struct{} // closed by Close: the goroutines end
	wg       sync.WaitGroup
	closed   atomic.Bool
	closeMu  sync.Mutex
	closeErr error
	done     bool
}

// keys are the names of the keys a Member uses; see the package
// documentation.
type keys struct {
	prefix string
	nodes  string // zset: node -> last heartbeat (ms, the node's clock)
	alive  string // this node's heartbeat hash
	index  string // this node's zset of the devices it holds
	inbox  string // this node's stream
}

func newKeys(prefix, node string) keys {
	return keys{
		prefix: prefix,
		nodes:  prefix + ":nodes",
		alive:  aliveKey(prefix, node),
		index:  indexKey(prefix, node),
		inbox:  inboxKey(prefix, node),
	}
}

func aliveKey(prefix, node string) string { return prefix + ":alive:" + node }
func indexKey(prefix, node string) string { return prefix + ":idx:" + node }
func inboxKey(prefix, node string) string { return prefix + ":inbox:" + node }

// deviceKey is the key of a device's record: the client id is the hash
// tag, after its length, as the command store names a client's keys, so
// the record sits in the same Redis Cluster slot as the device's
// pending commands.
func deviceKey(prefix, clientID string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(clientID) + 16)
	b.WriteString(prefix)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(len(clientID)))
	b.WriteString(":{")
	b.WriteString(clientID)
	b.WriteString("}:dev")
	return b.String()
}

// Join makes this node a member on the Redis client rdb and returns at
// once: the heartbeat, the writer and the inbox reader start in the
// background and retry while Redis is away. The Member does not close
// rdb. Close ends it.
func Join(rdb redis.UniversalClient, opts Options) (*Member, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	_, cluster := rdb.(*redis.ClusterClient)
	np := o.Prefix
	if cluster {
		np = o.Prefix + ":{" + o.Prefix + ":n}"
	}
	m := &Member{
		rdb:     rdb,
		cluster: cluster,
		np:      np,
		opts:    o,
		log:     o.Logger,
		keys:    newKeys(np, o.Node),
		clk:     clock{now: o.Now},
		events:  make(chan Event, eventBuffer),
		reading: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	m.block = readBlock(rdb, o.ReadBlock)
	m.startEpoch = m.clk.next()
	m.q.init(o.MaxPending, o.MaxNotes)
	m.wg.Add(3)
	go m.writer()
	go m.heartbeat()
	go m.consume()
	return m, nil
}

// Node is this node's name.
func (m *Member) Node() string { return m.opts.Node }

// NextEpoch returns a session epoch for a new connection: larger than any
// this node handed out or saw. It does not touch Redis.
func (m *Member) NextEpoch() uint64 { return m.clk.next() }

// Stats returns the counters.
func (m *Member) Stats() Stats {
	pending, notes := m.q.lens()
	return Stats{
		Queued:      pending,
		QueuedNotes: notes,
		Enqueued:    m.c.enqueued.Load(),
		Coalesced:   m.c.coalesced.Load(),
		Flushed:     m.c.flushed.Load(),
		Refused:     m.c.refused.Load(),
		Batches:     m.c.batches.Load(),
		Dropped:     m.c.dropped.Load(),
		Errors:      m.c.errors.Load(),
		Takeovers:   m.c.takeovers.Load(),
		EventsSent:  m.c.eventsSent.Load(),
		EventsRecv:  m.c.eventsRecv.Load(),
		Rejoins:     m.c.rejoins.Load(),
		Swept:       m.c.swept.Load(),
	}
}

// ctx bounds one Redis call by Options.Timeout.
func (m *Member) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, m.opts.Timeout)
}

// unavailable wraps an error of the Redis client.
func (m *Member) unavailable(op string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("%w: %s: %w", ErrClosed, op, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// sleep waits d, or less if the Member stops; false when it stopped.
func (m *Member) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.stop:
		return false
	case <-t.C:
		return true
	}
}

// backoff doubles d within [minBackoff, MaxBackoff].
func (m *Member) backoff(d time.Duration) time.Duration {
	return min(max(2*d, minBackoff), m.opts.MaxBackoff)
}

// Close writes what is queued (until ctx ends: what is left then is
// dropped and counted), stops the goroutines, and removes the node's
// heartbeat so that the other nodes see it gone at once rather than after
// NodeTTL. The Events channel is closed. Close does not close the Redis
// client. With Redis hung it returns after ctx plus about two of the
// client's read timeouts (the write in flight, the heartbeat's removal).
func (m *Member) Close(ctx context.Context) error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.done {
		return m.closeErr
	}
	m.done = true
	m.closed.Store(true)
	err := m.Flush(ctx)
	close(m.stop)
	m.wg.Wait()
	if n := m.q.drain(); n > 0 {
		m.c.dropped.Add(uint64(n))
		m.log.Warn("cluster: registry writes not made before close", zap.Int("dropped", n))
	}
	lctx, cancel := m.ctx(context.WithoutCancel(ctx))
	defer cancel()
	if lerr := m.leave(lctx); lerr != nil && err == nil {
		err = lerr
	}
	close(m.events)
	m.closeErr = err
	return err
}
