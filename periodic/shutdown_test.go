package periodic_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/periodic"
)

// advisoryLocks counts the advisory locks held in e's database.
func (e *env) advisoryLocks() int64 {
	return e.queryInt(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
}

// TestShutdownLeavesNothingRunning: Close lets a run that finishes within
// the grace period succeed, cancels the others after it (lease and
// transaction mode), waits for them to return, records them, and leaves no
// advisory lock, no running row and no bookkeeping connection behind.
func TestShutdownLeavesNothingRunning(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.scheduler(func(c *periodic.Config) { c.ShutdownGrace = 300 * time.Millisecond })
	started := make(chan string, 3)
	returned := map[string]chan error{"lease": make(chan error, 1), "tx": make(chan error, 1), "quick": make(chan error, 1)}
	finishQuick := make(chan struct{})
	jobs := []periodic.Job{
		{Name: "lease", Run: func(ctx context.Context, _ periodic.Run) error {
			started <- "lease"
			<-ctx.Done()
			returned["lease"] <- context.Cause(ctx)
			return ctx.Err()
		}},
		{Name: "tx", RunTx: func(ctx context.Context, tx pgx.Tx, _ periodic.Run) error {
			started <- "tx"
			_, err := tx.Exec(ctx, "SELECT pg_sleep(3600)")
			returned["tx"] <- context.Cause(ctx)
			return err
		}},
		{Name: "quick", Run: func(ctx context.Context, _ periodic.Run) error {
			started <- "quick"
			<-finishQuick
			returned["quick"] <- ctx.Err()
			return nil
		}},
	}
	for _, j := range jobs {
		j.Schedule, j.RunOnStart = periodic.Every(time.Hour), true
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	for range jobs {
		<-started
	}
	if n := e.advisoryLocks(); n != 3 {
		t.Fatalf("%d advisory locks held while three jobs run, want 3", n)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	close(finishQuick) // finishes within the grace period
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for name, ch := range returned {
		select {
		case cause := <-ch:
			if name == "quick" && cause != nil {
				t.Errorf("quick: context cancelled (%v) though it finished within the grace period", cause)
			}
			if name != "quick" && !errors.Is(cause, periodic.ErrShutdown) {
				t.Errorf("%s: context cause %v, want ErrShutdown", name, cause)
			}
		default:
			t.Errorf("%s: Close returned before the function did", name)
		}
	}
	if n := e.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks held after Close", n)
	}
	if n := e.queryInt("SELECT count(*) FROM pgbaton.periodic_runs WHERE status = 'running'"); n != 0 {
		t.Errorf("%d runs still recorded as running after Close", n)
	}
	for _, name := range []string{"lease", "tx"} {
		r := e.runs(name)[0]
		if r.Status != "failed" || r.Error == nil || !strings.Contains(*r.Error, "scheduler shut down") {
			t.Errorf("%s recorded %s %v, want failed by the shutdown", name, r.Status, r.Error)
		}
	}
	if r := e.runs("quick")[0]; r.Status != "succeeded" {
		t.Errorf("quick recorded %s, want succeeded", r.Status)
	}
	waitFor(t, "bookkeeping connections closed", 10*time.Second, func() bool {
		return e.queryInt("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbaton:test:periodic'") == 0
	})
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestShutdownGivesUpOnStuckFunctions: a function that ignores its context
// makes Close return a *StuckError after CancelWait; the lease is released
// anyway. In transaction mode the transaction (and its lock) stays with
// the function until it returns, and is rolled back then.
func TestShutdownGivesUpOnStuckFunctions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec("CREATE TABLE effects (job text)")
	s := e.scheduler(func(c *periodic.Config) {
		c.ShutdownGrace = 50 * time.Millisecond
		c.CancelWait = 200 * time.Millisecond
	})
	unblock := make(chan struct{})
	started := make(chan struct{}, 2)
	returned := make(chan struct{}, 2)
	for _, j := range []periodic.Job{
		{Name: "stuck-lease", Run: func(context.Context, periodic.Run) error {
			started <- struct{}{}
			<-unblock
			returned <- struct{}{}
			return nil
		}},
		{Name: "stuck-tx", RunTx: func(ctx context.Context, tx pgx.Tx, _ periodic.Run) error {
			if _, err := tx.Exec(ctx, "INSERT INTO effects VALUES ('stuck-tx')"); err != nil {
				return err
			}
			started <- struct{}{}
			<-unblock
			returned <- struct{}{}
			return nil
		}},
	} {
		j.Schedule, j.RunOnStart = periodic.Every(time.Hour), true
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	<-started
	<-started
	err := s.Close()
	var se *periodic.StuckError
	if !errors.As(err, &se) || !errors.Is(err, periodic.ErrStuck) || len(se.Runs) != 2 {
		t.Fatalf("Close: %v, want a *StuckError naming both runs", err)
	}
	if n := e.advisoryLocks(); n != 1 {
		t.Errorf("%d advisory locks after giving up, want 1 (the stuck transaction's; the lease is released)", n)
	}
	for _, job := range []string{"stuck-lease", "stuck-tx"} {
		if r := e.runs(job)[0]; r.Status != "failed" || !strings.Contains(*r.Error, "did not return") {
			t.Errorf("%s recorded %s %v", job, r.Status, r.Error)
		}
	}
	close(unblock)
	<-returned
	<-returned
	waitFor(t, "the stuck transaction rolled back", 10*time.Second, func() bool { return e.advisoryLocks() == 0 })
	if n := e.queryInt("SELECT count(*) FROM effects"); n != 0 {
		t.Errorf("the stuck transaction's write committed")
	}
}
