package periodic_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

// TestClusterExactlyOnce runs four jobs at a one-second cadence on three
// scheduler processes whose clocks are skewed by -3s, 0 and +4s (the last
// one also drifting 1% fast), kills the instance running the slow job in
// the middle of a run, kills all three for six intervals, and restarts
// them, for at least 70 ticks per job. Then, from the database alone:
//
//   - every tick from the first to the last has exactly one row (a run, or
//     a skipped or missed range), with no gap and no overlap;
//   - no tick's function ran twice (the executions ledger);
//   - the outage's ticks were recorded as the jobs' policies say (skip,
//     run once, backfill within a window);
//   - no run started before its tick fired in database time, although one
//     clock was four seconds ahead;
//   - the slow job never overlapped itself, and its overlapping ticks were
//     recorded as skipped; the killed run was recorded as abandoned;
//   - graceful stops left no running row.
func TestClusterExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(executionsDDL)
	const interval = time.Second
	jobs := []string{"tx-skip", "lease-once", "lease-backfill", "slow-forbid"}
	specs := []childSpec{
		{Instance: "a", Skew: -3 * time.Second},
		{Instance: "b"},
		{Instance: "c", Skew: 4 * time.Second, Drift: 0.01},
	}
	for i := range specs {
		specs[i].DSN, specs[i].Interval, specs[i].Jobs = e.dsn, interval, jobs
	}
	children := make([]*child, len(specs))
	for i := range specs {
		children[i] = startChild(t, specs[i])
	}
	succeeded := func() int64 {
		return e.queryInt("SELECT count(*) FROM pgbaton.periodic_runs WHERE job = 'tx-skip' AND status = 'succeeded'")
	}
	ctx := context.Background()

	// Ten ticks with all three up.
	waitFor(t, "10 runs of tx-skip", 40*time.Second, func() bool { return succeeded() >= 10 })

	// Kill the instance running slow-forbid, mid-run, and restart it later.
	var victim string
	waitFor(t, "a running slow-forbid run", 20*time.Second, func() bool {
		return e.pool.QueryRow(ctx, "SELECT instance FROM pgbaton.periodic_runs WHERE job = 'slow-forbid' AND status = 'running'").Scan(&victim) == nil
	})
	vi := slices.IndexFunc(specs, func(s childSpec) bool { return s.Instance == victim })
	children[vi].kill()
	n := succeeded()
	waitFor(t, "5 runs without the killed instance", 30*time.Second, func() bool { return succeeded() >= n+5 })
	children[vi] = startChild(t, specs[vi])
	n = succeeded()
	waitFor(t, "5 runs after its restart", 30*time.Second, func() bool { return succeeded() >= n+5 })

	// Everything down for six intervals.
	for _, c := range children {
		c.kill()
	}
	outage := e.dbNow()
	waitFor(t, "six intervals of outage", 30*time.Second, func() bool { return e.dbNow().Sub(outage) >= 6*interval })
	for i := range specs {
		children[i] = startChild(t, specs[i])
	}
	restarted := e.dbNow()

	// Until every job's history spans 70 intervals.
	waitFor(t, "70 intervals of history", 120*time.Second, func() bool {
		return e.queryInt(`SELECT count(*) FROM (SELECT job FROM pgbaton.periodic_runs GROUP BY job
			HAVING max(through_tick) - min(tick) >= interval '70 seconds') x`) == int64(len(jobs))
	})
	for _, c := range children {
		if err := c.stop(20 * time.Second); err != nil {
			t.Errorf("graceful stop of %s: %v", c.spec.Instance, err)
		}
	}

	every := periodic.Every(interval)
	schedules := map[string]periodic.Schedule{"tx-skip": every, "lease-once": every.Jitter(interval / 4), "lease-backfill": every, "slow-forbid": every}
	ranBy := map[string]int{}
	for _, job := range jobs {
		rows := e.runs(job)
		st := checkCoverage(t, job, schedules[job], rows)
		t.Logf("%s: %d ticks: %v", job, st.ticks, st.byStatus)
		if st.ticks < 60 {
			t.Errorf("%s: %d ticks recorded, want at least 60", job, st.ticks)
		}
		for _, r := range rows {
			if r.Started != nil {
				ranBy[r.Instance]++
				if fire := periodic.FireAt(schedules[job], job, r.Tick); r.Started.Before(fire) {
					t.Errorf("%s@%s started at %s, before it fired at %s (instance %s)", job, fmtT(r.Tick), fmtT(*r.Started), fmtT(fire), r.Instance)
				}
			}
		}
		checkExecutions(t, e, job, rows)
		checkOutage(t, job, rows, outage, restarted)
	}
	for _, s := range specs {
		if ranBy[s.Instance] == 0 {
			t.Errorf("instance %s (clock skew %s) ran no tick", s.Instance, s.Skew)
		}
	}
	t.Logf("runs per instance: %v", ranBy)

	slow := e.runs("slow-forbid")
	if !slices.ContainsFunc(slow, func(r runRow) bool { return r.Status == "abandoned" && r.Instance == victim }) {
		t.Errorf("slow-forbid: the run killed on %s was not recorded as abandoned", victim)
	}
	if !slices.ContainsFunc(slow, func(r runRow) bool { return r.Status == "skipped" && r.Kind == "overlap" }) {
		t.Errorf("slow-forbid: no tick was recorded as skipped for overlap, though runs last 2.5 intervals")
	}
	// No overlap: each run of slow-forbid started after the previous one
	// finished (killed runs have no end and are left out).
	var spans [][2]time.Time
	rows, err := e.pool.Query(ctx, "SELECT started, finished FROM executions WHERE job = 'slow-forbid' AND finished IS NOT NULL ORDER BY started")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a, b time.Time
		if err := rows.Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		spans = append(spans, [2]time.Time{a, b})
	}
	rows.Close()
	for i := 1; i < len(spans); i++ {
		if spans[i][0].Before(spans[i-1][1]) {
			t.Errorf("slow-forbid overlapped: a run started at %s before the previous one finished at %s", fmtT(spans[i][0]), fmtT(spans[i-1][1]))
		}
	}
	if len(spans) < 10 {
		t.Errorf("slow-forbid completed only %d runs", len(spans))
	}
}

type coverage struct {
	ticks    int64
	byStatus map[string]int64
}

// checkCoverage checks that rows cover every tick from the first to the
// last exactly once, and that no row is left running.
func checkCoverage(t *testing.T, job string, s periodic.Schedule, rows []runRow) coverage {
	t.Helper()
	c := coverage{byStatus: map[string]int64{}}
	if len(rows) == 0 {
		t.Errorf("%s: no runs recorded", job)
		return c
	}
	want := rows[0].Tick
	for _, r := range rows {
		if !r.Tick.Equal(want) {
			t.Errorf("%s: row at %s, want the next row at %s (gap or overlap)", job, fmtT(r.Tick), fmtT(want))
		}
		n := int64(0)
		for x := r.Tick; !x.After(r.Through); x = s.Next(x) {
			n++
		}
		if n != r.Ticks {
			t.Errorf("%s: row %s..%s says %d ticks, the schedule has %d", job, fmtT(r.Tick), fmtT(r.Through), r.Ticks, n)
		}
		if r.Status == "running" {
			t.Errorf("%s@%s still running after every instance stopped", job, fmtT(r.Tick))
		}
		c.ticks += r.Ticks
		c.byStatus[r.Status] += r.Ticks
		want = s.Next(r.Through)
	}
	return c
}

// checkExecutions checks that no tick's function ran twice, and that the
// ledger agrees with the runs table.
func checkExecutions(t *testing.T, e *env, job string, rows []runRow) {
	t.Helper()
	ctx := context.Background()
	if d := e.queryInt("SELECT count(*) FROM (SELECT tick FROM executions WHERE job = $1 GROUP BY tick HAVING count(*) > 1) x", job); d != 0 {
		t.Errorf("%s: %d ticks executed more than once", job, d)
	}
	type exec struct {
		instance string
		token    int64
		finished bool
	}
	execs := map[int64]exec{}
	r, err := e.pool.Query(ctx, "SELECT tick, instance, token, finished IS NOT NULL FROM executions WHERE job = $1", job)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var tick time.Time
		var x exec
		if err := r.Scan(&tick, &x.instance, &x.token, &x.finished); err != nil {
			t.Fatal(err)
		}
		execs[tick.UnixMicro()] = x
	}
	r.Close()
	byTick := map[int64]runRow{}
	for _, row := range rows {
		byTick[row.Tick.UnixMicro()] = row
	}
	for tick, x := range execs {
		row, ok := byTick[tick]
		switch {
		case !ok:
			t.Errorf("%s: tick %s executed but has no run row", job, fmtT(time.UnixMicro(tick)))
		case row.Started == nil:
			t.Errorf("%s@%s executed but recorded as %s", job, fmtT(row.Tick), row.Status)
		case row.Instance != x.instance || row.Token == nil || *row.Token != x.token:
			t.Errorf("%s@%s executed by %s (token %d) but claimed by %s (token %v)", job, fmtT(row.Tick), x.instance, x.token, row.Instance, row.Token)
		}
	}
	for _, row := range rows {
		x, ok := execs[row.Tick.UnixMicro()]
		if row.Status == "succeeded" && (!ok || !x.finished) {
			t.Errorf("%s@%s recorded succeeded but its function did not complete", job, fmtT(row.Tick))
		}
		if job == "tx-skip" && row.Status != "succeeded" && ok {
			t.Errorf("%s@%s is %s but its transaction's write committed", job, fmtT(row.Tick), row.Status)
		}
	}
}

// checkOutage checks what the ticks that fired while every instance was
// down became, per the job's missed-run policy.
func checkOutage(t *testing.T, job string, rows []runRow, down, up time.Time) {
	t.Helper()
	i := slices.IndexFunc(rows, func(r runRow) bool {
		return r.Status == "missed" && !r.Through.Before(down) && !r.Tick.After(up)
	})
	if i < 0 {
		t.Errorf("%s: no missed range recorded for the outage %s..%s", job, fmtT(down), fmtT(up))
		return
	}
	missed := rows[i]
	var after []runRow
	for _, r := range rows[i+1:] {
		if r.Started == nil {
			break
		}
		after = append(after, r)
	}
	firstKind := "none"
	if len(after) > 0 {
		firstKind = after[0].Kind
	}
	t.Logf("%s: outage: %d ticks missed (%s..%s), then %d runs (the first %s) before the next skip or miss",
		job, missed.Ticks, fmtT(missed.Tick), fmtT(missed.Through), len(after), firstKind)
	kinds := func(rs []runRow) (late, backfill int) {
		for _, r := range rs {
			switch r.Kind {
			case "late":
				late++
			case "backfill":
				backfill++
			}
		}
		return
	}
	late, backfill := kinds(after)
	switch job {
	case "tx-skip", "slow-forbid": // MissedSkip: no late run at all
		if missed.Ticks < 4 {
			t.Errorf("%s: the outage's missed range has %d ticks, want at least 4", job, missed.Ticks)
		}
		if l, b := kinds(rows); l+b != 0 {
			t.Errorf("%s: MissedSkip ran %d late and %d backfill runs", job, l, b)
		}
	case "lease-once": // MissedRunOnce: at most one late run, right after the range
		if missed.Ticks < 4 {
			t.Errorf("%s: the outage's missed range has %d ticks, want at least 4", job, missed.Ticks)
		}
		if len(after) == 0 {
			t.Errorf("%s: nothing ran right after the outage's missed range", job)
		} else if late > 1 || (late == 1 && after[0].Kind != "late") {
			t.Errorf("%s: MissedRunOnce: late runs after the outage: %d, first run kind %s", job, late, after[0].Kind)
		}
	case "lease-backfill": // MissedBackfill(3 intervals): the newest outage ticks run late
		if backfill < 2 {
			t.Errorf("%s: %d backfill runs after the outage, want at least 2", job, backfill)
		}
		for _, r := range after {
			if r.Kind == "backfill" && r.Started.Sub(r.Tick) > 3*time.Second+500*time.Millisecond {
				t.Errorf("%s@%s backfilled at %s, outside the 3s window", job, fmtT(r.Tick), fmtT(*r.Started))
			}
		}
	}
}

func (e *env) dbNow() time.Time {
	e.t.Helper()
	var now time.Time
	if err := e.pool.QueryRow(context.Background(), "SELECT clock_timestamp()").Scan(&now); err != nil {
		e.t.Fatal(err)
	}
	return now
}

func fmtT(t time.Time) string { return t.UTC().Format("15:04:05.000000") }
