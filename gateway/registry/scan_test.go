package registry

import (
	"fmt"
	"sync"
	"testing"
)

// scanAll lists the registry page by page and returns the client ids.
func scanAll(t *testing.T, r *Registry[*Entry], limit int, keep func(*Entry) bool, between func()) []string {
	t.Helper()
	var out []string
	var p Position
	for range 1 << 20 {
		// Through the text form, as a client hands it back.
		var err error
		if p, err = ParsePosition(p.String()); err != nil {
			t.Fatalf("ParsePosition: %v", err)
		}
		page, next, more := r.Scan(p, limit, keep)
		if len(page) > limit || (more && len(page) != limit) {
			t.Fatalf("Scan: %d entries, more %v, limit %d", len(page), more, limit)
		}
		for _, e := range page {
			out = append(out, e.ClientID)
		}
		if !more {
			return out
		}
		p = next
		if between != nil {
			between()
		}
	}
	t.Fatal("Scan never ended")
	return nil
}

func TestScanEachOnce(t *testing.T) {
	r := New[*Entry]()
	const n = 5000
	for i := range n {
		mode := ModePlain
		if i%3 == 0 {
			mode = ModeTLS
		}
		r.Register(&Entry{ClientID: fmt.Sprintf("dev-%d", i), Mode: mode})
	}
	for _, limit := range []int{1, 7, 100, n, n + 1} {
		got := scanAll(t, r, limit, nil, nil)
		if len(got) != n {
			t.Fatalf("limit %d: %d entries, want %d", limit, len(got), n)
		}
		seen := map[string]bool{}
		for i, id := range got {
			if seen[id] {
				t.Fatalf("limit %d: %s twice", limit, id)
			}
			seen[id] = true
			if i > 0 && !less(hashID(got[i-1]), got[i-1], hashID(id), id) {
				t.Fatalf("limit %d: %s before %s", limit, got[i-1], id)
			}
		}
	}
	tls := scanAll(t, r, 64, func(e *Entry) bool { return e.Mode == ModeTLS }, nil)
	if len(tls) != (n+2)/3 {
		t.Fatalf("TLS entries: %d, want %d", len(tls), (n+2)/3)
	}
	if page, _, more := New[*Entry]().Scan(Position{}, 10, nil); len(page) != 0 || more {
		t.Fatalf("empty registry: %d, %v", len(page), more)
	}
}

// Connections that stay for the whole listing are listed exactly once
// while others come and go and the tables grow and shrink between pages
// and during them.
func TestScanUnderChurn(t *testing.T) {
	r := New[*Entry]()
	const stay = 3000
	for i := range stay {
		r.Register(&Entry{ClientID: fmt.Sprintf("stay-%d", i)})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for round := 0; ; round++ {
			select {
			case <-stop:
				return
			default:
			}
			// Enough to resize shards both ways.
			es := make([]*Entry, 4000)
			for i := range es {
				es[i] = &Entry{ClientID: fmt.Sprintf("churn-%d-%d", round, i), Mode: ModeTLS}
				r.Register(es[i])
			}
			for _, e := range es {
				r.Unregister(e)
			}
		}
	}()
	got := scanAll(t, r, 50, nil, func() {})
	close(stop)
	wg.Wait()
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	for i := range stay {
		if id := fmt.Sprintf("stay-%d", i); count[id] != 1 {
			t.Fatalf("%s listed %d times", id, count[id])
		}
	}
	for id, c := range count {
		if c != 1 {
			t.Fatalf("%s listed %d times", id, c)
		}
	}
}

func TestParsePositionRefuses(t *testing.T) {
	r := New[*Entry]()
	r.Register(&Entry{ClientID: "a"})
	r.Register(&Entry{ClientID: "b"})
	_, p, _ := r.Scan(Position{}, 1, nil)
	good := p.String()
	if _, err := ParsePosition(good); err != nil {
		t.Fatalf("ParsePosition(%q): %v", good, err)
	}
	for _, bad := range []string{"!", "AAAA", good[:len(good)-1] + "x", good + "A"} {
		if _, err := ParsePosition(bad); err == nil {
			t.Errorf("ParsePosition(%q) accepted", bad)
		}
	}
}
