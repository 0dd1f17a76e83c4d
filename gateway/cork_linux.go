package gateway

import "golang.org/x/sys/unix"

// cork holds what is written to the socket fd back (TCP_CORK) until it is
// shut or closed, which sends it with the FIN in one segment. Left corked
// without either, the kernel sends it after 200 ms anyway.
func cork(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 1)
}

// uncork sends what the cork holds at once and lets later writes go as
// they come.
func uncork(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 0)
}

// finish sends what a cork holds with the FIN now (shutdown(SHUT_WR)
// pushes the corked segment out with the FIN on it), before the close:
// a close with bytes from the peer still unread sends a reset instead of
// a FIN, and the kernel drops what the cork held, the last packet with it.
func finish(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) }
