package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

// Bucket names and the layout version; see the package documentation.
const (
	bucketCommands = "commands"
	bucketPending  = "pending"
	bucketExpiry   = "expiry"
	bucketFinished = "finished"
	bucketCounts   = "counts"
	bucketMeta     = "meta"
	bucketOrigins  = "origins"
	bucketByClient = "byclient"

	keySchema  = "schema"
	keyClients = "clients"
	// schemaVersion 2 added the byclient index (List); a version 1 file
	// is brought up to it when opened.
	schemaVersion = 2
)

// noteExpired is the history note of a move made by Expire.
const noteExpired = "ttl elapsed"

// Bolt is the Store kept in one bbolt file. Every call is one transaction,
// or shares one with concurrent callers (Options.BatchDelay); a call that
// changes anything returns after the commit's fsync.
type Bolt struct {
	// constant after OpenBolt
	db      *bbolt.DB
	path    string
	limit   int
	batched bool
	log     *zap.Logger

	closed       atomic.Bool
	damageLogged atomic.Bool // the first ErrDamaged of a call was logged
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the store file at path (conventionally
// FileName in the data directory). It fails with ErrLocked when another
// process holds the file for longer than opts.Timeout, with ErrEmptyFile
// when the file exists but is empty, and with ErrDamaged when it is cut
// short or its pages cannot be read; it never crashes on a damaged file.
func OpenBolt(path string, opts Options) (*Bolt, error) {
	o := opts.withDefaults()
	if err := prepareFile(path, o.Timeout); err != nil {
		return nil, err
	}
	db, err := openGuarded(path, &bbolt.Options{
		Timeout:      o.Timeout,
		FreelistType: bbolt.FreelistMapType,
	})
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("%w: %w", lockedError(path, o.Timeout), err)
		case errors.Is(err, ErrDamaged):
			return nil, err
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
			return nil, damaged(path, err)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if o.BatchDelay > 0 {
		db.MaxBatchDelay = o.BatchDelay
	}
	b := &Bolt{db: db, path: path, limit: o.Limit, batched: o.BatchDelay > 0, log: o.Logger}
	err = guard(path, func() error {
		return db.Update(func(tx *bbolt.Tx) error { return guard(path, func() error { return setup(tx) }) })
	})
	if err != nil {
		return nil, errors.Join(openError(path, err), db.Close())
	}
	counts, err := b.Stats()
	if err != nil {
		return nil, errors.Join(openError(path, err), db.Close())
	}
	b.log.Info("command store opened",
		zap.String("path", path),
		zap.Int("non_final", counts.NonFinal()),
		zap.Int("clients", counts.Clients),
		zap.Int("limit", b.limit),
		zap.Duration("batch_delay", o.BatchDelay))
	return b, nil
}

func openError(path string, err error) error {
	if errors.Is(err, ErrDamaged) {
		return err
	}
	return fmt.Errorf("store: open %s: %w", path, err)
}

// setup creates the buckets of a new file and checks the layout version of
// an existing one.
func setup(tx *bbolt.Tx) error {
	for _, name := range []string{bucketCommands, bucketPending, bucketExpiry, bucketFinished, bucketCounts, bucketMeta, bucketOrigins, bucketByClient} {
		if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	meta := tx.Bucket([]byte(bucketMeta))
	v := meta.Get([]byte(keySchema))
	if v == nil {
		if err := meta.Put([]byte(keySchema), []byte{schemaVersion}); err != nil {
			return fmt.Errorf("write layout version: %w", err)
		}
		return nil
	}
	if len(v) == 1 && v[0] == 1 {
		return upgradeFrom1(tx)
	}
	if len(v) != 1 || v[0] != schemaVersion {
		return fmt.Errorf("file has layout version %v; this build reads version %d", v, schemaVersion)
	}
	return nil
}

// upgradeFrom1 brings a layout version 1 file to version 2: it indexes
// every command by client (the byclient bucket, created empty by setup),
// in the transaction that opens the file.
func upgradeFrom1(tx *bbolt.Tx) error {
	byClient := tx.Bucket([]byte(bucketByClient))
	err := tx.Bucket([]byte(bucketCommands)).ForEach(func(k, v []byte) error {
		c, err := decodeCommand(v)
		if err != nil {
			return fmt.Errorf("command %q: %w", k, err)
		}
		return byClient.Put(pendingKey(c), nil)
	})
	if err != nil {
		return fmt.Errorf("index commands by client (layout version 1 to 2): %w", err)
	}
	return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), []byte{schemaVersion})
}

// buckets are the buckets of one transaction.
type buckets struct {
	commands, pending, expiry, finished, counts, origins, byClient *bbolt.Bucket
}

func bucketsOf(tx *bbolt.Tx) (buckets, error) {
	bk, err := bucketsV1(tx)
	if err == nil && bk.byClient == nil {
		err = fmt.Errorf("%w: missing bucket", ErrCorrupt)
	}
	return bk, err
}

// bucketsV1 are the buckets of a layout version 1 file or later: byClient
// is nil in a version 1 file.
func bucketsV1(tx *bbolt.Tx) (buckets, error) {
	bk := buckets{
		commands: tx.Bucket([]byte(bucketCommands)),
		pending:  tx.Bucket([]byte(bucketPending)),
		expiry:   tx.Bucket([]byte(bucketExpiry)),
		finished: tx.Bucket([]byte(bucketFinished)),
		counts:   tx.Bucket([]byte(bucketCounts)),
		origins:  tx.Bucket([]byte(bucketOrigins)),
		byClient: tx.Bucket([]byte(bucketByClient)),
	}
	if bk.commands == nil || bk.pending == nil || bk.expiry == nil || bk.finished == nil || bk.counts == nil {
		return bk, fmt.Errorf("%w: missing bucket", ErrCorrupt)
	}
	return bk, nil
}

func (b *Bolt) update(fn func(bk buckets) error) error {
	return b.run(b.db.Update, fn)
}

// write runs a Put or a Transition: in a transaction of its own, or in one
// shared with concurrent callers when batching is on. fn returns a refusal
// (ErrExists, ErrFull, ErrBadTransition...), decided before it writes
// anything, apart from a failure: a refusal commits nothing of its own but
// does not roll back the other calls of a batch. fn may run more than once.
func (b *Bolt) write(fn func(bk buckets) (refused, err error)) error {
	txf := b.db.Update
	if b.batched {
		txf = b.db.Batch
	}
	var refused error
	err := b.run(txf, func(bk buckets) error {
		var err error
		refused, err = fn(bk)
		return err
	})
	if err != nil {
		return err
	}
	return refused
}

func (b *Bolt) view(fn func(bk buckets) error) error {
	return b.run(b.db.View, fn)
}

func (b *Bolt) run(txf func(func(*bbolt.Tx) error) error, fn func(bk buckets) error) error {
	if b.closed.Load() {
		return ErrClosed
	}
	var fnErr error
	// Guarded twice: around the transaction, and inside it. Inside, a
	// fault becomes an error that fn returns, so bbolt rolls back in
	// memory and releases its writer lock (a panic through Update would
	// roll back by re-reading the freelist page from the damaged file and
	// leave the lock held); and with batching bbolt may run fn on its own
	// timer goroutine, where a fault would otherwise kill the process.
	err := guard(b.path, func() error {
		return txf(func(tx *bbolt.Tx) error {
			return guard(b.path, func() error {
				bk, err := bucketsOf(tx)
				if err != nil {
					fnErr = err
					return err
				}
				fnErr = fn(bk)
				return fnErr
			})
		})
	})
	switch {
	case err == nil || err == fnErr:
		return err
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return ErrClosed
	case errors.Is(err, ErrDamaged):
		if !b.damageLogged.Swap(true) {
			b.log.Error("the command store file is damaged; commands cannot be read or stored", zap.Error(err))
		}
		return err
	}
	// bbolt failed to begin or commit: a full disk, an I/O error.
	return fmt.Errorf("store: %s: %w", b.path, err)
}

// Put implements Store.
func (b *Bolt) Put(c *Command) error {
	d, err := prepare(c)
	if err != nil {
		return err
	}
	rec := appendCommand(make([]byte, 0, recordSize(d)), d)
	return b.write(func(bk buckets) (error, error) {
		if bk.commands.Get([]byte(d.ID)) != nil {
			return fmt.Errorf("%w: %s", ErrExists, d.ID), nil
		}
		n := countPrefix(bk.pending, clientPrefix(d.ClientID))
		if n >= b.limit {
			return fmt.Errorf("%w: %s has %d (limit %d)", ErrFull, d.ClientID, n, b.limit), nil
		}
		return nil, bk.insert(d, rec, n == 0)
	})
}

// Get implements Store.
func (b *Bolt) Get(id string) (*Command, error) {
	var c *Command
	err := b.view(func(bk buckets) error {
		var err error
		c, err = bk.get(id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Pending implements Store.
func (b *Bolt) Pending(clientID string) ([]*Command, error) {
	var out []*Command
	err := b.view(func(bk buckets) error {
		prefix := clientPrefix(clientID)
		cur := bk.pending.Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			if len(k) < len(prefix)+8 {
				return fmt.Errorf("%w: pending key %q", ErrCorrupt, k)
			}
			c, err := bk.get(string(k[len(prefix)+8:]))
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// List implements Store: a walk back through the client's keys of the
// byclient index, from the cursor.
func (b *Bolt) List(clientID, cursor string, limit int) ([]*Command, string, error) {
	if err := checkLimit(limit); err != nil {
		return nil, "", err
	}
	pos, after, err := parseCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	var out []*Command
	next := ""
	err = b.view(func(bk buckets) error {
		prefix := clientPrefix(clientID)
		cur := bk.byClient.Cursor()
		// Seek lands on the first key at or past the start; the walk
		// begins on the key before it.
		start := append(bytes.Clone(prefix[:len(prefix)-1]), 1) // past every key of the client
		if after {
			start = append(bytes.Clone(prefix), pos...)
		}
		k, _ := cur.Seek(start)
		if k == nil {
			k, _ = cur.Last()
		} else {
			k, _ = cur.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Prev() {
			if len(k) <= len(prefix)+8 {
				return fmt.Errorf("%w: byclient key %q", ErrCorrupt, k)
			}
			if len(out) == limit {
				next = cursorOf(out[limit-1])
				return nil
			}
			c, err := bk.get(string(k[len(prefix)+8:]))
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// CountPending implements Store.
func (b *Bolt) CountPending(clientID string) (int, error) {
	var n int
	err := b.view(func(bk buckets) error {
		n = countPrefix(bk.pending, clientPrefix(clientID))
		return nil
	})
	return n, err
}

// Transition implements Store.
func (b *Bolt) Transition(id string, to Status, at time.Time, note string) (*Command, error) {
	var c *Command
	err := b.write(func(bk buckets) (error, error) {
		var err error
		if c, err = bk.get(id); err != nil {
			return err, nil
		}
		from := c.Status
		if err := move(c, to, at, note); err != nil {
			return err, nil
		}
		return nil, bk.moved(c, from)
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Expire implements Store.
func (b *Bolt) Expire(now time.Time) ([]*Command, error) {
	if !storable(now) {
		return nil, fmt.Errorf("%w: time %s out of range", ErrInvalid, now)
	}
	// Most ticks find nothing due: look first, in a read transaction,
	// because a write transaction's commit writes and syncs the file twice
	// even when it changed nothing (an idle gateway synced its disk every
	// tick).
	if due, err := b.anyBefore(func(bk buckets) *bbolt.Bucket { return bk.expiry }, now, true); err != nil || !due {
		return nil, err
	}
	var out []*Command
	err := b.update(func(bk buckets) error {
		ids, err := idsBefore(bk.expiry, now, true)
		if err != nil {
			return err
		}
		for _, id := range ids {
			c, err := bk.get(id)
			if err != nil {
				return err
			}
			from := c.Status
			if err := move(c, StatusExpired, now, noteExpired); err != nil {
				return err
			}
			if err := bk.moved(c, from); err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Prune implements Store.
func (b *Bolt) Prune(before time.Time) (int, error) {
	if !storable(before) {
		return 0, fmt.Errorf("%w: time %s out of range", ErrInvalid, before)
	}
	if due, err := b.anyBefore(func(bk buckets) *bbolt.Bucket { return bk.finished }, before, false); err != nil || !due {
		return 0, err
	}
	var n int
	err := b.update(func(bk buckets) error {
		ids, err := idsBefore(bk.finished, before, false)
		if err != nil {
			return err
		}
		for _, id := range ids {
			c, err := bk.get(id)
			if err != nil {
				return err
			}
			if err := bk.commands.Delete([]byte(id)); err != nil {
				return fmt.Errorf("store: delete %s: %w", id, err)
			}
			if err := bk.finished.Delete(timeIDKey(c.FinishedAt(), id)); err != nil {
				return fmt.Errorf("store: unindex %s: %w", id, err)
			}
			if err := bk.byClient.Delete(pendingKey(c)); err != nil {
				return fmt.Errorf("store: unindex %s: %w", id, err)
			}
			if c.Origin != "" {
				if err := bk.origins.Delete(originKey(c)); err != nil {
					return fmt.Errorf("store: unindex %s: %w", id, err)
				}
			}
			if err := addCount(bk.counts, string(c.Status), -1); err != nil {
				return err
			}
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Stats implements Store.
func (b *Bolt) Stats() (Counts, error) {
	var counts Counts
	err := b.view(func(bk buckets) error {
		for _, s := range Statuses() {
			n, err := getCount(bk.counts, string(s))
			if err != nil {
				return err
			}
			counts.add(s, n)
		}
		var err error
		counts.Clients, err = getCount(bk.counts, keyClients)
		return err
	})
	if err != nil {
		return Counts{}, err
	}
	return counts, nil
}

// Clients implements Store.
func (b *Bolt) Clients() ([]string, error) {
	var out []string
	err := b.view(func(bk buckets) error {
		cur := bk.pending.Cursor()
		k, _ := cur.First()
		for k != nil {
			i := bytes.IndexByte(k, 0)
			if i <= 0 {
				return fmt.Errorf("%w: pending key %q", ErrCorrupt, k)
			}
			out = append(out, string(k[:i]))
			// Every key of this client starts with id 0x00; the next
			// client's keys sort at or after id 0x01.
			next := append(bytes.Clone(k[:i]), 1)
			k, _ = cur.Seek(next)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// HasOrigin implements Store.
func (b *Bolt) HasOrigin(origin string) (bool, error) {
	var found bool
	err := b.view(func(bk buckets) error {
		found = origin != "" && hasPrefix(bk.origins, originPrefix(origin))
		return nil
	})
	return found, err
}

// originKey is the origins index key of c: its origin, a NUL (which no
// origin holds), its id. Two commands may share an origin.
func originKey(c *Command) []byte {
	return append(originPrefix(c.Origin), c.ID...)
}

func originPrefix(origin string) []byte {
	k := make([]byte, 0, len(origin)+1+MaxIDLen)
	k = append(k, origin...)
	return append(k, 0)
}

// Close implements Store.
func (b *Bolt) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", b.path, err)
	}
	b.log.Info("command store closed", zap.String("path", b.path))
	return nil
}

// get loads and decodes one command.
func (bk buckets) get(id string) (*Command, error) {
	v := bk.commands.Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	c, err := decodeCommand(v)
	if err != nil {
		return nil, fmt.Errorf("store: command %s: %w", id, err)
	}
	return c, nil
}

// insert writes a new command, its record rec, its indexes and counts.
// firstOfClient says the client had no non-final command.
func (bk buckets) insert(c *Command, rec []byte, firstOfClient bool) error {
	if err := bk.commands.Put([]byte(c.ID), rec); err != nil {
		return fmt.Errorf("store: put %s: %w", c.ID, err)
	}
	if err := bk.pending.Put(pendingKey(c), nil); err != nil {
		return fmt.Errorf("store: index %s: %w", c.ID, err)
	}
	if err := bk.byClient.Put(pendingKey(c), nil); err != nil {
		return fmt.Errorf("store: index %s: %w", c.ID, err)
	}
	if !c.ExpiresAt.IsZero() {
		if err := bk.expiry.Put(timeIDKey(c.ExpiresAt, c.ID), nil); err != nil {
			return fmt.Errorf("store: index %s: %w", c.ID, err)
		}
	}
	if c.Origin != "" {
		if err := bk.origins.Put(originKey(c), nil); err != nil {
			return fmt.Errorf("store: index %s: %w", c.ID, err)
		}
	}
	if firstOfClient {
		if err := addCount(bk.counts, keyClients, 1); err != nil {
			return err
		}
	}
	return addCount(bk.counts, string(c.Status), 1)
}

// moved writes c after a transition from status from: the record, and the
// indexes and counts the move changes.
func (bk buckets) moved(c *Command, from Status) error {
	to := c.Status
	if err := bk.commands.Put([]byte(c.ID), appendCommand(make([]byte, 0, recordSize(c)), c)); err != nil {
		return fmt.Errorf("store: put %s: %w", c.ID, err)
	}
	if to.Final() {
		if err := bk.pending.Delete(pendingKey(c)); err != nil {
			return fmt.Errorf("store: unindex %s: %w", c.ID, err)
		}
		if !c.ExpiresAt.IsZero() {
			if err := bk.expiry.Delete(timeIDKey(c.ExpiresAt, c.ID)); err != nil {
				return fmt.Errorf("store: unindex %s: %w", c.ID, err)
			}
		}
		if err := bk.finished.Put(timeIDKey(c.FinishedAt(), c.ID), nil); err != nil {
			return fmt.Errorf("store: index %s: %w", c.ID, err)
		}
		if !hasPrefix(bk.pending, clientPrefix(c.ClientID)) {
			if err := addCount(bk.counts, keyClients, -1); err != nil {
				return err
			}
		}
	}
	if err := addCount(bk.counts, string(from), -1); err != nil {
		return err
	}
	return addCount(bk.counts, string(to), 1)
}

// idsBefore returns the ids of a time-keyed index up to t (inclusive or
// not), earliest first.
func idsBefore(idx *bbolt.Bucket, t time.Time, inclusive bool) ([]string, error) {
	limit := appendTimeKey(nil, t)
	var ids []string
	cur := idx.Cursor()
	for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
		if len(k) < 8 {
			return nil, fmt.Errorf("%w: index key %q", ErrCorrupt, k)
		}
		cmp := bytes.Compare(k[:8], limit)
		if cmp > 0 || (cmp == 0 && !inclusive) {
			break
		}
		ids = append(ids, string(k[8:]))
	}
	return ids, nil
}

// anyBefore reports, in a read transaction, whether the time index has a
// key before t (at t too when inclusive): whether Expire or Prune has
// anything to write.
func (b *Bolt) anyBefore(index func(buckets) *bbolt.Bucket, t time.Time, inclusive bool) (bool, error) {
	limit := appendTimeKey(nil, t)
	var due bool
	err := b.view(func(bk buckets) error {
		k, _ := index(bk).Cursor().First()
		if k == nil {
			return nil
		}
		if len(k) < 8 {
			return fmt.Errorf("%w: index key %q", ErrCorrupt, k)
		}
		cmp := bytes.Compare(k[:8], limit)
		due = cmp < 0 || (cmp == 0 && inclusive)
		return nil
	})
	return due, err
}

// countPrefix counts the keys with the prefix without reading values.
func countPrefix(bucket *bbolt.Bucket, prefix []byte) int {
	n := 0
	cur := bucket.Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		n++
	}
	return n
}

// hasPrefix reports whether a key with the prefix exists.
func hasPrefix(bucket *bbolt.Bucket, prefix []byte) bool {
	k, _ := bucket.Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix)
}

func getCount(counts *bbolt.Bucket, key string) (int, error) {
	v := counts.Get([]byte(key))
	switch len(v) {
	case 0:
		return 0, nil
	case 8:
		return int(binary.BigEndian.Uint64(v)), nil
	}
	return 0, fmt.Errorf("%w: count %s is %d bytes", ErrCorrupt, key, len(v))
}

func addCount(counts *bbolt.Bucket, key string, delta int) error {
	n, err := getCount(counts, key)
	if err != nil {
		return err
	}
	n += delta
	if n < 0 {
		return fmt.Errorf("%w: count %s would drop below zero", ErrCorrupt, key)
	}
	if err := counts.Put([]byte(key), binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
		return fmt.Errorf("store: count %s: %w", key, err)
	}
	return nil
}
