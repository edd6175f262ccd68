package periodic_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
)

// TestMissedPolicies: after ten hourly ticks passed with no instance up
// (the cursor is set ten hours back), each policy records and runs what it
// says, at the first claim.
func TestMissedPolicies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, job := range []string{"skip", "once", "backfill"} {
		e.exec(`INSERT INTO pgbaton.periodic_jobs (job, schedule, floor_tick, last_tick)
			VALUES ($1, 'every 1h', date_trunc('hour', now()) - interval '1 day', date_trunc('hour', now()) - interval '10 hours')`, job)
	}
	hour := e.dbNow().Truncate(time.Hour)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	var mu sync.Mutex
	ran := map[string][]periodic.Run{}
	rec := func(ctx context.Context, r periodic.Run) error {
		mu.Lock()
		ran[r.Job] = append(ran[r.Job], r)
		mu.Unlock()
		return nil
	}
	for _, j := range []periodic.Job{
		{Name: "skip", Missed: periodic.MissedSkip},
		{Name: "once", Missed: periodic.MissedRunOnce},
		{Name: "backfill", Missed: periodic.MissedBackfill(3 * time.Hour)},
	} {
		j.Schedule, j.Run, j.StartDeadline = periodic.Every(time.Hour), rec, time.Millisecond
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	evs.wait(t, "skip", periodic.EventMissed, 10*time.Second)
	evs.wait(t, "once", periodic.EventSucceeded, 10*time.Second)
	for i := 0; i < 3; i++ {
		evs.wait(t, "backfill", periodic.EventSucceeded, 10*time.Second)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	type want struct {
		missedFrom, missedThrough time.Time
		missed                    int64
		runs                      []time.Time
		kind                      string
	}
	h := func(n int) time.Time { return hour.Add(time.Duration(n) * time.Hour) }
	for job, w := range map[string]want{
		"skip":     {h(-9), h(0), 10, nil, ""},
		"once":     {h(-9), h(-1), 9, []time.Time{h(0)}, "late"},
		"backfill": {h(-9), h(-3), 7, []time.Time{h(-2), h(-1), h(0)}, "backfill"},
	} {
		rows := e.runs(job)
		if len(rows) != 1+len(w.runs) {
			t.Errorf("%s: %d rows, want %d: %+v", job, len(rows), 1+len(w.runs), rows)
			continue
		}
		m := rows[0]
		if m.Status != "missed" || !m.Tick.Equal(w.missedFrom) || !m.Through.Equal(w.missedThrough) || m.Ticks != w.missed {
			t.Errorf("%s: first row %s %s..%s x%d, want missed %s..%s x%d", job, m.Status, fmtT(m.Tick), fmtT(m.Through), m.Ticks, fmtT(w.missedFrom), fmtT(w.missedThrough), w.missed)
		}
		for i, tick := range w.runs {
			r := rows[1+i]
			if !r.Tick.Equal(tick) || r.Status != "succeeded" || r.Kind != w.kind {
				t.Errorf("%s: row %d %s %s %s, want %s succeeded %s", job, 1+i, fmtT(r.Tick), r.Status, r.Kind, fmtT(tick), w.kind)
			}
		}
		if len(ran[job]) != len(w.runs) {
			t.Errorf("%s: the function ran %d times, want %d", job, len(ran[job]), len(w.runs))
		}
	}
}

// TestRunOnStartRunsOnceAcrossInstances: two instances adding a new job
// with RunOnStart at the same moment run its current tick once.
func TestRunOnStartRunsOnceAcrossInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var runs atomic.Int64
	evs := newEvents()
	var ss []*periodic.Scheduler
	for _, inst := range []string{"x", "y"} {
		l := openLocker(t, e.dsn, inst)
		ss = append(ss, e.scheduler(func(c *periodic.Config) { c.Locker = l; c.OnEvent = evs.hook }))
	}
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Add(periodic.Job{Name: "start", Schedule: periodic.Every(time.Hour), RunOnStart: true,
				Run: func(context.Context, periodic.Run) error { runs.Add(1); return nil }})
		}()
	}
	wg.Wait()
	evs.wait(t, "start", periodic.EventSucceeded, 10*time.Second)
	for _, s := range ss {
		_ = s.Close()
	}
	rows := e.runs("start")
	if runs.Load() != 1 || len(rows) != 1 || rows[0].Kind != "start" || !rows[0].Tick.Equal(e.dbNow().Truncate(time.Hour)) {
		t.Errorf("ran %d times, rows %+v; want one start run of the current hour", runs.Load(), rows)
	}
}

// TestOverlapForbidAcrossInstances: with two instances and runs that last
// 2.5 intervals, no two runs are ever active at once, and the ticks that
// fire during a run are recorded as skipped for overlap.
func TestOverlapForbidAcrossInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var active, maxActive, done atomic.Int64
	run := func(ctx context.Context, _ periodic.Run) error {
		n := active.Add(1)
		for {
			m := maxActive.Load()
			if n <= m || maxActive.CompareAndSwap(m, n) {
				break
			}
		}
		defer active.Add(-1)
		defer done.Add(1)
		select {
		case <-time.After(500 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, inst := range []string{"x", "y"} {
		l := openLocker(t, e.dsn, inst)
		s := e.scheduler(func(c *periodic.Config) { c.Locker = l })
		if err := s.Add(periodic.Job{Name: "slow", Schedule: periodic.Every(fast), Run: run}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "4 runs", 20*time.Second, func() bool { return done.Load() >= 4 })
	if maxActive.Load() != 1 {
		t.Errorf("%d runs were active at once under OverlapForbid", maxActive.Load())
	}
	skipped := 0
	for _, r := range e.runs("slow") {
		if r.Status == "skipped" {
			skipped++
			if r.Kind != "overlap" || r.Error == nil || !strings.Contains(*r.Error, "was still running") {
				t.Errorf("skipped row without its reason: %+v", r)
			}
		}
	}
	if skipped == 0 {
		t.Errorf("no tick recorded as skipped, though runs last 2.5 intervals")
	}
}

// TestOverlapAllowRunsConcurrently: under OverlapAllow a tick starts while
// the previous run is still going on.
func TestOverlapAllowRunsConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.scheduler()
	release := make(chan struct{})
	started := make(chan time.Time, 10)
	if err := s.Add(periodic.Job{Name: "allow", Schedule: periodic.Every(fast), Overlap: periodic.OverlapAllow,
		Run: func(ctx context.Context, r periodic.Run) error {
			started <- r.Tick
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}}); err != nil {
		t.Fatal(err)
	}
	first, second := <-started, <-started
	close(release)
	if !second.After(first) {
		t.Errorf("second run's tick %s not after the first's %s", fmtT(second), fmtT(first))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.queryInt("SELECT count(*) FROM pgbaton.periodic_runs WHERE job = 'allow' AND status = 'skipped'"); n != 0 {
		t.Errorf("%d ticks skipped under OverlapAllow", n)
	}
}

// TestAbandonedRunsAreRecognisedByTheirLock: a running row whose lock
// nobody holds is marked abandoned by the next claim; one whose lock is
// held stays running until it is released.
func TestAbandonedRunsAreRecognisedByTheirLock(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	held := pgbaton.KeyName("some run's lock")
	lease, err := e.locker.TryAcquire(context.Background(), held)
	if err != nil {
		t.Fatal(err)
	}
	insert := func(tick time.Time, key pgbaton.Key) {
		e.exec(`INSERT INTO pgbaton.periodic_runs (job, tick, through_tick, status, kind, instance, started_at, lock_key)
			VALUES ('allow', $1, $1, 'running', 'scheduled', 'gone', now(), $2)`, tick, key.ID())
	}
	old := e.dbNow().Add(-time.Hour).Truncate(time.Second)
	insert(old, pgbaton.KeyName("nobody holds this"))
	insert(old.Add(time.Second), held)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	if err := s.Add(periodic.Job{Name: "allow", Schedule: periodic.Every(fast), Overlap: periodic.OverlapAllow,
		Run: func(context.Context, periodic.Run) error { return nil }}); err != nil {
		t.Fatal(err)
	}
	ev := evs.wait(t, "allow", periodic.EventAbandoned, 10*time.Second)
	if !ev.Tick.Equal(old) || ev.Instance != "gone" {
		t.Errorf("abandoned event %+v, want the unheld row", ev)
	}
	evs.wait(t, "allow", periodic.EventSucceeded, 10*time.Second)
	status := func(tick time.Time) string {
		var st string
		if err := e.pool.QueryRow(context.Background(), "SELECT status FROM pgbaton.periodic_runs WHERE job = 'allow' AND tick = $1", tick).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := status(old); st != "abandoned" {
		t.Errorf("unheld row is %s, want abandoned", st)
	}
	if st := status(old.Add(time.Second)); st != "running" {
		t.Errorf("row whose lock is held is %s, want running", st)
	}
	if err := lease.Release(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the released row abandoned", 10*time.Second, func() bool { return status(old.Add(time.Second)) == "abandoned" })
}

// TestPruneKeepsLatestSuccess: the built-in prune job deletes history older
// than the retention, but not running rows nor a job's latest success.
func TestPruneKeepsLatestSuccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ins := func(job string, ago time.Duration, status string) {
		e.exec(`INSERT INTO pgbaton.periodic_runs (job, tick, through_tick, status, kind, instance, started_at, finished_at)
			VALUES ($1, now() - $2::interval, now() - $2::interval, $3, 'scheduled', 'old', now() - $2::interval, now() - $2::interval)`,
			job, ago.String(), status)
	}
	ins("a", 72*time.Hour, "succeeded") // older success: pruned
	ins("a", 71*time.Hour, "failed")    // pruned
	ins("a", 70*time.Hour, "succeeded") // a's latest success: kept
	ins("a", 69*time.Hour, "running")   // kept
	ins("a", 10*time.Minute, "failed")  // young: kept
	ins("b", 48*time.Hour, "missed")    // pruned
	evs := newEvents()
	e.scheduler(func(c *periodic.Config) {
		c.Retention, c.PruneInterval, c.OnEvent = time.Hour, time.Second, evs.hook
	})
	evs.wait(t, periodic.PruneJob, periodic.EventSucceeded, 10*time.Second)
	var left []string
	rows, err := e.pool.Query(context.Background(), "SELECT job || ':' || status FROM pgbaton.periodic_runs WHERE instance = 'old' ORDER BY tick")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		left = append(left, s)
	}
	rows.Close()
	if got := strings.Join(left, ","); got != "a:succeeded,a:running,a:failed" {
		t.Errorf("after pruning: %s, want a:succeeded,a:running,a:failed", got)
	}
}

// TestClockJumpsNeverRunEarlyOrTwice: during runs, the local clock jumps
// 3s ahead of the database's, then 3s behind, then back. Ahead, the
// scheduler believes the next tick has fired already and asks the database,
// which says it has not; behind, it aims at a tick that is already claimed,
// and the database says so. Either answer re-measures the clock's offset:
// every tick still has exactly one row, none is missed, and none starts
// before its time.
func TestClockJumpsNeverRunEarlyOrTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var skew, n atomic.Int64
	clock := periodic.ClockFunc(func() time.Time { return time.Now().Add(time.Duration(skew.Load())) })
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.Clock, c.OnEvent = clock, evs.hook })
	sched := periodic.Every(fast)
	jumps := map[int64]time.Duration{3: 3 * time.Second, 7: -3 * time.Second, 11: 0}
	if err := s.Add(periodic.Job{Name: "jumpy", Schedule: sched, Missed: periodic.MissedSkip, StartDeadline: time.Second,
		Run: func(context.Context, periodic.Run) error {
			if d, ok := jumps[n.Add(1)]; ok {
				skew.Store(int64(d))
			}
			return nil
		}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 15; i++ {
		evs.wait(t, "jumpy", periodic.EventSucceeded, 10*time.Second)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rows := e.runs("jumpy")
	cov := checkCoverage(t, "jumpy", sched, rows)
	for _, r := range rows {
		if r.Started != nil && r.Started.Before(r.Tick) {
			t.Errorf("tick %s started early, at %s", fmtT(r.Tick), fmtT(*r.Started))
		}
	}
	if cov.byStatus["missed"] != 0 {
		t.Errorf("%d ticks missed: a clock jump made the scheduler sleep past them", cov.byStatus["missed"])
	}
	if cov.byStatus["succeeded"] < 15 {
		t.Errorf("only %d runs succeeded: %v", cov.byStatus["succeeded"], cov.byStatus)
	}
}
