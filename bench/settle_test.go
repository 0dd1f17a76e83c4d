package bench

import (
	"context"
	"errors"
	"testing"
	"time"
)

// seq returns a reader that yields vs in turn and then repeats the last.
func seq(vs ...int64) func() (int64, error) {
	i := 0
	return func() (int64, error) {
		v := vs[min(i, len(vs)-1)]
		i++
		return v, nil
	}
}

func TestWaitSettled(t *testing.T) {
	fast := SettleConfig{Interval: time.Millisecond, Samples: 3, Tolerance: 0.01, Timeout: time.Second}
	tests := []struct {
		name        string
		cfg         SettleConfig
		read        func() (int64, error)
		want        int64
		wantSettled bool
	}{
		{name: "already steady", cfg: fast, read: seq(1000), want: 1000, wantSettled: true},
		{name: "settles after growth", cfg: fast, read: seq(100, 500, 900, 1000, 1005, 1003), want: 1003, wantSettled: true},
		{name: "within 1%", cfg: fast, read: seq(1000, 1009, 995), want: 995, wantSettled: true},
		{
			name: "keeps growing until the timeout",
			cfg:  SettleConfig{Interval: time.Millisecond, Samples: 3, Tolerance: 0.01, Timeout: 30 * time.Millisecond},
			read: func() func() (int64, error) {
				v := int64(1000)
				return func() (int64, error) { v += 100; return v, nil }
			}(),
			wantSettled: false,
		},
		{name: "zero is steady", cfg: fast, read: seq(0), want: 0, wantSettled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, settled, err := WaitSettled(context.Background(), tt.cfg, tt.read)
			if err != nil {
				t.Fatal(err)
			}
			if settled != tt.wantSettled || (tt.wantSettled && got != tt.want) {
				t.Fatalf("WaitSettled = %d, %v; want %d, %v", got, settled, tt.want, tt.wantSettled)
			}
		})
	}
}

func TestWaitSettledErrors(t *testing.T) {
	boom := errors.New("boom")
	_, _, err := WaitSettled(context.Background(), SettleConfig{Interval: time.Millisecond}, func() (int64, error) { return 0, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v := int64(0)
	_, _, err = WaitSettled(ctx, SettleConfig{Interval: time.Millisecond}, func() (int64, error) { v += 1000; return v, nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestSettleDefaults(t *testing.T) {
	if got := (SettleConfig{}).withDefaults(); got != DefaultSettle() {
		t.Fatalf("defaults = %+v", got)
	}
	d := DefaultSettle()
	if d.Interval != time.Second || d.Samples != 3 || d.Tolerance != 0.01 {
		t.Fatalf("DefaultSettle = %+v", d)
	}
}
