package bench

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latency histogram geometry: 1 µs to 10 minutes, 3 significant digits.
const (
	histLowest  = int64(time.Microsecond)
	histHighest = int64(10 * time.Minute)
	histDigits  = 3
)

// Latency is a latency histogram safe for concurrent use. Values are
// recorded in nanoseconds; values beyond the range are clamped to it.
type Latency struct {
	mu sync.Mutex // guards h
	h  *hdrhistogram.Histogram
}

// NewLatency returns an empty histogram.
func NewLatency() *Latency {
	return &Latency{h: hdrhistogram.New(histLowest, histHighest, histDigits)}
}

// Record adds one observation.
func (l *Latency) Record(d time.Duration) {
	v := min(max(int64(d), histLowest), histHighest)
	l.mu.Lock()
	_ = l.h.RecordValue(v) // v is within range: cannot fail
	l.mu.Unlock()
}

// Count is the number of observations.
func (l *Latency) Count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h.TotalCount()
}

// Encode returns the histogram in the compressed, base64 HdrHistogram V2
// format, which [Latency.MergeEncoded] reads back (in another process).
func (l *Latency) Encode() (string, error) {
	l.mu.Lock()
	b, err := l.h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	l.mu.Unlock()
	if err != nil {
		return "", fmt.Errorf("bench: encode histogram: %w", err)
	}
	return string(b), nil
}

// MergeEncoded adds the observations of an encoded histogram. An empty
// string is an empty histogram.
func (l *Latency) MergeEncoded(s string) error {
	if s == "" {
		return nil
	}
	h, err := hdrhistogram.Decode([]byte(s))
	if err != nil {
		return fmt.Errorf("bench: decode histogram: %w", err)
	}
	l.mu.Lock()
	dropped := l.h.Merge(h)
	l.mu.Unlock()
	if dropped > 0 {
		return fmt.Errorf("bench: merge histogram: %d values out of range", dropped)
	}
	return nil
}

// Merge adds the observations of o.
func (l *Latency) Merge(o *Latency) {
	o.mu.Lock()
	c := o.h.Export()
	o.mu.Unlock()
	h := hdrhistogram.Import(c)
	l.mu.Lock()
	l.h.Merge(h)
	l.mu.Unlock()
}

// Summary returns the count and the usual percentiles.
func (l *Latency) Summary() LatencySummary {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.TotalCount() == 0 {
		return LatencySummary{}
	}
	v := l.h.ValueAtPercentiles([]float64{50, 90, 99})
	return LatencySummary{
		Count: l.h.TotalCount(),
		P50:   time.Duration(v[50]),
		P90:   time.Duration(v[90]),
		P99:   time.Duration(v[99]),
		Max:   time.Duration(l.h.Max()),
	}
}

// LatencySummary is a histogram reduced to a few figures. In JSON the
// durations are nanoseconds.
type LatencySummary struct {
	Count int64         `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// String formats the summary in milliseconds.
func (s LatencySummary) String() string {
	if s.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s  (n=%d)",
		fmtMs(s.P50), fmtMs(s.P90), fmtMs(s.P99), fmtMs(s.Max), s.Count)
}

func fmtMs(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// Quantile is one point of a latency distribution.
type Quantile struct {
	// Percentile is in 0..100.
	Percentile float64       `json:"percentile"`
	Value      time.Duration `json:"value_ns"`
}

// Distribution returns the latency at each of the percentiles ps (0..100).
func (l *Latency) Distribution(ps []float64) []Quantile {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.TotalCount() == 0 {
		return nil
	}
	out := make([]Quantile, 0, len(ps))
	for _, p := range ps {
		out = append(out, Quantile{Percentile: p, Value: time.Duration(l.h.ValueAtQuantile(p))})
	}
	return out
}

// DistributionPercentiles are the percentiles of a latency distribution
// chart: denser towards the tail.
func DistributionPercentiles() []float64 {
	return []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 98, 99, 99.5, 99.9, 100}
}

// ChartQuantiles is the distribution a chart draws: DistributionPercentiles
// without the percentiles the samples cannot support. A percentile p
// needs 100/(100-p) samples (p90: 10, p99: 100, p99.9: 1,000) to be more
// than the maximum under another name; the minimum and the maximum need
// one.
func (l *Latency) ChartQuantiles() []Quantile {
	n := l.Count()
	var ps []float64
	for _, p := range DistributionPercentiles() {
		if p <= 0 || p >= 100 || float64(n) >= math.Ceil(100/(100-p)-1e-9) {
			ps = append(ps, p)
		}
	}
	return l.Distribution(ps)
}
