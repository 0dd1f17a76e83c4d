package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoField is returned when a /proc file lacks the field asked for.
var ErrNoField = errors.New("bench: field not found")

// ProcFS reads process and kernel figures from a procfs tree.
type ProcFS struct {
	// Root is the procfs mount point; empty means "/proc".
	Root string
	// PageSize is the size of a memory page in bytes, used to turn slab
	// pages into bytes; zero means os.Getpagesize().
	PageSize int
}

func (p ProcFS) path(elem ...string) string {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(append([]string{root}, elem...)...)
}

func (p ProcFS) pageSize() int64 {
	if p.PageSize > 0 {
		return int64(p.PageSize)
	}
	return int64(os.Getpagesize())
}

// ProcMem is the memory of one process as the kernel accounts it, in bytes.
type ProcMem struct {
	// RSS is VmRSS from /proc/PID/status.
	RSS int64 `json:"rss"`
	// RollupRSS and PSS come from /proc/PID/smaps_rollup; both are zero
	// when HasRollup is false (file missing or unreadable).
	RollupRSS int64 `json:"rollup_rss,omitempty"`
	PSS       int64 `json:"pss,omitempty"`
	HasRollup bool  `json:"has_rollup"`
}

// ReadMem reads the memory figures of process pid.
func (p ProcFS) ReadMem(pid int) (ProcMem, error) {
	f, err := os.Open(p.path(strconv.Itoa(pid), "status"))
	if err != nil {
		return ProcMem{}, fmt.Errorf("bench: read memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	rss, err := ParseStatusRSS(f)
	if err != nil {
		return ProcMem{}, fmt.Errorf("bench: status of pid %d: %w", pid, err)
	}
	m := ProcMem{RSS: rss}
	rf, err := os.Open(p.path(strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return m, nil // smaps_rollup is optional (old kernels, permissions)
	}
	defer rf.Close()
	if r, s, err := ParseSmapsRollup(rf); err == nil {
		m.RollupRSS, m.PSS, m.HasRollup = r, s, true
	}
	return m, nil
}

// ParseStatusRSS returns VmRSS in bytes from the text of /proc/PID/status.
func ParseStatusRSS(r io.Reader) (int64, error) {
	kv, err := scanKB(r, "VmRSS")
	if err != nil {
		return 0, err
	}
	v, ok := kv["VmRSS"]
	if !ok {
		return 0, fmt.Errorf("VmRSS: %w", ErrNoField)
	}
	return v, nil
}

// ParseSmapsRollup returns Rss and Pss in bytes from the text of
// /proc/PID/smaps_rollup.
func ParseSmapsRollup(r io.Reader) (rss, pss int64, err error) {
	kv, err := scanKB(r, "Rss", "Pss")
	if err != nil {
		return 0, 0, err
	}
	rss, okR := kv["Rss"]
	pss, okP := kv["Pss"]
	if !okR || !okP {
		return 0, 0, fmt.Errorf("Rss/Pss: %w", ErrNoField)
	}
	return rss, pss, nil
}

// scanKB reads "Key:   123 kB" lines and returns the wanted keys in bytes.
func scanKB(r io.Reader, keys ...string) (map[string]int64, error) {
	out := make(map[string]int64, len(keys))
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, k := range keys {
			if name != k {
				continue
			}
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				return nil, fmt.Errorf("bench: empty value for %s", k)
			}
			v, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("bench: value of %s: %w", k, err)
			}
			mult := int64(1)
			if len(fields) > 1 && strings.EqualFold(fields[1], "kB") {
				mult = 1024
			}
			out[k] = v * mult
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bench: scan: %w", err)
	}
	return out, nil
}

// Comm returns the name of process pid (/proc/PID/comm).
func (p ProcFS) Comm(pid int) (string, error) {
	b, err := os.ReadFile(p.path(strconv.Itoa(pid), "comm"))
	if err != nil {
		return "", fmt.Errorf("bench: name of pid %d: %w", pid, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// CountFDs returns the number of open file descriptors of process pid.
func (p ProcFS) CountFDs(pid int) (int, error) {
	ents, err := os.ReadDir(p.path(strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0, fmt.Errorf("bench: open files of pid %d: %w", pid, err)
	}
	return len(ents), nil
}

// SlabCache is one line of /proc/slabinfo (version 2.1).
type SlabCache struct {
	Name         string `json:"name"`
	ActiveObjs   int64  `json:"active_objs"`
	NumObjs      int64  `json:"num_objs"`
	ObjSize      int64  `json:"objsize"`
	ObjPerSlab   int64  `json:"objperslab"`
	PagesPerSlab int64  `json:"pagesperslab"`
	ActiveSlabs  int64  `json:"active_slabs"`
	NumSlabs     int64  `json:"num_slabs"`
}

// ActiveBytes is the memory of the cache's objects in use.
func (c SlabCache) ActiveBytes() int64 { return c.ActiveObjs * c.ObjSize }

// SocketSlabCaches returns the slab caches counted as socket memory: the
// struct sock of TCP over IPv4 and IPv6 (TCP, TCPv6), connection requests in
// flight (request_sock_TCP, request_sock_TCPv6), the bind hash buckets
// (tcp_bind_bucket, tcp_bind2_bucket), the socket inode (sock_inode_cache),
// and the per-descriptor objects every socket brings along: its dentry
// (dentry), its struct file (filp) and its epoll registration
// (eventpoll_epi, eventpoll_pwq). TIME_WAIT sockets (tw_sock_*) are left
// out: they outlive the connections being measured and expire at their own
// pace. dentry and filp are shared with the rest of the system, so other
// activity during a measurement shows up as noise. Caches the kernel merged
// into others (slab aliasing) are simply absent and count as zero.
func SocketSlabCaches() []string {
	return []string{
		"TCP", "TCPv6",
		"request_sock_TCP", "request_sock_TCPv6",
		"tcp_bind_bucket", "tcp_bind2_bucket",
		"sock_inode_cache",
		"dentry", "filp",
		"eventpoll_epi", "eventpoll_pwq",
	}
}

// ParseSlabinfo parses the text of /proc/slabinfo version 2.x.
func ParseSlabinfo(r io.Reader) ([]SlabCache, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var out []SlabCache
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			if !strings.HasPrefix(text, "slabinfo - version: 2.") {
				return nil, fmt.Errorf("bench: slabinfo: unsupported header %q", text)
			}
			continue
		}
		if strings.HasPrefix(text, "#") || strings.TrimSpace(text) == "" {
			continue
		}
		c, err := parseSlabLine(text)
		if err != nil {
			return nil, fmt.Errorf("bench: slabinfo line %d: %w", line, err)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bench: slabinfo: %w", err)
	}
	if line == 0 {
		return nil, errors.New("bench: slabinfo: empty")
	}
	return out, nil
}

// parseSlabLine parses "name a n s o p : tunables l b s : slabdata as ns sa".
func parseSlabLine(text string) (SlabCache, error) {
	f := strings.Fields(text)
	// name + 5 numbers + ":" "tunables" + 3 + ":" "slabdata" + 3 = 16.
	if len(f) < 16 || f[6] != ":" || f[11] != ":" || f[12] != "slabdata" {
		return SlabCache{}, fmt.Errorf("malformed %q", text)
	}
	nums := make([]int64, 0, 7)
	for _, s := range []string{f[1], f[2], f[3], f[4], f[5], f[13], f[14]} {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return SlabCache{}, fmt.Errorf("number %q: %w", s, err)
		}
		nums = append(nums, v)
	}
	return SlabCache{
		Name:         f[0],
		ActiveObjs:   nums[0],
		NumObjs:      nums[1],
		ObjSize:      nums[2],
		ObjPerSlab:   nums[3],
		PagesPerSlab: nums[4],
		ActiveSlabs:  nums[5],
		NumSlabs:     nums[6],
	}, nil
}

// SlabSample is one reading of the socket-related slab caches.
type SlabSample struct {
	// Caches holds the counted caches present in the kernel, by name.
	Caches map[string]SlabCache `json:"caches"`
	// PageSize is the page size used for SlabBytes.
	PageSize int64 `json:"page_size"`
}

// ActiveBytes sums the objects in use over the counted caches.
func (s SlabSample) ActiveBytes() int64 {
	var n int64
	for _, c := range s.Caches {
		n += c.ActiveBytes()
	}
	return n
}

// SlabBytes sums the pages the counted caches hold, used or not.
func (s SlabSample) SlabBytes() int64 {
	var n int64
	for _, c := range s.Caches {
		n += c.NumSlabs * c.PagesPerSlab * s.PageSize
	}
	return n
}

// SlabDelta is the change in active socket slab bytes from before to after.
func SlabDelta(before, after SlabSample) int64 {
	return after.ActiveBytes() - before.ActiveBytes()
}

// ReadSocketSlab reads /proc/slabinfo and keeps the caches named by
// SocketSlabCaches. Reading slabinfo needs root.
func (p ProcFS) ReadSocketSlab() (SlabSample, error) {
	f, err := os.Open(p.path("slabinfo"))
	if err != nil {
		return SlabSample{}, fmt.Errorf("bench: read slabinfo: %w", err)
	}
	defer f.Close()
	all, err := ParseSlabinfo(f)
	if err != nil {
		return SlabSample{}, err
	}
	return SelectSlab(all, SocketSlabCaches(), p.pageSize()), nil
}

// SelectSlab keeps the caches named in names.
func SelectSlab(all []SlabCache, names []string, pageSize int64) SlabSample {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	s := SlabSample{Caches: make(map[string]SlabCache), PageSize: pageSize}
	for _, c := range all {
		if want[c.Name] {
			s.Caches[c.Name] = c
		}
	}
	return s
}
