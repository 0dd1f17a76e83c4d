package store

import (
	"errors"
	"fmt"
	"os"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// maxProblems bounds the problems a Report lists; Problems counts them all.
const maxProblems = 20

// Report is the health of a store file, from Check.
type Report struct {
	// Path and Size are the file and its length in bytes.
	Path string
	Size int64
	// Counts is what the store's own counters say; Records the command
	// records read, by status, and Clients the devices that have
	// non-final commands among them.
	Counts  Counts
	Records Counts
	// Problems describes the damage found (at most 20; Found counts all).
	// Empty: the file is healthy.
	Problems []string
	Found    int
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return r.Found == 0 }

func (r *Report) problem(format string, a ...any) {
	r.Found++
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
	}
}

// Check reads the store file at path without changing it and reports its
// health: the checks OpenBolt makes before it maps the file, bbolt's own
// consistency check of every page, and a read of every command record
// against the store's indexes and counters. Damage is a Report with
// Problems; the error is for a file that could not be examined at all:
// missing, or locked by a running gateway (ErrLocked) for longer than
// opts.Timeout.
func Check(path string, opts Options) (*Report, error) {
	o := opts.withDefaults()
	r := &Report{Path: path}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	r.Size = fi.Size()
	if err := lockShared(f, path, o.Timeout); err != nil {
		return nil, err
	}
	if r.Size == 0 {
		r.problem("the file is 0 bytes long: whatever it held is gone")
		return r, nil
	}
	if err := checkFile(f, r.Size); err != nil {
		r.problem("%v", err)
		return r, nil
	}
	db, err := openGuarded(path, &bbolt.Options{ReadOnly: true, Timeout: o.Timeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, lockedError(path, o.Timeout)
		}
		r.problem("bbolt cannot open it: %v", err)
		return r, nil
	}
	defer db.Close()
	err = guard(path, func() error {
		return db.View(func(tx *bbolt.Tx) error {
			for err := range tx.Check() {
				r.problem("page check: %v", err)
			}
			if r.Found == 0 {
				checkContent(tx, r)
			}
			return nil
		})
	})
	if err != nil {
		r.problem("%v", err)
	}
	return r, nil
}

// checkContent reads every record and compares it with the indexes and
// counters that the store's calls rely on.
func checkContent(tx *bbolt.Tx, r *Report) {
	if meta := tx.Bucket([]byte(bucketMeta)); meta != nil {
		// Version 1 is read as it is: opening it upgrades it.
		if v := meta.Get([]byte(keySchema)); v != nil && (len(v) != 1 || (v[0] != schemaVersion && v[0] != 1)) {
			r.problem("layout version %v; this build reads version %d", v, schemaVersion)
			return
		}
	}
	bk, err := bucketsV1(tx)
	if err != nil {
		r.problem("%v", err)
		return
	}
	for _, s := range Statuses() {
		n, err := getCount(bk.counts, string(s))
		if err != nil {
			r.problem("%v", err)
		}
		r.Counts.add(s, n)
	}
	if r.Counts.Clients, err = getCount(bk.counts, keyClients); err != nil {
		r.problem("%v", err)
	}
	clients := map[string]bool{}
	_ = bk.commands.ForEach(func(k, v []byte) error {
		c, err := decodeCommand(v)
		if err != nil {
			r.problem("command %q: %v", k, err)
			return nil
		}
		r.Records.add(c.Status, 1)
		if bk.byClient != nil && bk.byClient.Get(pendingKey(c)) == nil {
			r.problem("command %s (%s) is missing from the byclient index: its device's listing leaves it out", c.ID, c.Status)
		}
		if c.Status.Final() {
			if bk.finished.Get(timeIDKey(c.FinishedAt(), c.ID)) == nil {
				r.problem("command %s (%s) is missing from the finished index", c.ID, c.Status)
			}
			return nil
		}
		clients[c.ClientID] = true
		if bk.pending.Get(pendingKey(c)) == nil {
			r.problem("command %s (%s) is missing from the pending index: its device would never get it", c.ID, c.Status)
		}
		return nil
	})
	r.Records.Clients = len(clients)
	if n := bk.pending.Stats().KeyN; n != r.Records.NonFinal() {
		r.problem("the pending index holds %d entries for %d undelivered commands", n, r.Records.NonFinal())
	}
	if bk.byClient != nil {
		all := r.Records.NonFinal() + r.Records.Delivered + r.Records.Expired + r.Records.Failed + r.Records.Cancelled
		if n := bk.byClient.Stats().KeyN; n != all {
			r.problem("the byclient index holds %d entries for %d commands", n, all)
		}
	}
	if r.Counts != r.Records {
		r.problem("the counters say %s; the records say %s", r.Counts, r.Records)
	}
}

// String writes the counts as "pending 1, upgrading 0, ..., devices 1".
func (c Counts) String() string {
	s := ""
	for _, st := range Statuses() {
		s += fmt.Sprintf("%s %d, ", st, c.Of(st))
	}
	return s + fmt.Sprintf("devices %d", c.Clients)
}
