package devwire

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// DelayAcks leaves quickack mode on a new TCP connection, so that the
// kernel acknowledges what arrives with the device's next packet (or after
// its delayed-ACK timer) instead of in a segment of its own: each pure ACK
// costs a metered device 52 bytes. Connections that are not TCP sockets
// are left alone.
func DelayAcks(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 0)
	})
}
