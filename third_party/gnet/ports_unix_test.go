//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package gnet

import (
	"net"
	"sync"
)

// Upstream's tests listen on fixed wildcard ports (":9991"...). On a
// machine shared with other programs those may be taken, so the copy in
// dualgate maps each of them, once per test process, to a free loopback
// port: a test that reuses an address still gets the same one.
var (
	testAddrMu sync.Mutex
	testAddrs  = map[string]string{}
)

// testAddr returns the free loopback address standing for upstream's
// fixed address addr (":9991").
func testAddr(addr string) string {
	testAddrMu.Lock()
	defer testAddrMu.Unlock()
	if a, ok := testAddrs[addr]; ok {
		return a
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	testAddrs[addr] = a
	return a
}
