package cluster

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/testredis"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countHook counts the round trips that carried batchScript: alone or in
// a pipeline.
type countHook struct {
	batches atomic.Int64 // round trips with a batch script
	evals   atomic.Int64 // batch scripts run
}

func isBatch(cmd redis.Cmder) bool {
	a := cmd.Args()
	if len(a) < 2 {
		return false
	}
	name, _ := a[0].(string)
	sha, _ := a[1].(string)
	return name == "evalsha" && sha == batchScript.Hash()
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isBatch(cmd) {
			h.batches.Add(1)
			h.evals.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		n := 0
		for _, c := range cmds {
			if isBatch(c) {
				n++
			}
		}
		if n > 0 {
			h.batches.Add(1)
			h.evals.Add(int64(n))
		}
		return next(ctx, cmds)
	}
}

// client returns a client of srv as the gateway makes it, closed at the
// end of the test, with a hook counting the batches.
func client(t testing.TB, srv *testredis.Server) (redis.UniversalClient, *countHook) {
	t.Helper()
	rdb, err := store.NewRedisClient(srv.URL(), 0)
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	h := &countHook{}
	rdb.AddHook(h)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, h
}

// testOptions are quick to notice: a short TTL and read block.
func testOptions(node string) Options {
	return Options{
		Node:           node,
		AdvertisePlain: node + ".example:1883",
		AdvertiseTLS:   node + ".example:8883",
		Timeout:        time.Second,
		NodeTTL:        900 * time.Millisecond,
		ReadBlock:      100 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
	}
}

// join returns a member on rdb, closed at the end of the test, once its
// first heartbeat is in Redis: Join returns before it, and until then Get
// reports the node's own devices as not online (TestEpochOrdering failed
// so once in CI, the heartbeat's goroutine late on a loaded machine).
func join(t testing.TB, rdb redis.UniversalClient, o Options) *Member {
	t.Helper()
	m, err := Join(rdb, o)
	if err != nil {
		t.Fatalf("Join(%s): %v", o.Node, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	})
	waitLive(t, m, o.Node)
	return m
}

// crash stops a member's goroutines as a process that dies would: no
// flush, no leave; its heartbeat stays until it expires.
func crash(m *Member) {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.done {
		return
	}
	m.done = true
	m.closed.Store(true)
	close(m.stop)
	m.wg.Wait()
	m.q.drain()
	close(m.events)
}

func flush(t testing.TB, ms ...*Member) {
	t.Helper()
	for _, m := range ms {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := m.Flush(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Flush(%s): %v (stats %+v)", m.Node(), err, m.Stats())
		}
	}
}

func rec(id string, mode Mode, epoch uint64) Record {
	return Record{ClientID: id, Mode: mode, Protocol: 5, Since: 1_700_000_000_000, Epoch: epoch}
}

func mustGet(t testing.TB, m *Member, id string) (Record, bool) {
	t.Helper()
	r, ok, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return r, ok
}

// nextEvent waits for an event of m, at most d.
func nextEvent(t testing.TB, m *Member, d time.Duration) Event {
	t.Helper()
	select {
	case ev, ok := <-m.Events():
		if !ok {
			t.Fatalf("%s: events closed", m.Node())
		}
		return ev
	case <-time.After(d):
		t.Fatalf("%s: no event within %s (stats %+v)", m.Node(), d, m.Stats())
	}
	return nil
}

// waitLive waits until node is among the live nodes.
func waitLive(t testing.TB, m *Member, node string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		nodes, err := m.LiveNodes(context.Background())
		if err == nil {
			for _, n := range nodes {
				if n.ID == node {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not live after 5 s: %v %v", node, nodes, err)
		}
		time.Sleep(10 * time.Millisecond) // the first heartbeat is asynchronous: nothing to wait on
	}
}

func ids(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%06d", prefix, i)
	}
	return out
}
