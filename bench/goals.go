package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// The goals dualgate is measured against. They are benchmarks, not tests:
// a report says whether each was met.
const (
	// GoalPlainKiB is the RSS per idle plain connection on dualgate.
	GoalPlainKiB = 0.6
	// GoalTLSKiB is the RSS per idle TLS connection on dualgate.
	GoalTLSKiB = 16.0
	// GoalFleetVsTLS is how many times less gateway memory a fleet with a
	// few devices on TLS needs than the same fleet all on TLS through
	// dualgate; GoalFleetVsPeer the same against a peer broker all on TLS.
	GoalFleetVsTLS  = 20.0
	GoalFleetVsPeer = 15.0
	// GoalResumedCycleBytes is the most bytes on the wire of one upgrade
	// cycle with session resumption; GoalResumedCycleBytesHybrid the same
	// with a post-quantum hybrid key exchange (X25519MLKEM768), whose key
	// shares alone weigh ~2.3 KB (ResumedCycleGoal).
	GoalResumedCycleBytes       = 2500
	GoalResumedCycleBytesHybrid = 4500
	// GoalOneDeviceP99 is the p99 of secure command latency through the
	// upgrade for one device.
	GoalOneDeviceP99 = 20 * time.Millisecond
	// GoalBurstDevices devices sent a secure command at once must all have
	// it within GoalBurstWithin.
	GoalBurstDevices = 1000
	GoalBurstWithin  = 1500 * time.Millisecond
)

// ResumedCycleGoal is the goal of a resumed upgrade cycle whose TLS
// session used key exchange group (a tls.CurveID's name).
func ResumedCycleGoal(group string) float64 {
	if strings.Contains(group, "MLKEM") {
		return GoalResumedCycleBytesHybrid
	}
	return GoalResumedCycleBytes
}

// Goal is one goal with the figure measured against it.
type Goal struct {
	Name string `json:"name"`
	// Target and Measured are for people, e.g. "≤ 0.6 KiB/conn".
	Target   string `json:"target"`
	Measured string `json:"measured"`
	// Value is met when it is at most Limit (AtMost) or at least Limit.
	Value  float64 `json:"value"`
	Limit  float64 `json:"limit"`
	AtMost bool    `json:"at_most"`
	Met    bool    `json:"met"`
	// Note says how the figure was taken, when that matters.
	Note string `json:"note,omitempty"`
}

// atMost is a goal met when value ≤ limit; format prints both.
func atMost(name string, value, limit float64, format string) Goal {
	return Goal{
		Name: name, Value: value, Limit: limit, AtMost: true, Met: value <= limit,
		Target: "≤ " + fmt.Sprintf(format, limit), Measured: fmt.Sprintf(format, value),
	}
}

// atLeast is a goal met when value ≥ limit.
func atLeast(name string, value, limit float64, format string) Goal {
	return Goal{
		Name: name, Value: value, Limit: limit, Met: value >= limit,
		Target: "≥ " + fmt.Sprintf(format, limit), Measured: fmt.Sprintf(format, value),
	}
}

// metMissed is the verdict of a goal.
func metMissed(met bool) string {
	if met {
		return "met"
	}
	return "missed"
}

// writeGoalsMarkdown renders goals as a Markdown section.
func writeGoalsMarkdown(b *strings.Builder, goals []Goal) {
	if len(goals) == 0 {
		return
	}
	fmt.Fprintf(b, "\n## Goals\n\n")
	fmt.Fprintf(b, "Benchmarks, not pass/fail tests.\n\n")
	fmt.Fprintf(b, "| goal | target | measured | |\n|---|---|---|---|\n")
	for _, g := range goals {
		measured := g.Measured
		if g.Note != "" {
			measured += " (" + g.Note + ")"
		}
		fmt.Fprintf(b, "| %s | %s | %s | **%s** |\n", g.Name, g.Target, measured, metMissed(g.Met))
	}
}

// writeGoalsText prints goals as plain lines.
func writeGoalsText(w io.Writer, goals []Goal) {
	for _, g := range goals {
		fmt.Fprintf(w, "goal          %s: %s, measured %s: %s\n", g.Name, g.Target, g.Measured, metMissed(g.Met))
	}
}

// writeNotesMarkdown ends a report with its notes, if it has any.
func writeNotesMarkdown(b *strings.Builder, notes []string) {
	if len(notes) == 0 {
		return
	}
	fmt.Fprintf(b, "\n## Notes\n\n")
	for _, n := range notes {
		fmt.Fprintf(b, "- %s\n", n)
	}
}
