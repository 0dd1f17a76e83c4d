package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// ErrNoConnection is returned when not one connection got a CONNACK.
var ErrNoConnection = errors.New("bench: no connection succeeded")

// ConnConfig is the `dualbench conn` run: open Fleet.Count connections, hold
// them, report.
type ConnConfig struct {
	Fleet FleetConfig
	// Hold is how long the connections are held once every one has been
	// attempted; zero holds until ctx ends (Ctrl-C, SIGTERM).
	Hold time.Duration
	// StopTimeout bounds the disconnection at the end.
	StopTimeout time.Duration
	// Progress receives progress lines while connecting; nil prints none.
	Progress io.Writer
	// Terminal rewrites one progress line in place instead of printing a
	// line per update.
	Terminal bool
}

// ConnResult is what `dualbench conn` measured.
type ConnResult struct {
	Target    string      `json:"target"`
	Transport string      `json:"transport"`
	MQTT      int         `json:"mqtt_version"`
	Requested int         `json:"requested"`
	Ramp      PoolStats   `json:"ramp"`
	Held      float64     `json:"held_seconds"`
	Result    FleetResult `json:"result"`
	// Interrupted is set when ctx ended before the run completed.
	Interrupted bool `json:"interrupted"`
}

// RunConn runs the connection benchmark and writes its summary to out.
// When ctx ends, connecting or holding stops and the connections are
// disconnected cleanly; the result then has Interrupted set.
func RunConn(ctx context.Context, cfg ConnConfig, out io.Writer, log *zap.Logger) (ConnResult, error) {
	if log == nil {
		log = zap.NewNop()
	}
	stopTimeout := cfg.StopTimeout
	if stopTimeout <= 0 {
		stopTimeout = DefaultCloseTimeout + 10*time.Second
	}
	res := ConnResult{
		Target:    cfg.Fleet.Client.Addr,
		Transport: cfg.Fleet.Client.Transport(),
		MQTT:      mqttVersionOf(cfg.Fleet.Client),
		Requested: cfg.Fleet.Count,
	}
	fleet, err := StartFleet(cfg.Fleet, log)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(out, "target        %s (MQTT %s, %s, keepalive %s)\n", res.Target, mqttName(res.MQTT), res.Transport, cfg.Fleet.Client.KeepAlive)
	fmt.Fprintf(out, "workers       %d\n", fleet.Workers())

	pr := &progressPrinter{w: cfg.Progress, terminal: cfg.Terminal, total: cfg.Fleet.Count}
	readyErr := fleet.WaitReady(ctx, pr.update)
	pr.done()
	res.Ramp = fleet.Stats()
	if readyErr == nil {
		writeRamp(out, res.Ramp, cfg.Fleet.Count)
	}

	var holdStart time.Time
	if readyErr == nil && res.Ramp.Live > 0 {
		holdStart = time.Now()
		if cfg.Hold > 0 {
			t := time.NewTimer(cfg.Hold)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		} else {
			<-ctx.Done()
		}
		res.Held = time.Since(holdStart).Seconds()
	}
	res.Interrupted = ctx.Err() != nil

	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	res.Result, err = fleet.Stop(stopCtx)
	writeConnResult(out, res)
	if readyErr != nil && ctx.Err() == nil {
		return res, readyErr
	}
	if err == nil && res.Requested > 0 && res.Result.Stats.Connected == 0 && !res.Interrupted {
		err = fmt.Errorf("%w: %d attempted, %d failed", ErrNoConnection, res.Result.Stats.Attempted, res.Result.Stats.Failed)
	}
	return res, err
}

func mqttVersionOf(s ClientSpec) int {
	if s.MQTTVersion == 0 {
		return 4
	}
	return s.MQTTVersion
}

func mqttName(v int) string {
	if v == 5 {
		return "5"
	}
	return "3.1.1"
}

// progressPrinter prints fleet progress: one line per update to a file or
// pipe, one line rewritten in place on a terminal, at most once a second.
type progressPrinter struct {
	w        io.Writer
	terminal bool
	total    int
	last     time.Time
	lastN    int64
	printed  bool
}

func (p *progressPrinter) update(s PoolStats) {
	if p.w == nil {
		return
	}
	now := time.Now()
	if !p.last.IsZero() && now.Sub(p.last) < time.Second && s.Connected+s.Failed < int64(p.total) {
		return
	}
	var perSec float64
	if !p.last.IsZero() {
		perSec = float64(s.Connected-p.lastN) / now.Sub(p.last).Seconds()
	}
	p.last, p.lastN = now, s.Connected
	line := fmt.Sprintf("connecting    %d/%d connected, %d failed, %.0f conn/s", s.Connected, p.total, s.Failed, perSec)
	if p.terminal {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
	p.printed = true
}

func (p *progressPrinter) done() {
	if p.w != nil && p.terminal && p.printed {
		fmt.Fprintln(p.w)
	}
}

func writeRamp(out io.Writer, s PoolStats, requested int) {
	fmt.Fprintf(out, "connected     %d / %d\n", s.Connected, requested)
	fmt.Fprintf(out, "connect rate  %.1f conn/s (%d in %.2f s)\n", s.ConnectRate(), s.Connected, s.RampDuration().Seconds())
	writeCounts(out, "failed       ", s.Failed, s.Failures)
}

func writeCounts(out io.Writer, label string, total int64, by map[string]int64) {
	fmt.Fprintf(out, "%s %d\n", label, total)
	for _, k := range slices.Sorted(maps.Keys(by)) {
		fmt.Fprintf(out, "  %-28s %d\n", k, by[k])
	}
}

func writeConnResult(out io.Writer, r ConnResult) {
	var b strings.Builder
	s := r.Result.Stats
	fmt.Fprintf(&b, "--- result\n")
	fmt.Fprintf(&b, "connected     %d / %d\n", s.Connected, r.Requested)
	writeCounts(&b, "failed       ", s.Failed, s.Failures)
	fmt.Fprintf(&b, "connect rate  %.1f conn/s (%d in %.2f s)\n", s.ConnectRate(), s.Connected, s.RampDuration().Seconds())
	fmt.Fprintf(&b, "CONNACK       %s\n", r.Result.Connack)
	fmt.Fprintf(&b, "connect       %s (dial to CONNACK)\n", r.Result.Connect)
	if r.Transport == "tls" {
		fmt.Fprintf(&b, "TLS handshake %s\n", r.Result.Handshake)
		fmt.Fprintf(&b, "resumed       %d\n", s.Resumed)
	}
	fmt.Fprintf(&b, "held          %.1f s\n", r.Held)
	writeCounts(&b, "dropped      ", s.Dropped, s.Drops)
	fmt.Fprintf(&b, "pings         %d sent, %d answered\n", s.PingsSent, s.Pongs)
	if r.Interrupted {
		fmt.Fprintf(&b, "interrupted   yes\n")
	}
	_, _ = io.WriteString(out, b.String())
}
