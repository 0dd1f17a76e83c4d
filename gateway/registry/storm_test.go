package registry

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// stormConn stands for a connection: it embeds its entry and counts how it
// left the registry.
type stormConn struct {
	entry        Entry
	replaced     atomic.Int32 // times it came back from Register as prev
	unregistered atomic.Int32 // times Unregister of it returned true
}

func (c *stormConn) RegistryEntry() *Entry { return &c.entry }

// TestRegisterStorm runs concurrent register, takeover and unregister calls on
// a small set of client ids, with readers alongside, and then proves that every
// entry left the registry in exactly one way (replaced once, unregistered once,
// or still live), that there is at most one live entry per id, and that the
// counters agree with the map.
func TestRegisterStorm(t *testing.T) {
	tests := []struct {
		name       string
		ids        int
		writers    int
		iterations int
		unregister int // percentage of steps that unregister one of the writer's own entries
	}{
		{name: "one hot id", ids: 1, writers: 8, iterations: 2000, unregister: 30},
		{name: "few ids heavy takeover", ids: 8, writers: 8, iterations: 2000, unregister: 20},
		{name: "many ids mostly unregister", ids: 512, writers: 6, iterations: 3000, unregister: 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New[*stormConn]()
			ids := make([]string, tt.ids)
			for i := range ids {
				ids[i] = fmt.Sprintf("dev-%04d", i)
			}

			created := make([][]*stormConn, tt.writers)
			var writers, readers sync.WaitGroup
			stop := make(chan struct{})

			// Readers check what they can while the storm runs.
			readerErrs := make(chan error, 3)
			for k := range 3 {
				readers.Add(1)
				go func() {
					defer readers.Done()
					rng := rand.New(rand.NewPCG(uint64(k), 99))
					for {
						select {
						case <-stop:
							return
						default:
						}
						id := ids[rng.IntN(len(ids))]
						if c, ok := r.Get(id); ok && c.entry.ClientID != id {
							readerErrs <- fmt.Errorf("Get(%s) returned entry of %s", id, c.entry.ClientID)
							return
						}
						if plain, tls := r.CountByMode(); plain < 0 || tls < 0 {
							readerErrs <- fmt.Errorf("negative count: plain %d, tls %d", plain, tls)
							return
						}
						// Readers never block; yield so that on a machine with few
						// cores the writers get to run.
						runtime.Gosched()
						if k == 0 {
							r.Range(func(c *stormConn) bool {
								c.entry.Touch(c.entry.Since()) // concurrent Touch must be race-free
								return rng.IntN(64) != 0
							})
						}
					}
				}()
			}

			for w := range tt.writers {
				writers.Add(1)
				go func() {
					defer writers.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					var mine []*stormConn
					for range tt.iterations {
						if len(mine) > 0 && rng.IntN(100) < tt.unregister {
							c := mine[rng.IntN(len(mine))]
							if r.Unregister(c) {
								c.unregistered.Add(1)
							}
							continue
						}
						c := &stormConn{entry: Entry{
							ClientID: ids[rng.IntN(len(ids))],
							Mode:     Mode(rng.IntN(numModes)),
						}}
						mine = append(mine, c)
						if prev := r.Register(c); prev != nil {
							if prev.entry.ClientID != c.entry.ClientID {
								t.Errorf("Register(%s) replaced an entry of %s", c.entry.ClientID, prev.entry.ClientID)
							}
							prev.replaced.Add(1)
						}
					}
					created[w] = mine
				}()
			}
			writers.Wait()
			close(stop)
			readers.Wait()
			close(readerErrs)
			for err := range readerErrs {
				t.Error(err)
			}

			live := make(map[string]int)
			var plain, tls, total int
			for _, mine := range created {
				for _, c := range mine {
					e := &c.entry
					total++
					cur, _ := r.Get(e.ClientID)
					isLive := 0
					if cur == c {
						isLive = 1
						live[e.ClientID]++
						if e.Mode == ModeTLS {
							tls++
						} else {
							plain++
						}
					}
					if ways := int(c.replaced.Load()) + int(c.unregistered.Load()) + isLive; ways != 1 {
						t.Fatalf("entry %p of %s: replaced %d times, unregistered %d times, live %d: want exactly one",
							c, e.ClientID, c.replaced.Load(), c.unregistered.Load(), isLive)
					}
				}
			}
			for id, n := range live {
				if n != 1 {
					t.Fatalf("%d live entries for %s", n, id)
				}
			}
			gotPlain, gotTLS := r.CountByMode()
			if gotPlain != plain || gotTLS != tls {
				t.Fatalf("CountByMode() = %d, %d; live entries: %d plain, %d tls", gotPlain, gotTLS, plain, tls)
			}
			ranged := 0
			r.Range(func(c *stormConn) bool {
				ranged++
				if c.replaced.Load() != 0 || c.unregistered.Load() != 0 {
					t.Errorf("Range returned a dead entry of %s", c.entry.ClientID)
				}
				return true
			})
			if ranged != len(live) || r.Len() != len(live) {
				t.Fatalf("Range saw %d, Len() = %d, live ids %d", ranged, r.Len(), len(live))
			}
			t.Logf("%d entries created, %d live", total, len(live))
		})
	}
}
