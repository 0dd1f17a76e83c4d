//go:build !linux

package devwire

import (
	"net"
	"syscall"
)

// DelayAcks is a no-op where TCP_QUICKACK does not exist.
func DelayAcks(net.Conn) {}

// DelayAcksControl is a no-op where TCP_QUICKACK does not exist.
func DelayAcksControl(_, _ string, _ syscall.RawConn) error { return nil }
