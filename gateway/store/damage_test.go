package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// storeFile writes a closed store of n commands (half of them delivered)
// with payloads of payload bytes, and returns its path.
func storeFile(t *testing.T, n, payload int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	s, err := OpenBolt(path, Options{Limit: n})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		c := newCmd(fmt.Sprintf("c%04d", i), fmt.Sprintf("dev-%d", i%3), time.Duration(i)*time.Millisecond, time.Hour)
		c.Payload = bytes.Repeat([]byte{'x'}, payload)
		mustPut(t, s, c)
		if i%2 == 1 {
			mustMove(t, s, c.ID, at(time.Second), StatusSent, StatusDelivered)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// wantAdvice checks that an error names the file and says what to do.
func wantAdvice(t *testing.T, err error, path string, words ...string) {
	t.Helper()
	for _, w := range append([]string{path}, words...) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestOpenTruncated(t *testing.T) {
	full := storeFile(t, 60, 512)
	fi, err := os.Stat(full)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int64(os.Getpagesize())
	// Half of the pages the last transaction uses: bbolt grows the file
	// ahead of them, so half the file may still hold them all.
	f, err := os.Open(full)
	if err != nil {
		t.Fatal(err)
	}
	m := readMeta(f, 0)
	if m1 := readMeta(f, int64(m.pageSize)); m1.err == nil && m1.txid > m.txid {
		m = m1
	}
	_ = f.Close()
	half := int64(m.pgid) * int64(m.pageSize) / 2
	for _, size := range []int64{8 << 10, half, pageSize * 2, 1000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			if err := os.WriteFile(path, data[:size], 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenBolt(path, Options{})
			if err == nil {
				_ = s.Close()
				t.Fatalf("a store cut from %d to %d bytes opened", fi.Size(), size)
			}
			wantErr(t, err, ErrDamaged)
			wantAdvice(t, err, path, "backup", "mv "+path+" "+path+".damaged", "store check")
			after, _ := os.Stat(path)
			if after.Size() != size {
				t.Errorf("the damaged file changed from %d to %d bytes", size, after.Size())
			}
		})
	}
}

func TestOpenEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := OpenBolt(path, Options{})
	if err == nil {
		_ = s.Close()
		t.Fatal("an empty store file was taken as a new store")
	}
	wantErr(t, err, ErrEmptyFile)
	wantAdvice(t, err, path, "0 bytes", "backup", "rm "+path)
	if fi, _ := os.Stat(path); fi.Size() != 0 {
		t.Errorf("the empty file was written: %d bytes", fi.Size())
	}
}

// A new store is created whole: no temporary file is left, and the file
// is a valid store at once.
func TestOpenCreates(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, filepath.Join(dir, FileName), Options{})
	mustPut(t, s, newCmd("a", "dev", 0, 0))
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0].Name() != FileName {
		t.Fatalf("data directory holds %v", names)
	}
}

func TestOpenCorruptMeta(t *testing.T) {
	path := storeFile(t, 4, 16)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0xA5}, 64)
	for _, off := range []int64{16, int64(os.Getpagesize()) + 16} {
		if _, err := f.WriteAt(junk, off); err != nil {
			t.Fatal(err)
		}
	}
	_ = f.Close()
	_, err = OpenBolt(path, Options{})
	wantErr(t, err, ErrDamaged)
	wantAdvice(t, err, path, "meta pages are invalid")
}

// Pages past the meta pages overwritten with junk: whatever bbolt trips
// on, the store answers ErrDamaged and the process lives.
func TestCorruptPages(t *testing.T) {
	path := storeFile(t, 60, 512)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	root := int(readMetaBytes(data).root)
	for p := 2; p*ps < len(data); p++ {
		if p == root {
			continue
		}
		for i := p * ps; i < (p+1)*ps; i++ {
			data[i] ^= 0x5A
		}
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := OpenBolt(path, Options{})
	if err != nil {
		wantErr(t, err, ErrDamaged)
		return
	}
	defer s.Close()
	_, err = s.Pending("dev-0")
	if err == nil {
		_, err = s.Get("c0000")
	}
	if !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("reading junk pages: %v, want ErrDamaged or ErrCorrupt", err)
	}
	r, err := Check(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() {
		t.Fatal("Check found junk pages healthy")
	}
}

// readMetaBytes decodes meta page 0 of a file image.
func readMetaBytes(data []byte) boltMeta {
	f, err := os.CreateTemp("", "meta")
	if err != nil {
		panic(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	_, _ = f.Write(data[:2*os.Getpagesize()])
	return readMeta(f, 0)
}

// A file cut short under a running store: the next read of a page past
// the end is a SIGBUS, which the store turns into ErrDamaged, for reads
// and for writes, batched ones included (bbolt runs those on a goroutine
// of its own).
func TestTruncatedWhileOpen(t *testing.T) {
	for _, batch := range []time.Duration{0, time.Millisecond} {
		t.Run(fmt.Sprint("batch ", batch), func(t *testing.T) {
			path := storeFile(t, 60, 512)
			s := openBolt(t, path, Options{BatchDelay: batch, Limit: 1000})
			truncate(t, path, int64(2*os.Getpagesize()))
			var err error
			for i := 0; i < 60 && err == nil; i += 2 { // the pending ones
				_, err = s.Transition(fmt.Sprintf("c%04d", i), StatusSent, at(time.Minute), "")
			}
			wantErr(t, err, ErrDamaged)
			wantAdvice(t, err, path, "backup")
			_, err = s.Get("c0000")
			wantErr(t, err, ErrDamaged)
		})
	}
}

func TestCheckHealthy(t *testing.T) {
	path := storeFile(t, 10, 32)
	r, err := Check(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("problems in a healthy store: %v", r.Problems)
	}
	want := Counts{Pending: 5, Delivered: 5, Clients: 3}
	if r.Counts != want || r.Records != want {
		t.Fatalf("counts %+v, records %+v, want %+v", r.Counts, r.Records, want)
	}
	if fi, _ := os.Stat(path); r.Size != fi.Size() {
		t.Fatalf("size %d, file %d", r.Size, fi.Size())
	}
}

func TestCheckDamaged(t *testing.T) {
	path := storeFile(t, 60, 512)
	truncate(t, path, 8<<10)
	r, err := Check(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || !strings.Contains(r.Problems[0], "cut short") {
		t.Fatalf("truncated store: %+v", r)
	}

	empty := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err = Check(empty, Options{}); err != nil || r.OK() {
		t.Fatalf("empty store: %+v %v", r, err)
	}

	_, err = Check(filepath.Join(t.TempDir(), FileName), Options{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing store: %v", err)
	}
}

// A store whose counters disagree with its records is reported.
func TestCheckInconsistent(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s := openBolt(t, path, Options{})
	mustPut(t, s, newCmd("a", "dev", 0, 0))
	if err := s.update(func(bk buckets) error { return addCount(bk.counts, string(StatusPending), 2) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Check(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || !strings.Contains(strings.Join(r.Problems, "\n"), "counters say") {
		t.Fatalf("report %+v", r)
	}
}
