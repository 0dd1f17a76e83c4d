package chart

import (
	"bytes"
	"errors"
	"image/png"
	"testing"
	"time"

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
