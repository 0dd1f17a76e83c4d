package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testredis"
)

// A Redis killed (SIGKILL) with commands pending, its append-only file
// synced on every write, comes back with all of them; the store that was
// open reconnects by itself, and a new one sees the same commands.
func TestRedisKilledKeepsCommands(t *testing.T) {
	srv := testredis.Start(t)
	s := openRedis(t, srv, Options{}, RedisOptions{})
	for i := range 20 {
		mustPut(t, s, newCmd(fmt.Sprint("c", i), fmt.Sprint("dev", i%4), time.Duration(i)*time.Second, time.Hour))
	}
	mustMove(t, s, "c0", at(time.Minute), StatusSent, StatusDelivered)
	mustMove(t, s, "c1", at(time.Minute), StatusUpgrading)

	srv.Kill()
	_, err := s.Get("c2")
	wantErr(t, err, ErrUnavailable)
	srv.Start()

	for _, st := range []Store{s, openRedis(t, srv, Options{}, RedisOptions{})} {
		counts, err := st.Stats()
		if err != nil {
			t.Fatalf("Stats after restart: %v", err)
		}
		if want := (Counts{Pending: 18, Upgrading: 1, Delivered: 1, Clients: 4}); counts != want {
			t.Fatalf("Stats after restart = %+v, want %+v", counts, want)
		}
		if got := mustGet(t, st, "c1"); got.Status != StatusUpgrading || len(got.History) != 2 {
			t.Fatalf("c1 after restart: %+v", got)
		}
		pending, err := st.Pending("dev2")
		if err != nil || !equalStrings(ids(pending), []string{"c2", "c6", "c10", "c14", "c18"}) {
			t.Fatalf("Pending(dev2) after restart = %v, %v", ids(pending), err)
		}
	}
	mustPut(t, s, newCmd("after", "dev0", time.Hour, 0))
}

// A Redis that stops answering (SIGSTOP) makes calls fail with
// ErrUnavailable within the store's timeout, not hang; once it answers
// again the same store works.
func TestRedisUnavailable(t *testing.T) {
	srv := testredis.Start(t)
	s := openRedis(t, srv, Options{}, RedisOptions{Timeout: 500 * time.Millisecond})
	mustPut(t, s, newCmd("a", "dev", 0, time.Hour))

	srv.Pause()
	start := time.Now()
	err := s.Put(newCmd("b", "dev", time.Second, time.Hour))
	wantErr(t, err, ErrUnavailable)
	if !strings.Contains(err.Error(), "redis unavailable") {
		t.Fatalf("error does not say what is wrong: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Put took %s against a hung Redis", took)
	}
	_, err = s.Pending("dev")
	wantErr(t, err, ErrUnavailable)
	srv.Resume()

	// The Put that timed out may have reached Redis: its result is not
	// known, the command may or may not be there. Everything else is.
	mustPut(t, s, newCmd("c", "dev", 2*time.Second, time.Hour))
	pending, err := s.Pending("dev")
	if err != nil {
		t.Fatal(err)
	}
	got := slices.DeleteFunc(ids(pending), func(id string) bool { return id == "b" })
	if !equalStrings(got, []string{"a", "c"}) {
		t.Fatalf("Pending after resume = %v", ids(pending))
	}
}

// With WaitReplicas, a Put returns once a replica has the command; with
// the replica hung, the Put fails with ErrUnavailable after WaitTimeout
// (generous: a replica that has just synchronised rewrites its AOF, slowly
// on a busy machine)
// (the command is on the primary: a retry may deliver it twice, never
// lose it).
func TestRedisWaitReplicas(t *testing.T) {
	primary := testredis.Start(t)
	replica := testredis.Start(t, "replicaof 127.0.0.1 "+fmt.Sprint(primary.Port))
	waitLink(t, replica)
	s := openRedis(t, primary, Options{}, RedisOptions{WaitReplicas: 1, WaitTimeout: 2 * time.Second})
	mustPut(t, s, newCmd("a", "dev", 0, time.Hour))
	mustMove(t, s, "a", at(time.Second), StatusSent)
	if got := replica.Do("EXISTS", s.recordKey("dev", "a")); got != ":1" {
		t.Fatalf("replica does not have the command after Put returned: %s", got)
	}

	replica.Pause()
	err := s.Put(newCmd("b", "dev", time.Second, time.Hour))
	wantErr(t, err, ErrUnavailable)
	if !strings.Contains(err.Error(), "replicas") {
		t.Fatalf("error does not name the replicas: %v", err)
	}
	if got := mustGet(t, s, "b"); got.Status != StatusPending {
		t.Fatalf("b on the primary: %+v", got)
	}
	replica.Resume()
	mustPut(t, s, newCmd("c", "dev", 2*time.Second, time.Hour))
}

// waitLink waits until a replica has synchronised with its primary.
func waitLink(t *testing.T, replica *testredis.Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for replica.Info("replication")["master_link_status"] != "up" {
		if time.Now().After(deadline) {
			t.Fatal("replica never synchronised")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every key of a client carries the client id as its hash tag, after the
// id's length, so ids holding braces or colons cannot make two clients'
// keys meet; the prefix keeps two fleets apart in one database.
func TestRedisKeys(t *testing.T) {
	srv := testredis.Start(t)
	s := openRedis(t, srv, Options{}, RedisOptions{Prefix: "fleet1"})
	other := openRedis(t, srv, Options{}, RedisOptions{Prefix: "fleet2"})
	mustPut(t, s, newCmd("x", "car-42", 0, time.Hour))
	if got := srv.Do("TYPE", "fleet1:6:{car-42}:q"); got != "+zset" {
		t.Fatalf("queue key: %s", got)
	}
	if got := srv.Do("TYPE", "fleet1:6:{car-42}:c:x"); got != "+string" {
		t.Fatalf("record key: %s", got)
	}
	if got := srv.Do("TYPE", "fleet1:6:{car-42}:a"); got != "+zset" {
		t.Fatalf("list key: %s", got)
	}
	// "a}:c:b" with command "z" and "a" with command "b}:c:z"... would
	// share a key without the length.
	mustPut(t, s, newCmd("z", "a}:c:b", 0, 0), newCmd("b}:c:z", "a", 0, 0))
	if a, b := mustGet(t, s, "z"), mustGet(t, s, "b}:c:z"); a.ClientID != "a}:c:b" || b.ClientID != "a" {
		t.Fatalf("clients mixed up: %q %q", a.ClientID, b.ClientID)
	}
	if counts, err := other.Stats(); err != nil || counts != (Counts{}) {
		t.Fatalf("another prefix sees %+v, %v", counts, err)
	}
	_, err := other.Get("x")
	wantErr(t, err, ErrNotFound)
	if _, err := OpenRedis(nil, Options{}, RedisOptions{Prefix: "a{b}"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("prefix with braces: %v", err)
	}
}

// Through Sentinel, the store finds the primary and works on it.
func TestRedisSentinel(t *testing.T) {
	primary := testredis.Start(t)
	sentinel := testredis.StartSentinel(t, primary, "dg")
	rdb, err := NewRedisClient(fmt.Sprintf("redis+sentinel://%s/0?master_name=dg", sentinel.Addr()), 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenRedis(rdb, Options{}, RedisOptions{})
	if err != nil {
		_ = rdb.Close()
		t.Fatal(err)
	}
	defer s.Close()
	mustPut(t, s, newCmd("a", "dev", 0, time.Hour))
	if got := primary.Do("HGET", "dg:ids", "a"); got != "dev" {
		t.Fatalf("command not on the primary: %q", got)
	}
}

// A Redis that may evict any key when full would drop pending commands:
// the store refuses it.
func TestRedisRefusesEviction(t *testing.T) {
	srv := testredis.Start(t, "maxmemory 64mb", "maxmemory-policy allkeys-lru")
	rdb, err := NewRedisClient(srv.URL(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	_, err = OpenRedis(rdb, Options{}, RedisOptions{})
	if err == nil || !strings.Contains(err.Error(), "maxmemory-policy noeviction") {
		t.Fatalf("OpenRedis on allkeys-lru: %v", err)
	}
}

// A Redis Cluster node named as one server would fail the keys of other
// slots: the store refuses it at once and names redis+cluster://.
func TestRedisRefusesCluster(t *testing.T) {
	srv := testredis.Start(t, "cluster-enabled yes", "cluster-config-file nodes.conf")
	rdb, err := NewRedisClient(srv.URL(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	_, err = OpenRedis(rdb, Options{}, RedisOptions{})
	if err == nil || !strings.Contains(err.Error(), "cluster mode") || !strings.Contains(err.Error(), "redis+cluster://") {
		t.Fatalf("OpenRedis on a Redis Cluster node: %v", err)
	}
}

func TestNewRedisClient(t *testing.T) {
	good := []string{
		"redis://127.0.0.1:6379/0",
		"rediss://user:pass@redis.example.com:6380/2",
		"redis+sentinel://s1:26379/0?master_name=dg&addr=s2:26379",
		"redis+cluster://n1:6379?addr=n2:6379&addr=n3:6379",
		"rediss+cluster://u:p@n1:6379/",
	}
	for _, u := range good {
		if err := CheckRedisURL(u); err != nil {
			t.Errorf("CheckRedisURL(%q): %v", u, err)
		}
	}
	bad := map[string]string{
		"http://127.0.0.1:6379":          "want redis://",
		"redis://127.0.0.1:6379/x":       "database",
		"redis+sentinel://s1:26379/0":    "master_name",
		"redis:///0":                     "host",
		"redis+cluster://n1:6379/2":      "no path",
		"redis+cluster://n1:6379?addr=x": "addr",
		"redis://:secret@h:1/0?bogus=1":  "bogus",
	}
	for u, want := range bad {
		err := CheckRedisURL(u)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckRedisURL(%q) = %v, want %q", u, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("CheckRedisURL(%q) shows the password: %v", u, err)
		}
	}
}

// Keys written before List (layout 1: no per-client list key) are indexed
// when a store opens, once.
func TestRedisUpgradeLayout(t *testing.T) {
	srv := testredis.Start(t)
	s := openRedis(t, srv, Options{}, RedisOptions{})
	mustPut(t, s, newCmd("a", "dev", 0, 0), newCmd("b", "dev", time.Second, 0), newCmd("c", "other", 0, 0))
	mustMove(t, s, "a", at(time.Minute), StatusFailed)
	srv.Do("DEL", "dg:3:{dev}:a", "dg:5:{other}:a", "dg:layout")
	if cmds, _, err := s.List("dev", "", 10); err != nil || len(cmds) != 0 {
		t.Fatalf("test setup: List = %q, %v", ids(cmds), err)
	}
	again := openRedis(t, srv, Options{}, RedisOptions{})
	cmds, next, err := again.List("dev", "", 10)
	if err != nil || next != "" || !equalStrings(ids(cmds), []string{"b", "a"}) {
		t.Fatalf("List after the upgrade = %q, %q, %v", ids(cmds), next, err)
	}
	if got := srv.Do("GET", "dg:layout"); !strings.Contains(got, "2") {
		t.Fatalf("layout key: %s", got)
	}
}
