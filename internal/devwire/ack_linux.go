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
	_ = rc.Control(func(fd uintptr) { setQuickAck(fd) })
}

// DelayAcksControl is a net.Dialer Control function that leaves quickack
// mode before the socket connects: then the kernel also delays the last
// segment of TCP's handshake (the ACK of the SYN-ACK) and sends it with
// the connection's first write (the ClientHello, or the CONNECT), one
// segment less per connection. Completing the handshake puts the socket
// back in quickack mode: call DelayAcks on the connection too. A socket
// that refuses the option connects anyway.
func DelayAcksControl(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) { setQuickAck(fd) })
}

func setQuickAck(fd uintptr) {
	_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 0)
}
