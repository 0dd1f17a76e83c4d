package bridge

import (
	"net"
	"sync"
	"testing"
)

// serveTCP listens on a loopback port for a test's own broker or proxy
// and runs handle on a goroutine of its own for every connection it
// accepts, n counting them from 1; the connection is closed when handle
// returns. At the end of the test it stops listening, closes every
// connection still open (those it accepted and those handle gave it with
// own, such as a proxy's connection to the real broker), which ends the
// handlers' reads, and waits for the handlers.
func serveTCP(t *testing.T, handle func(c net.Conn, n int, own func(net.Conn))) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		open  []net.Conn
		ended bool
	)
	own := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			_ = c.Close() // accepted as the test ended
			return
		}
		open = append(open, c)
	}
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		ended = true
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			own(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, n, own)
			}()
		}
	}()
	return ln.Addr().String()
}
