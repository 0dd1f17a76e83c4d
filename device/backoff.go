package device

import "time"

// bound is the longest wait before attempt n (from 0): Initial x 2^n, at
// most Max.
func (b Backoff) bound(n int) time.Duration {
	d := b.Initial
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// delay draws the wait before attempt n uniformly from [0, bound(n)];
// randN(k) returns a number in [0, k).
func (b Backoff) delay(n int, randN func(int64) int64) time.Duration {
	return time.Duration(randN(int64(b.bound(n)) + 1))
}
