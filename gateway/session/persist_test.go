package session

import (
	"fmt"
	"testing"
	"time"
)

// The store's heaps: Sweep expires sessions and publishes wills in the
// order they are due, touching nothing else; Take and Drop remove entries
// from the middle; eviction takes the session that expires soonest.
func TestStoreHeaps(t *testing.T) {
	sink := &recordingSink{}
	st := NewStore(sink, StoreLimits{Sessions: 50})
	t0 := time.Unix(1_000_000, 0)
	// 100 sessions expiring at t0+1s .. t0+100s, kept in a shuffled order.
	for i := range 100 {
		j := (i * 37) % 100
		st.Keep(fmt.Sprint("c", j), []Subscription{{Filter: "f"}}, nil, t0.Add(time.Duration(j+1)*time.Second))
	}
	s := st.Stats()
	if s.Sessions != 50 || s.Evicted != 50 {
		t.Fatalf("kept %d, evicted %d; want 50 and 50", s.Sessions, s.Evicted)
	}
	// The 50 left are those that expire last (c50..c99).
	if _, _, ok := st.Take("c49", t0); ok {
		t.Fatal("c49 expires sooner than all kept, yet it was kept")
	}
	if _, _, ok := st.Take("c60", t0); !ok {
		t.Fatal("c60 was evicted, yet 49 others expire sooner")
	}
	st.Drop("c61", t0)
	st.ScheduleWill("w1", &Will{Topic: "w/1"}, t0, t0.Add(70*time.Second))
	st.HoldWill("w2", &Will{Topic: "w/2"}, t0, t0.Add(90*time.Second))

	st.Sweep(t0.Add(75 * time.Second)) // c50..c74 due, minus c60 and c61 taken
	if s := st.Stats(); s.Sessions != 25 || s.Expired != 23 || s.Wills != 1 {
		t.Fatalf("after 75s: %d kept, %d expired, %d wills; want 25, 23, 1", s.Sessions, s.Expired, s.Wills)
	}
	if n := wills(&Env{Sink: sink}); n != 1 {
		t.Fatalf("%d wills published, want the one due", n)
	}
	if _, _, ok := st.Take("c80", t0.Add(75*time.Second)); !ok {
		t.Fatal("c80 is not due yet")
	}
	st.Sweep(t0.Add(200 * time.Second))
	if s := st.Stats(); s.Sessions != 0 || s.Wills != 0 || s.Bytes != 0 {
		t.Fatalf("after all is due: %+v, want nothing left", s)
	}
	if n := wills(&Env{Sink: sink}); n != 2 {
		t.Fatalf("%d wills published, want 2", n)
	}
}

// A session kept again under the same client id replaces the first, in
// the heap too, and the byte bound counts what the sessions hold.
func TestStoreBytes(t *testing.T) {
	st := NewStore(&recordingSink{}, StoreLimits{Bytes: 3 * keptSize("cX", []Subscription{{Filter: string(make([]byte, 1000))}}, nil)})
	t0 := time.Unix(1_000_000, 0)
	big := []Subscription{{Filter: string(make([]byte, 1000))}}
	for i := range 3 {
		st.Keep(fmt.Sprint("c", i), big, nil, t0.Add(time.Duration(i+1)*time.Minute))
	}
	st.Keep("c0", big, nil, t0.Add(time.Hour)) // replaced: now expires last
	if s := st.Stats(); s.Sessions != 3 || s.Evicted != 0 {
		t.Fatalf("%+v, want 3 kept and none evicted", s)
	}
	st.Keep("c3", big, nil, t0.Add(30*time.Minute))
	if s := st.Stats(); s.Sessions != 3 || s.Evicted != 1 {
		t.Fatalf("%+v, want 3 kept, 1 evicted", s)
	}
	if _, _, ok := st.Take("c1", t0); ok {
		t.Fatal("c1 expires soonest and should have made room")
	}
	if _, _, ok := st.Take("c0", t0); !ok {
		t.Fatal("c0 was kept again to expire last")
	}
}

// Sweep costs what is due, not what is kept: with 100,000 kept sessions
// and nothing due, a tick holds the lock CONNECT needs for a heap peek.
// Before, each tick scanned every session under it.
func BenchmarkSweepNothingDue(b *testing.B) {
	st := NewStore(&recordingSink{}, StoreLimits{})
	t0 := time.Unix(1_000_000, 0)
	subs := []Subscription{{Filter: "devices/x/#"}}
	for i := range 100_000 {
		st.Keep(fmt.Sprint("c", i), subs, nil, t0.Add(time.Hour+time.Duration(i)*time.Millisecond))
	}
	b.ReportAllocs()
	for b.Loop() {
		st.Sweep(t0)
	}
}

// Take and Keep, what CONNECT and a disconnect do, with 100,000 kept.
func BenchmarkTakeKeep(b *testing.B) {
	st := NewStore(&recordingSink{}, StoreLimits{})
	t0 := time.Unix(1_000_000, 0)
	subs := []Subscription{{Filter: "devices/x/#"}}
	for i := range 100_000 {
		st.Keep(fmt.Sprint("c", i), subs, nil, t0.Add(time.Hour+time.Duration(i)*time.Millisecond))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := fmt.Sprint("c", i%100_000)
		st.Take(id, t0)
		st.Keep(id, subs, nil, t0.Add(2*time.Hour))
		i++
	}
}
