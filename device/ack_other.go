//go:build !linux

package device

import "net"

// delayAcks is a no-op where TCP_QUICKACK does not exist.
func delayAcks(net.Conn) {}
