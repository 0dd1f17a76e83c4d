package bench

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
)

// ErrEmptyChart is returned for a chart with nothing to draw.
var ErrEmptyChart = errors.New("bench: chart: no data")

// ChartRenderer turns chart data into PNG images. Package bench/chart
// implements it with gonum/plot and registers itself when imported; the
// plotting code and its fonts stay out of programs that only measure.
type ChartRenderer interface {
	Bar(title, yLabel string, groups []string, series []BarSeries) ([]byte, error)
	Latency(title string, series []LatencySeries) ([]byte, error)
	Time(title, yLabel string, series []TimeSeries) ([]byte, error)
}

var (
	chartMu  sync.Mutex
	renderer ChartRenderer
)

// RegisterCharts makes r the renderer of every chart the reports write.
// Without one, reports are written without their charts.
func RegisterCharts(r ChartRenderer) {
	chartMu.Lock()
	renderer = r
	chartMu.Unlock()
}

func charts() ChartRenderer {
	chartMu.Lock()
	defer chartMu.Unlock()
	return renderer
}

// writeChart writes what draw renders to path, or nothing when no renderer
// is registered.
func writeChart(path string, draw func(r ChartRenderer) ([]byte, error)) error {
	r := charts()
	if r == nil {
		return nil
	}
	png, err := draw(r)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, png)
}

// BarSeries is one colour of a grouped bar chart: a value per group.
type BarSeries struct {
	Name   string
	Values []float64
}

// BarChart draws grouped bars, one group per name in groups, one bar per
// series in each group, and writes a PNG to path.
func BarChart(path, title, yLabel string, groups []string, series []BarSeries) error {
	if len(groups) == 0 || len(series) == 0 {
		return ErrEmptyChart
	}
	for _, s := range series {
		if len(s.Values) != len(groups) {
			return fmt.Errorf("bench: chart %q: series %q has %d values for %d groups", title, s.Name, len(s.Values), len(groups))
		}
	}
	return writeChart(path, func(r ChartRenderer) ([]byte, error) { return r.Bar(title, yLabel, groups, series) })
}

// LatencySeries is one latency distribution of a chart.
type LatencySeries struct {
	Name      string
	Quantiles []Quantile
}

// LatencyChart draws latency distributions (latency against percentile, the
// tail spread out) and writes a PNG to path.
func LatencyChart(path, title string, series []LatencySeries) error {
	drawable := false
	for _, s := range series {
		drawable = drawable || len(s.Quantiles) > 0
	}
	if !drawable {
		return ErrEmptyChart
	}
	return writeChart(path, func(r ChartRenderer) ([]byte, error) { return r.Latency(title, series) })
}

// TimeSeries is one line of a chart over time.
type TimeSeries struct {
	Name string
	// Seconds since the start, and the values.
	Seconds, Values []float64
}

// TimeChart draws values over time and writes a PNG to path. A series
// whose Seconds and Values differ in length is left out.
func TimeChart(path, title, yLabel string, series []TimeSeries) error {
	drawable := false
	for _, s := range series {
		drawable = drawable || (len(s.Seconds) > 0 && len(s.Seconds) == len(s.Values))
	}
	if !drawable {
		return ErrEmptyChart
	}
	return writeChart(path, func(r ChartRenderer) ([]byte, error) { return r.Time(title, yLabel, series) })
}

// WriteChart draws the memory per connection at each size: RSS alone and
// with the server's kernel socket memory.
func (r *MemReport) WriteChart(path string) error {
	var groups []string
	rss := BarSeries{Name: "RSS KiB/conn"}
	kernel := BarSeries{Name: "RSS + kernel socket KiB/conn"}
	for _, p := range r.Points {
		groups = append(groups, "N="+strconv.Itoa(p.Size))
		rss.Values = append(rss.Values, p.KiBPerConn)
		kernel.Values = append(kernel.Values, p.KernelKiBPerConn)
	}
	series := []BarSeries{rss}
	if r.HasSlab {
		series = append(series, kernel)
	}
	server := r.Target
	if r.Server != "" {
		server = r.Server + " " + r.Target
	}
	title := fmt.Sprintf("Memory per idle connection: %s, %s, MQTT %s", server, r.Transport, mqttName(r.MQTTVersion))
	return BarChart(path, title, "KiB per connection", groups, series)
}
