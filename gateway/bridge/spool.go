package bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/dualgate/dualgate/gateway/session"
)

// The spool is the disk tier of the uplink buffer: append-only segment
// files in Config.BufferDir, named by a 16-digit hexadecimal sequence
// number and ".seg". A record is
//
//	length  uint32, big endian: the bytes of the body
//	crc     uint32, big endian: CRC-32C of the body
//	body    flags (bit 0-1 QoS, bit 2 retain, bit 3 extended), client id
//	        length (uint16), topic length (uint16), [extension], client id,
//	        topic, payload
//
// The extension, present when bit 3 is set (records of this version that
// carry MQTT 5 properties or an expiry; records without it read as
// before), is its length (uint32) and: the expiry in Unix nanoseconds
// (int64, 0: none), a properties flag byte (bit 0 present, bit 1 payload
// format present), the payload format byte, then content type and
// response topic (uint16 length and bytes), correlation data (uint32
// length, 0xFFFFFFFF for none, and bytes), and the user properties (uint16
// count, then uint16 length and bytes of each key and value).
//
// Records are appended without fsync: a spilled message has not been
// acknowledged to its device, which still holds it, so the spool only has
// to be durable at Stop, when what is still waiting is rewritten into one
// fresh segment and fsynced. A segment is deleted once every record in it
// has been acknowledged by the broker. At open, every record of every
// segment is replayed, in file order; a torn or corrupt record ends the
// replay of its segment.

const (
	segmentExt   = ".seg"
	lockName     = "uplink.lock"
	recordHeader = 8
	bodyHeader   = 5
	// segmentBytes is the size past which appends go to a new segment.
	segmentBytes = 8 << 20
	// maxRecordBody bounds a record read back (a larger length is corrupt).
	maxRecordBody = 1 << 30
)

var (
	errSpoolFull    = errors.New("bridge: spill files are full")
	errSpoolCorrupt = errors.New("bridge: corrupt spill record")
)

// statEvery is how many bytes the spool appends between two looks at the
// free space of its file system.
const statEvery = 1 << 20

// checksum is the CRC-32C of b (crc32 caches the table).
func checksum(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }

// spoolRef locates one record.
type spoolRef struct {
	seg uint64
	off int64
	n   int64 // the whole record, header included
}

type segment struct {
	id   uint64
	f    *os.File
	size int64
	live int // records not yet released
}

// spooled is a record found when the spool is opened.
type spooled struct {
	ref      spoolRef
	clientID string
	qos      byte
	retain   bool
}

type spool struct {
	dir      string
	lock     *os.File
	maxCount int
	maxBytes int64
	keepFree int64 // bytes to leave free on the file system; 0: no check
	log      *zap.Logger

	mu     sync.Mutex // guards everything below
	segs   map[uint64]*segment
	cur    *segment // appended to; nil until the first write
	nextID uint64
	count  int
	bytes  int64
	// free is the file system's free space at the last look, and since
	// the bytes appended after it; stat: a look was made.
	free, since int64
	stat        bool
	// wbuf is reused by write to encode a record (kept up to
	// maxWriteBuffer bytes).
	wbuf []byte
}

// maxWriteBuffer is the largest record buffer the spool keeps for reuse.
const maxWriteBuffer = 256 << 10

// openSpool opens dir (creating it), takes its lock, and returns the records
// left by the previous run, oldest first.
func openSpool(ctx context.Context, dir string, maxCount int, maxBytes, keepFree int64, log *zap.Logger) (*spool, []spooled, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("bridge: spill directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge: spill lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = lock.Close()
		return nil, nil, fmt.Errorf("bridge: spill directory %s is in use by another process: %w", dir, err)
	}
	s := &spool{dir: dir, lock: lock, maxCount: maxCount, maxBytes: maxBytes, keepFree: keepFree, log: log, segs: make(map[uint64]*segment)}
	out, err := s.load(ctx)
	if err != nil {
		s.close()
		return nil, nil, err
	}
	return s, out, nil
}

// load replays the segments on disk.
func (s *spool) load(ctx context.Context) ([]spooled, error) {
	names, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("bridge: spill directory: %w", err)
	}
	var ids []uint64
	for _, d := range names {
		name := d.Name()
		if strings.HasSuffix(name, segmentExt+".tmp") {
			// A rewrite that did not finish; the segments it was to
			// replace are still there.
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		hex, ok := strings.CutSuffix(name, segmentExt)
		if !ok {
			continue
		}
		id, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []spooled
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("bridge: replaying the spill files: %w", err)
		}
		s.nextID = max(s.nextID, id+1)
		f, err := os.OpenFile(s.path(id), os.O_RDWR|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("bridge: spill segment: %w", err)
		}
		recs, end, err := scanSegment(f, id)
		if err != nil {
			_ = f.Close()
			return nil, err
		}
		if fi, err := f.Stat(); err == nil && fi.Size() > end {
			s.log.Warn("spill segment has a torn or corrupt tail; ignoring it",
				zap.String("file", s.path(id)), zap.Int64("valid_bytes", end), zap.Int64("size", fi.Size()))
		}
		if len(recs) == 0 {
			_ = f.Close()
			_ = os.Remove(s.path(id))
			continue
		}
		s.segs[id] = &segment{id: id, f: f, size: end, live: len(recs)}
		s.count += len(recs)
		for _, r := range recs {
			s.bytes += r.ref.n
		}
		out = append(out, recs...)
	}
	return out, nil
}

// scanSegment reads the valid records at the front of f and returns them
// with the offset where they end.
func scanSegment(f *os.File, id uint64) ([]spooled, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("bridge: spill segment: %w", err)
	}
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, fi.Size()), 64<<10)
	var (
		out  []spooled
		off  int64
		hdr  [recordHeader]byte
		body []byte
	)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return out, off, nil // end of file, or a torn header
		}
		n := binary.BigEndian.Uint32(hdr[0:4])
		if n < bodyHeader || n > maxRecordBody {
			return out, off, nil
		}
		if cap(body) < int(n) {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			return out, off, nil
		}
		if checksum(body) != binary.BigEndian.Uint32(hdr[4:8]) {
			return out, off, nil
		}
		clientID, _, _, qos, retain, err := decodeBody(body)
		if err != nil {
			return out, off, nil
		}
		size := int64(recordHeader) + int64(n)
		out = append(out, spooled{ref: spoolRef{seg: id, off: off, n: size}, clientID: string(clientID), qos: qos, retain: retain})
		off += size
	}
}

// recMeta is what a record carries beside its topic and payload: the
// MQTT 5 properties and the expiry of the message.
type recMeta struct {
	props   *session.MessageProps
	expires time.Time
}

func (m recMeta) empty() bool { return m.props == nil && m.expires.IsZero() }

// appendRecord encodes one record onto dst.
func appendRecord(dst []byte, clientID, topic string, payload []byte, qos byte, retain bool) []byte {
	return appendRecordMeta(dst, clientID, topic, payload, qos, retain, recMeta{})
}

// appendRecordMeta encodes one record, with its extension when meta is
// not empty.
func appendRecordMeta(dst []byte, clientID, topic string, payload []byte, qos byte, retain bool, meta recMeta) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, recordHeader)...)
	flags := qos & 3
	if retain {
		flags |= 4
	}
	if !meta.empty() {
		flags |= 8
	}
	dst = append(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(clientID)))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(topic)))
	if !meta.empty() {
		at := len(dst)
		dst = append(dst, 0, 0, 0, 0)
		dst = appendMeta(dst, meta)
		binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	}
	dst = append(dst, clientID...)
	dst = append(dst, topic...)
	dst = append(dst, payload...)
	body := dst[start+recordHeader:]
	binary.BigEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.BigEndian.PutUint32(dst[start+4:], checksum(body))
	return dst
}

func appendMeta(dst []byte, m recMeta) []byte {
	var exp int64
	if !m.expires.IsZero() {
		exp = m.expires.UnixNano()
	}
	dst = binary.BigEndian.AppendUint64(dst, uint64(exp))
	p := m.props
	if p == nil {
		return append(dst, 0)
	}
	f := byte(1)
	if p.HasPayloadFormat {
		f |= 2
	}
	dst = append(dst, f, p.PayloadFormat)
	str := func(s string) {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
		dst = append(dst, s...)
	}
	str(p.ContentType)
	str(p.ResponseTopic)
	if p.CorrelationData == nil {
		dst = binary.BigEndian.AppendUint32(dst, 0xFFFFFFFF)
	} else {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.CorrelationData)))
		dst = append(dst, p.CorrelationData...)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p.User)))
	for _, u := range p.User {
		str(u.Key)
		str(u.Value)
	}
	return dst
}

// decodeMeta reads an extension.
func decodeMeta(b []byte) (recMeta, error) {
	var m recMeta
	if len(b) < 9 {
		return m, errSpoolCorrupt
	}
	if exp := int64(binary.BigEndian.Uint64(b)); exp != 0 {
		m.expires = time.Unix(0, exp)
	}
	f := b[8]
	b = b[9:]
	if f&1 == 0 {
		return m, nil
	}
	bad := false
	take := func(n int) []byte {
		if bad || n > len(b) {
			bad = true
			return nil
		}
		v := b[:n]
		b = b[n:]
		return v
	}
	u16 := func() int {
		v := take(2)
		if v == nil {
			return 0
		}
		return int(binary.BigEndian.Uint16(v))
	}
	str := func() string { return string(take(u16())) }
	p := &session.MessageProps{HasPayloadFormat: f&2 != 0}
	if v := take(1); v != nil {
		p.PayloadFormat = v[0]
	}
	p.ContentType = str()
	p.ResponseTopic = str()
	if v := take(4); v != nil {
		if n := binary.BigEndian.Uint32(v); n != 0xFFFFFFFF {
			p.CorrelationData = bytes.Clone(take(int(n)))
			if p.CorrelationData == nil && !bad {
				p.CorrelationData = []byte{}
			}
		}
	}
	for range u16() {
		k := str()
		v := str()
		p.User = append(p.User, session.UserProp{Key: k, Value: v})
	}
	if bad {
		return recMeta{}, errSpoolCorrupt
	}
	m.props = p
	return m, nil
}

// decodeBody splits a record body; the results are views into body.
func decodeBody(body []byte) (clientID, topic, payload []byte, qos byte, retain bool, err error) {
	clientID, topic, payload, _, qos, retain, err = decodeBodyExt(body)
	return
}

// decodeBodyExt splits a record body, its extension included (nil when
// the record has none).
func decodeBodyExt(body []byte) (clientID, topic, payload, ext []byte, qos byte, retain bool, err error) {
	if len(body) < bodyHeader {
		return nil, nil, nil, nil, 0, false, errSpoolCorrupt
	}
	cl := int(binary.BigEndian.Uint16(body[1:3]))
	tl := int(binary.BigEndian.Uint16(body[3:5]))
	rest := body[bodyHeader:]
	if body[0]&8 != 0 {
		if len(rest) < 4 {
			return nil, nil, nil, nil, 0, false, errSpoolCorrupt
		}
		el := int(binary.BigEndian.Uint32(rest))
		if 4+el > len(rest) {
			return nil, nil, nil, nil, 0, false, errSpoolCorrupt
		}
		ext = rest[4 : 4+el]
		rest = rest[4+el:]
	}
	if cl+tl > len(rest) || body[0]&3 == 3 || body[0]&0xF0 != 0 {
		return nil, nil, nil, nil, 0, false, errSpoolCorrupt
	}
	return rest[:cl], rest[cl : cl+tl], rest[cl+tl:], ext, body[0] & 3, body[0]&4 != 0, nil
}

// decodeRecord checks a whole record read back and splits it.
func decodeRecord(rec []byte) (topic string, payload []byte, err error) {
	topic, payload, _, err = decodeRecordMeta(rec)
	return
}

// decodeRecordMeta checks a whole record read back and splits it, its
// properties and expiry included.
func decodeRecordMeta(rec []byte) (topic string, payload []byte, meta recMeta, err error) {
	if len(rec) < recordHeader+bodyHeader {
		return "", nil, meta, errSpoolCorrupt
	}
	body := rec[recordHeader:]
	if int(binary.BigEndian.Uint32(rec[0:4])) != len(body) || checksum(body) != binary.BigEndian.Uint32(rec[4:8]) {
		return "", nil, meta, errSpoolCorrupt
	}
	_, t, p, ext, _, _, err := decodeBodyExt(body)
	if err != nil {
		return "", nil, meta, err
	}
	if ext != nil {
		if meta, err = decodeMeta(ext); err != nil {
			return "", nil, meta, err
		}
	}
	return string(t), p, meta, nil
}

func (s *spool) path(id uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x%s", id, segmentExt))
}

// write appends a record, or fails with errSpoolFull when a bound is
// reached: the count or bytes cap, the free space to leave on the file
// system, or the file system itself full (ENOSPC, EDQUOT). A failed write
// leaves nothing behind that a later one depends on: the segment it tore
// is not appended to again, and deleted if it holds nothing else.
func (s *spool) write(clientID, topic string, payload []byte, qos byte, retain bool) (spoolRef, error) {
	return s.writeMeta(clientID, topic, payload, qos, retain, recMeta{})
}

// writeMeta appends a record with its properties and expiry.
func (s *spool) writeMeta(clientID, topic string, payload []byte, qos byte, retain bool, meta recMeta) (spoolRef, error) {
	if len(clientID) > 0xFFFF || len(topic) > 0xFFFF {
		return spoolRef{}, errors.New("bridge: client id or topic too long to spill")
	}
	var ext []byte
	if !meta.empty() {
		ext = appendMeta(nil, meta)
	}
	n := int64(recordHeader + bodyHeader + len(clientID) + len(topic) + len(payload))
	if ext != nil {
		n += 4 + int64(len(ext))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count+1 > s.maxCount || s.bytes+n > s.maxBytes {
		return spoolRef{}, fmt.Errorf("%w: %d messages, %d bytes held (caps %d messages, %d bytes)",
			errSpoolFull, s.count, s.bytes, s.maxCount, s.maxBytes)
	}
	if !s.roomOnDisk(n) {
		return spoolRef{}, fmt.Errorf("%w: %d bytes free on the file system of %s, and %d are kept free",
			errSpoolFull, s.free, s.dir, s.keepFree)
	}
	if s.cur == nil || (s.cur.size > 0 && s.cur.size+n > segmentBytes) {
		if err := s.rotate(); err != nil {
			return spoolRef{}, diskFull(err)
		}
	}
	rec := appendRecordMeta(s.wbuf[:0], clientID, topic, payload, qos, retain, meta)
	if cap(rec) <= maxWriteBuffer {
		s.wbuf = rec
	}
	if _, err := s.cur.f.Write(rec); err != nil {
		// The segment may end in a torn record now: append no more to it.
		if s.cur.live == 0 {
			s.drop(s.cur)
		}
		s.cur = nil
		return spoolRef{}, diskFull(fmt.Errorf("bridge: spill write: %w", err))
	}
	s.since += n
	ref := spoolRef{seg: s.cur.id, off: s.cur.size, n: n}
	s.cur.size += n
	s.cur.live++
	s.count++
	s.bytes += n
	return ref, nil
}

// roomOnDisk reports whether n more bytes leave keepFree bytes free on the
// spool's file system, which it may share with the command store. It looks
// (statfs) every statEvery bytes appended, and at every write once the
// space is short. Called with mu held.
func (s *spool) roomOnDisk(n int64) bool {
	if s.keepFree <= 0 {
		return true
	}
	if !s.stat || s.since+n > statEvery || s.free-s.since-n < s.keepFree {
		var st unix.Statfs_t
		if err := unix.Statfs(s.dir, &st); err != nil {
			return true // cannot tell: the write itself will say
		}
		s.free, s.since, s.stat = int64(st.Bavail)*int64(st.Bsize), 0, true
	}
	return s.free-s.since-n >= s.keepFree
}

// diskFull marks a write that failed for want of space as errSpoolFull.
func diskFull(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %w", errSpoolFull, err)
	}
	return err
}

// rotate starts a new segment. Called with mu held.
func (s *spool) rotate() error {
	if s.cur != nil && s.cur.live == 0 {
		s.drop(s.cur)
	}
	s.cur = nil
	id := s.nextID
	f, err := os.OpenFile(s.path(id), os.O_CREATE|os.O_EXCL|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("bridge: new spill segment: %w", err)
	}
	s.nextID++
	seg := &segment{id: id, f: f}
	s.segs[id] = seg
	s.cur = seg
	return nil
}

// drop closes and deletes a segment. Called with mu held.
func (s *spool) drop(seg *segment) {
	_ = seg.f.Close()
	if err := os.Remove(s.path(seg.id)); err != nil {
		s.log.Warn("cannot delete a spill segment", zap.String("file", s.path(seg.id)), zap.Error(err))
	}
	delete(s.segs, seg.id)
}

// readRaw returns the record at ref, checked.
func (s *spool) readRaw(ref spoolRef) ([]byte, error) {
	s.mu.Lock()
	seg := s.segs[ref.seg]
	s.mu.Unlock()
	if seg == nil {
		return nil, fmt.Errorf("%w: segment %016x is gone", errSpoolCorrupt, ref.seg)
	}
	// The record is live, so its segment stays open until it is released.
	rec := make([]byte, ref.n)
	if _, err := seg.f.ReadAt(rec, ref.off); err != nil {
		return nil, fmt.Errorf("bridge: spill read: %w", err)
	}
	if _, _, err := decodeRecord(rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// read returns the topic and payload of the record at ref.
func (s *spool) read(ref spoolRef) (string, []byte, error) {
	t, p, _, err := s.readMeta(ref)
	return t, p, err
}

// readMeta returns the topic, payload, properties and expiry of the
// record at ref.
func (s *spool) readMeta(ref spoolRef) (string, []byte, recMeta, error) {
	rec, err := s.readRaw(ref)
	if err != nil {
		return "", nil, recMeta{}, err
	}
	return decodeRecordMeta(rec)
}

// release forgets a record: the broker has it, or it was given up.
func (s *spool) release(ref spoolRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seg := s.segs[ref.seg]
	if seg == nil {
		return
	}
	seg.live--
	s.count--
	s.bytes -= ref.n
	if seg.live <= 0 && seg != s.cur {
		s.drop(seg)
	}
}

// usage reports the records and bytes held.
func (s *spool) usage() (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count, s.bytes
}

// persist replaces everything on disk with recs (whole records), in one
// fsynced segment, for the next start. Nothing else may use the spool
// afterwards but close.
func (s *spool) persist(recs [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(recs) > 0 {
		id := s.nextID
		s.nextID++
		final := s.path(id)
		tmp := final + ".tmp"
		if err := writeSynced(tmp, recs); err != nil {
			_ = os.Remove(tmp)
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("bridge: spill rename: %w", err)
		}
		if err := syncDir(s.dir); err != nil {
			return err
		}
	}
	for _, seg := range s.segs {
		s.drop(seg)
	}
	s.cur = nil
	return nil
}

func writeSynced(path string, recs [][]byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("bridge: spill save: %w", err)
	}
	w := bufio.NewWriterSize(f, 256<<10)
	for _, r := range recs {
		if _, err := w.Write(r); err != nil {
			_ = f.Close()
			return fmt.Errorf("bridge: spill save: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return fmt.Errorf("bridge: spill save: %w", err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("bridge: spill save: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bridge: spill save: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("bridge: spill directory sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("bridge: spill directory sync: %w", err)
	}
	return nil
}

// close closes the segment files and releases the lock; what is on disk
// stays for the next start.
func (s *spool) close() {
	s.mu.Lock()
	for _, seg := range s.segs {
		_ = seg.f.Close()
	}
	s.segs = map[uint64]*segment{}
	s.cur = nil
	s.mu.Unlock()
	_ = unix.Flock(int(s.lock.Fd()), unix.LOCK_UN)
	_ = s.lock.Close()
}
