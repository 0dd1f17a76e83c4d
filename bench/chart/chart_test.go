package chart

import (
	"bytes"
	"errors"
	"image/png"
	"testing"
	"time"

	"gonum.org/v1/plot/plotutil"

	"github.com/dualgate/dualgate/bench"
)

func TestRendererDrawsPNGs(t *testing.T) {
	var r Renderer
	lat := []bench.Quantile{{Percentile: 50, Value: 3 * time.Millisecond}, {Percentile: 99, Value: 9 * time.Millisecond}, {Percentile: 100, Value: 12 * time.Millisecond}}
	cases := map[string]func() ([]byte, error){
		"bar": func() ([]byte, error) {
			return r.Bar("memory", "KiB", []string{"plain", "tls"}, []bench.BarSeries{{Name: "RSS", Values: []float64{0.5, 14}}})
		},
		"latency": func() ([]byte, error) {
			return r.Latency("latency", []bench.LatencySeries{{Name: "POST to PUBACK", Quantiles: lat}, {Name: "empty"}})
		},
		"time": func() ([]byte, error) {
			return r.Time("sessions", "devices", []bench.TimeSeries{{Name: "tls", Seconds: []float64{0, 1, 2}, Values: []float64{0, 150, 0}}})
		},
	}
	for name, draw := range cases {
		raw, err := draw()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		img, err := png.Decode(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: not a PNG: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 200 {
			t.Fatalf("%s: %v image", name, b)
		}
	}
	if _, err := r.Time("t", "y", []bench.TimeSeries{{Name: "odd", Seconds: []float64{1}}}); !errors.Is(err, bench.ErrEmptyChart) {
		t.Fatalf("a chart with no drawable series: %v", err)
	}
}

// The legend sits in a strip under the plot: its swatch is the only thing
// drawn in the series' colour below the x axis's title.
func TestLegendBelowTheData(t *testing.T) {
	var r Renderer
	raw, err := r.Time("t", "y", []bench.TimeSeries{{Name: "series", Seconds: []float64{0, 1, 2}, Values: []float64{5, 5, 5}}})
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := plotutil.Color(0)
	wr, wg, wb, _ := want.RGBA()
	b := img.Bounds()
	rowsWith := func(y0, y1 int) int {
		n := 0
		for y := y0; y < y1; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				r, g, bl, _ := img.At(x, y).RGBA()
				if r == wr && g == wg && bl == wb {
					n++
					break
				}
			}
		}
		return n
	}
	if rowsWith(b.Max.Y-b.Dy()/10, b.Max.Y) == 0 {
		t.Fatal("no legend swatch in the bottom tenth of the image")
	}
	// The constant series draws one line across the middle; with the
	// legend at the top-left of the plot area, its swatch would add rows
	// near the top.
	if n := rowsWith(b.Min.Y, b.Min.Y+b.Dy()/4); n != 0 {
		t.Fatalf("%d rows of the series colour in the top quarter", n)
	}
}
