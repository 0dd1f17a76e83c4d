package devwire

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpCloseWait is TCP_CLOSE_WAIT of the kernel's tcp_states.h: the peer's
// FIN has arrived, the socket has not closed.
const tcpCloseWait = 8

// PeerDone reports whether the peer of a TCP connection has closed its side
// (its FIN has arrived) and acknowledged every byte sent to it. False for
// anything that is not a TCP socket.
func PeerDone(c syscall.Conn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	done := false
	_ = rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil || ti.State != tcpCloseWait {
			return
		}
		queued, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) // unsent and unacknowledged
		done = err == nil && queued == 0
	})
	return done
}
