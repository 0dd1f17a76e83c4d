package auth

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Files of the replay log in the data directory.
const (
	ReplayLogFile  = "token-replay.log"
	replayLockFile = "token-replay.lock"
)

// replayLease is how far, in seconds, the durable high-water mark is kept
// ahead of now + window; it is renewed when less than half of it is left.
const replayLease = 4

// DefaultFlushInterval is how often accepted tokens are written to the
// replay log.
const DefaultFlushInterval = time.Second

// The replay log is a header and records, each CRC-protected:
//
//	header  "DGTR" 0x01 0x00 0x00 0x00
//	record  type (1 byte), payload, CRC-32C of type and payload (4 bytes, big-endian)
//	  'T'   expiry (int64) | key (16 bytes) | id length (uint16) | id     an accepted token
//	  'H'   mark (int64)                                                 high-water mark
//	  'C'   floor (int64)                                                clean stop, and the floor in force
//
// Integers are big-endian unix seconds. Reading stops at the first record
// that is short or fails its CRC (a write cut by a crash).
var replayHeader = []byte{'D', 'G', 'T', 'R', 1, 0, 0, 0}

const (
	recToken = 'T'
	recMark  = 'H'
	recClean = 'C'
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// replayLog keeps the replay cache's entries in the data directory, so that
// an unbound token accepted before a restart is refused after it.
//
// Nothing on the connection path touches the disk: Authenticate appends an
// accepted token to pending, and the flusher goroutine writes pending and a
// high-water mark every interval, then fsyncs.
//
// The crash rule. Every write ends with a mark H = now + window +
// replayLease, and an unbound token is accepted only if its time is at most
// the last mark known to be on disk (durable). A token accepted and lost in
// a crash therefore has a time <= the last mark in the file. A run that
// finds no clean-stop record at the end of the file takes that mark as its
// floor and refuses every unbound token dated at or before it: at most
// window + replayLease + the flush interval after the crash, and usually
// less, since the restart itself takes time. A clean stop writes every
// token and a clean-stop record, and the next run has no floor (but keeps
// a floor still in force).
type replayLog struct {
	dir     string
	window  int64
	clock   func() time.Time
	cache   *replayCache
	onError func(error) // may be nil; called by the flusher only

	mu      sync.Mutex     // guards pending
	pending []pendingToken // accepted, not yet written

	durable atomic.Int64 // the last mark fsynced
	floor   int64        // constant after open

	// wmu guards the writer's fields below. It is held across disk I/O by
	// the flusher and close, never on the connection path.
	wmu       sync.Mutex
	f         *os.File
	lock      *os.File
	size      int64 // bytes in f
	compactAt int64
	swept     int64 // when flush last dropped expired entries from the cache
	buf       []byte

	stop      chan struct{}
	done      chan struct{}
	kick      chan struct{} // asks the flusher for an early write
	closeOnce sync.Once
	closeErr  error
}

type pendingToken struct {
	id string
	e  replayEntry
}

// openReplayLog locks the log in dir, reads it into cache and starts a new
// file for this run with a durable mark, then starts the flusher.
func openReplayLog(dir string, window int64, cache *replayCache, clock func() time.Time, every time.Duration, onError func(error)) (*replayLog, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("auth: replay log: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, replayLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("auth: replay log: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close()
		return nil, fmt.Errorf("auth: replay log %s is in use by another gateway (one process per data directory): %w", filepath.Join(dir, ReplayLogFile), err)
	}
	l := &replayLog{
		dir:     dir,
		window:  window,
		clock:   clock,
		cache:   cache,
		lock:    lock,
		onError: onError,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		kick:    make(chan struct{}, 1),
	}
	now := clock().Unix()
	floor, err := l.read(now)
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	l.floor = floor
	if err := l.compact(now); err != nil {
		_ = lock.Close()
		return nil, err
	}
	go l.run(every)
	return l, nil
}

// read loads the previous run's log into the cache and returns the floor
// its end implies. A missing file is a first start: no floor.
func (l *replayLog) read(now int64) (int64, error) {
	b, err := os.ReadFile(filepath.Join(l.dir, ReplayLogFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("auth: replay log: %w", err)
	}
	if len(b) < len(replayHeader) || string(b[:len(replayHeader)]) != string(replayHeader) {
		return 0, fmt.Errorf("auth: replay log %s: not a replay log (bad header); remove it to start afresh, and expect unbound tokens of the last %v to be replayable", filepath.Join(l.dir, ReplayLogFile), time.Duration(l.window)*time.Second)
	}
	b = b[len(replayHeader):]
	var maxMark, cleanFloor int64
	clean := false
	for len(b) > 0 {
		typ, payload, n := nextRecord(b)
		if n == 0 {
			break // cut by a crash: what follows was never durable
		}
		b = b[n:]
		clean = false
		switch typ {
		case recToken:
			expiry := int64(binary.BigEndian.Uint64(payload))
			var key replayKey
			copy(key[:], payload[8:24])
			l.cache.load(string(payload[26:]), key, expiry, now)
		case recMark:
			maxMark = max(maxMark, int64(binary.BigEndian.Uint64(payload)))
		case recClean:
			cleanFloor = int64(binary.BigEndian.Uint64(payload))
			maxMark = max(maxMark, cleanFloor)
			clean = true
		}
	}
	if clean {
		return cleanFloor, nil
	}
	return maxMark, nil
}

// nextRecord returns the record at the start of b and its length, or n = 0
// when b does not start with a whole, intact record.
func nextRecord(b []byte) (typ byte, payload []byte, n int) {
	if len(b) < 1 {
		return 0, nil, 0
	}
	size := 0
	switch b[0] {
	case recMark, recClean:
		size = 8
	case recToken:
		if len(b) < 1+26 {
			return 0, nil, 0
		}
		size = 26 + int(binary.BigEndian.Uint16(b[1+24:]))
	default:
		return 0, nil, 0
	}
	if len(b) < 1+size+4 {
		return 0, nil, 0
	}
	if crc32.Checksum(b[:1+size], crcTable) != binary.BigEndian.Uint32(b[1+size:]) {
		return 0, nil, 0
	}
	return b[0], b[1 : 1+size], 1 + size + 4
}

func appendRecord(dst []byte, typ byte, payload ...[]byte) []byte {
	start := len(dst)
	dst = append(dst, typ)
	for _, p := range payload {
		dst = append(dst, p...)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], crcTable))
}

func appendToken(dst []byte, id string, e replayEntry) []byte {
	var fixed [26]byte
	binary.BigEndian.PutUint64(fixed[:8], uint64(e.expiry))
	copy(fixed[8:24], e.key[:])
	binary.BigEndian.PutUint16(fixed[24:], uint16(len(id))) // an MQTT client id is at most 65535 bytes
	return appendRecord(dst, recToken, fixed[:], []byte(id))
}

func appendInt(dst []byte, typ byte, v int64) []byte {
	return appendRecord(dst, typ, binary.BigEndian.AppendUint64(nil, uint64(v)))
}

// mark is the high-water mark to write at now. It never goes down, even
// when the clock steps back: a token accepted under an earlier mark must
// stay covered by the last mark in the file, compacted or not.
func (l *replayLog) mark(now int64) int64 {
	return max(now+l.window+replayLease, l.floor, l.durable.Load())
}

// afterFloor reports whether an unbound token of time ts is later than the
// floor the previous run left.
func (l *replayLog) afterFloor(ts int64) bool { return ts > l.floor }

// belowMark reports whether an unbound token of time ts is covered by the
// durable mark, so that a crash cannot lose it beyond the next run's floor.
// After close it is false for every token.
func (l *replayLog) belowMark(ts int64) bool { return ts <= l.durable.Load() }

// record queues an accepted token for the next write.
func (l *replayLog) record(id string, e replayEntry) {
	l.mu.Lock()
	l.pending = append(l.pending, pendingToken{id: strings.Clone(id), e: e}) // id may be a view of a read buffer
	l.mu.Unlock()
}

// wake asks the flusher for a write before its next tick, when a token's
// time was beyond the durable mark (the disk is behind).
func (l *replayLog) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *replayLog) run(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false // the last write failed: report the next failure only after a success
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		case <-l.kick:
		}
		// A failed write is retried at the next tick; meanwhile the durable
		// mark stays where it was, so no token is accepted that a crash
		// could lose beyond it.
		err := l.flush()
		if err != nil && !failing && l.onError != nil {
			l.onError(err)
		}
		failing = err != nil
	}
}

// flush writes the pending tokens and, when any were pending or the lease
// runs short, a new mark; then fsyncs. Every eighth of a window it drops
// expired entries from the cache, and it compacts the file when it has
// grown.
func (l *replayLog) flush() error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	now := l.clock().Unix()
	l.mu.Lock()
	batch := l.pending
	l.pending = nil
	l.mu.Unlock()
	if now-l.swept >= max(1, l.window/8) {
		l.cache.sweep(now)
		l.swept = now
	}
	if l.size >= l.compactAt {
		// The batch is in the cache, so in the new file.
		if err := l.compact(now); err != nil {
			l.requeue(batch)
			return err
		}
		return nil
	}
	if len(batch) == 0 && l.durable.Load()-now-l.window > replayLease/2 {
		return nil
	}
	l.buf = l.buf[:0]
	for _, p := range batch {
		l.buf = appendToken(l.buf, p.id, p.e)
	}
	h := l.mark(now)
	l.buf = appendInt(l.buf, recMark, h)
	if err := l.write(l.buf); err != nil {
		l.requeue(batch)
		return err
	}
	l.durable.Store(h)
	return nil
}

// requeue puts back a batch whose write failed.
func (l *replayLog) requeue(batch []pendingToken) {
	l.mu.Lock()
	l.pending = append(batch, l.pending...)
	l.mu.Unlock()
}

func (l *replayLog) write(b []byte) error {
	n, err := l.f.Write(b)
	l.size += int64(n)
	if err == nil {
		err = l.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("auth: replay log: %w", err)
	}
	return nil
}

// compact writes the live entries of the cache and a mark to a new file and
// puts it in place of the log, then appends to it.
func (l *replayLog) compact(now int64) error {
	l.buf = append(l.buf[:0], replayHeader...)
	l.cache.each(func(id string, e replayEntry) {
		if e.expiry+replayGrace >= now {
			l.buf = appendToken(l.buf, id, e)
		}
	})
	h := l.mark(now)
	l.buf = appendInt(l.buf, recMark, h)
	path := filepath.Join(l.dir, ReplayLogFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("auth: replay log: %w", err)
	}
	if _, err = f.Write(l.buf); err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(l.dir)
	}
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("auth: replay log: %w", err)
	}
	if l.f != nil {
		_ = l.f.Close()
	}
	l.f, l.size = f, int64(len(l.buf))
	l.compactAt = max(1<<20, 2*l.size)
	l.durable.Store(h)
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// close stops the flusher, writes every pending token and the clean-stop
// record, and releases the file. After it, accepts refuses everything.
func (l *replayLog) close() error {
	l.closeOnce.Do(func() {
		close(l.stop)
		<-l.done
		l.wmu.Lock()
		defer l.wmu.Unlock()
		l.durable.Store(-1 << 62)
		l.mu.Lock()
		batch := l.pending
		l.pending = nil
		l.mu.Unlock()
		l.buf = l.buf[:0]
		for _, p := range batch {
			l.buf = appendToken(l.buf, p.id, p.e)
		}
		l.buf = appendInt(l.buf, recClean, l.floor)
		l.closeErr = l.write(l.buf)
		if err := l.f.Close(); err != nil && l.closeErr == nil {
			l.closeErr = fmt.Errorf("auth: replay log: %w", err)
		}
		_ = l.lock.Close() // releases the flock
	})
	return l.closeErr
}
