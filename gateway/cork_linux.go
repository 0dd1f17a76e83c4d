package gateway

import "golang.org/x/sys/unix"

// cork holds what is written to the socket fd back (TCP_CORK) until it is
// uncorked or closed: closing sends it with the FIN in one segment. Left
// corked without a close, the kernel sends it after 200 ms anyway.
func cork(fd int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, v)
}
