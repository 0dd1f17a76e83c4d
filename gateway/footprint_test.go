package gateway

import (
	"testing"
	"unsafe"

	"github.com/dualgate/dualgate/gateway/session"
)

// An idle plain connection is the product: its state must stay within one
// small allocation (Go size class 144, session and registry entry
// included). Growing it is a decision to take knowingly, with
// docs/benchmarks.md §1 measured again.
func TestPlainConnFootprint(t *testing.T) {
	if s := unsafe.Sizeof(plainConn{}); s > 144 {
		t.Errorf("plainConn is %d bytes, over 144", s)
	}
	if s := unsafe.Sizeof(session.Session{}); s > 112 {
		t.Errorf("session.Session is %d bytes, over 112", s)
	}
}
