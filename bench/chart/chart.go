// Package chart draws dualbench's charts with gonum/plot. Importing it
// registers it with package bench (bench.RegisterCharts), the way image
// decoders register with package image: the plotting code and its fonts
// (~5 MB) are linked only into programs that draw. Legends sit in a strip
// below the plotted area, never over the data.
package chart

import (
	"bytes"
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/dualgate/dualgate/bench"
)

func init() { bench.RegisterCharts(Renderer{}) }

// Chart size.
const (
	chartWidth  = 8 * vg.Inch
	chartHeight = 4.5 * vg.Inch
)

// Renderer draws charts as PNG images.
type Renderer struct{}

// Bar draws grouped bars, one group per name in groups, one bar per series
// in each group.
func (Renderer) Bar(title, yLabel string, groups []string, series []bench.BarSeries) ([]byte, error) {
	if len(groups) == 0 || len(series) == 0 {
		return nil, bench.ErrEmptyChart
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = yLabel
	p.Legend.Top = true
	p.Legend.Left = true
	p.Y.Min = 0
	width := vg.Points(min(40, 300/float64(len(groups)*len(series))))
	top := 0.0
	for i, s := range series {
		if len(s.Values) != len(groups) {
			return nil, fmt.Errorf("chart %q: series %q has %d values for %d groups", title, s.Name, len(s.Values), len(groups))
		}
		for _, v := range s.Values {
			top = max(top, v)
		}
		bars, err := plotter.NewBarChart(plotter.Values(s.Values), width)
		if err != nil {
			return nil, fmt.Errorf("chart %q: %w", title, err)
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(bars)
		p.Legend.Add(s.Name, bars)
	}
	p.NominalX(groups...)
	p.Y.Max = top * 1.05
	p.Add(plotter.NewGrid())
	return encodePNG(p)
}

// Latency draws latency distributions, latency against percentile on a
// scale that spreads the tail (50%, 90%, 99%, 99.9% equally apart).
func (Renderer) Latency(title string, series []bench.LatencySeries) ([]byte, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms)"
	p.X.Scale = plot.LogScale{}
	p.Legend.Top = true
	p.Legend.Left = true
	p.X.Tick.Marker = plot.ConstantTicks([]plot.Tick{
		{Value: tailX(0), Label: "0%"}, {Value: tailX(50), Label: "50%"}, {Value: tailX(90), Label: "90%"},
		{Value: tailX(99), Label: "99%"}, {Value: tailX(99.9), Label: "99.9%"}, {Value: tailX(100), Label: "max"},
	})
	drawn := 0
	for i, s := range series {
		var xys plotter.XYs
		for _, q := range s.Quantiles {
			xys = append(xys, plotter.XY{X: tailX(q.Percentile), Y: float64(q.Value) / 1e6})
		}
		if len(xys) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, fmt.Errorf("chart %q: %w", title, err)
		}
		line.Color = plotutil.Color(i)
		points.Color = plotutil.Color(i)
		p.Add(line, points)
		p.Legend.Add(s.Name, line, points)
		drawn++
	}
	if drawn == 0 {
		return nil, bench.ErrEmptyChart
	}
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return encodePNG(p)
}

// tailX maps a percentile to 1/(1-p), capped at 99.99 (the maximum).
func tailX(percentile float64) float64 {
	return 1 / (1 - math.Min(percentile, 99.99)/100)
}

// Time draws values over time.
func (Renderer) Time(title, yLabel string, series []bench.TimeSeries) ([]byte, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = yLabel
	p.Legend.Top = true
	drawn := 0
	for i, s := range series {
		if len(s.Seconds) == 0 || len(s.Seconds) != len(s.Values) {
			continue
		}
		xys := make(plotter.XYs, len(s.Seconds))
		for j := range s.Seconds {
			xys[j] = plotter.XY{X: s.Seconds[j], Y: s.Values[j]}
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return nil, fmt.Errorf("chart %q: %w", title, err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(s.Name, line)
		drawn++
	}
	if drawn == 0 {
		return nil, bench.ErrEmptyChart
	}
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return encodePNG(p)
}

// encodePNG draws p with its legend in a strip below the plotted area,
// never over the data, and encodes it as PNG.
func encodePNG(p *plot.Plot) ([]byte, error) {
	img := vgimg.New(chartWidth, chartHeight)
	dc := draw.New(img)
	legend := p.Legend
	p.Legend = plot.NewLegend() // p.Draw would put the legend over the data
	legend.Top, legend.Left = true, true
	strip := vg.Length(0)
	if r := legend.Rectangle(dc); r.Max.Y > r.Min.Y {
		strip = r.Max.Y - r.Min.Y + legendGap
	}
	p.Draw(draw.Crop(dc, 0, 0, strip, 0))
	if strip > 0 {
		legend.XOffs = legendGap
		legend.Draw(draw.Crop(dc, 0, 0, 0, -(chartHeight - strip + legendGap/2)))
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("chart: %w", err)
	}
	return buf.Bytes(), nil
}

// legendGap separates the legend from the plot and the image's edge.
const legendGap = 6 * vg.Millimeter
