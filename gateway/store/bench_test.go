package store

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// benchCmd is a typical command: a secure unlock of a few hundred bytes.
func benchCmd(id, client string) *Command {
	c := newCmd(id, client, 0, time.Hour)
	c.Payload = make([]byte, 256)
	return c
}

// BenchmarkPut measures one durable Put: one bbolt transaction and its
// fsync. Each command goes to its own client so the limit stays out of the
// way.
func BenchmarkPut(b *testing.B) {
	for _, f := range factories(b) {
		b.Run(f.name, func(b *testing.B) {
			s := f.open(b, Options{})
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := s.Put(benchCmd(fmt.Sprint("id", i), fmt.Sprint("dev", i))); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkPutParallel measures Puts from 16 concurrent callers, as from a
// burst of API requests.
func BenchmarkPutParallel(b *testing.B) {
	for _, f := range factories(b) {
		b.Run(f.name, func(b *testing.B) {
			s := f.open(b, Options{})
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					if err := s.Put(benchCmd(fmt.Sprint("id", i), fmt.Sprint("dev", i))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkTransition measures one durable status change.
func BenchmarkTransition(b *testing.B) {
	s := openBolt(b, filepath.Join(b.TempDir(), FileName), Options{})
	mustPut(b, s, benchCmd("a", "dev"))
	b.ReportAllocs()
	to := []Status{StatusSent, StatusPending}
	i := 0
	for b.Loop() {
		if _, err := s.Transition("a", to[i%2], at(time.Second), "bench"); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkPending lists the ten commands of one client among 1,000
// clients with ten commands each.
func BenchmarkPending(b *testing.B) {
	for _, f := range factories(b) {
		b.Run(f.name, func(b *testing.B) {
			s := f.open(b, Options{})
			if bolt, ok := s.(*Bolt); ok {
				// Fill without fsync: its cost is measured by BenchmarkPut.
				bolt.db.NoSync = true
				defer func() { bolt.db.NoSync = false }()
			}
			for c := range 1000 {
				for i := range 10 {
					mustPut(b, s, benchCmd(fmt.Sprintf("c%d-%d", c, i), fmt.Sprint("dev", c)))
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				cs, err := s.Pending("dev500")
				if err != nil || len(cs) != 10 {
					b.Fatalf("Pending = %d, %v", len(cs), err)
				}
			}
		})
	}
}

// BenchmarkRecord compares the record encoding with encoding/json on the
// same command.
func BenchmarkRecord(b *testing.B) {
	c, err := prepare(benchCmd(NewID(at(0)), "car-42"))
	if err != nil {
		b.Fatal(err)
	}
	mustMove := func(to Status) {
		if err := move(c, to, at(time.Second), "bench"); err != nil {
			b.Fatal(err)
		}
	}
	mustMove(StatusSent)
	mustMove(StatusDelivered)
	rec := appendCommand(nil, c)
	js, err := json.Marshal(c)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("record %d bytes, JSON %d bytes", len(rec), len(js))
	b.Run("encode/binary", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(rec)))
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf = appendCommand(buf[:0], c)
		}
	})
	b.Run("encode/json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(js)))
		for b.Loop() {
			if _, err := json.Marshal(c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode/binary", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(rec)))
		for b.Loop() {
			if _, err := decodeCommand(rec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode/json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(js)))
		for b.Loop() {
			var d Command
			if err := json.Unmarshal(js, &d); err != nil {
				b.Fatal(err)
			}
		}
	})
}
