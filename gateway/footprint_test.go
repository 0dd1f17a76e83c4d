package gateway

import (
	"testing"
	"unsafe"

	"github.com/dualgate/dualgate/gateway/session"
)

// An idle plain connection is the product: its state must stay within one
// small allocation (Go size class 128, session and registry entry
// included). Growing it is a decision to take knowingly, with
// docs/benchmarks.md §1 measured again.
func TestPlainConnFootprint(t *testing.T) {
	if s := unsafe.Sizeof(plainConn{}); s > 128 {
		t.Errorf("plainConn is %d bytes, over 128", s)
	}
	if s := unsafe.Sizeof(session.Session{}); s > 96 {
		t.Errorf("session.Session is %d bytes, over 96", s)
	}
}
