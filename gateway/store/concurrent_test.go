package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentPutTransition runs writers and readers at once: each writer
// puts commands for a few shared clients and walks them to delivered, while
// readers list, count and expire. At the end every command is delivered and
// the counts add up.
func TestConcurrentPutTransition(t *testing.T) {
	const (
		writers   = 6
		perWriter = 15
		clients   = 4
	)
	for _, f := range factories(t) {
		t.Run(f.name, func(t *testing.T) {
			s := f.open(t, Options{Limit: writers * perWriter})
			errs := make(chan error, writers+2)
			var writing sync.WaitGroup
			for w := range writers {
				writing.Add(1)
				go func() {
					defer writing.Done()
					for i := range perWriter {
						c := newCmd(fmt.Sprintf("w%d-%02d", w, i), fmt.Sprint("dev", (w+i)%clients), time.Duration(i)*time.Millisecond, time.Hour)
						if err := s.Put(c); err != nil {
							errs <- err
							return
						}
						for _, to := range []Status{StatusUpgrading, StatusSent, StatusPending, StatusSent, StatusDelivered} {
							if _, err := s.Transition(c.ID, to, at(time.Second), ""); err != nil {
								errs <- err
								return
							}
						}
					}
				}()
			}
			stop := make(chan struct{})
			var reading sync.WaitGroup
			reading.Add(1)
			go func() {
				defer reading.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					client := fmt.Sprint("dev", i%clients)
					if _, err := s.Pending(client); err != nil {
						errs <- err
						return
					}
					if _, err := s.CountPending(client); err != nil {
						errs <- err
						return
					}
					if _, err := s.Stats(); err != nil {
						errs <- err
						return
					}
					// Nothing expires before t0+1h: Expire must find nothing.
					if got, err := s.Expire(at(time.Minute)); err != nil || len(got) != 0 {
						errs <- fmt.Errorf("Expire = %v, %w", ids(got), err)
						return
					}
				}
			}()
			writing.Wait()
			close(stop)
			reading.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			want := Counts{Delivered: writers * perWriter}
			if counts, err := s.Stats(); err != nil || counts != want {
				t.Fatalf("Stats = %+v, %v; want %+v", counts, err, want)
			}
			for w := range writers {
				for i := range perWriter {
					if c := mustGet(t, s, fmt.Sprintf("w%d-%02d", w, i)); c.Attempts != 2 || len(c.History) != 6 {
						t.Fatalf("%s: attempts %d, history %d", c.ID, c.Attempts, len(c.History))
					}
				}
			}
			if b, ok := s.(*Bolt); ok {
				checkConsistent(t, b)
			}
		})
	}
}

// TestConcurrentLimitAndRace checks that the limit and the state machine
// hold when many callers race for the same client and the same command.
func TestConcurrentLimitAndRace(t *testing.T) {
	const (
		limit   = 5
		callers = 20
	)
	for _, f := range factories(t) {
		t.Run(f.name, func(t *testing.T) {
			s := f.open(t, Options{Limit: limit})
			var put, full, moved, refused atomic.Int32
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					err := s.Put(newCmd(fmt.Sprint("c", i), "crowded", time.Duration(i), 0))
					switch {
					case err == nil:
						put.Add(1)
					case errors.Is(err, ErrFull):
						full.Add(1)
					default:
						t.Error(err)
					}
				}()
			}
			close(start)
			wg.Wait()
			if put.Load() != limit || full.Load() != callers-limit {
				t.Fatalf("%d put, %d refused as full; want %d and %d", put.Load(), full.Load(), limit, callers-limit)
			}

			// Every caller tries to send the same pending command: one wins,
			// sent -> sent is not a move.
			pending, err := s.Pending("crowded")
			if err != nil || len(pending) != limit {
				t.Fatalf("Pending = %d, %v", len(pending), err)
			}
			id := pending[0].ID
			start = make(chan struct{})
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, err := s.Transition(id, StatusSent, at(time.Second), "")
					switch {
					case err == nil:
						moved.Add(1)
					case errors.Is(err, ErrBadTransition):
						refused.Add(1)
					default:
						t.Error(err)
					}
				}()
			}
			close(start)
			wg.Wait()
			if moved.Load() != 1 || refused.Load() != callers-1 {
				t.Fatalf("%d moved, %d refused; want 1 and %d", moved.Load(), refused.Load(), callers-1)
			}
			if c := mustGet(t, s, id); c.Attempts != 1 || len(c.History) != 2 {
				t.Fatalf("after the race: attempts %d, history %d", c.Attempts, len(c.History))
			}
		})
	}
}

// TestBoltMatchesMemory applies one random sequence of operations to both
// stores and requires the same answers, then checks the file's indexes.
func TestBoltMatchesMemory(t *testing.T) {
	const ops = 400
	mem := NewMemory(Options{Limit: 4})
	defer mem.Close()
	bolt := openBolt(t, filepath.Join(t.TempDir(), FileName), Options{Limit: 4})
	rng := rand.New(rand.NewPCG(1, 2))
	clients := []string{"a", "ab", "b", "a\x01"}
	statuses := append(Statuses(), "bogus")
	var made []string
	clock := time.Duration(0)

	type answer struct {
		Value any
		Err   string
	}
	errText := func(err error) string {
		for _, e := range []error{ErrNotFound, ErrExists, ErrFull, ErrBadTransition, ErrInvalid} {
			if errors.Is(err, e) {
				return e.Error()
			}
		}
		if err != nil {
			return "unexpected: " + err.Error()
		}
		return ""
	}
	// outcomes tallies what the sequence exercised, by operation and error
	// (or, for Expire and Prune, whether they changed anything).
	outcomes := map[string]int{}
	for i := range ops {
		clock += time.Duration(rng.IntN(20)) * time.Second
		var op string
		var call func(s Store) answer
		switch n := rng.IntN(10); {
		case n < 3:
			id := fmt.Sprint("id", rng.IntN(ops/4))
			c := newCmd(id, clients[rng.IntN(len(clients))], clock, time.Duration(rng.IntN(5))*time.Minute)
			op = "Put " + id
			call = func(s Store) answer { return answer{Err: errText(s.Put(c.Clone()))} }
		case n < 7 && len(made) > 0:
			id := made[rng.IntN(len(made))]
			to := statuses[rng.IntN(len(statuses))]
			op = fmt.Sprintf("Transition %s %s", id, to)
			call = func(s Store) answer {
				c, err := s.Transition(id, to, at(clock), "n")
				return answer{Value: c, Err: errText(err)}
			}
		case n == 7:
			op = "Expire"
			call = func(s Store) answer {
				cs, err := s.Expire(at(clock))
				return answer{Value: cs, Err: errText(err)}
			}
		case n == 8:
			op = "Prune"
			call = func(s Store) answer {
				n, err := s.Prune(at(clock - 2*time.Minute))
				return answer{Value: n, Err: errText(err)}
			}
		default:
			client := clients[rng.IntN(len(clients))]
			op = "Pending " + client
			call = func(s Store) answer {
				cs, err := s.Pending(client)
				return answer{Value: cs, Err: errText(err)}
			}
		}
		want := call(mem)
		if got := call(bolt); !reflect.DeepEqual(got, want) {
			t.Fatalf("op %d %s: bolt %+v, memory %+v", i, op, got, want)
		}

		kind := strings.Fields(op)[0]
		switch v := want.Value.(type) {
		case []*Command:
			if kind == "Expire" && len(v) > 0 {
				kind += " some"
			}
		case int:
			if v > 0 {
				kind += " some"
			}
		}
		outcomes[kind+" "+want.Err]++
		if strings.HasPrefix(op, "Put") && want.Err == "" {
			made = append(made, strings.Fields(op)[1])
		}

		if i%50 == 0 {
			ms, _ := mem.Stats()
			bs, _ := bolt.Stats()
			mc, _ := mem.Clients()
			bc, _ := bolt.Clients()
			if ms != bs || !equalStrings(mc, bc) {
				t.Fatalf("op %d: Stats %+v / %+v, Clients %q / %q", i, bs, ms, bc, mc)
			}
		}
	}
	checkConsistent(t, bolt)
	for _, want := range []string{
		"Put ", "Put " + ErrExists.Error(), "Put " + ErrFull.Error(),
		"Transition ", "Transition " + ErrBadTransition.Error(),
		"Expire some ", "Prune some ",
	} {
		if outcomes[want] == 0 {
			t.Errorf("the sequence never produced %q: %v", want, outcomes)
		}
	}
}
