package periodic_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton/periodic"
)

// Benchmarks. Run them one at a time, e.g.
//
//	go test ./periodic -run '^$' -bench TickOverhead -benchtime 500x
//	go test ./periodic -run '^$' -bench Capacity -benchtime 1x
//	go test ./periodic -run '^$' -bench Idle -benchtime 1x
//
// Figures are in BENCHMARKS.md.

// countTracer counts statements and batches (one round trip each).
type countTracer struct{ n atomic.Int64 }

func (c *countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (c *countTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *countTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func tracedPool(b *testing.B, dsn string, tr pgx.QueryTracer) *pgxpool.Pool {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.ConnConfig.Tracer = tr
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

func percentile(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkTickOverhead measures what the scheduler adds to one tick of one
// job on one instance: from the tick's firing time to the function's start
// (timer wake-up, lock, claim), and from the function's return to the end
// of the run (record, commit or release), with the round trips to the
// database per tick. ns/op is dominated by the 10ms interval; read the
// custom metrics.
func BenchmarkTickOverhead(b *testing.B) {
	for _, mode := range []string{"lease", "tx"} {
		b.Run(mode, func(b *testing.B) {
			e := newEnv(b)
			book, app := &countTracer{}, &countTracer{}
			pool := tracedPool(b, e.dsn, app)
			var mu sync.Mutex
			var start, finish, claimed []time.Duration
			var returned time.Time
			done := make(chan struct{})
			var n atomic.Int64
			s := e.scheduler(func(c *periodic.Config) {
				c.Pool, c.Tracer = pool, book
				c.OnEvent = func(ev periodic.Event) {
					if ev.Kind == periodic.EventStarted {
						mu.Lock()
						claimed = append(claimed, ev.Lateness)
						mu.Unlock()
					}
					if ev.Kind != periodic.EventSucceeded {
						return
					}
					mu.Lock()
					finish = append(finish, time.Since(returned))
					mu.Unlock()
					if n.Add(1) == int64(b.N) {
						close(done)
					}
				}
			})
			job := periodic.Job{Name: "bench", Schedule: periodic.Every(10 * time.Millisecond), StartDeadline: time.Second}
			mark := func(r periodic.Run) {
				mu.Lock()
				start = append(start, time.Since(r.Tick))
				returned = time.Now()
				mu.Unlock()
			}
			if mode == "tx" {
				job.RunTx = func(_ context.Context, _ pgx.Tx, r periodic.Run) error { mark(r); return nil }
			} else {
				job.Run = func(_ context.Context, r periodic.Run) error { mark(r); return nil }
			}
			b.ResetTimer()
			q0, a0 := book.n.Load(), app.n.Load()
			if err := s.Add(job); err != nil {
				b.Fatal(err)
			}
			<-done
			b.StopTimer()
			q1, a1 := book.n.Load(), app.n.Load()
			_ = s.Close()
			mu.Lock()
			defer mu.Unlock()
			locker := 0.0
			if mode == "lease" {
				locker = 2 // TryAcquire and Release on the Locker's lock connection
			}
			b.ReportMetric(float64(q1-q0)/float64(b.N), "bookkeeping-rt/tick")
			b.ReportMetric(float64(a1-a0)/float64(b.N)+locker, "lock+app-rt/tick")
			b.ReportMetric(float64(percentile(claimed, 0.5).Microseconds()), "fire-to-claim-p50-µs")
			b.ReportMetric(float64(percentile(start, 0.5).Microseconds()), "fire-to-start-p50-µs")
			b.ReportMetric(float64(percentile(start, 0.99).Microseconds()), "fire-to-start-p99-µs")
			b.ReportMetric(float64(percentile(finish, 0.5).Microseconds()), "return-to-end-p50-µs")
			b.ReportMetric(float64(percentile(finish, 0.99).Microseconds()), "return-to-end-p99-µs")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCapacity runs J jobs at 10 Hz each on one instance for a few
// seconds and reports how many ticks ran on time, their lateness, the
// missed ticks and this process's CPU: the instance saturates where runs
// per second stop following J×10 or ticks start being missed.
func BenchmarkCapacity(b *testing.B) {
	const window = 4 * time.Second
	for _, mode := range []string{"lease", "tx"} {
		for _, jobs := range []int{10, 50, 100, 200, 400} {
			b.Run(fmt.Sprintf("%s/jobs=%d", mode, jobs), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					capacity(b, mode, jobs, window)
				}
			})
		}
	}
}

func capacity(b *testing.B, mode string, jobs int, window time.Duration) {
	e := newEnv(b)
	var mu sync.Mutex
	var late []time.Duration
	var runs, missed, failed atomic.Int64
	var measuring atomic.Bool
	s := e.scheduler(func(c *periodic.Config) {
		c.MaxConns = 8
		c.OnEvent = func(ev periodic.Event) {
			if !measuring.Load() {
				return
			}
			switch ev.Kind {
			case periodic.EventStarted:
				mu.Lock()
				late = append(late, ev.Lateness)
				mu.Unlock()
			case periodic.EventSucceeded:
				runs.Add(1)
			case periodic.EventFailed:
				failed.Add(1)
			case periodic.EventMissed, periodic.EventSkipped:
				missed.Add(ev.Ticks)
			}
		}
	})
	for i := 0; i < jobs; i++ {
		j := periodic.Job{Name: fmt.Sprintf("job-%03d", i), Schedule: periodic.Every(100 * time.Millisecond).Jitter(50 * time.Millisecond),
			Missed: periodic.MissedSkip, StartDeadline: 100 * time.Millisecond}
		if mode == "tx" {
			j.RunTx = func(context.Context, pgx.Tx, periodic.Run) error { return nil }
		} else {
			j.Run = func(context.Context, periodic.Run) error { return nil }
		}
		if err := s.Add(j); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second) // let the first claims register the jobs
	measuring.Store(true)
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(window)
	measuring.Store(false)
	cpu, wall := cpuTime()-cpu0, time.Since(t0)
	_ = s.Close()
	mu.Lock()
	defer mu.Unlock()
	b.ReportMetric(float64(jobs)*10, "ticks/s-wanted")
	b.ReportMetric(float64(runs.Load())/wall.Seconds(), "runs/s")
	b.ReportMetric(float64(missed.Load())/wall.Seconds(), "missed/s")
	b.ReportMetric(float64(failed.Load()), "failed")
	b.ReportMetric(float64(percentile(late, 0.5).Microseconds())/1000, "late-p50-ms")
	b.ReportMetric(float64(percentile(late, 0.99).Microseconds())/1000, "late-p99-ms")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "client-cpu-%")
}

// BenchmarkIdle measures the CPU an idle scheduler costs between ticks
// with 0 and 1,000 registered jobs whose next tick is far away: it should
// be the Locker's heartbeat and nothing per job.
func BenchmarkIdle(b *testing.B) {
	const window = 5 * time.Second
	for _, jobs := range []int{0, 1000} {
		b.Run(fmt.Sprintf("jobs=%d", jobs), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				e := newEnv(b)
				s := e.scheduler()
				yearly := periodic.MustCron("0 0 1 1 *")
				t0 := time.Now()
				for i := 0; i < jobs; i++ {
					if err := s.Add(periodic.Job{Name: fmt.Sprintf("idle-%04d", i), Schedule: yearly,
						Run: func(context.Context, periodic.Run) error { return nil }}); err != nil {
						b.Fatal(err)
					}
				}
				// Each job's first claim registers it.
				for e.queryInt("SELECT count(*) FROM pgbaton.periodic_jobs WHERE job LIKE 'idle-%'") < int64(jobs) {
					time.Sleep(20 * time.Millisecond)
				}
				registered := time.Since(t0)
				time.Sleep(3 * time.Second) // let the start-up garbage be collected
				cpu0, w0 := cpuTime(), time.Now()
				time.Sleep(window)
				cpu, wall := cpuTime()-cpu0, time.Since(w0)
				_ = s.Close()
				b.ReportMetric(float64(cpu.Microseconds())/1000/wall.Seconds(), "cpu-ms/s")
				b.ReportMetric(float64(registered.Milliseconds()), "start-ms")
			}
		})
	}
}
