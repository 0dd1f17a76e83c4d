package bridge

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Records with properties, an expiry and QoS 2 come back whole, beside
// records of the earlier format, which read as before.
func TestSpoolRecordVersions(t *testing.T) {
	dir := t.TempDir()
	exp := time.Unix(1_800_000_000, 123)
	old := appendRecord(nil, "car0", "t/old", []byte("v1"), 1, true)
	if err := os.WriteFile(filepath.Join(dir, "0000000000000001"+segmentExt), old, 0o600); err != nil {
		t.Fatal(err)
	}
	s, recs := openTestSpool(t, dir, 100, 1<<30)
	defer s.close()
	if len(recs) != 1 || recs[0].qos != 1 || !recs[0].retain || recs[0].clientID != "car0" {
		t.Fatalf("old record replayed as %+v", recs)
	}
	topic, payload, meta, err := s.readMeta(recs[0].ref)
	if err != nil || topic != "t/old" || string(payload) != "v1" || !meta.empty() {
		t.Fatalf("old record: %q %q %+v %v", topic, payload, meta, err)
	}
	ref, err := s.writeMeta("car1", "t/new", []byte("v2"), 2, false, recMeta{props: testProps, expires: exp})
	if err != nil {
		t.Fatal(err)
	}
	topic, payload, meta, err = s.readMeta(ref)
	if err != nil || topic != "t/new" || string(payload) != "v2" || !meta.expires.Equal(exp) {
		t.Fatalf("new record: %q %q %+v %v", topic, payload, meta, err)
	}
	checkProps(t, "spilled", meta.props)
	ref, err = s.writeMeta("car1", "t/exp", nil, 1, false, recMeta{expires: exp})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, meta, err := s.readMeta(ref); err != nil || meta.props != nil || !meta.expires.Equal(exp) {
		t.Fatalf("expiry only: %+v %v", meta, err)
	}
	// Properties without correlation data keep it absent.
	p := *testProps
	p.CorrelationData, p.User = nil, nil
	rec := appendRecordMeta(nil, "c", "t", []byte("x"), 2, false, recMeta{props: &p})
	_, _, meta, err = decodeRecordMeta(rec)
	if err != nil || meta.props.CorrelationData != nil || len(meta.props.User) != 0 || meta.props.ContentType != p.ContentType {
		t.Fatalf("sparse properties: %+v %v", meta.props, err)
	}
	clientID, _, body, qos, _, err := decodeBody(rec[recordHeader:])
	if err != nil || string(clientID) != "c" || qos != 2 || !bytes.Equal(body, []byte("x")) {
		t.Fatalf("body: %q %d %q %v", clientID, qos, body, err)
	}
	// A torn extension is corrupt, not misread.
	bad := slices.Clone(rec)
	bad[recordHeader+bodyHeader+3] = 0xFF
	if _, _, _, err := decodeRecordMeta(bad); err == nil {
		t.Fatal("a corrupt record was read")
	}
	if _, err := decodeMeta(appendMeta(nil, recMeta{props: testProps})[:20]); err == nil {
		t.Fatal("a truncated extension was read")
	}
}

func TestFiltersOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"a/#", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a/b/+", true},
		{"a/b", "a/c", false},
		{"#", "x/y", true},
		{"a/+", "a", false},
		{"a/#", "a", true},
		{"+/+", "a/b", true},
	} {
		if got := filtersOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("filtersOverlap(%q, %q) = %v", tc.a, tc.b, got)
		}
		if got := filtersOverlap(tc.b, tc.a); got != tc.want {
			t.Errorf("filtersOverlap(%q, %q) = %v", tc.b, tc.a, got)
		}
	}
}

// The reader finds every Subscription Identifier of a PUBLISH, whatever
// the sizes of the reads that bring it.
func TestSubIDReaderSplitReads(t *testing.T) {
	pub := rawPublish("a/b", bytes.Repeat([]byte("x"), 300), []int{7, 300000})
	ping := []byte{0xD0, 0x00}
	stream := append(append(slices.Clone(ping), pub...), ping...)
	stream = append(stream, rawPublish("one/id", []byte("y"), []int{5})...)
	stream = append(stream, pub...)
	for _, chunk := range []int{1, 2, 3, 7, 64, len(stream)} {
		r := newSubIDReader()
		for p := stream; len(p) > 0; {
			n := min(chunk, len(p))
			r.feed(p[:n])
			p = p[n:]
		}
		if got := r.take("one/id", 0); got != nil {
			t.Fatalf("chunk %d: a single identifier recorded: %v", chunk, got)
		}
		for i := range 2 {
			if got := r.take("a/b", 0); !slices.Equal(got, []int{7, 300000}) {
				t.Fatalf("chunk %d: copy %d: identifiers %v", chunk, i, got)
			}
		}
		if got := r.take("a/b", 0); got != nil {
			t.Fatalf("chunk %d: left %v", chunk, got)
		}
	}
}

// Whatever the bytes, the reader never fails paho's reading goroutine.
func TestSubIDReaderGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rng.IntN(64))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		if len(b) > 0 && rng.IntN(2) == 0 {
			b[0] = 0x30 | b[0]&0x0f // a PUBLISH header
		}
		r := newSubIDReader()
		r.feed(b)
		r.feed(b)
	}
}

// flushConn delivers what was written, in order, and what is buffered at
// Close; after a failed write, writes fail.
func TestFlushConn(t *testing.T) {
	a, b := net.Pipe()
	f := newFlushConn(a)
	var want bytes.Buffer
	got := make(chan []byte)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	for i := range 1000 {
		p := []byte(strconv.Itoa(i) + ",")
		want.Write(p)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if all := <-got; !bytes.Equal(all, want.Bytes()) {
		t.Fatalf("read %d bytes, want %d in order", len(all), want.Len())
	}
	if _, err := f.Write([]byte("x")); err == nil {
		t.Fatal("a write after Close succeeded")
	}

	c, d := net.Pipe()
	_ = d.Close()
	g := newFlushConn(c)
	_, _ = g.Write([]byte("lost"))
	select {
	case <-g.done: // the writer met the error and left
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not see the failed connection")
	}
	if _, err := g.Write([]byte("x")); err == nil {
		t.Fatal("a write after the connection failed succeeded")
	}
	_ = g.Close()
}

// A corked flushConn keeps what is written (the sender's burst) until
// uncork, then sends it, in order, without waiting for more or for Close;
// a corked buffer past flushCorkedMax goes out without waiting for uncork.
func TestFlushConnCork(t *testing.T) {
	a, b := net.Pipe()
	f := newFlushConn(a)
	defer func() { _ = f.Close() }()
	defer func() { _ = b.Close() }()
	got := make(chan []byte, 16)
	go func() {
		buf := make([]byte, 256<<10)
		for {
			n, err := b.Read(buf)
			if n > 0 {
				got <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				close(got)
				return
			}
		}
	}()
	read := func(n int) []byte {
		t.Helper()
		var all []byte
		deadline := time.After(20 * time.Second)
		for len(all) < n {
			select {
			case p, ok := <-got:
				if !ok {
					t.Fatalf("connection ended after %d of %d bytes", len(all), n)
				}
				all = append(all, p...)
			case <-deadline:
				t.Fatalf("read %d of %d bytes", len(all), n)
			}
		}
		return all
	}

	f.cork()
	var want bytes.Buffer
	for i := range 100 {
		p := []byte(strconv.Itoa(i) + ",")
		want.Write(p)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	held := len(f.buf)
	f.mu.Unlock()
	if held != want.Len() {
		t.Fatalf("corked: %d bytes held, want all %d", held, want.Len())
	}
	f.uncork()
	if all := read(want.Len()); !bytes.Equal(all, want.Bytes()) {
		t.Fatalf("after uncork: read %q, want %q", all, want.Bytes())
	}

	f.cork()
	big := bytes.Repeat([]byte("z"), flushCorkedMax+1)
	if _, err := f.Write(big); err != nil {
		t.Fatal(err)
	}
	if all := read(len(big)); !bytes.Equal(all, big) {
		t.Fatalf("a corked buffer past %d bytes: read %d bytes, want %d", flushCorkedMax, len(all), len(big))
	}
	f.uncork()
}
