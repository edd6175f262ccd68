package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/pgtest"
)

// jobsBurst registers n jobs of Every(interval) in one scheduler (one
// instance), so that all of them fire at the same instant, and measures
// for ticks ticks: how late each run starts after its tick, how long the
// burst takes, the process's and the cluster's CPU over the whole
// interval around the tick, and the idle CPU between ticks.
func jobsBurst(ctx context.Context, c *pgtest.Cluster, n int, interval time.Duration, ticks int) error {
	if err := c.CreateDatabase(ctx, "jobs"); err != nil {
		return err
	}
	dsn := c.DSN("jobs")
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	err = pgbaton.Migrate(ctx, conn, "")
	_ = conn.Close(context.Background())
	if err != nil {
		return err
	}
	l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: "jobs", Logger: quiet})
	if err != nil {
		return err
	}
	defer func() { _ = l.Close() }()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	s, err := periodic.New(ctx, periodic.Config{Locker: l, Pool: pool, Logger: quiet, Retention: -1, Instance: "jobs"})
	if err != nil {
		return err
	}
	defer func() { _ = s.Close() }()

	var mu sync.Mutex
	late := map[int64][]time.Duration{}
	t0 := time.Now()
	for i := range n {
		if err := s.Add(periodic.Job{Name: fmt.Sprintf("burst-%04d", i), Schedule: periodic.Every(interval),
			Run: func(_ context.Context, r periodic.Run) error {
				d := time.Since(r.Tick)
				mu.Lock()
				late[r.Tick.UnixNano()] = append(late[r.Tick.UnixNano()], d)
				mu.Unlock()
				return nil
			}}); err != nil {
			return err
		}
	}
	added := time.Since(t0)
	fmt.Printf("\n## %d periodic jobs, Every(%s), one instance\n\n", n, interval)
	fmt.Printf("added in %.2f s; lock connections %d\n\n", added.Seconds(), l.Stats().Conns)
	fmt.Printf("| tick | runs | start lateness p50 / p99 / max | process CPU over the interval | cluster CPU over the interval | idle CPU between ticks: process / cluster |\n|---|---|---|---|---|---|\n")
	// Wait for the first tick after start-up to pass, then measure the next ones.
	next := time.Now().Truncate(interval).Add(interval)
	time.Sleep(time.Until(next) + interval/2)
	for range ticks {
		tick := time.Now().Truncate(interval).Add(interval)
		// idle: the half interval before the tick
		time.Sleep(time.Until(tick.Add(-interval / 2)))
		p0, s0 := cpuSelf(), serverCPU(c.PostmasterPID())
		time.Sleep(time.Until(tick.Add(-interval / 10)))
		p1, s1 := cpuSelf(), serverCPU(c.PostmasterPID())
		idleSec := (interval/2 - interval/10).Seconds()
		// burst: from just before the tick to just before the next
		time.Sleep(time.Until(tick.Add(interval - interval/10)))
		p2, s2 := cpuSelf(), serverCPU(c.PostmasterPID())
		mu.Lock()
		d := slices.Clone(late[tick.UnixNano()])
		mu.Unlock()
		slices.Sort(d)
		if len(d) == 0 {
			fmt.Printf("| %s | 0 | - | - | - | - |\n", tick.UTC().Format("15:04:05"))
			continue
		}
		fmt.Printf("| %s | %d | %.1f / %.1f / %.1f ms | %.0f ms | %.0f ms | %.1f / %.1f ms/s |\n", tick.UTC().Format("15:04:05"), len(d),
			ms(d[len(d)/2]), ms(d[len(d)*99/100]), ms(d[len(d)-1]), ms(p2-p1), ms(s2-s1),
			ms(p1-p0)/idleSec, ms(s1-s0)/idleSec)
	}
	// What the scheduler recorded, per tick: runs, and ticks marked
	// missed or skipped.
	time.Sleep(time.Second)
	rows, err := pool.Query(ctx, `SELECT tick, status, kind, count(*), sum(ticks)::int8 FROM pgbaton.periodic_runs
		WHERE job LIKE 'burst-%' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`)
	if err != nil {
		return err
	}
	fmt.Printf("\nperiodic_runs (tick, status, kind, rows, ticks covered):\n\n")
	for rows.Next() {
		var tick time.Time
		var status, kind string
		var n, covered int64
		if err := rows.Scan(&tick, &status, &kind, &n, &covered); err != nil {
			return err
		}
		mu.Lock()
		seen := len(late[tick.UnixNano()])
		mu.Unlock()
		fmt.Printf("- %s %s %s: %d rows, %d ticks (runs seen by the harness for this tick by now: %d)\n",
			tick.UTC().Format("15:04:05.000"), status, kind, n, covered, seen)
	}
	return rows.Err()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
