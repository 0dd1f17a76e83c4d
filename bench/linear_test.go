package bench

import (
	"errors"
	"math"
	"testing"
)

func TestLeastSquares(t *testing.T) {
	tests := []struct {
		name         string
		xs, ys       []float64
		slope, icept float64
		r2           float64
		linear       bool
		wantErr      error
		anyErr       bool
	}{
		{
			name:  "exact line",
			xs:    []float64{0, 2000, 5000, 15000},
			ys:    []float64{1e6, 1e6 + 2000*512, 1e6 + 5000*512, 1e6 + 15000*512},
			slope: 512, icept: 1e6, r2: 1, linear: true,
		},
		{
			name:  "noisy but linear",
			xs:    []float64{1, 2, 3, 4},
			ys:    []float64{2, 4.1, 5.9, 8},
			slope: 1.98, icept: 0.05, r2: 0.9985, linear: true,
		},
		{
			name:  "flat",
			xs:    []float64{1, 2, 3},
			ys:    []float64{7, 7, 7},
			slope: 0, icept: 7, r2: 1, linear: true,
		},
		{
			name:  "not linear",
			xs:    []float64{1, 2, 3, 4},
			ys:    []float64{1, 8, 1, 8},
			slope: 1.4, icept: 1, r2: 0.2, linear: false,
		},
		{
			name:  "shrinking is not linear growth",
			xs:    []float64{1, 2},
			ys:    []float64{2, 1},
			slope: -1, icept: 3, r2: 1, linear: false,
		},
		{name: "one point", xs: []float64{1}, ys: []float64{1}, wantErr: ErrFewPoints},
		{name: "same x", xs: []float64{3, 3}, ys: []float64{1, 2}, wantErr: ErrFewPoints},
		{name: "length mismatch", xs: []float64{1, 2}, ys: []float64{1}, anyErr: true},
	}
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-3*math.Max(1, math.Abs(b)) }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := LeastSquares(tt.xs, tt.ys)
			if tt.wantErr != nil || tt.anyErr {
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !near(f.Slope, tt.slope) || !near(f.Intercept, tt.icept) || !near(f.R2, tt.r2) {
				t.Fatalf("fit = %+v, want slope %g intercept %g r2 %g", f, tt.slope, tt.icept, tt.r2)
			}
			if f.Points != len(tt.xs) {
				t.Fatalf("points = %d", f.Points)
			}
			if got := f.Linear(0.98); got != tt.linear {
				t.Fatalf("Linear = %v, want %v", got, tt.linear)
			}
		})
	}
}
