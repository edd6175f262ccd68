package periodic_test

import (
	"context"
	"errors"
	"runtime"
	"strings"

	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
)

const fast = 200 * time.Millisecond

// TestTransactionModeCommitsWithTheRun: a RunTx job's writes commit with
// its "succeeded" record and roll back when it fails, and the failure is
// recorded with its error.
func TestTransactionModeCommitsWithTheRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec("CREATE TABLE effects (tick timestamptz PRIMARY KEY)")
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	var n atomic.Int64
	err := s.Add(periodic.Job{Name: "tx", Schedule: periodic.Every(fast),
		RunTx: func(ctx context.Context, tx pgx.Tx, r periodic.Run) error {
			if _, err := tx.Exec(ctx, "INSERT INTO effects VALUES ($1)", r.Tick); err != nil {
				return err
			}
			if n.Add(1)%2 == 0 {
				return errors.New("every second run fails after writing")
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "6 runs", 20*time.Second, func() bool { return n.Load() >= 6 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var ok, failed int
	for _, r := range e.runs("tx") {
		has := e.queryInt("SELECT count(*) FROM effects WHERE tick = $1", r.Tick) == 1
		switch r.Status {
		case "succeeded":
			ok++
			if !has {
				t.Errorf("%s succeeded but its write is missing", fmtT(r.Tick))
			}
		case "failed":
			failed++
			if has {
				t.Errorf("%s failed but its write committed", fmtT(r.Tick))
			}
			if r.Error == nil || !strings.Contains(*r.Error, "every second run fails") {
				t.Errorf("%s failed with error %v, want the function's", fmtT(r.Tick), r.Error)
			}
		}
	}
	if ok < 3 || failed < 3 {
		t.Errorf("succeeded %d, failed %d; want at least 3 of each", ok, failed)
	}
	if evs.count("tx", periodic.EventFailed) != failed || evs.count("tx", periodic.EventSucceeded) != ok {
		t.Errorf("events disagree with the runs table")
	}
}

// TestPanicIsAFailedRun: a panicking function is recorded as failed with
// the panic, and the job keeps running.
func TestPanicIsAFailedRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	for _, j := range []periodic.Job{
		{Name: "panics", Schedule: periodic.Every(fast), Run: func(context.Context, periodic.Run) error { panic("boom") }},
		{Name: "panics-tx", Schedule: periodic.Every(fast), RunTx: func(ctx context.Context, tx pgx.Tx, _ periodic.Run) error {
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				return err
			}
			panic(errors.New("boom in a transaction"))
		}},
	} {
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	for _, job := range []string{"panics", "panics-tx"} {
		var pe *periodic.PanicError
		for i := 0; i < 3; i++ {
			ev := evs.wait(t, job, periodic.EventFailed, 10*time.Second)
			if !errors.As(ev.Err, &pe) || len(pe.Stack) == 0 {
				t.Fatalf("%s: failure %v is not a *PanicError with a stack", job, ev.Err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, job := range []string{"panics", "panics-tx"} {
		rows := e.runs(job)
		if len(rows) < 3 {
			t.Fatalf("%s: %d rows", job, len(rows))
		}
		for _, r := range rows {
			if r.Started == nil {
				continue // a tick missed under load is recorded as such
			}
			if r.Status != "failed" || r.Error == nil || !strings.Contains(*r.Error, "panicked: boom") {
				t.Errorf("%s@%s: %s %v, want failed with the panic", job, fmtT(r.Tick), r.Status, r.Error)
			}
		}
	}
}

// TestGoexitIsAFailedRun: a job function that calls runtime.Goexit (as
// t.FailNow does) is recorded failed with ErrRunExited and its lock (in
// transaction mode, its transaction) released; the job keeps running. It used
// to be taken for a stuck run, and its transaction leaked.
func TestGoexitIsAFailedRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	for _, j := range []periodic.Job{
		{Name: "exits", Schedule: periodic.Every(fast), Run: func(context.Context, periodic.Run) error { runtime.Goexit(); return nil }},
		{Name: "exits-tx", Schedule: periodic.Every(fast), RunTx: func(ctx context.Context, tx pgx.Tx, _ periodic.Run) error {
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				return err
			}
			runtime.Goexit()
			return nil
		}},
	} {
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	for _, job := range []string{"exits", "exits-tx"} {
		for i := 0; i < 3; i++ {
			ev := evs.wait(t, job, periodic.EventFailed, 10*time.Second)
			if !errors.Is(ev.Err, periodic.ErrRunExited) {
				t.Fatalf("%s: failure %v, want ErrRunExited", job, ev.Err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestTimeoutCancelsTheRun: Job.Timeout cancels the function's context
// with ErrRunTimeout, and the run is recorded as failed.
func TestTimeoutCancelsTheRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	causes := make(chan error, 10)
	if err := s.Add(periodic.Job{Name: "slow", Schedule: periodic.Every(time.Second), RunOnStart: true, Timeout: 50 * time.Millisecond,
		Run: func(ctx context.Context, _ periodic.Run) error {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return ctx.Err()
		}}); err != nil {
		t.Fatal(err)
	}
	ev := evs.wait(t, "slow", periodic.EventFailed, 10*time.Second)
	if cause := <-causes; !errors.Is(cause, periodic.ErrRunTimeout) {
		t.Errorf("context cause %v, want ErrRunTimeout", cause)
	}
	if !errors.Is(ev.Err, periodic.ErrRunTimeout) || !errors.Is(ev.Err, context.DeadlineExceeded) {
		t.Errorf("run error %v, want it to match ErrRunTimeout and the function's error", ev.Err)
	}
	_ = s.Close()
	if r := e.runs("slow")[0]; r.Status != "failed" || !strings.Contains(*r.Error, "run timed out") {
		t.Errorf("recorded %s %v", r.Status, r.Error)
	}
}

// TestLeaseLossCancelsTheRun: when the lease-mode lock connection dies,
// the function's context is cancelled with the loss and the run fails.
func TestLeaseLossCancelsTheRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	if err := s.Add(periodic.Job{Name: "long", Schedule: periodic.Every(time.Hour), RunOnStart: true,
		Run: func(ctx context.Context, _ periodic.Run) error {
			started <- struct{}{}
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return ctx.Err()
		}}); err != nil {
		t.Fatal(err)
	}
	<-started
	// Terminate the Locker's lock connections ("pgbaton:test:<n>"), not
	// the scheduler's bookkeeping ones.
	if n := e.queryInt(`SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name ~ '^pgbaton:test:[0-9]+$'`); n == 0 {
		t.Fatal("no lock connection to terminate")
	}
	if cause := <-causes; !errors.Is(cause, pgbaton.ErrLeaseLost) {
		t.Errorf("context cause %v, want ErrLeaseLost", cause)
	}
	ev := evs.wait(t, "long", periodic.EventFailed, 10*time.Second)
	if !errors.Is(ev.Err, pgbaton.ErrLeaseLost) {
		t.Errorf("run error %v, want ErrLeaseLost", ev.Err)
	}
	_ = s.Close()
	if r := e.runs("long")[0]; r.Status != "failed" || !strings.Contains(*r.Error, "lease") {
		t.Errorf("recorded %s %v, want failed with the lease loss", r.Status, r.Error)
	}
}

// TestAddAndRemoveAtRuntime: a job added to a running scheduler runs; once
// Remove returns, it never runs again on that instance, while other jobs go
// on.
func TestAddAndRemoveAtRuntime(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook })
	var keep, gone atomic.Int64
	add := func(name string, n *atomic.Int64) {
		if err := s.Add(periodic.Job{Name: name, Schedule: periodic.Every(fast),
			Run: func(context.Context, periodic.Run) error { n.Add(1); return nil }}); err != nil {
			t.Fatal(err)
		}
	}
	add("keep", &keep)
	waitFor(t, "keep runs", 10*time.Second, func() bool { return keep.Load() >= 2 })
	add("gone", &gone)
	if err := s.Add(periodic.Job{Name: "gone", Schedule: periodic.Every(fast), Run: func(context.Context, periodic.Run) error { return nil }}); !errors.Is(err, periodic.ErrJobExists) {
		t.Errorf("adding a duplicate: %v, want ErrJobExists", err)
	}
	waitFor(t, "gone runs", 10*time.Second, func() bool { return gone.Load() >= 2 })
	if got := s.Jobs(); strings.Join(got, ",") != "gone,keep" {
		t.Errorf("Jobs() = %v", got)
	}
	if err := s.Remove(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	after := gone.Load()
	base := keep.Load()
	waitFor(t, "5 more runs of keep", 10*time.Second, func() bool { return keep.Load() >= base+5 })
	if gone.Load() != after {
		t.Errorf("removed job ran %d more times", gone.Load()-after)
	}
	if err := s.Remove(context.Background(), "gone"); !errors.Is(err, periodic.ErrUnknownJob) {
		t.Errorf("removing twice: %v, want ErrUnknownJob", err)
	}
	_ = s.Close()
	if err := s.Add(periodic.Job{Name: "late", Schedule: periodic.Every(fast), Run: func(context.Context, periodic.Run) error { return nil }}); !errors.Is(err, periodic.ErrClosed) {
		t.Errorf("Add after Close: %v, want ErrClosed", err)
	}
}

// TestValidationNamesTheFix: bad jobs and configs are refused with typed
// errors that say what to do.
func TestValidationNamesTheFix(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.scheduler(func(c *periodic.Config) { c.Pool = nil })
	run := func(context.Context, periodic.Run) error { return nil }
	runTx := func(context.Context, pgx.Tx, periodic.Run) error { return nil }
	for _, c := range []struct {
		job  periodic.Job
		want string
	}{
		{periodic.Job{Schedule: periodic.Every(time.Second), Run: run}, "Name: empty"},
		{periodic.Job{Name: "pgbaton.x", Schedule: periodic.Every(time.Second), Run: run}, "reserved"},
		{periodic.Job{Name: "a\x01", Schedule: periodic.Every(time.Second), Run: run}, "non-printable"},
		{periodic.Job{Name: "x", Run: run}, "Schedule"},
		{periodic.Job{Name: "x", Schedule: periodic.Every(time.Millisecond), Run: run}, "at least 10ms"},
		{periodic.Job{Name: "x", Schedule: periodic.Every(time.Second)}, "set Run"},
		{periodic.Job{Name: "x", Schedule: periodic.Every(time.Second), Run: run, RunTx: runTx}, "choose one"},
		{periodic.Job{Name: "x", Schedule: periodic.Every(time.Second), Run: run, Missed: periodic.MissedBackfill(0)}, "window must be positive"},
		{periodic.Job{Name: "x", Schedule: periodic.Every(time.Second), RunTx: runTx}, "set Config.Pool"},
	} {
		err := s.Add(c.job)
		if !errors.Is(err, periodic.ErrInvalidJob) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want ErrInvalidJob mentioning %q", c.job.Name, err, c.want)
		}
	}
	if _, err := periodic.New(context.Background(), periodic.Config{}); !errors.Is(err, periodic.ErrInvalidConfig) || !strings.Contains(err.Error(), "pgbaton.New") {
		t.Errorf("New without a Locker: %v", err)
	}
}

// TestNotMigrated: New refuses a database without the tables and says
// how to create them.
func TestNotMigrated(t *testing.T) {
	t.Parallel()
	_, dsn := pgtestCluster().NewDB(t)
	l := openLocker(t, dsn, "test")
	_, err := periodic.New(context.Background(), periodic.Config{Locker: l, Logger: testLogger()})
	if !errors.Is(err, periodic.ErrNotMigrated) || !strings.Contains(err.Error(), "Migrate") {
		t.Errorf("New on an empty database: %v, want ErrNotMigrated", err)
	}
}

// TestBusyLogLevel: the instance that loses a tick logs "lock busy" or
// "tick already claimed" at the configured level.
func TestBusyLogLevel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := &recordHandler{}
	run := func(context.Context, periodic.Run) error { time.Sleep(20 * time.Millisecond); return nil }
	for _, inst := range []string{"x", "y"} {
		l := openLocker(t, e.dsn, inst)
		s := e.scheduler(func(c *periodic.Config) { c.Locker = l; c.Logger = newSlog(rec); c.BusyLogLevel = slogWarn })
		if err := s.Add(periodic.Job{Name: "shared", Schedule: periodic.Every(fast), Run: run}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "a busy or already-claimed event", 10*time.Second, func() bool {
		return rec.count("periodic: lock busy", slogWarn)+rec.count("periodic: tick already claimed", slogWarn) > 0
	})
	if n := rec.count("periodic: lock busy", slogInfo) + rec.count("periodic: tick already claimed", slogInfo); n != 0 {
		t.Errorf("%d contention events at Info, want them at Warn as configured", n)
	}
}

// TestHealthReportsStaleJobs: a job whose runs stall, or always fail, is
// reported stale after StaleAfter intervals, cluster-wide, and the handler
// answers 503; a healthy job is not stale and answers 200.
func TestHealthReportsStaleJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent = evs.hook; c.ShutdownGrace = 100 * time.Millisecond })
	stall := make(chan struct{})
	defer close(stall)
	jobs := []periodic.Job{
		{Name: "healthy", Schedule: periodic.Every(fast), Run: func(context.Context, periodic.Run) error { return nil }},
		{Name: "stalled", Schedule: periodic.Every(fast), StaleAfter: 3, Run: func(ctx context.Context, _ periodic.Run) error {
			select {
			case <-stall:
			case <-ctx.Done():
			}
			return ctx.Err()
		}},
		{Name: "failing", Schedule: periodic.Every(fast), StaleAfter: 3, Run: func(context.Context, periodic.Run) error { return errors.New("upstream down") }},
	}
	for _, j := range jobs {
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	evs.wait(t, "healthy", periodic.EventSucceeded, 10*time.Second)
	byName := func() map[string]periodic.JobHealth {
		hs, err := s.Health(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]periodic.JobHealth{}
		for _, h := range hs {
			m[h.Job] = h
		}
		return m
	}
	waitFor(t, "stalled and failing reported stale", 10*time.Second, func() bool {
		m := byName()
		return m["stalled"].Stale && m["failing"].Stale
	})
	m := byName()
	if h := m["healthy"]; h.Stale || h.LastSuccess.IsZero() || h.NextTick.IsZero() || h.LastStatus == "" {
		t.Errorf("healthy job: %+v", h)
	}
	if h := m["stalled"]; !h.Running || !strings.Contains(h.Reason, "no successful run") || h.LastSuccess.IsZero() == false {
		t.Errorf("stalled job: %+v", h)
	}
	if h := m["failing"]; h.LastStatus != "failed" || h.LastError != "upstream down" {
		t.Errorf("failing job: %+v", h)
	}
	code, body := serve(s.HealthHandler(), "/")
	if code != 503 || !strings.Contains(body, `"status":"stale"`) || !strings.Contains(body, `"job":"stalled"`) {
		t.Errorf("handler: %d %s", code, body)
	}
	if code, body := serve(s.HealthHandler(), "/?job=healthy"); code != 200 || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("handler ?job=healthy: %d %s", code, body)
	}
	if code, _ := serve(s.HealthHandler(), "/?job=nope"); code != 404 {
		t.Errorf("handler ?job=nope: %d, want 404", code)
	}
	// Another instance that does not run the stalled job's ticks sees the
	// same verdict: it comes from the database.
	l2 := openLocker(t, e.dsn, "observer")
	s2 := e.scheduler(func(c *periodic.Config) { c.Locker = l2 })
	if err := s2.Add(periodic.Job{Name: "stalled", Schedule: periodic.Every(fast), StaleAfter: 3, Run: func(context.Context, periodic.Run) error { return nil }}); err != nil {
		t.Fatal(err)
	}
	hs, err := s2.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.Job == "stalled" && !h.Stale {
			t.Errorf("observer instance sees the stalled job as healthy: %+v", h)
		}
	}
}
