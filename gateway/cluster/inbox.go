package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Event is a message to a node through its inbox: CommandWaiting,
// Takeover or CancelCommand. Delivery is at least once: a receiver may see an event twice
// and must check the store or its own sessions before acting.
type Event interface {
	kind() string
	client() string
}

// CommandWaiting tells the node holding a device that a command was
// stored for it: the node reads the device's pending commands from the
// store and delivers or upgrades as it would for a local command.
type CommandWaiting struct {
	ClientID string
}

// Takeover tells a node that a session of ClientID with epoch Epoch is
// the device's newest: the node closes its own session of that client if
// that session's epoch is older, and ignores the event otherwise.
type Takeover struct {
	ClientID string
	Epoch    uint64
}

// CancelCommand asks the node holding ClientID to cancel its command
// CommandID, ordered with that node's deliveries to the device (the
// outcome is written to the store, where the asking node reads it).
type CancelCommand struct {
	ClientID  string
	CommandID string
}

func (CommandWaiting) kind() string     { return "w" }
func (e CommandWaiting) client() string { return e.ClientID }
func (Takeover) kind() string           { return "t" }
func (e Takeover) client() string       { return e.ClientID }
func (CancelCommand) kind() string      { return "x" }
func (e CancelCommand) client() string  { return e.ClientID }

// xaddArgs is the XADD of ev to node's inbox. Fields: k (kind), c (client
// id), e (epoch, for Takeover), i (command id, for CancelCommand), f (the
// sending node).
func (m *Member) xaddArgs(node string, ev Event) *redis.XAddArgs {
	values := []any{"k", ev.kind(), "c", ev.client()}
	if t, ok := ev.(Takeover); ok {
		values = append(values, "e", epochArg(t.Epoch))
	}
	if x, ok := ev.(CancelCommand); ok {
		values = append(values, "i", x.CommandID)
	}
	values = append(values, "f", m.opts.Node)
	return &redis.XAddArgs{
		Stream: inboxKey(m.np, node),
		MaxLen: m.opts.InboxLen,
		Approx: true,
		Values: values,
	}
}

func checkEvent(node string, ev Event) error {
	if checkNode(node) != nil {
		return fmt.Errorf("cluster: notify: node %q is not a node name", node)
	}
	if ev == nil || ev.client() == "" {
		return errors.New("cluster: notify: no event, or no client id")
	}
	if x, ok := ev.(CancelCommand); ok && x.CommandID == "" {
		return errors.New("cluster: notify: a cancel without a command id")
	}
	return nil
}

// Notify writes ev to node's inbox now (one round trip, within
// Options.Timeout). From a goroutine that may wait; an event loop uses
// NotifyAsync.
func (m *Member) Notify(ctx context.Context, node string, ev Event) error {
	if m.closed.Load() {
		return ErrClosed
	}
	if err := checkEvent(node, ev); err != nil {
		return err
	}
	ctx, cancel := m.ctx(ctx)
	defer cancel()
	if err := m.rdb.XAdd(ctx, m.xaddArgs(node, ev)).Err(); err != nil {
		m.c.errors.Add(1)
		return m.unavailable("notify", err)
	}
	m.c.eventsSent.Add(1)
	return nil
}

// NotifyAsync queues ev for node's inbox; the writer sends it with the
// next batch and retries while Redis fails. It never waits; false when
// the event was not queued (closed, invalid, or MaxNotes queued: counted
// as dropped).
func (m *Member) NotifyAsync(node string, ev Event) bool {
	if m.closed.Load() || checkEvent(node, ev) != nil || !m.q.putNote(note{node: node, ev: ev}, m.opts.BatchSize) {
		m.c.dropped.Add(1)
		return false
	}
	return true
}

// Events returns the events other nodes (and this node's own writer, for
// an Online that lost to a newer session) sent to this node, in the order
// of its inbox. The receiver must keep reading: while it does not, the
// inbox is not read (the events wait in Redis, up to InboxLen). The
// channel is closed by Close.
func (m *Member) Events() <-chan Event { return m.events }

// consume reads this node's inbox from the point it joined, and passes the
// events to Events. The position is kept in memory only: a node that
// starts holds no sessions, so what was sent to its previous run is moot
// (a waiting command is in the store and is found when its device
// connects; a takeover concerns a session that is gone).
func (m *Member) consume() {
	defer m.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-m.stop
		cancel()
	}()
	last := ""
	var wait time.Duration
	for {
		select {
		case <-m.stop:
			return
		default:
		}
		if last == "" {
			id, err := m.inboxEnd(ctx)
			if err != nil {
				if !m.readFailed(err, &wait) {
					return
				}
				continue
			}
			last = id
			close(m.reading)
		}
		// XREAD built by hand: the client's XRead gives a blocking read
		// ten seconds more than its block before it times out, so a hung
		// Redis would hold the reader (and Close) that long; this one
		// times out after the client's read timeout, which the block is
		// below (see readBlock).
		cmd := redis.NewXStreamSliceCmd(ctx, "xread", "count", 256,
			"block", m.block.Milliseconds(), "streams", m.keys.inbox, last)
		_ = m.rdb.Process(ctx, cmd)
		res, err := cmd.Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if !m.readFailed(err, &wait) {
				return
			}
			continue
		}
		wait = 0
		for _, s := range res {
			for _, msg := range s.Messages {
				last = msg.ID
				ev := m.parseEvent(msg)
				if ev == nil {
					continue
				}
				m.c.eventsRecv.Add(1)
				select {
				case m.events <- ev:
				case <-m.stop:
					return
				}
			}
		}
	}
}

// readBlock is Options.ReadBlock, made half the client's read timeout if
// that is shorter, so that a blocking read is not taken for a hung Redis.
func readBlock(rdb redis.UniversalClient, block time.Duration) time.Duration {
	var rt time.Duration
	switch c := rdb.(type) {
	case interface{ Options() *redis.Options }:
		rt = c.Options().ReadTimeout
	case *redis.ClusterClient:
		rt = c.Options().ReadTimeout
	}
	if rt > 0 {
		block = min(block, rt/2)
	}
	return max(block, time.Millisecond)
}

// readFailed counts a failed read and waits before the next; false when
// the Member stopped.
func (m *Member) readFailed(err error, wait *time.Duration) bool {
	select {
	case <-m.stop:
		return false
	default:
	}
	m.c.errors.Add(1)
	m.log.Warn("cluster: inbox not read, redis unavailable", zap.String("node", m.opts.Node), zap.Error(err))
	*wait = m.backoff(*wait)
	return m.sleep(*wait)
}

// inboxEnd is the id of the inbox's last entry, "0-0" if it is empty. It
// loads the batch script in the same round trip, for the writer's first
// batch.
func (m *Member) inboxEnd(ctx context.Context) (string, error) {
	ctx, cancel := m.ctx(ctx)
	defer cancel()
	var end *redis.XMessageSliceCmd
	if m.cluster {
		// The scripts go to every primary (the client sends SCRIPT LOAD
		// to each), the read to the node keys' slot.
		for _, s := range []*redis.Script{deviceScript, nodeScript, sweepDeviceScript} {
			if err := s.Load(ctx, m.rdb).Err(); err != nil {
				return "", err
			}
		}
		end = m.rdb.XRevRangeN(ctx, m.keys.inbox, "+", "-", 1)
	} else {
		pipe := m.rdb.Pipeline()
		end = pipe.XRevRangeN(ctx, m.keys.inbox, "+", "-", 1)
		// Not batchScript.Load: on a pipeline it would take the empty
		// answer it has before Exec for the script's hash.
		pipe.ScriptLoad(ctx, batchSource)
		if _, err := pipe.Exec(ctx); err != nil {
			return "", err
		}
	}
	if err := end.Err(); err != nil {
		return "", err
	}
	msgs := end.Val()
	if len(msgs) == 0 {
		return "0-0", nil
	}
	return msgs[0].ID, nil
}

// parseEvent decodes an inbox entry; nil (logged) if it is not one.
func (m *Member) parseEvent(msg redis.XMessage) Event {
	str := func(k string) string { s, _ := msg.Values[k].(string); return s }
	id := str("c")
	switch str("k") {
	case "w":
		if id != "" {
			return CommandWaiting{ClientID: id}
		}
	case "t":
		e, err := strconv.ParseUint(str("e"), 10, 64)
		if id != "" && err == nil {
			m.clk.observe(e)
			return Takeover{ClientID: id, Epoch: e}
		}
	case "x":
		if cid := str("i"); id != "" && cid != "" {
			return CancelCommand{ClientID: id, CommandID: cid}
		}
	}
	m.log.Warn("cluster: inbox entry not understood", zap.String("id", msg.ID), zap.Any("values", msg.Values))
	return nil
}
