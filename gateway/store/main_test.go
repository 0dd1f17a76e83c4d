package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dualgate/dualgate/internal/testredis"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) {
	// The durability and lock tests re-execute this binary as a child that
	// uses the store and is then killed or released.
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(runChild(mode, os.Getenv(childPathEnv)))
	}
	goleak.VerifyTestMain(m)
}

// at is the clock of the tests: a fixed instant plus d.
func at(d time.Duration) time.Time {
	return time.Date(2025, 11, 1, 12, 0, 0, 0, time.UTC).Add(d)
}

// factory opens an empty store of one implementation, closed at the end of
// the test.
type factory struct {
	name string
	open func(t testing.TB, opts Options) Store
}

// factories are the stores to test; t is the test that holds what they
// share (one Redis Cluster, a prefix per store).
func factories(t testing.TB) []factory {
	var cluster *testredis.Cluster
	var prefixes int
	return []factory{
		{name: "memory", open: func(t testing.TB, opts Options) Store {
			s := NewMemory(opts)
			t.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{name: "bolt", open: func(t testing.TB, opts Options) Store {
			return openBolt(t, filepath.Join(t.TempDir(), FileName), opts)
		}},
		{name: "redis", open: func(t testing.TB, opts Options) Store {
			return openRedis(t, testredis.Start(t), opts, RedisOptions{})
		}},
		{name: "redis cluster", open: func(tt testing.TB, opts Options) Store {
			if cluster == nil {
				cluster = testredis.StartCluster(t, 3)
			}
			prefixes++
			return openRedisURL(tt, cluster.URL(), opts, RedisOptions{Prefix: fmt.Sprint("t", prefixes)})
		}},
		{name: "bolt batched", open: func(t testing.TB, opts Options) Store {
			opts.BatchDelay = time.Millisecond
			return openBolt(t, filepath.Join(t.TempDir(), FileName), opts)
		}},
	}
}

func openBolt(t testing.TB, path string, opts Options) *Bolt {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openRedis opens a Redis store on srv, closed at the end of the test.
func openRedis(t testing.TB, srv *testredis.Server, opts Options, ropts RedisOptions) *Redis {
	t.Helper()
	return openRedisURL(t, srv.URL(), opts, ropts)
}

// openRedisURL opens a Redis store on a URL, closed at the end of the test.
func openRedisURL(t testing.TB, url string, opts Options, ropts RedisOptions) *Redis {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	rdb, err := NewRedisClient(url, ropts.WaitTimeout)
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	s, err := OpenRedis(rdb, opts, ropts)
	if err != nil {
		_ = rdb.Close()
		t.Fatalf("OpenRedis: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newCmd returns a valid command created at t0+created for client, with a
// TTL (0: none).
func newCmd(id, client string, created, ttl time.Duration) *Command {
	c := &Command{
		ID:        id,
		ClientID:  client,
		Topic:     "devices/" + client + "/commands/unlock",
		Payload:   []byte("payload of " + id),
		QoS:       1,
		Secure:    true,
		CreatedAt: at(created),
	}
	if ttl > 0 {
		c.ExpiresAt = at(created + ttl)
	}
	return c
}

func mustPut(t testing.TB, s Store, cs ...*Command) {
	t.Helper()
	for _, c := range cs {
		if err := s.Put(c); err != nil {
			t.Fatalf("Put(%s): %v", c.ID, err)
		}
	}
}

func mustMove(t testing.TB, s Store, id string, when time.Time, to ...Status) *Command {
	t.Helper()
	var c *Command
	for _, st := range to {
		var err error
		if c, err = s.Transition(id, st, when, "test"); err != nil {
			t.Fatalf("Transition(%s, %s): %v", id, st, err)
		}
	}
	return c
}

func mustGet(t testing.TB, s Store, id string) *Command {
	t.Helper()
	c, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return c
}

func ids(cs []*Command) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want %v", err, want)
	}
}
