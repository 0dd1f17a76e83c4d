package store

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// conformance is the suite every Store implementation passes. Each case gets
// a fresh store with a limit of 3 commands per client.
var conformance = []struct {
	name string
	run  func(t *testing.T, s Store)
}{
	{name: "put and get", run: testPutGet},
	{name: "put invalid", run: testPutInvalid},
	{name: "largest fields", run: testLargest},
	{name: "duplicate id", run: testDuplicate},
	{name: "get missing", run: testGetMissing},
	{name: "pending order", run: testPendingOrder},
	{name: "limit", run: testLimit},
	{name: "transition table", run: testTransitionTable},
	{name: "transition errors", run: testTransitionErrors},
	{name: "delivery path", run: testDeliveryPath},
	{name: "history bound", run: testHistoryBound},
	{name: "expire", run: testExpire},
	{name: "prune", run: testPrune},
	{name: "stats", run: testStats},
	{name: "clients", run: testClients},
	{name: "origin", run: testOrigin},
	{name: "list", run: testList},
	{name: "list pages", run: testListPages},
	{name: "cancel", run: testCancel},
	{name: "closed", run: testClosed},
}

const conformanceLimit = 3

func TestConformance(t *testing.T) {
	for _, f := range factories(t) {
		t.Run(f.name, func(t *testing.T) {
			for _, tc := range conformance {
				t.Run(tc.name, func(t *testing.T) {
					tc.run(t, f.open(t, Options{Limit: conformanceLimit}))
				})
			}
		})
	}
}

func testPutGet(t *testing.T, s Store) {
	zone := time.FixedZone("UTC+3", 3*3600)
	created := time.Now().In(zone) // wall and monotonic clock, not UTC
	c := &Command{
		ID:        NewID(created),
		ClientID:  "car-42",
		Topic:     "devices/car-42/commands/unlock",
		Payload:   []byte{0x00, 0xff, 'o', 'k'},
		QoS:       1,
		Secure:    true,
		CreatedAt: created,
		ExpiresAt: created.Add(time.Hour),
	}
	mustPut(t, s, c)
	if c.Status != StatusPending || len(c.History) != 1 {
		t.Fatalf("Put did not fill in status and history: %q %v", c.Status, c.History)
	}
	want := &Command{
		ID:        c.ID,
		ClientID:  "car-42",
		Topic:     "devices/car-42/commands/unlock",
		Payload:   []byte{0x00, 0xff, 'o', 'k'},
		QoS:       1,
		Secure:    true,
		CreatedAt: created.UTC(),
		ExpiresAt: created.Add(time.Hour).UTC(),
		Status:    StatusPending,
		History:   []Transition{{Status: StatusPending, At: created.UTC()}},
	}
	got := mustGet(t, s, c.ID)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Get = %+v\nwant %+v", got, want)
	}

	// Neither the caller's command nor a returned one aliases the store.
	c.Payload[0] = 'X'
	c.History[0].Note = "changed"
	got.Payload[1] = 'Y'
	got.History[0].Note = "changed"
	got.Status = StatusFailed
	if again := mustGet(t, s, c.ID); !reflect.DeepEqual(again, want) {
		t.Fatalf("store changed through a caller's copy: %+v", again)
	}

	// A command put with another non-final status, no payload and no TTL.
	u := &Command{ID: "u1", ClientID: "car-42", Topic: "t", CreatedAt: at(0), Status: StatusUpgrading, Payload: []byte{}}
	mustPut(t, s, u)
	got = mustGet(t, s, "u1")
	if got.Status != StatusUpgrading || got.Payload != nil || !got.ExpiresAt.IsZero() || got.QoS != 0 || got.Secure {
		t.Fatalf("Get(u1) = %+v", got)
	}
}

func testPutInvalid(t *testing.T, s Store) {
	cases := []struct {
		name   string
		change func(c *Command)
	}{
		{name: "empty id", change: func(c *Command) { c.ID = "" }},
		{name: "long id", change: func(c *Command) { c.ID = strings.Repeat("i", MaxIDLen+1) }},
		{name: "empty client", change: func(c *Command) { c.ClientID = "" }},
		{name: "NUL in client", change: func(c *Command) { c.ClientID = "a\x00b" }},
		{name: "long client", change: func(c *Command) { c.ClientID = strings.Repeat("c", MaxClientIDLen+1) }},
		{name: "empty topic", change: func(c *Command) { c.Topic = "" }},
		{name: "qos 3", change: func(c *Command) { c.QoS = 3 }},
		{name: "negative attempts", change: func(c *Command) { c.Attempts = -1 }},
		{name: "no creation time", change: func(c *Command) { c.CreatedAt = time.Time{} }},
		{name: "unknown status", change: func(c *Command) { c.Status = "queued" }},
		{name: "delivered", change: func(c *Command) { c.Status = StatusDelivered }},
		{name: "expired", change: func(c *Command) { c.Status = StatusExpired }},
		{name: "failed", change: func(c *Command) { c.Status = StatusFailed }},
		{name: "cancelled", change: func(c *Command) { c.Status = StatusCancelled }},
		{name: "expiry past 2262", change: func(c *Command) { c.ExpiresAt = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{name: "created before 1678", change: func(c *Command) { c.CreatedAt = time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{name: "bad history", change: func(c *Command) { c.History = []Transition{{Status: "x", At: at(0)}} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCmd("bad", "dev", 0, time.Minute)
			tc.change(c)
			wantErr(t, s.Put(c), ErrInvalid)
		})
	}
	wantErr(t, s.Put(nil), ErrInvalid)
	if counts, err := s.Stats(); err != nil || counts != (Counts{}) {
		t.Fatalf("rejected commands were stored: %+v, %v", counts, err)
	}
}

func testLargest(t *testing.T, s Store) {
	c := &Command{
		ID:        strings.Repeat("i", MaxIDLen),
		ClientID:  strings.Repeat("c", MaxClientIDLen),
		Topic:     strings.Repeat("t", MaxTopicLen),
		Payload:   bytes.Repeat([]byte{0x5a}, 1<<20),
		CreatedAt: at(0),
	}
	mustPut(t, s, c)
	got := mustGet(t, s, c.ID)
	if got.ClientID != c.ClientID || got.Topic != c.Topic || !bytes.Equal(got.Payload, c.Payload) {
		t.Fatal("largest command did not come back whole")
	}
	if pending, err := s.Pending(c.ClientID); err != nil || len(pending) != 1 {
		t.Fatalf("Pending = %d, %v", len(pending), err)
	}
	mustMove(t, s, c.ID, at(time.Second), StatusSent, StatusDelivered)
}

func testDuplicate(t *testing.T, s Store) {
	mustPut(t, s, newCmd("a", "dev1", 0, 0))
	dup := newCmd("a", "dev2", time.Second, 0)
	dup.Topic = "other"
	wantErr(t, s.Put(dup), ErrExists)
	if got := mustGet(t, s, "a"); got.ClientID != "dev1" || got.Topic != "devices/dev1/commands/unlock" {
		t.Fatalf("duplicate overwrote the original: %+v", got)
	}
	if n, _ := s.CountPending("dev2"); n != 0 {
		t.Fatalf("duplicate indexed for dev2: %d", n)
	}
}

func testGetMissing(t *testing.T, s Store) {
	_, err := s.Get("nope")
	wantErr(t, err, ErrNotFound)
	_, err = s.Transition("nope", StatusSent, at(0), "")
	wantErr(t, err, ErrNotFound)
}

func testPendingOrder(t *testing.T, s Store) {
	// Put out of creation order; ids deliberately not in creation order.
	mustPut(t, s,
		newCmd("z", "a", 3*time.Second, 0),
		newCmd("y", "a", 1*time.Second, 0),
		newCmd("x", "a", 2*time.Second, 0),
		newCmd("other", "ab", 0, 0),   // longer id with "a" as prefix
		newCmd("ctrl", "a\x01", 0, 0), // sorts right after "a"'s keys
		newCmd("tie-b", "b", 5*time.Second, 0),
		newCmd("tie-a", "b", 5*time.Second, 0), // same creation time: by id
	)
	cases := []struct {
		client string
		want   []string
	}{
		{client: "a", want: []string{"y", "x", "z"}},
		{client: "ab", want: []string{"other"}},
		{client: "a\x01", want: []string{"ctrl"}},
		{client: "b", want: []string{"tie-a", "tie-b"}},
		{client: "never-seen", want: nil},
		{client: "", want: nil},
	}
	for _, tc := range cases {
		got, err := s.Pending(tc.client)
		if err != nil {
			t.Fatalf("Pending(%q): %v", tc.client, err)
		}
		if !equalStrings(ids(got), tc.want) {
			t.Errorf("Pending(%q) = %v, want %v", tc.client, ids(got), tc.want)
		}
		n, err := s.CountPending(tc.client)
		if err != nil || n != len(tc.want) {
			t.Errorf("CountPending(%q) = %d, %v; want %d", tc.client, n, err, len(tc.want))
		}
	}
	// Final commands leave the list; the order of the rest holds.
	mustMove(t, s, "x", at(time.Minute), StatusSent, StatusDelivered)
	mustMove(t, s, "y", at(time.Minute), StatusUpgrading)
	got, _ := s.Pending("a")
	if want := []string{"y", "z"}; !equalStrings(ids(got), want) {
		t.Fatalf("Pending(a) after delivery = %v, want %v", ids(got), want)
	}
	if got[0].Status != StatusUpgrading {
		t.Fatalf("Pending(a)[0].Status = %s", got[0].Status)
	}
}

func testLimit(t *testing.T, s Store) {
	for i := range conformanceLimit {
		mustPut(t, s, newCmd(fmt.Sprint("c", i), "full", time.Duration(i)*time.Second, 0))
	}
	wantErr(t, s.Put(newCmd("c9", "full", 9*time.Second, 0)), ErrFull)
	if _, err := s.Get("c9"); err == nil {
		t.Fatal("command refused with ErrFull was stored")
	}
	// Another client is not affected, and every non-final status counts.
	mustPut(t, s, newCmd("d0", "other", 0, 0))
	mustMove(t, s, "c0", at(time.Minute), StatusUpgrading)
	mustMove(t, s, "c1", at(time.Minute), StatusSent)
	wantErr(t, s.Put(newCmd("c9", "full", 9*time.Second, 0)), ErrFull)
	// A final command frees its place.
	mustMove(t, s, "c1", at(2*time.Minute), StatusDelivered)
	mustPut(t, s, newCmd("c9", "full", 9*time.Second, 0))
	wantErr(t, s.Put(newCmd("c10", "full", 10*time.Second, 0)), ErrFull)
	if n, _ := s.CountPending("full"); n != conformanceLimit {
		t.Fatalf("CountPending(full) = %d", n)
	}
}

// allowedMoves is the state machine as the product describes it, written
// independently of Status.CanMoveTo.
func allowedMoves() map[[2]Status]bool {
	m := map[[2]Status]bool{
		{StatusPending, StatusUpgrading}: true,
		{StatusPending, StatusSent}:      true,
		{StatusUpgrading, StatusPending}: true,
		{StatusUpgrading, StatusSent}:    true,
		{StatusSent, StatusDelivered}:    true,
		{StatusSent, StatusPending}:      true,
		// Cancelled only before the command was ever written.
		{StatusPending, StatusCancelled}:   true,
		{StatusUpgrading, StatusCancelled}: true,
	}
	for _, from := range []Status{StatusPending, StatusUpgrading, StatusSent} {
		m[[2]Status{from, StatusExpired}] = true
		m[[2]Status{from, StatusFailed}] = true
	}
	return m
}

// pathTo is how a freshly put command reaches each status.
func pathTo(s Status) []Status {
	switch s {
	case StatusUpgrading:
		return []Status{StatusUpgrading}
	case StatusSent:
		return []Status{StatusSent}
	case StatusDelivered:
		return []Status{StatusSent, StatusDelivered}
	case StatusExpired, StatusFailed, StatusCancelled:
		return []Status{s}
	}
	return nil
}

func testTransitionTable(t *testing.T, s Store) {
	allowed := allowedMoves()
	n := 0
	for _, from := range Statuses() {
		for _, to := range append(Statuses(), "bogus", "") {
			n++
			id := fmt.Sprintf("m%02d", n)
			client := fmt.Sprintf("dev%02d", n) // one per command: the limit stays out of the way
			mustPut(t, s, newCmd(id, client, 0, time.Hour))
			mustMove(t, s, id, at(time.Second), pathTo(from)...)
			before := mustGet(t, s, id)
			when := at(time.Minute)
			got, err := s.Transition(id, to, when, "why")
			ok := allowed[[2]Status{from, to}]
			if can := from.CanMoveTo(to); can != ok {
				t.Errorf("%q.CanMoveTo(%q) = %v, want %v", from, to, can, ok)
			}
			if !ok {
				wantErr(t, err, ErrBadTransition)
				if after := mustGet(t, s, id); !reflect.DeepEqual(after, before) {
					t.Errorf("%s -> %s refused but changed the command: %+v", from, to, after)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s -> %s: %v", from, to, err)
				continue
			}
			wantAttempts := before.Attempts
			if to == StatusSent {
				wantAttempts++
			}
			last := got.History[len(got.History)-1]
			switch {
			case got.Status != to:
				t.Errorf("%s -> %s: status %s", from, to, got.Status)
			case len(got.History) != len(before.History)+1 || last != (Transition{Status: to, At: when, Note: "why"}):
				t.Errorf("%s -> %s: history %+v", from, to, got.History)
			case got.Attempts != wantAttempts:
				t.Errorf("%s -> %s: attempts %d, want %d", from, to, got.Attempts, wantAttempts)
			case (to == StatusDelivered) != !got.DeliveredAt.IsZero():
				t.Errorf("%s -> %s: delivered at %s", from, to, got.DeliveredAt)
			case to.Final() != !got.FinishedAt().IsZero():
				t.Errorf("%s -> %s: finished at %s", from, to, got.FinishedAt())
			}
			if stored := mustGet(t, s, id); !reflect.DeepEqual(stored, got) {
				t.Errorf("%s -> %s: Get = %+v, Transition returned %+v", from, to, stored, got)
			}
			if pending, _ := s.CountPending(client); pending != map[bool]int{true: 0, false: 1}[to.Final()] {
				t.Errorf("%s -> %s: CountPending = %d", from, to, pending)
			}
		}
	}
}

func testTransitionErrors(t *testing.T, s Store) {
	mustPut(t, s, newCmd("a", "dev", 0, 0))
	cases := []struct {
		name string
		to   Status
		at   time.Time
		want error
	}{
		{name: "unknown status", to: "bogus", at: at(time.Second), want: ErrBadTransition},
		{name: "same status", to: StatusPending, at: at(time.Second), want: ErrBadTransition},
		{name: "skip sent", to: StatusDelivered, at: at(time.Second), want: ErrBadTransition},
		{name: "zero time", to: StatusSent, at: time.Time{}, want: ErrInvalid},
		{name: "time out of range", to: StatusSent, at: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), want: ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Transition("a", tc.to, tc.at, "")
			wantErr(t, err, tc.want)
			if got := mustGet(t, s, "a"); got.Status != StatusPending || len(got.History) != 1 {
				t.Fatalf("refused transition changed the command: %+v", got)
			}
		})
	}
}

func testDeliveryPath(t *testing.T, s Store) {
	// Instructed to upgrade, left without upgrading, instructed again,
	// written on TLS, connection lost before PUBACK, written again (DUP),
	// acknowledged.
	mustPut(t, s, newCmd("a", "dev", 0, time.Hour))
	steps := []struct {
		to   Status
		note string
	}{
		{to: StatusUpgrading, note: "instructed"},
		{to: StatusPending, note: "left on plain"},
		{to: StatusUpgrading, note: "instructed again"},
		{to: StatusSent, note: "written on tls"},
		{to: StatusPending, note: "connection lost"},
		{to: StatusSent, note: "written again"},
		{to: StatusDelivered, note: "puback"},
	}
	var got *Command
	for i, st := range steps {
		var err error
		if got, err = s.Transition("a", st.to, at(time.Duration(i+1)*time.Second), st.note); err != nil {
			t.Fatalf("step %d %s: %v", i, st.to, err)
		}
	}
	if got.Attempts != 2 {
		t.Errorf("attempts = %d, want 2", got.Attempts)
	}
	if !got.DeliveredAt.Equal(at(7 * time.Second)) {
		t.Errorf("delivered at %s", got.DeliveredAt)
	}
	if len(got.History) != len(steps)+1 {
		t.Fatalf("history has %d entries", len(got.History))
	}
	for i, st := range steps {
		h := got.History[i+1]
		if h.Status != st.to || h.Note != st.note || !h.At.Equal(at(time.Duration(i+1)*time.Second)) {
			t.Errorf("history[%d] = %+v, want %s %q", i+1, h, st.to, st.note)
		}
	}
	if clients, _ := s.Clients(); len(clients) != 0 {
		t.Errorf("Clients after delivery = %q", clients)
	}
}

func testHistoryBound(t *testing.T, s Store) {
	mustPut(t, s, newCmd("flaky", "dev", 0, 0))
	const rounds = 100
	for i := range rounds {
		mustMove(t, s, "flaky", at(time.Duration(i+1)*time.Second), StatusSent, StatusPending)
	}
	got := mustGet(t, s, "flaky")
	if len(got.History) != MaxHistory {
		t.Fatalf("history has %d entries, want %d", len(got.History), MaxHistory)
	}
	if got.History[0] != (Transition{Status: StatusPending, At: at(0)}) {
		t.Errorf("first entry %+v, want the creation", got.History[0])
	}
	if last := got.History[MaxHistory-1]; last.Status != StatusPending || !last.At.Equal(at(rounds*time.Second)) {
		t.Errorf("last entry %+v", last)
	}
	if got.Attempts != rounds {
		t.Errorf("attempts = %d, want %d", got.Attempts, rounds)
	}
}

func testExpire(t *testing.T, s Store) {
	mustPut(t, s,
		newCmd("late", "d1", 0, 3*time.Minute),
		newCmd("early", "d2", 0, time.Minute),
		newCmd("mid", "d1", time.Second, 2*time.Minute-time.Second), // expires at exactly 2m
		newCmd("never", "d3", 0, 0),
		newCmd("done", "d3", 0, time.Minute),
	)
	mustMove(t, s, "done", at(10*time.Second), StatusSent, StatusDelivered)
	mustMove(t, s, "mid", at(10*time.Second), StatusSent)

	steps := []struct {
		now  time.Duration
		want []string
	}{
		{now: 59 * time.Second, want: nil},
		{now: 2 * time.Minute, want: []string{"early", "mid"}}, // ExpiresAt <= now, earliest first
		{now: 2 * time.Minute, want: nil},                      // already expired
		{now: 24 * time.Hour, want: []string{"late"}},
	}
	for _, st := range steps {
		got, err := s.Expire(at(st.now))
		if err != nil {
			t.Fatalf("Expire(%s): %v", st.now, err)
		}
		if !equalStrings(ids(got), st.want) {
			t.Fatalf("Expire(%s) = %v, want %v", st.now, ids(got), st.want)
		}
		for _, c := range got {
			last := c.History[len(c.History)-1]
			if c.Status != StatusExpired || last.Status != StatusExpired || !last.At.Equal(at(st.now)) || last.Note == "" {
				t.Errorf("expired command %s: status %s, last %+v", c.ID, c.Status, last)
			}
			if stored := mustGet(t, s, c.ID); !reflect.DeepEqual(stored, c) {
				t.Errorf("Get(%s) = %+v, Expire returned %+v", c.ID, stored, c)
			}
		}
	}
	if got := mustGet(t, s, "done"); got.Status != StatusDelivered {
		t.Errorf("delivered command changed to %s", got.Status)
	}
	if got := mustGet(t, s, "never"); got.Status != StatusPending {
		t.Errorf("command without TTL changed to %s", got.Status)
	}
	for _, client := range []string{"d1", "d2"} {
		if n, _ := s.CountPending(client); n != 0 {
			t.Errorf("CountPending(%s) = %d after expiry", client, n)
		}
	}
	if clients, _ := s.Clients(); !equalStrings(clients, []string{"d3"}) {
		t.Errorf("Clients = %q, want [d3]", clients)
	}
}

func testPrune(t *testing.T, s Store) {
	mustPut(t, s,
		newCmd("old-delivered", "d1", 0, 0),
		newCmd("old-failed", "d1", 0, 0),
		newCmd("new-expired", "d2", 0, time.Hour),
		newCmd("old-pending", "d2", 0, 0),
		newCmd("edge", "d3", 0, 0),
	)
	mustMove(t, s, "old-delivered", at(time.Minute), StatusSent, StatusDelivered)
	mustMove(t, s, "old-failed", at(2*time.Minute), StatusFailed)
	mustMove(t, s, "edge", at(10*time.Minute), StatusFailed) // finished exactly at the cut: kept
	if _, err := s.Expire(at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		before time.Duration
		want   int
		gone   []string
	}{
		{before: 0, want: 0},
		{before: 10 * time.Minute, want: 2, gone: []string{"old-delivered", "old-failed"}},
		{before: 10 * time.Minute, want: 0},
		{before: 48 * time.Hour, want: 2, gone: []string{"edge", "new-expired"}},
	}
	for _, st := range steps {
		n, err := s.Prune(at(st.before))
		if err != nil || n != st.want {
			t.Fatalf("Prune(%s) = %d, %v; want %d", st.before, n, err, st.want)
		}
		for _, id := range st.gone {
			_, err := s.Get(id)
			wantErr(t, err, ErrNotFound)
		}
	}
	if got := mustGet(t, s, "old-pending"); got.Status != StatusPending {
		t.Fatalf("non-final command pruned or changed: %+v", got)
	}
	counts, err := s.Stats()
	if err != nil || counts != (Counts{Pending: 1, Clients: 1}) {
		t.Fatalf("Stats after prune = %+v, %v", counts, err)
	}
	// The id of a pruned command is free again.
	mustPut(t, s, newCmd("old-delivered", "d1", time.Hour, 0))
}

// A command's origin is kept with it, found by HasOrigin in any status,
// shared by two commands if need be, and forgotten when the last command
// holding it is pruned.
func testOrigin(t *testing.T, s Store) {
	a := newCmd("a", "d1", 0, 0)
	a.Origin = "upstream:0f1e"
	b := newCmd("b", "d2", time.Minute, 0)
	b.Origin = a.Origin
	c := newCmd("c", "d1", 2*time.Minute, 0) // an API command: no origin
	mustPut(t, s, a, b, c)
	if got := mustGet(t, s, "a"); got.Origin != a.Origin {
		t.Fatalf("origin %q, want %q", got.Origin, a.Origin)
	}
	if got := mustGet(t, s, "c"); got.Origin != "" {
		t.Fatalf("origin %q, want none", got.Origin)
	}
	has := func(origin string, want bool) {
		t.Helper()
		if ok, err := s.HasOrigin(origin); err != nil || ok != want {
			t.Fatalf("HasOrigin(%q) = %v, %v; want %v", origin, ok, err, want)
		}
	}
	has(a.Origin, true)
	has("upstream:0f", false) // a prefix is another origin
	has("", false)
	mustMove(t, s, "a", at(time.Minute), StatusSent, StatusDelivered)
	mustMove(t, s, "b", at(time.Minute), StatusFailed)
	has(a.Origin, true) // final commands keep theirs until pruned
	if _, err := s.Prune(at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	has(a.Origin, false)
	bad := newCmd("bad", "d3", 0, 0)
	bad.Origin = strings.Repeat("x", MaxOriginLen+1)
	wantErr(t, s.Put(bad), ErrInvalid)
}

func testStats(t *testing.T, s Store) {
	if counts, err := s.Stats(); err != nil || counts != (Counts{}) {
		t.Fatalf("empty Stats = %+v, %v", counts, err)
	}
	mustPut(t, s,
		newCmd("p1", "a", 0, 0), newCmd("p2", "a", 1, 0),
		newCmd("u1", "b", 0, 0),
		newCmd("s1", "c", 0, 0),
		newCmd("d1", "d", 0, 0), newCmd("d2", "d", 1, 0),
		newCmd("e1", "e", 0, time.Second),
		newCmd("f1", "f", 0, 0),
	)
	mustMove(t, s, "u1", at(time.Second), StatusUpgrading)
	mustMove(t, s, "s1", at(time.Second), StatusSent)
	mustMove(t, s, "d1", at(time.Second), StatusSent, StatusDelivered)
	mustMove(t, s, "d2", at(time.Second), StatusSent, StatusDelivered)
	mustMove(t, s, "f1", at(time.Second), StatusFailed)
	if _, err := s.Expire(at(time.Minute)); err != nil {
		t.Fatal(err)
	}
	want := Counts{Pending: 2, Upgrading: 1, Sent: 1, Delivered: 2, Expired: 1, Failed: 1, Clients: 3}
	counts, err := s.Stats()
	if err != nil || counts != want {
		t.Fatalf("Stats = %+v, %v; want %+v", counts, err, want)
	}
	if counts.NonFinal() != 4 {
		t.Errorf("NonFinal = %d", counts.NonFinal())
	}
	for _, st := range Statuses() {
		total := 0
		for _, c := range []string{"p1", "p2", "u1", "s1", "d1", "d2", "e1", "f1"} {
			if mustGet(t, s, c).Status == st {
				total++
			}
		}
		if counts.Of(st) != total {
			t.Errorf("Of(%s) = %d, want %d", st, counts.Of(st), total)
		}
	}
}

func testClients(t *testing.T, s Store) {
	if clients, err := s.Clients(); err != nil || len(clients) != 0 {
		t.Fatalf("empty Clients = %q, %v", clients, err)
	}
	names := []string{"b", "a", "ab", "a\x01", "a b", "\xff", "z"}
	for i, name := range names {
		mustPut(t, s, newCmd(fmt.Sprint("c", i), name, 0, 0), newCmd(fmt.Sprint("d", i), name, 1, 0))
	}
	want := []string{"a", "a\x01", "a b", "ab", "b", "z", "\xff"}
	if clients, err := s.Clients(); err != nil || !equalStrings(clients, want) {
		t.Fatalf("Clients = %q, %v; want %q", clients, err, want)
	}
	// "ab" leaves once both its commands are final.
	mustMove(t, s, "c2", at(time.Second), StatusFailed)
	if clients, _ := s.Clients(); !equalStrings(clients, want) {
		t.Fatalf("Clients with one of ab's commands left = %q", clients)
	}
	mustMove(t, s, "d2", at(time.Second), StatusSent, StatusDelivered)
	want = []string{"a", "a\x01", "a b", "b", "z", "\xff"}
	if clients, _ := s.Clients(); !equalStrings(clients, want) {
		t.Fatalf("Clients = %q, want %q", clients, want)
	}
	if counts, _ := s.Stats(); counts.Clients != len(want) {
		t.Fatalf("Stats.Clients = %d, want %d", counts.Clients, len(want))
	}
}

func testClosed(t *testing.T, s Store) {
	mustPut(t, s, newCmd("a", "dev", 0, 0))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	calls := []struct {
		name string
		call func() error
	}{
		{name: "Put", call: func() error { return s.Put(newCmd("b", "dev", 0, 0)) }},
		{name: "Get", call: func() error { _, err := s.Get("a"); return err }},
		{name: "Pending", call: func() error { _, err := s.Pending("dev"); return err }},
		{name: "CountPending", call: func() error { _, err := s.CountPending("dev"); return err }},
		{name: "Transition", call: func() error { _, err := s.Transition("a", StatusSent, at(0), ""); return err }},
		{name: "Expire", call: func() error { _, err := s.Expire(at(0)); return err }},
		{name: "Stats", call: func() error { _, err := s.Stats(); return err }},
		{name: "Prune", call: func() error { _, err := s.Prune(at(0)); return err }},
		{name: "Clients", call: func() error { _, err := s.Clients(); return err }},
		{name: "List", call: func() error { _, _, err := s.List("dev", "", 10); return err }},
		{name: "HasOrigin", call: func() error { _, err := s.HasOrigin("mqtt:0"); return err }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) { wantErr(t, c.call(), ErrClosed) })
	}
}

// listAll pages through a client's commands with the given page size and
// returns their ids, checking each page's size and the last cursor.
func listAll(t *testing.T, s Store, client string, limit int) []string {
	t.Helper()
	var out []string
	cursor := ""
	for range 1000 {
		page, next, err := s.List(client, cursor, limit)
		if err != nil {
			t.Fatalf("List(%q, %q, %d): %v", client, cursor, limit, err)
		}
		if len(page) > limit || (next != "" && len(page) != limit) {
			t.Fatalf("List(%q, %q, %d): %d commands, next %q", client, cursor, limit, len(page), next)
		}
		for _, c := range page {
			if c.ClientID != client {
				t.Fatalf("List(%q) returned %s of %q", client, c.ID, c.ClientID)
			}
		}
		out = append(out, ids(page)...)
		if next == "" {
			return out
		}
		cursor = next
	}
	t.Fatalf("List(%q) never ended", client)
	return nil
}

// A client's commands in every status, newest first, by creation time then
// id; other clients' commands, a client id that is a prefix of another
// included, stay out.
func testList(t *testing.T, s Store) {
	if cmds, next, err := s.List("nobody", "", 10); err != nil || len(cmds) != 0 || next != "" {
		t.Fatalf("List of a client without commands = %v, %q, %v", cmds, next, err)
	}
	mustPut(t, s, newCmd("d1", "dev", 0, 0), newCmd("d2", "dev", time.Second, time.Minute))
	mustMove(t, s, "d1", at(time.Second), StatusSent, StatusDelivered)
	mustMove(t, s, "d2", at(time.Second), StatusCancelled)
	// Two created at the same instant: the id decides.
	mustPut(t, s, newCmd("e-b", "dev", 2*time.Second, 0), newCmd("e-a", "dev", 2*time.Second, 0))
	mustMove(t, s, "e-a", at(3*time.Second), StatusFailed)
	mustPut(t, s, newCmd("e-c", "dev", 3*time.Second, 0))
	mustPut(t, s, newCmd("x1", "de", 5*time.Second, 0), newCmd("x2", "dev\x01", 5*time.Second, 0), newCmd("x3", "devx", 0, 0))
	if _, err := s.Expire(at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	want := []string{"e-c", "e-b", "e-a", "d2", "d1"}
	cmds, next, err := s.List("dev", "", 100)
	if err != nil || next != "" || !equalStrings(ids(cmds), want) {
		t.Fatalf("List(dev) = %q, %q, %v; want %q", ids(cmds), next, err, want)
	}
	for _, c := range cmds {
		if !reflect.DeepEqual(c, mustGet(t, s, c.ID)) {
			t.Fatalf("List's %s = %+v, Get's %+v", c.ID, c, mustGet(t, s, c.ID))
		}
	}
	cmds[0].Payload[0] = 'X' // the caller's own copy
	if got := mustGet(t, s, "e-c"); got.Payload[0] == 'X' {
		t.Fatal("List returned the store's own command")
	}
	for limit := 1; limit <= 6; limit++ {
		if got := listAll(t, s, "dev", limit); !equalStrings(got, want) {
			t.Fatalf("pages of %d = %q, want %q", limit, got, want)
		}
	}
	if got := listAll(t, s, "de", 10); !equalStrings(got, []string{"x1"}) {
		t.Fatalf("List(de) = %q", got)
	}
	// Pruned commands leave the listing.
	if _, err := s.Prune(at(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, s, "dev", 2); !equalStrings(got, []string{"e-c", "e-b", "e-a"}) {
		t.Fatalf("List(dev) after prune = %q", got)
	}
	for _, bad := range []string{"!", "bm90IGEgY3Vyc29y", "AAAA", strings.Repeat("A", 400)} {
		_, _, err := s.List("dev", bad, 10)
		wantErr(t, err, ErrInvalid)
	}
	for _, limit := range []int{0, -1} {
		_, _, err := s.List("dev", "", limit)
		wantErr(t, err, ErrInvalid)
	}
}

// Pages stay consistent while commands come and go between them: a
// command present for the whole listing is listed exactly once, a newer
// one put meanwhile is not listed, a pruned one is not listed after it
// went.
func testListPages(t *testing.T, s Store) {
	var all []string
	for i := range 9 {
		id := fmt.Sprintf("p%d", i)
		mustPut(t, s, newCmd(id, "dev", time.Duration(i)*time.Second, 0))
		mustMove(t, s, id, at(time.Minute), StatusFailed) // final: the limit stays out of the way
		all = append([]string{id}, all...)
	}
	page, cursor, err := s.List("dev", "", 3)
	if err != nil || !equalStrings(ids(page), all[:3]) || cursor == "" {
		t.Fatalf("first page = %q, %q, %v", ids(page), cursor, err)
	}
	// A newer command, and one of the listed ones pruned: the next page
	// starts where the first ended.
	mustPut(t, s, newCmd("newer", "dev", time.Hour, 0))
	page, cursor, err = s.List("dev", cursor, 3)
	if err != nil || !equalStrings(ids(page), all[3:6]) {
		t.Fatalf("second page = %q, %q, %v; want %q", ids(page), cursor, err, all[3:6])
	}
	// The command the cursor points at is pruned: the cursor still holds.
	if n, err := s.Prune(at(2 * time.Minute)); err != nil || n != 9 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	page, cursor, err = s.List("dev", cursor, 3)
	if err != nil || len(page) != 0 || cursor != "" {
		t.Fatalf("page after prune = %q, %q, %v", ids(page), cursor, err)
	}
	if got := listAll(t, s, "dev", 3); !equalStrings(got, []string{"newer"}) {
		t.Fatalf("List = %q", got)
	}
}

// Cancelled is final, reached from pending and upgrading with its history
// entry, counted, and frees the client's place under the limit.
func testCancel(t *testing.T, s Store) {
	mustPut(t, s, newCmd("a", "dev", 0, time.Hour), newCmd("b", "dev", 1, 0), newCmd("c", "dev", 2, 0))
	wantErr(t, s.Put(newCmd("d", "dev", 3, 0)), ErrFull)
	mustMove(t, s, "b", at(time.Second), StatusUpgrading)
	mustMove(t, s, "c", at(time.Second), StatusSent)
	got, err := s.Transition("a", StatusCancelled, at(time.Minute), "cancelled through the API")
	if err != nil || got.Status != StatusCancelled || got.History[len(got.History)-1] != (Transition{Status: StatusCancelled, At: at(time.Minute), Note: "cancelled through the API"}) {
		t.Fatalf("cancel of pending = %+v, %v", got, err)
	}
	if got.FinishedAt() != at(time.Minute) {
		t.Fatalf("FinishedAt = %s", got.FinishedAt())
	}
	mustMove(t, s, "b", at(time.Minute), StatusCancelled)
	_, err = s.Transition("c", StatusCancelled, at(time.Minute), "")
	wantErr(t, err, ErrBadTransition)
	for _, to := range []Status{StatusPending, StatusSent, StatusExpired, StatusCancelled} {
		_, err := s.Transition("a", to, at(time.Hour), "")
		wantErr(t, err, ErrBadTransition)
	}
	if pending, err := s.Pending("dev"); err != nil || !equalStrings(ids(pending), []string{"c"}) {
		t.Fatalf("Pending = %q, %v", ids(pending), err)
	}
	mustPut(t, s, newCmd("d", "dev", 3, 0)) // room again
	// A cancelled command does not expire.
	if exp, err := s.Expire(at(2 * time.Hour)); err != nil || len(exp) != 0 {
		t.Fatalf("Expire = %q, %v", ids(exp), err)
	}
	want := Counts{Pending: 1, Sent: 1, Cancelled: 2, Clients: 1}
	if counts, err := s.Stats(); err != nil || counts != want {
		t.Fatalf("Stats = %+v, %v; want %+v", counts, err, want)
	}
	if n, err := s.Prune(at(2 * time.Minute)); err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
}
