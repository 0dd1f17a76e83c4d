package store

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// checkConsistent verifies the file's structure with bbolt's own check, then
// rebuilds every index and count from the records and compares them with
// what is stored.
func checkConsistent(t testing.TB, b *Bolt) {
	t.Helper()
	err := b.db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("bbolt check: %w", err)
		}
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		want := map[string]map[string]bool{bucketPending: {}, bucketExpiry: {}, bucketFinished: {}}
		wantCounts := map[string]int{}
		clients := map[string]bool{}
		err = bk.commands.ForEach(func(k, v []byte) error {
			c, err := decodeCommand(v)
			if err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			if c.ID != string(k) {
				return fmt.Errorf("record %q holds id %q", k, c.ID)
			}
			wantCounts[string(c.Status)]++
			if c.Status.Final() {
				want[bucketFinished][string(timeIDKey(c.FinishedAt(), c.ID))] = true
				return nil
			}
			clients[c.ClientID] = true
			want[bucketPending][string(pendingKey(c))] = true
			if !c.ExpiresAt.IsZero() {
				want[bucketExpiry][string(timeIDKey(c.ExpiresAt, c.ID))] = true
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(clients) > 0 {
			wantCounts[keyClients] = len(clients)
		}
		for name, keys := range want {
			got := map[string]bool{}
			if err := tx.Bucket([]byte(name)).ForEach(func(k, _ []byte) error {
				got[string(k)] = true
				return nil
			}); err != nil {
				return err
			}
			if !maps.Equal(got, keys) {
				return fmt.Errorf("index %s has %d keys, the records make %d", name, len(got), len(keys))
			}
		}
		gotCounts := map[string]int{}
		if err := bk.counts.ForEach(func(k, _ []byte) error {
			n, err := getCount(bk.counts, string(k))
			if n != 0 {
				gotCounts[string(k)] = n
			}
			return err
		}); err != nil {
			return err
		}
		if !maps.Equal(gotCounts, wantCounts) {
			return fmt.Errorf("counts %v, the records make %v", gotCounts, wantCounts)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("store inconsistent: %v", err)
	}
}

func TestBoltReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := openBolt(t, path, Options{})
	fromBroker := newCmd("b", "dev1", time.Second, time.Hour)
	fromBroker.Origin = "mqtt:5eed"
	mustPut(t, s,
		newCmd("a", "dev1", 0, time.Hour),
		fromBroker,
		newCmd("c", "dev2", 0, 0),
	)
	mustMove(t, s, "a", at(time.Minute), StatusSent)
	mustMove(t, s, "c", at(time.Minute), StatusSent, StatusDelivered)
	before := map[string]*Command{}
	for _, id := range []string{"a", "b", "c"} {
		before[id] = mustGet(t, s, id)
	}
	stats, _ := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path, Options{})
	checkConsistent(t, s)
	for id, want := range before {
		if got := mustGet(t, s, id); !reflect.DeepEqual(got, want) {
			t.Errorf("after reopen Get(%s) = %+v, want %+v", id, got, want)
		}
	}
	if again, _ := s.Stats(); again != stats {
		t.Errorf("after reopen Stats = %+v, want %+v", again, stats)
	}
	if clients, _ := s.Clients(); !equalStrings(clients, []string{"dev1"}) {
		t.Errorf("after reopen Clients = %q", clients)
	}
	if pending, _ := s.Pending("dev1"); !equalStrings(ids(pending), []string{"a", "b"}) {
		t.Errorf("after reopen Pending = %v", ids(pending))
	}
	if ok, err := s.HasOrigin("mqtt:5eed"); !ok || err != nil {
		t.Errorf("after reopen HasOrigin = %v, %v; want the broker command's origin kept", ok, err)
	}
}

func TestBoltOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notBolt := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(notBolt, []byte(strings.Repeat("not a bolt file ", 1024)), 0o600); err != nil {
		t.Fatal(err)
	}
	newer := filepath.Join(dir, "newer.db")
	db, err := bbolt.Open(newer, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket([]byte(bucketMeta))
		if err != nil {
			return err
		}
		return meta.Put([]byte(keySchema), []byte{schemaVersion + 1})
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		path string
		want string
	}{
		{name: "missing directory", path: filepath.Join(dir, "no", "such", FileName), want: "no such file"},
		{name: "not a bolt file", path: notBolt, want: "invalid"},
		{name: "newer layout", path: newer, want: "layout version"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenBolt(tc.path, Options{})
			if err == nil {
				_ = s.Close()
				t.Fatal("OpenBolt succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("error %q does not name the path and %q", err, tc.want)
			}
		})
	}
}

func TestBoltCorruptRecord(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), FileName), Options{})
	mustPut(t, s, newCmd("a", "dev", 0, 0))
	err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucketCommands)).Put([]byte("a"), []byte{recordVersion, 0xff})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Get("a")
	wantErr(t, err, ErrCorrupt)
	_, err = s.Pending("dev")
	wantErr(t, err, ErrCorrupt)
	_, err = s.Transition("a", StatusSent, at(time.Second), "")
	wantErr(t, err, ErrCorrupt)
}

// TestBoltLockedByOtherProcess opens the file from a child process and
// checks that the parent is refused with ErrLocked, then admitted once the
// child has gone.
func TestBoltLockedByOtherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	child := startChild(t, childHold, path)
	if line := child.readLine(t); line != "locked" {
		t.Fatalf("child said %q", line)
	}

	const timeout = 200 * time.Millisecond
	start := time.Now()
	s, err := OpenBolt(path, Options{Timeout: timeout})
	if err == nil {
		_ = s.Close()
		t.Fatal("OpenBolt succeeded while another process holds the file")
	}
	wantErr(t, err, ErrLocked)
	// bbolt polls the lock every 50ms and gives up at the last poll
	// before the timeout.
	if waited := time.Since(start); waited < timeout/2 {
		t.Errorf("gave up after %s, long before the %s timeout", waited, timeout)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another gateway") {
		t.Errorf("error %q does not name the file and the likely cause", err)
	}

	child.release(t)
	s = openBolt(t, path, Options{Timeout: 5 * time.Second})
	if got := mustGet(t, s, "held"); got.ClientID != "holder" {
		t.Fatalf("command written by the child: %+v", got)
	}
}

// TestBoltSurvivesKill kills a child process with SIGKILL right after it has
// reported a Put or Transition as returned, then checks that everything it
// reported is in the file, and that the file is consistent.
func TestBoltSurvivesKill(t *testing.T) {
	cases := []struct {
		name string
		mode string
		// reports is how many reports to read before the kill.
		reports int
	}{
		{name: "idle after one put", mode: childPutOne, reports: 1},
		{name: "in a stream of writes", mode: childStream, reports: 40},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			child := startChild(t, tc.mode, path)
			reported := map[string]Status{} // the latest status reported per id
			for range tc.reports {
				status, id, ok := strings.Cut(child.readLine(t), " ")
				if !ok {
					t.Fatalf("child report %q", status)
				}
				reported[id] = Status(status)
			}
			child.kill(t)

			s := openBolt(t, path, Options{})
			checkConsistent(t, s)
			for id, status := range reported {
				c, err := s.Get(id)
				if err != nil {
					t.Fatalf("command %s reported %s before the kill: %v", id, status, err)
				}
				if !reachable(status, c.Status) {
					t.Errorf("command %s reported %s, found %s", id, status, c.Status)
				}
			}
			counts, _ := s.Stats()
			t.Logf("%d reports on %d commands read; %d commands in the file after SIGKILL",
				tc.reports, len(reported), counts.NonFinal()+counts.Delivered+counts.Expired+counts.Failed)
		})
	}
}

// reachable reports whether the child may have moved a command reported in
// status from on to status to before it was killed.
func reachable(from, to Status) bool {
	order := []Status{StatusPending, StatusSent, StatusDelivered}
	return slices.Index(order, to) >= slices.Index(order, from) && slices.Contains(order, to)
}

// A file of layout version 1 (before List) is indexed by client when
// opened, and then lists every command it held.
func TestBoltUpgradeFrom1(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := openBolt(t, path, Options{})
	mustPut(t, s, newCmd("a", "dev", 0, 0), newCmd("b", "dev", time.Second, 0), newCmd("c", "other", 0, 0))
	mustMove(t, s, "a", at(time.Minute), StatusSent, StatusDelivered)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if err := tx.DeleteBucket([]byte(bucketByClient)); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), []byte{1})
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	if r, err := Check(path, Options{}); err != nil || !r.OK() {
		t.Fatalf("Check of a version 1 file: %+v, %v", r, err)
	}
	s = openBolt(t, path, Options{})
	cmds, next, err := s.List("dev", "", 10)
	if err != nil || next != "" || !equalStrings(ids(cmds), []string{"b", "a"}) {
		t.Fatalf("List after the upgrade = %q, %q, %v", ids(cmds), next, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Check(path, Options{}); err != nil || !r.OK() {
		t.Fatalf("Check after the upgrade: %+v, %v", r, err)
	}
}

// TestBoltIdleTickWritesNothing: the dispatcher calls Expire every tick and
// Prune every hour; with nothing due they must not commit, because a bbolt
// commit writes and syncs the file even when it changed nothing (an idle
// gateway synced its disk twice a second). When something is due, they
// still do their work.
func TestBoltIdleTickWritesNothing(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), FileName), Options{})
	mustPut(t, s, newCmd("a", "dev", 0, time.Minute), newCmd("b", "dev", 0, 0))
	if _, err := s.Transition("b", StatusCancelled, at(time.Second), ""); err != nil {
		t.Fatal(err)
	}
	txid := func() int {
		var id int
		if err := s.db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	before := txid()
	for i := range 10 {
		got, err := s.Expire(at(time.Duration(i) * time.Second))
		if err != nil || len(got) != 0 {
			t.Fatalf("Expire before the deadline = %v, %v", ids(got), err)
		}
		if n, err := s.Prune(at(time.Second)); err != nil || n != 0 {
			t.Fatalf("Prune of nothing finished before = %d, %v", n, err)
		}
	}
	if after := txid(); after != before {
		t.Fatalf("idle Expire and Prune committed %d transactions", after-before)
	}

	got, err := s.Expire(at(time.Minute))
	if err != nil || len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("Expire at the deadline = %v, %v; want [a]", ids(got), err)
	}
	if n, err := s.Prune(at(time.Hour)); err != nil || n != 2 {
		t.Fatalf("Prune after both finished = %d, %v; want 2", n, err)
	}
	if txid() == before {
		t.Fatal("Expire and Prune with work to do committed nothing")
	}
}
