package gateway

import (
	"fmt"
	"testing"
	"time"
)

func TestOriginSetBounds(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	o := newOriginSet(3, time.Minute, func() time.Time { return now })
	o.add("a", []byte("1"), "")
	if !o.seen("a", []byte("1")) || o.seen("a", []byte("2")) || o.seen("a1", nil) {
		t.Fatal("seen does not tell the message added from others")
	}
	now = now.Add(59 * time.Second)
	o.add("b", []byte("2"), "")
	if !o.seen("a", []byte("1")) {
		t.Fatal("forgotten before its time")
	}
	now = now.Add(time.Second)
	if o.seen("a", []byte("1")) {
		t.Fatal("remembered past its time")
	}
	o.add("c", []byte("3"), "")
	o.add("d", []byte("4"), "")
	o.add("e", []byte("5"), "") // full: "b" goes first
	if o.seen("b", []byte("2")) || !o.seen("c", []byte("3")) || !o.seen("e", []byte("5")) {
		t.Fatal("the oldest entry was not the one evicted")
	}
	if n := o.evicted.Load(); n != 1 {
		t.Fatalf("evicted %d, want 1", n)
	}
	var none *originSet
	none.add("x", nil, "")
	if none.seen("x", nil) {
		t.Fatal("a nil set remembers")
	}

	// Growing keeps the order: the oldest is still evicted first.
	big := newOriginSet(200, time.Minute, func() time.Time { return now })
	for i := range 201 {
		big.add(fmt.Sprint(i), nil, "")
	}
	if big.seen("0", nil) || !big.seen("1", nil) || !big.seen("200", nil) || big.evicted.Load() != 1 {
		t.Fatalf("after growing: 0 seen %v, 1 seen %v, evicted %d", big.seen("0", nil), big.seen("1", nil), big.evicted.Load())
	}
}
