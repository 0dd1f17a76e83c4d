//go:build !linux

package devwire

import "net"

// DelayAcks is a no-op where TCP_QUICKACK does not exist.
func DelayAcks(net.Conn) {}
