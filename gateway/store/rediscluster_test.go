package store

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testredis"
)

// On a Redis Cluster a change is two or three scripts; a gateway that dies
// between them leaves the indexes behind the records. Prune's sweep and
// Prune itself repair each case.
func TestRedisClusterRepair(t *testing.T) {
	rc := testredis.StartCluster(t, 3)
	s := openRedisURL(t, rc.URL(), Options{}, RedisOptions{})
	if !s.cluster {
		t.Fatal("store not in cluster mode")
	}
	ctx := context.Background()

	// A Put cut short after its claim: the id is taken until the claim is
	// claimAge old, then the sweep drops it.
	b := newBucketKeys(s.opts.Prefix, bucketOf("x"))
	old := idEntry{status: "~" + strconv.FormatInt(time.Now().Add(-2*claimAge).UnixMilli(), 10), client: "gone"}.encode()
	if err := claimScript.Run(ctx, s.rdb, []string{b.ids}, "x", old).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get("x")
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.Put(newCmd("x", "dev", 0, 0)), ErrExists)
	if _, err := s.Prune(at(0)); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, newCmd("x", "dev", 0, 0))

	// A transition cut short before its index step: the entry says pending
	// at the Put's version, the record says sent.
	c := newCmd("a", "dev", time.Second, time.Hour)
	c.Origin = "api"
	mustPut(t, s, c)
	mustMove(t, s, "a", at(time.Minute), StatusSent)
	ba := newBucketKeys(s.opts.Prefix, bucketOf("a"))
	behind := idEntry{ver: 1, status: string(StatusPending), client: "dev", origin: "api"}.encode()
	if err := s.rdb.HSet(ctx, ba.ids, "a", behind).Err(); err != nil {
		t.Fatal(err)
	}
	s.rdb.HIncrBy(ctx, ba.counts, string(StatusSent), -1)
	s.rdb.HIncrBy(ctx, ba.counts, string(StatusPending), 1)
	if counts, _ := s.Stats(); counts.Pending != 2 || counts.Sent != 0 {
		t.Fatalf("test setup: %+v", counts)
	}
	if _, err := s.Prune(at(0)); err != nil {
		t.Fatal(err)
	}
	if counts, _ := s.Stats(); counts.Pending != 1 || counts.Sent != 1 || counts.Clients != 1 {
		t.Fatalf("after the sweep: %+v", counts)
	}

	// The clients entry of a change cut short before it: the sweep
	// publishes every client it meets again.
	cb := newBucketKeys(s.opts.Prefix, bucketOf("dev"))
	s.rdb.ZRem(ctx, cb.clients, "dev")
	s.rdb.HSet(ctx, cb.cver, "dev", 0)
	if clients, _ := s.Clients(); len(clients) != 0 {
		t.Fatalf("test setup: clients %q", clients)
	}
	if _, err := s.Prune(at(0)); err != nil {
		t.Fatal(err)
	}
	if clients, _ := s.Clients(); !equalStrings(clients, []string{"dev"}) {
		t.Fatalf("clients after the sweep: %q", clients)
	}

	// A Prune cut short after the record went: the next Prune takes the
	// command out of the counts and the origins.
	mustMove(t, s, "a", at(2*time.Minute), StatusDelivered)
	if err := clientPruneScript.Run(ctx, s.rdb, []string{s.recordKey("dev", "a"), s.listKey("dev"), s.verKey("dev")}, "", "a").Err(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasOrigin("api"); !ok {
		t.Fatal("test setup: origin gone with the record")
	}
	if _, err := s.Prune(at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasOrigin("api"); ok {
		t.Fatal("origin of a pruned command still there")
	}
	if counts, _ := s.Stats(); counts.Delivered != 0 || counts.Pending != 1 {
		t.Fatalf("after the Prune: %+v", counts)
	}
}

// With WaitReplicas on a Redis Cluster, each step waits on the primary of
// its slot: with no replica, a Put fails with ErrUnavailable naming them.
func TestRedisClusterWaitReplicas(t *testing.T) {
	rc := testredis.StartCluster(t, 3)
	s := openRedisURL(t, rc.URL(), Options{}, RedisOptions{WaitReplicas: 1, WaitTimeout: 100 * time.Millisecond})
	err := s.Put(newCmd("a", "dev", 0, 0))
	wantErr(t, err, ErrUnavailable)
}

// With WaitReplicas on a Redis Cluster with a replica per primary, a Put
// returns once the replica of each step's primary has it; with the
// replica of the device's primary hung, the Put fails with ErrUnavailable
// naming the replicas.
func TestRedisClusterWaitReplicasConfirmed(t *testing.T) {
	rc := testredis.StartCluster(t, 3)
	replicas := make([]*testredis.Server, len(rc.Nodes))
	for i := range rc.Nodes {
		replicas[i] = rc.AddReplica(t, i)
	}
	s := openRedisURL(t, rc.URL(), Options{}, RedisOptions{WaitReplicas: 1, WaitTimeout: 2 * time.Second})
	mustPut(t, s, newCmd("a", "dev", 0, time.Hour))
	mustMove(t, s, "a", at(time.Second), StatusSent)
	// The replica of the primary serving the device's slot has the record.
	slot, _ := strconv.Atoi(strings.TrimPrefix(rc.Nodes[0].Do("CLUSTER", "KEYSLOT", s.recordKey("dev", "a")), ":"))
	owner := slot * len(rc.Nodes) / 16384
	// A replica answers reads of its slots only after READONLY on the
	// connection: compare the key counts instead.
	if p, r := rc.Nodes[owner].Info("keyspace")["db0"], replicas[owner].Info("keyspace")["db0"]; p == "" || keyCount(p) != keyCount(r) {
		t.Fatalf("the replica of primary %d is behind after Put and Transition returned: %q, primary %q", owner, r, p)
	}
	replicas[owner].Pause()
	err := s.Put(newCmd("b", "dev", time.Second, time.Hour))
	wantErr(t, err, ErrUnavailable)
	if !strings.Contains(err.Error(), "replicas") {
		t.Fatalf("error does not name the replicas: %v", err)
	}
	replicas[owner].Resume()
	mustPut(t, s, newCmd("c", "dev", 2*time.Second, time.Hour))
}

// keyCount is N of INFO keyspace's "keys=N,expires=...".
func keyCount(db string) string {
	k, _, _ := strings.Cut(db, ",")
	return k
}
