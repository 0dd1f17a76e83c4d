package bench

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestLatencySummaryEmpty(t *testing.T) {
	s := NewLatency().Summary()
	if s != (LatencySummary{}) {
		t.Fatalf("empty summary = %+v", s)
	}
	if s.String() != "no samples" {
		t.Fatalf("String = %q", s.String())
	}
}

// within reports whether got is within 0.1% (3 significant digits) of want.
func within(got, want time.Duration) bool {
	diff := got - want
	if diff < 0 {
		diff = -diff
	}
	return diff <= want/1000+1
}

func TestLatencyPercentiles(t *testing.T) {
	l := NewLatency()
	for i := 1; i <= 1000; i++ {
		l.Record(time.Duration(i) * time.Millisecond)
	}
	s := l.Summary()
	tests := []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", s.P50, 500 * time.Millisecond},
		{"p90", s.P90, 900 * time.Millisecond},
		{"p99", s.P99, 990 * time.Millisecond},
		{"max", s.Max, 1000 * time.Millisecond},
	}
	for _, tt := range tests {
		if !within(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if s.Count != 1000 {
		t.Errorf("count = %d", s.Count)
	}
}

func TestLatencyClampsOutOfRange(t *testing.T) {
	l := NewLatency()
	l.Record(0)
	l.Record(time.Hour)
	s := l.Summary()
	if s.Count != 2 {
		t.Fatalf("count = %d, want 2", s.Count)
	}
	if !within(s.Max, 10*time.Minute) {
		t.Fatalf("max = %v, want 10m (clamped)", s.Max)
	}
}

// TestLatencyMergeAcrossWorkers plays three workers, each encoding its
// histogram for the parent, and checks that the merged figures are those of
// one histogram holding every observation.
func TestLatencyMergeAcrossWorkers(t *testing.T) {
	tests := []struct {
		name    string
		workers [][]time.Duration
	}{
		{
			name: "disjoint ranges",
			workers: [][]time.Duration{
				{1 * time.Millisecond, 2 * time.Millisecond},
				{10 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond},
				{500 * time.Millisecond},
			},
		},
		{
			name:    "one empty worker",
			workers: [][]time.Duration{{3 * time.Millisecond}, {}},
		},
		{
			name:    "all empty",
			workers: [][]time.Duration{{}, {}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := NewLatency()
			all := NewLatency()
			for _, obs := range tt.workers {
				w := NewLatency()
				for _, d := range obs {
					w.Record(d)
					all.Record(d)
				}
				enc, err := w.Encode()
				if err != nil {
					t.Fatalf("Encode: %v", err)
				}
				if err := parent.MergeEncoded(enc); err != nil {
					t.Fatalf("MergeEncoded: %v", err)
				}
			}
			if got, want := parent.Summary(), all.Summary(); got != want {
				t.Fatalf("merged = %+v, want %+v", got, want)
			}
		})
	}
}

func TestLatencyMergeInProcess(t *testing.T) {
	a, b := NewLatency(), NewLatency()
	a.Record(time.Millisecond)
	b.Record(3 * time.Millisecond)
	b.Record(5 * time.Millisecond)
	a.Merge(b)
	s := a.Summary()
	if s.Count != 3 || !within(s.Max, 5*time.Millisecond) || !within(s.P50, 3*time.Millisecond) {
		t.Fatalf("merged summary = %+v", s)
	}
	if b.Count() != 2 {
		t.Fatalf("source changed: count %d", b.Count())
	}
}

func TestLatencyMergeEncodedErrors(t *testing.T) {
	l := NewLatency()
	if err := l.MergeEncoded(""); err != nil {
		t.Fatalf("empty string: %v", err)
	}
	if err := l.MergeEncoded("not base64 !"); err == nil {
		t.Fatal("garbage: want error")
	}
}

func TestLatencyConcurrentRecord(t *testing.T) {
	l := NewLatency()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 250 {
				l.Record(time.Duration(g*1000+i) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	if l.Count() != 1000 {
		t.Fatalf("count = %d, want 1000", l.Count())
	}
}

func TestLatencySummaryString(t *testing.T) {
	s := LatencySummary{Count: 2, P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 2500 * time.Microsecond, Max: 3 * time.Millisecond}
	want := "p50 1.000 ms  p90 2.000 ms  p99 2.500 ms  max 3.000 ms  (n=2)"
	if s.String() != want {
		t.Fatalf("String = %q, want %q", s.String(), want)
	}
}

// A chart draws no percentile from fewer samples than it needs.
func TestChartQuantiles(t *testing.T) {
	l := NewLatency()
	for i := range 50 {
		l.Record(time.Duration(i+1) * time.Millisecond)
	}
	var got []float64
	for _, q := range l.ChartQuantiles() {
		got = append(got, q.Percentile)
	}
	want := []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 98, 100}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("50 samples: percentiles %v, want %v", got, want)
	}
	for i := range 950 {
		l.Record(time.Duration(i+1) * time.Microsecond)
	}
	if n := len(l.ChartQuantiles()); n != len(DistributionPercentiles()) {
		t.Fatalf("1,000 samples: %d percentiles, want all %d", n, len(DistributionPercentiles()))
	}
}
