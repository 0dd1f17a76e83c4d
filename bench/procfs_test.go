package bench

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadMem(t *testing.T) {
	tests := []struct {
		name    string
		root    string
		pid     int
		want    ProcMem
		wantErr bool
	}{
		{
			name: "status and smaps_rollup",
			root: "testdata/proc",
			pid:  4242,
			want: ProcMem{RSS: 1764 * 1024, RollupRSS: 1676 * 1024, PSS: 383 * 1024, HasRollup: true},
		},
		{
			name: "no smaps_rollup",
			root: "testdata/proc-nosmaps",
			pid:  77,
			want: ProcMem{RSS: 8192 * 1024},
		},
		{name: "bad number", root: "testdata/proc-bad", pid: 5, wantErr: true},
		{name: "kernel thread without VmRSS", root: "testdata/proc-bad", pid: 6, wantErr: true},
		{name: "no such pid", root: "testdata/proc", pid: 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ProcFS{Root: tt.root}.ReadMem(tt.pid)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ReadMem = %+v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadMem: %v", err)
			}
			if got != tt.want {
				t.Fatalf("ReadMem = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadMemMissingFieldIsErrNoField(t *testing.T) {
	_, err := ParseStatusRSS(strings.NewReader("Name:\tx\nVmSize:\t10 kB\n"))
	if !errors.Is(err, ErrNoField) {
		t.Fatalf("err = %v, want ErrNoField", err)
	}
	_, _, err = ParseSmapsRollup(strings.NewReader("Rss: 10 kB\n"))
	if !errors.Is(err, ErrNoField) {
		t.Fatalf("err = %v, want ErrNoField", err)
	}
}

func TestReadMemSelf(t *testing.T) {
	m, err := ProcFS{}.ReadMem(os.Getpid())
	if err != nil {
		t.Fatalf("ReadMem(self): %v", err)
	}
	if m.RSS < 1<<20 {
		t.Fatalf("RSS of the test process = %d bytes, want at least 1 MiB", m.RSS)
	}
}

func TestCountFDs(t *testing.T) {
	root := t.TempDir()
	fdDir := filepath.Join(root, "9", "fd")
	if err := os.MkdirAll(fdDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"0", "1", "2", "7"} {
		if err := os.WriteFile(filepath.Join(fdDir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ProcFS{Root: root}.CountFDs(9)
	if err != nil || got != 4 {
		t.Fatalf("CountFDs = %d, %v; want 4", got, err)
	}
	if _, err := (ProcFS{Root: root}).CountFDs(10); err == nil {
		t.Fatal("CountFDs of a missing pid: want error")
	}

	before, err := ProcFS{}.CountFDs(os.Getpid())
	if err != nil {
		t.Fatalf("CountFDs(self): %v", err)
	}
	f, err := os.Open("testdata/slabinfo-before")
	if err != nil {
		t.Fatal(err)
	}
	after, err := ProcFS{}.CountFDs(os.Getpid())
	_ = f.Close()
	if err != nil || after != before+1 {
		t.Fatalf("CountFDs after one open = %d, %v; want %d", after, err, before+1)
	}
}

func TestParseSlabinfo(t *testing.T) {
	tests := []struct {
		file    string
		caches  int
		check   string
		want    SlabCache
		wantErr bool
	}{
		{
			file:   "testdata/slabinfo-before",
			caches: 9,
			check:  "TCP",
			want: SlabCache{
				Name: "TCP", ActiveObjs: 26, NumObjs: 26, ObjSize: 2368, ObjPerSlab: 13,
				PagesPerSlab: 8, ActiveSlabs: 2, NumSlabs: 2,
			},
		},
		{
			file:   "testdata/proc/slabinfo",
			caches: 232,
			check:  "sock_inode_cache",
			want: SlabCache{
				Name: "sock_inode_cache", ActiveObjs: 76, NumObjs: 76, ObjSize: 832, ObjPerSlab: 19,
				PagesPerSlab: 4, ActiveSlabs: 4, NumSlabs: 4,
			},
		},
		{file: "testdata/slabinfo-v1", wantErr: true},
		{file: "testdata/slabinfo-short", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			f, err := os.Open(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ParseSlabinfo(f)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseSlabinfo = %d caches, want error", len(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSlabinfo: %v", err)
			}
			if len(got) != tt.caches {
				t.Fatalf("caches = %d, want %d", len(got), tt.caches)
			}
			var found bool
			for _, c := range got {
				if c.Name == tt.check {
					found = true
					if c != tt.want {
						t.Fatalf("%s = %+v, want %+v", tt.check, c, tt.want)
					}
				}
			}
			if !found {
				t.Fatalf("cache %s missing", tt.check)
			}
		})
	}
}

func TestSlabDelta(t *testing.T) {
	read := func(name string) SlabSample {
		t.Helper()
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		all, err := ParseSlabinfo(f)
		if err != nil {
			t.Fatal(err)
		}
		return SelectSlab(all, SocketSlabCaches(), 4096)
	}
	before := read("testdata/slabinfo-before")
	after := read("testdata/slabinfo-after")

	if _, ok := before.Caches["tw_sock_TCP"]; ok {
		t.Fatal("TIME_WAIT cache must not be counted")
	}
	if _, ok := before.Caches["kmalloc-64"]; ok {
		t.Fatal("generic kmalloc cache must not be counted")
	}
	// The fixture adds 2,000 sockets (1,000 loopback connections), each with
	// one TCP sock, socket inode, dentry, file and epoll item.
	const perSocket = 2368 + 832 + 192 + 192 + 128
	if got, want := SlabDelta(before, after), int64(2000*perSocket); got != want {
		t.Fatalf("SlabDelta = %d, want %d", got, want)
	}
	wantPages := int64((2*1 + 2*8 + 7*1 + 4*4 + 32*1 + 2518*1) * 4096)
	if got := before.SlabBytes(); got != wantPages {
		t.Fatalf("SlabBytes = %d, want %d", got, wantPages)
	}
}

func TestReadSocketSlab(t *testing.T) {
	s, err := ProcFS{Root: "testdata/proc", PageSize: 4096}.ReadSocketSlab()
	if err != nil {
		t.Fatalf("ReadSocketSlab: %v", err)
	}
	if got := s.Caches["TCP"].ActiveObjs; got != 26 {
		t.Fatalf("TCP active objects = %d, want 26", got)
	}
	if len(s.Caches) != 8 {
		t.Fatalf("counted caches = %d (%v), want 8", len(s.Caches), s.Caches)
	}
	if _, err := (ProcFS{Root: t.TempDir()}).ReadSocketSlab(); err == nil {
		t.Fatal("ReadSocketSlab without slabinfo: want error")
	}
}
