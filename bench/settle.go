package bench

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SettleConfig says when a reading (a server's RSS) counts as settled.
type SettleConfig struct {
	// Interval is the time between samples.
	Interval time.Duration
	// Samples is how many consecutive samples must agree.
	Samples int
	// Tolerance is the largest spread of those samples, as a fraction of
	// the largest (0.01: within 1%).
	Tolerance float64
	// Timeout bounds the wait; the last sample is used when it expires.
	Timeout time.Duration
}

// DefaultSettle is 3 samples 1 s apart within 1%, waiting at most 30 s.
func DefaultSettle() SettleConfig {
	return SettleConfig{Interval: time.Second, Samples: 3, Tolerance: 0.01, Timeout: 30 * time.Second}
}

func (c SettleConfig) withDefaults() SettleConfig {
	d := DefaultSettle()
	if c.Interval <= 0 {
		c.Interval = d.Interval
	}
	if c.Samples <= 0 {
		c.Samples = d.Samples
	}
	if c.Tolerance <= 0 {
		c.Tolerance = d.Tolerance
	}
	if c.Timeout <= 0 {
		c.Timeout = d.Timeout
	}
	return c
}

// WaitSettled samples read until Samples consecutive values are within
// Tolerance of each other or Timeout expires. It returns the last value and
// whether it settled.
func WaitSettled(ctx context.Context, cfg SettleConfig, read func() (int64, error)) (int64, bool, error) {
	cfg = cfg.withDefaults()
	deadline := time.Now().Add(cfg.Timeout)
	window := make([]int64, 0, cfg.Samples)
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		v, err := read()
		if err != nil {
			return 0, false, fmt.Errorf("bench: settle: %w", err)
		}
		if len(window) == cfg.Samples {
			copy(window, window[1:])
			window = window[:cfg.Samples-1]
		}
		window = append(window, v)
		if len(window) == cfg.Samples && spread(window) <= cfg.Tolerance {
			return v, true, nil
		}
		if !time.Now().Before(deadline) {
			return v, false, nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return v, false, fmt.Errorf("bench: settle: %w", ctx.Err())
		}
	}
}

// spread is (max-min)/max of vs; 0 for an all-zero window.
func spread(vs []int64) float64 {
	lo, hi := vs[0], vs[0]
	for _, v := range vs[1:] {
		lo, hi = min(lo, v), max(hi, v)
	}
	if hi == 0 {
		return 0
	}
	return float64(hi-lo) / float64(hi)
}

// errNoProcess is returned when the measured process is gone.
var errNoProcess = errors.New("bench: target process is gone")
