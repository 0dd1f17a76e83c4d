//go:build (darwin || dragonfly || freebsd || linux || netbsd || openbsd) && !gc_opt

package gnet

import (
	"sync"
	"testing"
	"unsafe"
)

func indexPages(ix *connIndex) (dir, pages int) {
	d := ix.dir.Load()
	if d == nil {
		return 0, 0
	}
	for _, p := range *d {
		if p != nil {
			pages++
		}
	}
	return len(*d), pages
}

// The index is shared by the loops, each loop sees only its own
// connections, and pages go away with their last connection.
func TestConnIndexSharedAndShrinks(t *testing.T) {
	eng := &engine{opts: &Options{}}
	a, b := &eventloop{engine: eng}, &eventloop{engine: eng}
	a.connections.init(a)
	b.connections.init(b)
	if a.connections.index != b.connections.index {
		t.Fatal("loops of one engine have different indexes")
	}
	const n = 5 * connPageSize
	conns := make([]*conn, n)
	for fd := range conns {
		el := a
		if fd%2 == 1 {
			el = b
		}
		conns[fd] = &conn{fd: fd, loop: el}
		el.connections.addConn(conns[fd], 0)
	}
	if dir, pages := indexPages(eng.connIndex); dir != 5 || pages != 5 {
		t.Fatalf("directory %d, pages %d; want 5 and 5", dir, pages)
	}
	if a.connections.getConn(2) != conns[2] || a.connections.getConn(3) != nil || b.connections.getConn(3) != conns[3] {
		t.Fatal("a loop sees another loop's connection")
	}
	if got := a.connections.loadCount() + b.connections.loadCount(); got != n {
		t.Fatalf("count %d, want %d", got, n)
	}
	seen := 0
	a.connections.iterate(func(c *conn) bool {
		if c.loop != a {
			t.Fatalf("iterate gave fd %d of the other loop", c.fd)
		}
		seen++
		return true
	})
	if seen != (n+1)/2 {
		t.Fatalf("iterate saw %d, want %d", seen, (n+1)/2)
	}
	// A stale connection on a reused descriptor does not clear the slot.
	stale := &conn{fd: 7, loop: b}
	b.connections.index.del(stale)
	if b.connections.getConn(7) != conns[7] {
		t.Fatal("a stale delete cleared a live slot")
	}
	// Empty the middle page and the last two: the middle one is dropped,
	// the tail is trimmed.
	for fd := connPageSize; fd < 2*connPageSize; fd++ {
		conns[fd].loop.connections.delConn(conns[fd])
	}
	for fd := 3 * connPageSize; fd < n; fd++ {
		conns[fd].loop.connections.delConn(conns[fd])
	}
	if dir, pages := indexPages(eng.connIndex); dir != 3 || pages != 2 {
		t.Fatalf("after the burst: directory %d, pages %d; want 3 and 2", dir, pages)
	}
	if a.connections.getConn(connPageSize) != nil || a.connections.getConn(4*connPageSize) != nil {
		t.Fatal("a deleted connection is still found")
	}
	for _, fd := range []int{0, 2*connPageSize + 1} {
		if conns[fd].loop.connections.getConn(fd) != conns[fd] {
			t.Fatalf("fd %d lost", fd)
		}
	}
	for _, fd := range []int{0, 1, 2*connPageSize + 1, 3*connPageSize - 1} {
		conns[fd].loop.connections.delConn(conns[fd])
	}
	for fd := 0; fd < 3*connPageSize; fd++ {
		if c := conns[fd]; c.loop.connections.getConn(fd) == c {
			c.loop.connections.delConn(c)
		}
	}
	if dir, pages := indexPages(eng.connIndex); dir != 0 || pages != 0 {
		t.Fatalf("empty index: directory %d, pages %d", dir, pages)
	}
}

// Loops add, look up and remove concurrently (run with -race).
func TestConnIndexConcurrent(t *testing.T) {
	eng := &engine{opts: &Options{}}
	loops := make([]*eventloop, 4)
	for i := range loops {
		loops[i] = &eventloop{engine: eng}
		loops[i].connections.init(loops[i])
	}
	var wg sync.WaitGroup
	for i, el := range loops {
		wg.Add(1)
		go func(i int, el *eventloop) {
			defer wg.Done()
			for round := 0; round < 20; round++ {
				var mine []*conn
				for fd := i; fd < 4*connPageSize; fd += len(loops) {
					c := &conn{fd: fd, loop: el}
					el.connections.addConn(c, i)
					mine = append(mine, c)
				}
				for _, c := range mine {
					if el.connections.getConn(c.fd) != c {
						t.Errorf("loop %d: fd %d not found", i, c.fd)
						return
					}
					el.connections.delConn(c)
				}
			}
		}(i, el)
	}
	wg.Wait()
	if dir, pages := indexPages(eng.connIndex); dir != 0 || pages != 0 {
		t.Fatalf("empty index: directory %d, pages %d", dir, pages)
	}
}

// A page is one 4 KiB allocation, not the next size class.
func TestConnPageSize(t *testing.T) {
	if n := unsafe.Sizeof(connPage{}); n != 4096 {
		t.Fatalf("connPage is %d bytes, want 4096", n)
	}
}
