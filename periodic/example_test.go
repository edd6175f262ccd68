package periodic_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
)

// A service runs the same jobs on every replica; each tick runs once.
func Example() {
	ctx := context.Background()
	cfg, err := pgbaton.ConfigFromEnv(os.Getenv)
	if err != nil {
		log.Fatal(err)
	}
	locker, err := pgbaton.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()
	if err := locker.Migrate(ctx); err != nil { // creates the periodic tables too
		log.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, cfg.ConnString) // the application's pool
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	s, err := periodic.New(ctx, periodic.Config{Locker: locker, Pool: pool, BusyLogLevel: slog.LevelDebug})
	if err != nil {
		log.Fatal(err)
	}
	// Transaction mode: the batch's writes commit with the run's record.
	err = s.Add(periodic.Job{
		Name:     "integrity-hash-retry",
		Schedule: periodic.Every(30 * time.Second),
		RunTx: func(ctx context.Context, tx pgx.Tx, run periodic.Run) error {
			_, err := tx.Exec(ctx, `UPDATE audit_records SET hash_status = 'complete' /* ... */ WHERE id IN (
				SELECT id FROM audit_records WHERE hash_status = 'pending' ORDER BY id LIMIT 50 FOR UPDATE SKIP LOCKED)`)
			return err
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	http.Handle("/health/jobs", s.HealthHandler())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop
	if err := s.Close(); err != nil { // stop claiming, let runs finish, release
		log.Print(err)
	}
}

// Lease mode: a long run with external calls, cancelled if the lease is
// lost, whose writes commit one by one on the application's pool.
func ExampleJob_leaseMode() {
	var s *periodic.Scheduler // from periodic.New
	var pool *pgxpool.Pool    // the application's pool
	err := s.Add(periodic.Job{
		Name:     "test-scheduler",
		Schedule: periodic.MustCron("*/15 * * * *"),
		Timeout:  12 * time.Minute,
		Missed:   periodic.MissedSkip,
		Run: func(ctx context.Context, run periodic.Run) error {
			for _, capability := range []string{"search", "checkout"} {
				if err := ctx.Err(); err != nil {
					return context.Cause(ctx) // lease lost, timeout or shutdown
				}
				// ... call the capability over HTTP, then record the result,
				// fenced by the run's token:
				if _, err := pool.Exec(ctx, `INSERT INTO test_results (capability, tick, token) VALUES ($1, $2, $3)`,
					capability, run.Tick, run.Token); err != nil {
					return err
				}
			}
			return nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Every-N schedules form a fixed grid every instance computes alike.
func ExampleEvery() {
	from := time.Date(2026, 4, 17, 18, 55, 0, 0, time.UTC)
	six := periodic.Every(6 * time.Hour)
	fmt.Println(six.Next(from).Format(time.RFC3339))
	paris, _ := time.LoadLocation("Europe/Paris")
	nightly := periodic.Every(24 * time.Hour).Offset(3 * time.Hour).In(paris)
	fmt.Println(nightly.Next(from).In(paris).Format(time.RFC3339))
	fmt.Println(periodic.Every(30 * time.Second).Jitter(5 * time.Second))
	// Output:
	// 2026-04-18T00:00:00Z
	// 2026-04-18T03:00:00+02:00
	// every 30s jitter 5s
}

// Cron expressions are read in UTC unless a zone is given.
func ExampleCron() {
	from := time.Date(2026, 4, 17, 18, 55, 0, 0, time.UTC)
	for _, expr := range []string{"0 3 * * *", "CRON_TZ=America/New_York 0 9 * * MON-FRI", "@hourly"} {
		c, err := periodic.Cron(expr)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(c.Next(from).Format(time.RFC3339))
	}
	_, err := periodic.Cron("@every 5m")
	fmt.Println(err != nil)
	// Output:
	// 2026-04-18T03:00:00Z
	// 2026-04-20T13:00:00Z
	// 2026-04-17T19:00:00Z
	// true
}

// At daylight saving changes, cron schedules follow Debian's cron(8): a
// fixed-time job fires once (at the end of a gap that skips its time, at
// the first occurrence of a repeated time); a wildcard job follows the
// clock.
func ExampleCron_daylightSaving() {
	ny, _ := time.LoadLocation("America/New_York")
	show := func(expr string, from, to time.Time) {
		c := periodic.MustCron(expr).In(ny)
		fmt.Printf("%-14s", expr)
		for t := c.Next(from); t.Before(to); t = c.Next(t) {
			fmt.Print(" ", t.In(ny).Format("15:04 MST"))
		}
		fmt.Println()
	}
	// 8 March 2026: 02:00 EST becomes 03:00 EDT.
	spring := time.Date(2026, 3, 8, 0, 0, 0, 0, ny)
	show("30 2 * * *", spring, spring.Add(12*time.Hour))
	show("@hourly", spring, spring.Add(4*time.Hour))
	// 1 November 2026: 02:00 EDT becomes 01:00 EST.
	fall := time.Date(2026, 11, 1, 0, 0, 0, 0, ny)
	show("30 1 * * *", fall, fall.Add(12*time.Hour))
	show("@hourly", fall, fall.Add(4*time.Hour))
	// Output:
	// 30 2 * * *     03:00 EDT
	// @hourly        01:00 EST 03:00 EDT 04:00 EDT
	// 30 1 * * *     01:30 EDT
	// @hourly        01:00 EDT 01:00 EST 02:00 EST
}

// Every(d).In(zone) is a daily grid of wall-clock times; NextTick reports
// why a schedule has no tick instead of returning the zero Time.
func ExampleEverySchedule_In() {
	santiago, _ := time.LoadLocation("America/Santiago")
	// On 6 September 2026 the clock goes from 23:59:59 to 01:00: midnight
	// does not exist. A daily midnight tick fires at the end of the gap.
	daily := periodic.Every(24 * time.Hour).In(santiago)
	t, err := daily.NextTick(time.Date(2026, 9, 5, 12, 0, 0, 0, santiago))
	fmt.Println(t.In(santiago).Format(time.RFC3339), err)
	_, err = periodic.Every(7 * time.Hour).In(santiago).NextTick(t)
	fmt.Println(errors.Is(err, periodic.ErrNoNextTick), errors.Is(err, periodic.ErrInvalidSchedule))
	_, err = periodic.Cron("0 0 31 2 *")
	fmt.Println(err)
	// Output:
	// 2026-09-06T01:00:00-03:00 <nil>
	// true true
	// periodic: invalid schedule: "0 0 31 2 *" can never fire: no date matches its day-of-month, month and day-of-week fields (day-of-month and day-of-week combine with AND when either starts with "*")
}

// Policies are explicit per job.
func ExampleJob_policies() {
	var s *periodic.Scheduler
	_ = s.Add(periodic.Job{
		Name:          "db-retention",
		Schedule:      periodic.Every(24 * time.Hour).Offset(2 * time.Hour),
		Overlap:       periodic.OverlapForbid,                  // default: skip ticks that fire during a run
		Missed:        periodic.MissedBackfill(48 * time.Hour), // after downtime, run what the window holds
		StartDeadline: 5 * time.Minute,
		Timeout:       30 * time.Minute,
		RunOnStart:    true, // run today's tick at start if nobody did
		StaleAfter:    2,    // Health: stale after two days without success
		RunTx:         func(ctx context.Context, tx pgx.Tx, run periodic.Run) error { return nil },
	})
}

// OnEvent feeds a metrics adapter.
func ExampleConfig_onEvent() {
	var runs, failures, missed atomic.Int64
	cfg := periodic.Config{
		OnEvent: func(ev periodic.Event) {
			switch ev.Kind {
			case periodic.EventSucceeded:
				runs.Add(1) // and observe ev.Duration in a histogram per ev.Job
			case periodic.EventFailed:
				failures.Add(1)
			case periodic.EventMissed:
				missed.Add(ev.Ticks)
			}
		},
	}
	_ = cfg
}

// Health reports every job from the database, for all instances.
func ExampleScheduler_Health() {
	var s *periodic.Scheduler
	hs, err := s.Health(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range hs {
		if h.Stale {
			log.Printf("job %s is stale: %s (last status %s: %s)", h.Job, h.Reason, h.LastStatus, h.LastError)
		}
	}
}
