package gateway

import (
	"net"
	"strconv"

	"golang.org/x/sys/unix"
)

// socketLocal is the address a connected socket was reached on, read with
// getsockname(2): for a listener on a wildcard address (":1883"), the
// address the device dialled (e.g. "192.0.2.10:1883"), never "[::]:1883".
// It reads the socket itself, so it does not depend on what the network
// library reports as the connection's local address. Empty on error.
func socketLocal(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	return sockaddrString(sa)
}

// sockaddrString formats an IPv4 or IPv6 socket address as host:port; an
// IPv4-mapped IPv6 address (a v4 device on a dual-stack socket) prints as
// IPv4. Other families give "".
func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		host := net.IP(a.Addr[:]).String()
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				host += "%" + ifi.Name
			} else {
				host += "%" + strconv.Itoa(int(a.ZoneId))
			}
		}
		return net.JoinHostPort(host, strconv.Itoa(a.Port))
	}
	return ""
}
