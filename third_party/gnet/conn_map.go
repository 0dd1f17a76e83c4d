// Copyright (c) 2023 The Gnet Authors. All rights reserved.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//      http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//go:build (darwin || dragonfly || freebsd || linux || netbsd || openbsd) && !gc_opt

package gnet

import (
	"sync"
	"sync/atomic"
)

// connPageSize is the number of descriptors a page of the index covers:
// 511 slots of 8 bytes and the page's count make one 4 KiB allocation
// (512 slots would take the next size class, 4.75 KiB).
const connPageSize = 511

// connIndex maps a file descriptor to its connection for a whole engine.
// Descriptors are unique in the process, so one index serves every event
// loop: a connection costs one 8-byte slot whatever the number of loops.
// The kernel hands out the lowest free descriptor, so live descriptors
// stay dense; the index is split into pages of connPageSize slots, a page
// is allocated when its first connection arrives and dropped when its
// last one leaves, so the index shrinks after a burst of connections.
//
// Lookups (every poller event) take no lock: the directory and the slots
// are read atomically. Adding and removing a connection take mu, which
// guards page allocation and release and the pages' counts.
type connIndex struct {
	mu  sync.Mutex
	dir atomic.Pointer[[]*connPage] // copied on change, never modified in place
}

type connPage struct {
	live  int // connections in the page; guarded by connIndex.mu
	slots [connPageSize]atomic.Pointer[conn]
}

func (ix *connIndex) page(fd int) *connPage {
	d := ix.dir.Load()
	if d == nil || fd/connPageSize >= len(*d) {
		return nil
	}
	return (*d)[fd/connPageSize]
}

func (ix *connIndex) get(fd int) *conn {
	if fd < 0 {
		return nil
	}
	if p := ix.page(fd); p != nil {
		return p.slots[fd%connPageSize].Load()
	}
	return nil
}

func (ix *connIndex) add(c *conn) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	p := ix.page(c.fd)
	if p == nil {
		var d []*connPage
		if old := ix.dir.Load(); old != nil {
			d = *old
		}
		n := c.fd/connPageSize + 1
		if n < len(d) {
			n = len(d)
		}
		nd := make([]*connPage, n)
		copy(nd, d)
		p = new(connPage)
		nd[c.fd/connPageSize] = p
		ix.dir.Store(&nd)
	}
	if p.slots[c.fd%connPageSize].Swap(c) == nil {
		p.live++
	}
}

// del clears c's slot if it still holds c, and drops the page, and the
// directory's empty tail, once nothing is left in them.
func (ix *connIndex) del(c *conn) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	p := ix.page(c.fd)
	if p == nil || !p.slots[c.fd%connPageSize].CompareAndSwap(c, nil) {
		return
	}
	p.live--
	if p.live > 0 {
		return
	}
	d := *ix.dir.Load()
	end := len(d)
	if c.fd/connPageSize == end-1 {
		end--
	}
	for end > 0 && d[end-1] == nil {
		end--
	}
	nd := make([]*connPage, end)
	copy(nd, d)
	if c.fd/connPageSize < end {
		nd[c.fd/connPageSize] = nil
	}
	ix.dir.Store(&nd)
}

// iterate calls f for every connection in the index until f returns false.
func (ix *connIndex) iterate(f func(*conn) bool) {
	d := ix.dir.Load()
	if d == nil {
		return
	}
	for _, p := range *d {
		if p == nil {
			continue
		}
		for i := range p.slots {
			if c := p.slots[i].Load(); c != nil && !f(c) {
				return
			}
		}
	}
}

// connMatrix is an event loop's view of its engine's connIndex: the
// loop's own connections and their count.
type connMatrix struct {
	connCount int32
	el        *eventloop
	index     *connIndex // shared by the engine's loops
}

// init attaches the loop to its engine's index, made by the first loop.
// Loops are set up one after another before any of them runs.
func (cm *connMatrix) init(el *eventloop) {
	if el.engine.connIndex == nil {
		el.engine.connIndex = new(connIndex)
	}
	cm.el, cm.index = el, el.engine.connIndex
}

func (cm *connMatrix) iterate(f func(*conn) bool) {
	cm.index.iterate(func(c *conn) bool {
		return c.loop != cm.el || f(c)
	})
}

func (cm *connMatrix) incCount(_ int, delta int32) {
	atomic.AddInt32(&cm.connCount, delta)
}

func (cm *connMatrix) loadCount() (n int32) {
	return atomic.LoadInt32(&cm.connCount)
}

// connGFD is what a conn keeps of its gnet file descriptor with the
// descriptor index: nothing. Only the gc_opt matrix reads a connection's
// GFD (to find its slot); here the index finds a connection by its
// descriptor, and the API that took a GFD (Engine.AsyncWrite and the like)
// is disabled upstream, so the 16 bytes on every conn were written and
// never read. (dualgate patch 16)
type connGFD struct{}

func (c *conn) setGFD(_, _, _ int) {}

func (cm *connMatrix) addConn(c *conn, _ int) {
	cm.index.add(c)
	cm.incCount(0, 1)
}

func (cm *connMatrix) delConn(c *conn) {
	cm.index.del(c)
	cm.incCount(0, -1)
}

// getConn returns the loop's connection on fd, nil if fd holds none or
// one of another loop (an event of a descriptor closed here and already
// reused elsewhere).
func (cm *connMatrix) getConn(fd int) *conn {
	if c := cm.index.get(fd); c != nil && c.loop == cm.el {
		return c
	}
	return nil
}

/*
func (cm *connMatrix) getConnByGFD(fd gfd.GFD) *conn {
	return cm.getConn(fd.Fd())
}
*/
