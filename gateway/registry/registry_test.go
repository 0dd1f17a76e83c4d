package registry

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

func TestModeString(t *testing.T) {
	tests := []struct {
		mode  Mode
		want  string
		valid bool
	}{
		{mode: ModePlain, want: "plain", valid: true},
		{mode: ModeTLS, want: "tls", valid: true},
		{mode: Mode(2), want: "Mode(2)", valid: false},
		{mode: Mode(255), want: "Mode(255)", valid: false},
	}
	for _, tt := range tests {
		if got := tt.mode.String(); got != tt.want {
			t.Errorf("Mode(%d).String() = %q, want %q", uint8(tt.mode), got, tt.want)
		}
		if got := tt.mode.Valid(); got != tt.valid {
			t.Errorf("Mode(%d).Valid() = %v, want %v", uint8(tt.mode), got, tt.valid)
		}
	}
	var zero Mode
	if zero != ModePlain {
		t.Errorf("zero Mode = %v, want plain", zero)
	}
}

// op is one step of a scripted registry test.
type op struct {
	kind    string // "register" or "unregister"
	entry   string // name of the entry in the script's table
	want    string // register: name of the entry expected back ("" for nil)
	wantOK  bool   // unregister: expected result
	plain   int    // CountByMode after the step
	tls     int
	liveIDs map[string]string // client id -> name of the live entry, checked after the step
}

func TestRegistryScripts(t *testing.T) {
	type entrySpec struct {
		id   string
		mode Mode
	}
	tests := []struct {
		name    string
		entries map[string]entrySpec
		ops     []op
	}{
		{
			name:    "register then unregister",
			entries: map[string]entrySpec{"a": {id: "dev-1", mode: ModePlain}},
			ops: []op{
				{kind: "register", entry: "a", plain: 1, liveIDs: map[string]string{"dev-1": "a"}},
				{kind: "unregister", entry: "a", wantOK: true, liveIDs: map[string]string{"dev-1": ""}},
				{kind: "unregister", entry: "a", wantOK: false, liveIDs: map[string]string{"dev-1": ""}},
			},
		},
		{
			name: "takeover in the same mode",
			entries: map[string]entrySpec{
				"old": {id: "dev-1", mode: ModePlain},
				"new": {id: "dev-1", mode: ModePlain},
			},
			ops: []op{
				{kind: "register", entry: "old", plain: 1},
				{kind: "register", entry: "new", want: "old", plain: 1, liveIDs: map[string]string{"dev-1": "new"}},
				// The taken-over session closes late: it must not remove its successor.
				{kind: "unregister", entry: "old", wantOK: false, plain: 1, liveIDs: map[string]string{"dev-1": "new"}},
				{kind: "unregister", entry: "new", wantOK: true, liveIDs: map[string]string{"dev-1": ""}},
			},
		},
		{
			name: "upgrade plain to tls and back",
			entries: map[string]entrySpec{
				"p1": {id: "car-7", mode: ModePlain},
				"t1": {id: "car-7", mode: ModeTLS},
				"p2": {id: "car-7", mode: ModePlain},
			},
			ops: []op{
				{kind: "register", entry: "p1", plain: 1},
				{kind: "register", entry: "t1", want: "p1", tls: 1, liveIDs: map[string]string{"car-7": "t1"}},
				{kind: "unregister", entry: "p1", wantOK: false, tls: 1},
				{kind: "register", entry: "p2", want: "t1", plain: 1, liveIDs: map[string]string{"car-7": "p2"}},
				{kind: "unregister", entry: "t1", wantOK: false, plain: 1},
			},
		},
		{
			name:    "registering the live entry again is a no-op",
			entries: map[string]entrySpec{"a": {id: "dev-1", mode: ModeTLS}},
			ops: []op{
				{kind: "register", entry: "a", tls: 1},
				{kind: "register", entry: "a", want: "", tls: 1, liveIDs: map[string]string{"dev-1": "a"}},
			},
		},
		{
			name: "distinct ids are independent",
			entries: map[string]entrySpec{
				"a": {id: "dev-1", mode: ModePlain},
				"b": {id: "dev-2", mode: ModeTLS},
				"c": {id: "", mode: ModePlain}, // the empty id is an id like any other
			},
			ops: []op{
				{kind: "register", entry: "a", plain: 1},
				{kind: "register", entry: "b", plain: 1, tls: 1},
				{kind: "register", entry: "c", plain: 2, tls: 1, liveIDs: map[string]string{"dev-1": "a", "dev-2": "b", "": "c"}},
				{kind: "unregister", entry: "a", wantOK: true, plain: 1, tls: 1, liveIDs: map[string]string{"dev-1": "", "dev-2": "b", "": "c"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New[*Entry]()
			entries := make(map[string]*Entry, len(tt.entries))
			names := make(map[*Entry]string, len(tt.entries))
			for name, spec := range tt.entries {
				e := &Entry{ClientID: spec.id, Mode: spec.mode}
				entries[name] = e
				names[e] = name
			}
			for i, o := range tt.ops {
				e := entries[o.entry]
				switch o.kind {
				case "register":
					prev := r.Register(e)
					if got := names[prev]; got != o.want {
						t.Fatalf("step %d: Register(%s) returned %q, want %q", i, o.entry, got, o.want)
					}
				case "unregister":
					if got := r.Unregister(e); got != o.wantOK {
						t.Fatalf("step %d: Unregister(%s) = %v, want %v", i, o.entry, got, o.wantOK)
					}
				default:
					t.Fatalf("step %d: unknown op %q", i, o.kind)
				}
				plain, tls := r.CountByMode()
				if plain != o.plain || tls != o.tls {
					t.Fatalf("step %d: CountByMode() = %d, %d, want %d, %d", i, plain, tls, o.plain, o.tls)
				}
				if got := r.Len(); got != o.plain+o.tls {
					t.Fatalf("step %d: Len() = %d, want %d", i, got, o.plain+o.tls)
				}
				for id, wantName := range o.liveIDs {
					got, ok := r.Get(id)
					if ok != (wantName != "") || names[got] != wantName {
						t.Fatalf("step %d: Get(%q) = %q, %v, want %q", i, id, names[got], ok, wantName)
					}
				}
			}
		})
	}
}

func TestUnregisterNil(t *testing.T) {
	var r Registry[*Entry] // the zero Registry is usable
	if r.Unregister(nil) {
		t.Fatal("Unregister(nil) = true")
	}
	if _, ok := r.Get("x"); ok {
		t.Fatal("Get on an empty registry found an entry")
	}
	if r.Len() != 0 {
		t.Fatalf("Len() = %d on an empty registry", r.Len())
	}
}

func TestRegisterPanics(t *testing.T) {
	tests := []struct {
		name  string
		entry *Entry
	}{
		{name: "nil entry", entry: nil},
		{name: "invalid mode", entry: &Entry{ClientID: "dev-1", Mode: Mode(9)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New[*Entry]()
			defer func() {
				if recover() == nil {
					t.Fatal("Register did not panic")
				}
				if r.Len() != 0 {
					t.Fatalf("Len() = %d after a refused Register", r.Len())
				}
			}()
			r.Register(tt.entry)
		})
	}
}

func TestEntryActivity(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	e := &Entry{ClientID: "dev-1", ConnectedAt: since.UnixNano()}
	if got := e.LastActive(); !got.Equal(since) {
		t.Fatalf("LastActive() before Touch = %v, want Since %v", got, since)
	}
	// Activity is kept to the second.
	for _, tc := range []struct{ touch, want time.Duration }{
		{time.Second, time.Second},
		{time.Minute, time.Minute},
		{90 * time.Millisecond, 0},
		{2*time.Hour + 1999*time.Millisecond, 2*time.Hour + time.Second},
	} {
		e.Touch(since.Add(tc.touch))
		if got, want := e.LastActive(), since.Add(tc.want); !got.Equal(want) {
			t.Fatalf("LastActive() = %v after Touch(%v), want %v", got, since.Add(tc.touch), want)
		}
	}
}

func TestRange(t *testing.T) {
	r := New[*Entry]()
	const n = 1000
	for i := range n {
		mode := ModePlain
		if i%3 == 0 {
			mode = ModeTLS
		}
		r.Register(&Entry{ClientID: fmt.Sprintf("dev-%04d", i), Mode: mode})
	}

	t.Run("visits every entry once", func(t *testing.T) {
		seen := make(map[string]int, n)
		r.Range(func(e *Entry) bool {
			seen[e.ClientID]++
			return true
		})
		if len(seen) != n {
			t.Fatalf("Range visited %d ids, want %d", len(seen), n)
		}
		for id, c := range seen {
			if c != 1 {
				t.Fatalf("Range visited %s %d times", id, c)
			}
		}
	})

	t.Run("stops when fn returns false", func(t *testing.T) {
		calls := 0
		r.Range(func(*Entry) bool {
			calls++
			return calls < 10
		})
		if calls != 10 {
			t.Fatalf("Range made %d calls after fn returned false at call 10", calls)
		}
	})

	t.Run("fn may call back into the registry", func(t *testing.T) {
		// A lock held around fn would deadlock here: every call writes to the
		// shard Range is visiting.
		removed := 0
		r.Range(func(e *Entry) bool {
			if _, ok := r.Get(e.ClientID); !ok {
				t.Errorf("Get(%s) inside Range found nothing", e.ClientID)
			}
			if e.Mode == ModeTLS {
				if !r.Unregister(e) {
					t.Errorf("Unregister(%s) inside Range failed", e.ClientID)
				}
				removed++
				return true
			}
			takeover := &Entry{ClientID: e.ClientID, Mode: ModePlain}
			if prev := r.Register(takeover); prev != e {
				t.Errorf("Register(%s) inside Range replaced %p, want %p", e.ClientID, prev, e)
			}
			return true
		})
		plain, tls := r.CountByMode()
		if plain != n-removed || tls != 0 {
			t.Fatalf("CountByMode() = %d, %d, want %d, 0", plain, tls, n-removed)
		}
	})
}

func TestShardLayout(t *testing.T) {
	if s := unsafe.Sizeof(shard[*Entry]{}); s%cacheLine != 0 {
		t.Errorf("shard is %d bytes, not a multiple of %d", s, cacheLine)
	}
	if s := unsafe.Sizeof(counter{}); s != cacheLine {
		t.Errorf("counter is %d bytes, want %d", s, cacheLine)
	}
}

// TestShardBalance checks that client ids of the shapes fleets use spread
// evenly over the shards.
func TestShardBalance(t *testing.T) {
	const n = 256 * 400
	tests := []struct {
		name   string
		format func(i int) string
	}{
		{name: "sequential with prefix", format: func(i int) string { return fmt.Sprintf("dev-%07d", i) }},
		{name: "bare numbers", format: func(i int) string { return fmt.Sprint(i) }},
		{name: "vin-like", format: func(i int) string { return fmt.Sprintf("WVWZZZ1JZ%08X", i*7919) }},
		{name: "mac addresses", format: func(i int) string {
			return fmt.Sprintf("00:1b:44:%02x:%02x:%02x", (i>>16)&0xff, (i>>8)&0xff, i&0xff)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var load [shardCount]int
			for i := range n {
				load[shardIndex(hashID(tt.format(i)))]++
			}
			const mean = n / shardCount
			lo, hi := n, 0
			for _, l := range load {
				lo, hi = min(lo, l), max(hi, l)
			}
			// A uniform hash gives a standard deviation of 20 around 400;
			// allow about 5 sigma.
			if lo < mean*3/4 || hi > mean*5/4 {
				t.Fatalf("shard load from %d to %d, mean %d", lo, hi, mean)
			}
		})
	}
}

func TestShardIndexAllocs(t *testing.T) {
	id := "device-with-a-long-client-identifier-0001"
	var sink uint8
	if a := testing.AllocsPerRun(100, func() { sink ^= shardIndex(hashID(id)) }); a != 0 {
		t.Fatalf("shardIndex allocates %v times", a)
	}
	r := New[*Entry]()
	r.Register(&Entry{ClientID: id})
	if a := testing.AllocsPerRun(100, func() { r.Get(id) }); a != 0 {
		t.Fatalf("Get allocates %v times", a)
	}
}

// TestTableAgainstMap drives one shard's table through random inserts and
// removals (growing, shrinking, wrapping probe runs, backward shifts) and
// checks it against a Go map after every step.
func TestTableAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s shardState[*Entry]
	want := make(map[string]*Entry)
	pool := make([]*Entry, 300)
	for i := range pool {
		pool[i] = &Entry{ClientID: fmt.Sprintf("meter-%d", i)}
	}
	for step := range 40000 {
		e := pool[rng.IntN(len(pool))]
		// Phases bias toward filling, then toward emptying, so the table
		// grows and shrinks several times.
		fill := (step/5000)%2 == 0
		h := hashID(e.ClientID)
		i, found := s.find(e.ClientID, h)
		if found != (want[e.ClientID] != nil) {
			t.Fatalf("step %d: find(%s) = %v, map says %v", step, e.ClientID, found, !found)
		}
		if !found && (fill == (rng.IntN(4) != 0)) {
			s.insert(e, h)
			want[e.ClientID] = e
		} else if found {
			s.removeAt(i)
			delete(want, e.ClientID)
		}
		if s.n != len(want) {
			t.Fatalf("step %d: n = %d, map has %d", step, s.n, len(want))
		}
		if len(s.slots) != 0 && s.n*4 > len(s.slots)*3 {
			t.Fatalf("step %d: %d entries in %d slots", step, s.n, len(s.slots))
		}
		if step%97 == 0 {
			for id, e := range want {
				if i, ok := s.find(id, hashID(id)); !ok || s.slots[i] != e {
					t.Fatalf("step %d: %s not found after a removal", step, id)
				}
			}
		}
	}
	for _, e := range want {
		i, _ := s.find(e.ClientID, hashID(e.ClientID))
		s.removeAt(i)
	}
	if s.n != 0 || len(s.slots) != minSlots {
		t.Fatalf("emptied table: n = %d, %d slots", s.n, len(s.slots))
	}
}
