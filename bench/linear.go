package bench

import (
	"errors"
	"fmt"
	"math"
)

// ErrFewPoints is returned by LeastSquares for fewer than two distinct x.
var ErrFewPoints = errors.New("bench: least squares needs two distinct x values")

// Fit is a least-squares line y = Slope*x + Intercept.
type Fit struct {
	Slope     float64 `json:"slope"`
	Intercept float64 `json:"intercept"`
	// R2 is the coefficient of determination, 1 for a perfect line. It is
	// 1 as well when every y is the same (nothing to explain).
	R2 float64 `json:"r2"`
	// Points is the number of points fitted.
	Points int `json:"points"`
}

// LeastSquares fits a line through the points (xs[i], ys[i]).
func LeastSquares(xs, ys []float64) (Fit, error) {
	if len(xs) != len(ys) {
		return Fit{}, fmt.Errorf("bench: least squares: %d x values, %d y values", len(xs), len(ys))
	}
	n := float64(len(xs))
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	if len(xs) < 2 {
		return Fit{}, ErrFewPoints
	}
	mx /= n
	my /= n
	var sxx, sxy, syy float64
	for i := range xs {
		dx, dy := xs[i]-mx, ys[i]-my
		sxx += dx * dx
		sxy += dx * dy
		syy += dy * dy
	}
	if sxx == 0 {
		return Fit{}, ErrFewPoints
	}
	f := Fit{Slope: sxy / sxx, Points: len(xs)}
	f.Intercept = my - f.Slope*mx
	if syy == 0 {
		f.R2 = 1
		return f, nil
	}
	var ssRes float64
	for i := range xs {
		r := ys[i] - (f.Slope*xs[i] + f.Intercept)
		ssRes += r * r
	}
	f.R2 = math.Max(0, 1-ssRes/syy)
	return f, nil
}

// Linear reports whether the fit explains the points at least as well as
// minR2 and has a non-negative slope.
func (f Fit) Linear(minR2 float64) bool {
	return f.Points >= 2 && f.R2 >= minR2 && f.Slope >= 0
}
