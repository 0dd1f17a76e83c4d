package dispatch

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	d := &rules{instructBackoff: 2 * time.Second, maxBackoff: 5 * time.Minute}
	for n, want := range map[int]time.Duration{
		1: 2 * time.Second, 2: 4 * time.Second, 3: 8 * time.Second, 8: 256 * time.Second, 9: 5 * time.Minute, 40: 5 * time.Minute,
	} {
		if got := d.backoff(n); got != want {
			t.Errorf("backoff(%d) = %s, want %s", n, got, want)
		}
	}
}

// The quiet period grows with the device's other recent upgrades, at most
// to 3x, and only upgrades within 10x the base count.
func TestQuietPeriod(t *testing.T) {
	base := 30 * time.Second
	now := time.Unix(1_800_000_000, 0)
	d := &rules{epoch: now, secureIdle: base}
	ago := func(ds ...time.Duration) []stamp {
		var out []stamp
		for _, x := range ds {
			out = append(out, d.at(now.Add(-x)))
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		upgrades []stamp
		want     time.Duration
	}{
		{"came on TLS by itself", nil, base},
		{"first upgrade", ago(0), base},
		{"second within the window", ago(4*time.Minute, 0), 2 * base},
		{"third", ago(4*time.Minute+30*time.Second, 2*time.Minute, 0), 3 * base},
		{"many, capped", ago(290*time.Second, 4*time.Minute, 3*time.Minute, 2*time.Minute, 0), 3 * base},
		{"old ones do not count", ago(time.Hour, 20*time.Minute, 0), base},
	} {
		if got := d.quietPeriod(tc.upgrades, now); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	d.fixedQuiet = true
	if got := d.quietPeriod(ago(8*time.Minute, 4*time.Minute, 0), now); got != base {
		t.Errorf("fixed: %s, want %s", got, base)
	}
}
