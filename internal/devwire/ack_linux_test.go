package devwire

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// quickAck reads TCP_QUICKACK: 1 in quickack mode, 0 once left.
func quickAck(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		v    int
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// DelayAcks leaves quickack mode on a connection; so does DelayAcksControl
// before connecting, but the kernel enters it again when TCP's handshake
// completes (it delays the ACK of the SYN-ACK, the point of it): a device
// calls both.
func TestDelayAcks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dial := func(d net.Dialer) net.Conn {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	if v := quickAck(t, dial(net.Dialer{})); v != 1 {
		t.Fatalf("plain dial: TCP_QUICKACK = %d, want 1", v)
	}
	for _, d := range []net.Dialer{{}, {Control: DelayAcksControl}} {
		c := dial(d)
		DelayAcks(c)
		if v := quickAck(t, c); v != 0 {
			t.Fatalf("DelayAcks (Control %v): TCP_QUICKACK = %d, want 0", d.Control != nil, v)
		}
	}
}
