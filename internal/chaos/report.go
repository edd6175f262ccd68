package chaos

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgbaton/pgbaton/internal/history"
)

// Report is the outcome of a run.
type Report struct {
	Options Options
	Elapsed time.Duration
	Result  *history.Result
	History *history.History
	Notes   []string
	// Unsupported lists fault kinds this machine cannot inject (the
	// partitions need a packet filter).
	Unsupported []string
}

// WorstDetection is the longest time any holder took to be told of a loss,
// over every fault kind (from the thaw for frozen holders).
func (r *Report) WorstDetection() (time.Duration, string) {
	var worst time.Duration
	kind := ""
	for k, fs := range r.Result.Faults {
		if d := fs.Detection.Max(); d > worst && k != history.Stall {
			worst, kind = d, k
		}
	}
	return worst, kind
}

// Table renders the results as Markdown.
func (r *Report) Table() string {
	res := r.Result
	o := r.Options
	var b strings.Builder
	row := func(k string, format string, args ...any) {
		fmt.Fprintf(&b, "| %s | %s |\n", k, fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(&b, "| figure | value |\n|---|---|\n")
	row("run", "%d worker processes × %d goroutines, %d keys, mode %s%s, %s", o.Workers, o.Goroutines, o.Keys, o.Mode,
		map[bool]string{true: " (unfenced)", false: ""}[o.Unfenced], r.Elapsed.Round(time.Second))
	row("acquisitions", "%d (%.0f/s)", res.Leases, float64(res.Leases)/r.Elapsed.Seconds())
	nf := 0
	for k, fs := range res.Faults {
		if k != history.Stall {
			nf += fs.Count
		}
	}
	row("faults injected", "%d", nf)
	row("losses reported", "%d (heartbeat timeouts %d, not explained by a fault %d)", res.Lost, res.HeartbeatLosses, res.UnexplainedLosses)
	row("leases ended by process death", "%d", res.Crashed)
	row("overlaps", "%d (excused: holder hit by a fault and not yet told %d; violations %d)", res.Overlaps, res.ExcusedOverlaps,
		res.Count(history.CheckOverlap)+res.Count(history.CheckActedAfterLoss))
	row("fenced writes accepted", "%d", res.WritesAccepted)
	row("stale writes attempted and rejected", "%d", res.StaleRejected)
	row("**stale writes accepted**", "**%d**", res.StaleAccepted)
	row("unreported losses", "%d", res.Count(history.CheckUnreported))
	row("token order violations", "%d", res.Count(history.CheckTokenOrder))
	row("calls (failed, of which panics)", "%d (%d, %d)", res.Calls, res.FailedCalls, res.Panics)
	row("**calls over their bound**", "**%d**", res.Count(history.CheckCallBound))
	row("**failed calls that left their key locked**", "**%d**", res.Count(history.CheckErrorLeftHeld))
	row("quiet points (end of run included)", "%d", res.QuietPoints)
	row("**locks held at a quiet point**", "**%d**", res.Count(history.CheckLeakedLock))
	if st := res.Faults[history.Stall]; st != nil {
		row("stalls observed by workers (≥200ms without running)", "%d", st.Count)
	}
	w, wk := r.WorstDetection()
	row("worst loss-detection time", "%s (%s)", w.Round(time.Millisecond), wk)
	row("verdict", "%s", res.Summary())

	fmt.Fprintf(&b, "\n| fault | injected | leases hit | lost or died | detection p50 | detection max | next grant p50 | next grant max |\n|---|---|---|---|---|---|---|---|\n")
	for _, k := range append(append([]string(nil), AllFaults...), FaultLockerClose) {
		fs := res.Faults[k]
		if fs == nil {
			continue
		}
		ms := func(d time.Duration) string {
			if d == 0 {
				return "–"
			}
			return d.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %s | %s | %s |\n", k, fs.Count, fs.Leases, fs.Lost,
			ms(fs.Detection.Quantile(0.5)), ms(fs.Detection.Max()), ms(fs.Release.Quantile(0.5)), ms(fs.Release.Max()))
	}
	return b.String()
}

// Violations lists up to n violations, one per line.
func (r *Report) Violations(n int) string {
	var b strings.Builder
	for i, v := range r.Result.Violations {
		if i >= n {
			fmt.Fprintf(&b, "... and %d more\n", len(r.Result.Violations)-n)
			break
		}
		b.WriteString(v.String() + "\n")
	}
	return b.String()
}
