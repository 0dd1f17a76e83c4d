package bridge

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"go.uber.org/zap"
)

func openTestSpool(t *testing.T, dir string, maxCount int, maxBytes int64) (*spool, []spooled) {
	t.Helper()
	s, recs, err := openSpool(context.Background(), dir, maxCount, maxBytes, 0, zap.NewNop())
	if err != nil {
		t.Fatalf("openSpool: %v", err)
	}
	return s, recs
}

type rec struct {
	client, topic string
	payload       []byte
	qos           byte
	retain        bool
}

var spoolRecords = []rec{
	{client: "car1", topic: "devices/car1/a", payload: []byte("one"), qos: 1},
	{client: "car2", topic: "devices/car2/b", payload: nil, qos: 1, retain: true},
	{client: "", topic: "t", payload: bytes.Repeat([]byte{0xFF}, 70_000), qos: 0},
	{client: "meter-7", topic: "x/y/z", payload: []byte{0}, qos: 1},
}

func TestSpoolRoundTrip(t *testing.T) {
	s, old := openTestSpool(t, t.TempDir(), 100, 1<<30)
	defer s.close()
	if len(old) != 0 {
		t.Fatalf("a new spool holds %d records", len(old))
	}
	var refs []spoolRef
	for _, r := range spoolRecords {
		ref, err := s.write(r.client, r.topic, r.payload, r.qos, r.retain)
		if err != nil {
			t.Fatalf("write: %v", err)
		}
		refs = append(refs, ref)
	}
	for i, r := range spoolRecords {
		topic, payload, err := s.read(refs[i])
		if err != nil || topic != r.topic || !bytes.Equal(payload, r.payload) {
			t.Fatalf("record %d: %q %d bytes %v, want %q %d bytes", i, topic, len(payload), err, r.topic, len(r.payload))
		}
	}
	if n, _ := s.usage(); n != len(spoolRecords) {
		t.Fatalf("usage %d records", n)
	}
	for _, ref := range refs {
		s.release(ref)
	}
	if n, b := s.usage(); n != 0 || b != 0 {
		t.Fatalf("usage after release: %d records, %d bytes", n, b)
	}
}

func TestSpoolLimits(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxCount int
		maxBytes int64
		fits     int
	}{
		{name: "count", maxCount: 2, maxBytes: 1 << 20, fits: 2},
		{name: "bytes", maxCount: 100, maxBytes: 3 * (recordHeader + bodyHeader + 4 + 1 + 10), fits: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTestSpool(t, t.TempDir(), tc.maxCount, tc.maxBytes)
			defer s.close()
			var refs []spoolRef
			for i := range tc.fits {
				ref, err := s.write("car1", "t", []byte("0123456789"), 1, false)
				if err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				refs = append(refs, ref)
			}
			if _, err := s.write("car1", "t", []byte("0123456789"), 1, false); !errors.Is(err, errSpoolFull) {
				t.Fatalf("write past the bound: %v, want errSpoolFull", err)
			}
			s.release(refs[0])
			if _, err := s.write("car1", "t", []byte("0123456789"), 1, false); err != nil {
				t.Fatalf("write after a release: %v", err)
			}
		})
	}
}

// writeAll writes spoolRecords and returns the spool's directory.
func writeAll(t *testing.T) (string, *spool) {
	t.Helper()
	dir := t.TempDir()
	s, _ := openTestSpool(t, dir, 100, 1<<30)
	for _, r := range spoolRecords {
		if _, err := s.write(r.client, r.topic, r.payload, r.qos, r.retain); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	return dir, s
}

func TestSpoolReplay(t *testing.T) {
	segment := func(dir string) string {
		m, _ := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
		if len(m) != 1 {
			t.Fatalf("segments: %v", m)
		}
		return m[0]
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
		want   int // records replayed, from the first
	}{
		{name: "crash: nothing saved", damage: func(*testing.T, string) {}, want: 4},
		{name: "torn header at the end", damage: func(t *testing.T, path string) {
			appendFile(t, path, []byte{0, 0, 0})
		}, want: 4},
		{name: "torn record at the end", damage: func(t *testing.T, path string) {
			appendFile(t, path, appendRecord(nil, "c", "t", []byte("payload"), 1, false)[:12])
		}, want: 4},
		{name: "corrupt second record", damage: func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			first := recordHeader + bodyHeader + len("car1") + len("devices/car1/a") + len("one")
			b[first+recordHeader+bodyHeader+2] ^= 0xFF
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, s := writeAll(t)
			s.close() // as a crash leaves it: no persist
			tc.damage(t, segment(dir))
			s2, recs := openTestSpool(t, dir, 100, 1<<30)
			defer s2.close()
			if len(recs) != tc.want {
				t.Fatalf("replayed %d records, want %d", len(recs), tc.want)
			}
			for i, r := range recs {
				w := spoolRecords[i]
				topic, payload, err := s2.read(r.ref)
				if err != nil || r.clientID != w.client || r.qos != w.qos || r.retain != w.retain || topic != w.topic || !bytes.Equal(payload, w.payload) {
					t.Fatalf("record %d: %+v %q %v", i, r, topic, err)
				}
			}
			// New writes go to a new segment, after the replayed ones.
			ref, err := s2.write("car1", "new", nil, 1, false)
			if err != nil {
				t.Fatalf("write after replay: %v", err)
			}
			if len(recs) > 0 && ref.seg <= recs[0].ref.seg {
				t.Fatalf("new segment %d not after the replayed %d", ref.seg, recs[0].ref.seg)
			}
		})
	}
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestSpoolPersist(t *testing.T) {
	dir, s := writeAll(t)
	keep := [][]byte{
		appendRecord(nil, "a", "t/1", []byte("x"), 1, false),
		appendRecord(nil, "b", "t/2", []byte("y"), 1, true),
	}
	if err := s.persist(keep); err != nil {
		t.Fatalf("persist: %v", err)
	}
	s.close()
	s2, recs := openTestSpool(t, dir, 100, 1<<30)
	defer s2.close()
	if len(recs) != 2 || recs[0].clientID != "a" || recs[1].clientID != "b" || !recs[1].retain {
		t.Fatalf("after persist: %+v", recs)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if len(segs) != 1 {
		t.Fatalf("segments after persist: %v", segs)
	}
}

func TestSpoolSegments(t *testing.T) {
	dir := t.TempDir()
	s, _ := openTestSpool(t, dir, 1000, 1<<30)
	defer s.close()
	big := bytes.Repeat([]byte("p"), 1<<20)
	var refs []spoolRef
	for i := range 12 {
		ref, err := s.write("car1", "t/"+strconv.Itoa(i), big, 1, false)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		refs = append(refs, ref)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if len(segs) < 2 {
		t.Fatalf("12 MiB in %d segment(s), want a rotation", len(segs))
	}
	first := refs[0].seg
	for _, r := range refs {
		if r.seg == first {
			s.release(r)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, filepathBase(s, first))); !os.IsNotExist(err) {
		t.Fatalf("the first segment is still there once all its records are released: %v", err)
	}
}

func filepathBase(s *spool, id uint64) string { return filepath.Base(s.path(id)) }

func TestSpoolLock(t *testing.T) {
	dir := t.TempDir()
	s, _ := openTestSpool(t, dir, 10, 1<<20)
	if _, _, err := openSpool(context.Background(), dir, 10, 1<<20, 0, zap.NewNop()); err == nil {
		t.Fatal("a second process could open the same spill directory")
	}
	s.close()
	s2, _ := openTestSpool(t, dir, 10, 1<<20)
	s2.close()
}

// The spool leaves the free space asked for on its file system: short of
// it, a write fails with errSpoolFull and leaves nothing on disk; with
// room, writes go on, and the space is looked at again as they add up.
func TestSpoolKeepsFreeSpace(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openSpool(context.Background(), dir, 100, 1<<30, 1<<62, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.write("car1", "devices/car1/a", []byte("x"), 1, false)
	if !errors.Is(err, errSpoolFull) {
		t.Fatalf("write with no room: %v, want errSpoolFull", err)
	}
	if n, b := s.usage(); n != 0 || b != 0 {
		t.Fatalf("usage %d, %d after a refused write", n, b)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if len(segs) != 0 {
		t.Fatalf("a refused write left %v", segs)
	}
	s.close()

	s, _, err = openSpool(context.Background(), dir, 100, 1<<30, 1, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	payload := bytes.Repeat([]byte{1}, 300<<10)
	for i := range 8 { // 2.4 MiB: past statEvery twice
		if _, err := s.write("car1", "devices/car1/a", payload, 1, false); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if s.since >= statEvery || !s.stat {
		t.Fatalf("free space not looked at again: %d bytes since the last look", s.since)
	}
}

// diskFull tells a write that failed for want of space from other
// failures.
func TestDiskFull(t *testing.T) {
	for _, tc := range []struct {
		err  error
		full bool
	}{
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, true},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.EDQUOT}, true},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.EIO}, false},
	} {
		if got := errors.Is(diskFull(tc.err), errSpoolFull); got != tc.full {
			t.Errorf("%v: full %v, want %v", tc.err, got, tc.full)
		}
	}
}
