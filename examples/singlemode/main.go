// Command singlemode triggers an automation that must never run twice at
// once across processes ("single" concurrency mode): a trigger that arrives
// while a run is in progress anywhere is skipped, logged as "lock busy" and
// counted; it is not queued.
//
// The run holds a session lease (pgbaton.Locker.TryAcquire) on the Locker's
// own connection for its whole length, and does its work through the
// application's pool; the run's context ends if the lease is lost.
//
//	DATABASE_URL=postgres://... singlemode -automation nightly -triggers 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/pgbaton/pgbaton"
)

// Schema records runs.
const Schema = `CREATE TABLE IF NOT EXISTS automation_runs (
	id            bigserial PRIMARY KEY,
	automation_id text NOT NULL,
	started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
	ended_at      timestamptz
)`

// Automation runs one automation in single mode.
type Automation struct {
	ID    string
	Locks pgbaton.Interface
	Pool  *pgbaton.Pool
	Log   *slog.Logger
	// Body is the run's work, after its start is recorded.
	Body func(ctx context.Context) error
	// NoLock skips the single-mode lock: the control.
	NoLock bool

	skipped atomic.Int64
	ran     atomic.Int64
}

// Trigger runs the automation unless a run is in progress anywhere; then it
// logs "lock busy", counts the skip and returns nil at once.
func (a *Automation) Trigger(ctx context.Context) error {
	if !a.NoLock {
		lease, err := a.Locks.TryAcquire(ctx, pgbaton.KeyName("automation.single-mode:"+a.ID))
		if errors.Is(err, pgbaton.ErrNotAcquired) {
			a.skipped.Add(1)
			a.Log.Warn("lock busy", "event", "automation-lock-busy", "automation", a.ID, "skipped_total", a.skipped.Load())
			return nil
		}
		if err != nil {
			return err
		}
		defer func() {
			if err := lease.Release(); err != nil {
				a.Log.Error("automation lease", "automation", a.ID, "err", err)
			}
		}()
		ctx = lease.Context() // the run stops if the lease is lost
	}
	return a.run(ctx)
}

func (a *Automation) run(ctx context.Context) error {
	a.ran.Add(1)
	var id int64
	if err := a.Pool.QueryRow(ctx, `INSERT INTO automation_runs (automation_id) VALUES ($1) RETURNING id`, a.ID).Scan(&id); err != nil {
		return err
	}
	if a.Body != nil {
		if err := a.Body(ctx); err != nil {
			return err
		}
	}
	_, err := a.Pool.Exec(ctx, `UPDATE automation_runs SET ended_at = clock_timestamp() WHERE id = $1`, id)
	return err
}

// Skipped and Ran count triggers.
func (a *Automation) Skipped() int64 { return a.skipped.Load() }
func (a *Automation) Ran() int64     { return a.ran.Load() }

// waitForFile blocks until path exists (a test's signal to end a run), at
// most until ctx ends.
func waitForFile(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func cli(args []string) int {
	fs := flag.NewFlagSet("singlemode", flag.ContinueOnError)
	id := fs.String("automation", "nightly", "automation id")
	triggers := fs.Int("triggers", 1, "triggers, one after the other")
	holdUntil := fs.String("hold-until", "", "a run lasts until this file exists")
	noLock := fs.Bool("nolock", false, "skip the single-mode lock (shows overlapping runs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lcfg, err := pgbaton.ConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	lcfg.Logger = log
	lcfg.BusyLogLevel = slog.LevelDebug // the automation logs its own "lock busy"
	pcfg, err := pgbaton.PoolConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	locker, err := pgbaton.New(ctx, lcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := locker.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the locker:", err)
		}
	}()
	pool, err := pgbaton.NewPool(ctx, pcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	a := &Automation{ID: *id, Locks: locker, Pool: pool, Log: log, NoLock: *noLock}
	if *holdUntil != "" {
		a.Body = func(ctx context.Context) error {
			fmt.Println("run started")
			return waitForFile(ctx, *holdUntil)
		}
	}
	for i := 0; i < *triggers; i++ {
		if err := a.Trigger(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "trigger:", err)
			return 1
		}
	}
	fmt.Printf("ran=%d skipped=%d\n", a.Ran(), a.Skipped())
	return 0
}

func main() { os.Exit(cli(os.Args[1:])) }
