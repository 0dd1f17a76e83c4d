//go:build (darwin || dragonfly || freebsd || linux || netbsd || openbsd) && !poll_opt

package gnet

import "testing"

// An accepted stream connection is one allocation, its conn: the default
// reactors find it by descriptor, so its poll attachment keeps no callback
// (a method value would be a second, 16-byte allocation per connection).
// (dualgate patch 15)
func TestStreamConnIsOneAllocation(t *testing.T) {
	el := &eventloop{engine: &engine{opts: &Options{WriteBufferCap: 64 << 10}}}
	var c *conn
	allocs := testing.AllocsPerRun(100, func() {
		c = newStreamConn("tcp", 3, el, nil, nil, nil)
	})
	if allocs != 1 {
		t.Fatalf("newStreamConn made %v allocations, want 1", allocs)
	}
	if c.pollAttachment.Callback != nil {
		t.Fatal("the poll attachment keeps a callback the reactor never calls")
	}
}
