package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// bbolt maps the whole file into memory and trusts the two meta pages at
// its start: a file cut short behind them makes the first read of a
// missing page a SIGBUS, which kills the process with a Go stack trace
// instead of returning an error. So the file is read and checked with
// plain reads before bbolt maps it, and every bbolt call runs under guard,
// which turns a memory fault or a panic on a damaged page into ErrDamaged.
//
// The layout checked here is bbolt's file format version 2 (bbolt 1.3 to
// 1.5): each page starts with a 16-byte header (id uint64, flags uint16,
// count uint16, overflow uint32), and pages 0 and 1 hold a meta record in
// native byte order:
//
//	magic uint32, version uint32, page size uint32, flags uint32,
//	root bucket (page id uint64, sequence uint64), freelist page id uint64,
//	high water mark (pages in use) uint64, txid uint64,
//	checksum uint64 (FNV-1a 64 of the 56 bytes before it)
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16
	boltMetaSize     = 64
	boltNoFreelist   = ^uint64(0)
	boltBranchPage   = 0x01
	boltLeafPage     = 0x02
	boltFreelistPage = 0x10
	minPageSize      = 512
	maxPageSize      = 1 << 20
)

// boltMeta is one decoded meta page.
type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // high water mark: pages 0..pgid-1 are in use
	txid     uint64
	err      error // why it is not valid; nil if valid
}

// readMeta decodes the meta page at off.
func readMeta(f *os.File, off int64) boltMeta {
	var b [boltPageHeader + boltMetaSize]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return boltMeta{err: fmt.Errorf("meta page at byte %d cannot be read: %w", off, err)}
	}
	m := b[boltPageHeader:]
	ne := binary.NativeEndian
	meta := boltMeta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		pgid:     ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	switch {
	case ne.Uint32(m[0:]) != boltMagic:
		meta.err = fmt.Errorf("meta page at byte %d is not a bbolt meta page", off)
	case ne.Uint32(m[4:]) != boltVersion:
		meta.err = fmt.Errorf("meta page at byte %d has file format version %d; this build reads %d", off, ne.Uint32(m[4:]), boltVersion)
	case ne.Uint64(m[56:]) != h.Sum64():
		meta.err = fmt.Errorf("meta page at byte %d fails its checksum", off)
	case meta.pageSize < minPageSize || meta.pageSize > maxPageSize || meta.pageSize&(meta.pageSize-1) != 0:
		meta.err = fmt.Errorf("meta page at byte %d has page size %d", off, meta.pageSize)
	}
	return meta
}

// checkFile checks what bbolt would trust blindly when it maps f: a valid
// meta page, and every page it references inside the file. It does not
// read the tree (Check does, through bbolt).
func checkFile(f *os.File, size int64) error {
	if size < 2*minPageSize {
		return fmt.Errorf("the file is %d bytes, shorter than its two meta pages", size)
	}
	m0 := readMeta(f, 0)
	ps := int64(os.Getpagesize())
	if m0.err == nil {
		ps = int64(m0.pageSize)
	}
	m1 := readMeta(f, ps)
	if m0.err != nil && m1.err != nil {
		return fmt.Errorf("both meta pages are invalid: %w; %w", m0.err, m1.err)
	}
	// bbolt uses the meta page with the higher transaction id, if valid.
	m := m0
	if m0.err != nil || (m1.err == nil && m1.txid > m0.txid) {
		m = m1
	}
	ps = int64(m.pageSize)
	if m.pgid < 2 || m.pgid > uint64(1<<62)/uint64(ps) {
		return fmt.Errorf("meta page (txid %d) says %d pages are in use", m.txid, m.pgid)
	}
	if need := int64(m.pgid) * ps; size < need {
		return fmt.Errorf("the file is %d bytes but its last transaction (txid %d) uses %d pages of %d bytes (%d bytes): it was cut short",
			size, m.txid, m.pgid, ps, need)
	}
	if err := checkPage(f, m, "root bucket", m.root, boltBranchPage|boltLeafPage); err != nil {
		return err
	}
	if m.freelist != boltNoFreelist {
		if err := checkPage(f, m, "freelist", m.freelist, boltFreelistPage); err != nil {
			return err
		}
	}
	return nil
}

// checkPage checks the header of a page that a meta page references.
func checkPage(f *os.File, m boltMeta, what string, id uint64, flags uint16) error {
	if id < 2 || id >= m.pgid {
		return fmt.Errorf("the %s page %d is outside the %d pages in use", what, id, m.pgid)
	}
	var h [boltPageHeader]byte
	if _, err := f.ReadAt(h[:], int64(id)*int64(m.pageSize)); err != nil {
		return fmt.Errorf("the %s page %d cannot be read: %w", what, id, err)
	}
	ne := binary.NativeEndian
	if got := ne.Uint64(h[0:]); got != id {
		return fmt.Errorf("the %s page %d holds page %d", what, id, got)
	}
	if ne.Uint16(h[8:])&flags == 0 {
		return fmt.Errorf("the %s page %d has type %#x", what, id, ne.Uint16(h[8:]))
	}
	if end := id + 1 + uint64(ne.Uint32(h[12:])); end > m.pgid {
		return fmt.Errorf("the %s page %d runs past the %d pages in use", what, id, m.pgid)
	}
	return nil
}

// advice is what an operator can do about a damaged or emptied file.
func advice(path string) string {
	return fmt.Sprintf("restore %s from a backup (with the gateway stopped), "+
		"or move it aside to start with an empty store, losing the commands it held: mv %s %s.damaged; "+
		"`dualgate store check --data %s` reports on it",
		path, path, path, filepath.Dir(path))
}

func damaged(path string, why error) error {
	return fmt.Errorf("%w: %s: %w; %s", ErrDamaged, path, why, advice(path))
}

// prepareFile makes path ready for bbolt: an existing file is checked
// (under a shared lock, so that a gateway writing it is reported as such
// and not taken for damage), and a missing one is created whole.
func prepareFile(path string, timeout time.Duration) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return createFile(path, timeout)
	}
	if err != nil {
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("store: %s is not a regular file", path)
	}
	if err := lockShared(f, path, timeout); err != nil {
		return err
	}
	defer func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN) }()
	if fi.Size() == 0 {
		return fmt.Errorf("%w: %s is 0 bytes long; the commands it held, if any, are gone from it. "+
			"It is not taken as a new empty store: restore it from a backup (with the gateway stopped), "+
			"or remove it to start with an empty store: rm %s",
			ErrEmptyFile, path, path)
	}
	if err := checkFile(f, fi.Size()); err != nil {
		return damaged(path, err)
	}
	return nil
}

// lockShared waits up to timeout for a shared lock on f: it fails with
// ErrLocked while another process has the file open for writing.
func lockShared(f *os.File, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("store: lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			return lockedError(path, timeout)
		}
		time.Sleep(50 * time.Millisecond) // as bbolt polls its own lock
	}
}

func lockedError(path string, waited time.Duration) error {
	return fmt.Errorf("store: open %s: %w (waited %s): another gateway is probably running on the data directory %s; stop it or give this one another --data",
		path, ErrLocked, waited, filepath.Dir(path))
}

// createFile writes a new empty bbolt file under a temporary name and
// links it into place, so that a crash while creating the store never
// leaves a partial commands.db behind (which the next start would refuse).
func createFile(path string, timeout time.Duration) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	db, err := bbolt.Open(name, 0o600, &bbolt.Options{Timeout: timeout})
	if err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	if err := os.Link(name, path); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	// ErrExist: another process created it meanwhile; bbolt.Open takes
	// its turn on the lock.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: create %s: %w", path, err)
	}
	return nil
}

// guard runs fn, which uses the mapped file, and turns a memory fault (a
// page bbolt expected where the file has none) or a panic on a damaged
// page into ErrDamaged. bbolt rolls its transaction back when fn panics.
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = damaged(path, fmt.Errorf("reading it failed: %v", r))
		}
	}()
	return fn()
}

// openGuarded is bbolt.Open under guard.
func openGuarded(path string, o *bbolt.Options) (*bbolt.DB, error) {
	var db *bbolt.DB
	err := guard(path, func() error {
		var err error
		db, err = bbolt.Open(path, 0o600, o)
		return err
	})
	return db, err
}
