package periodic_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/periodic"
)

// slowTracer delays every bookkeeping statement by d on the way out and d
// on the way back: the round trips of a loaded machine.
type slowTracer struct{ d time.Duration }

func (s slowTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	time.Sleep(s.d)
	return ctx
}
func (s slowTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) { time.Sleep(s.d) }

// driftingClock runs rate fast (0.03 = 3%) from its start.
func driftingClock(rate float64) periodic.Clock {
	t0 := time.Now()
	return periodic.ClockFunc(func() time.Time {
		d := time.Since(t0)
		return t0.Add(d + time.Duration(float64(d)*rate))
	})
}

// noisyClock is the local clock of an instance on a loaded machine: every
// reading is late by up to max (a goroutine preempted between reading the
// clock and using it), so the measured offset to the database's clock, and
// every wake-up, is off by a few to tens of milliseconds either way.
func noisyClock(max time.Duration) periodic.Clock {
	return periodic.ClockFunc(func() time.Time {
		return time.Now().Add(time.Duration(rand.Int64N(int64(max))))
	})
}

// TestEveryTickRunsOnceWithThreeHealthyInstances: three schedulers on one
// database run Every(1s) for 8 s. Instance a is on a loaded machine: its
// bookkeeping round trips take 50 ms (25 ms each way) and its clock runs 3%
// fast, so it wakes about 30 ms before each tick; b and c have clocks as
// noisy as a loaded machine's (readings up to 40 ms late). Every tick from
// the first to the last has exactly one row, and it is a success: none is
// missed because a took the lock while the tick was not due yet, and b and
// c, finding it busy at the tick, gave the tick up.
func TestEveryTickRunsOnceWithThreeHealthyInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	sched := periodic.Every(time.Second)
	var ran sync.Map // tick -> runs
	var dup atomic.Int64
	var ss []*periodic.Scheduler
	for _, inst := range []string{"a", "b", "c"} {
		l := openLocker(t, e.dsn, inst)
		ss = append(ss, e.scheduler(func(c *periodic.Config) {
			c.Locker, c.OnEvent, c.Clock = l, evs.hook, noisyClock(40*time.Millisecond)
			if inst == "a" {
				c.Clock, c.Tracer = driftingClock(0.03), slowTracer{25 * time.Millisecond}
			}
		}))
	}
	for _, s := range ss {
		if err := s.Add(periodic.Job{Name: "every1s", Schedule: sched, Missed: periodic.MissedSkip,
			Run: func(_ context.Context, r periodic.Run) error {
				if _, loaded := ran.LoadOrStore(r.Tick.UnixMicro(), true); loaded {
					dup.Add(1)
				}
				return nil
			}}); err != nil {
			t.Fatal(err)
		}
	}
	start := e.dbNow()
	waitFor(t, "8 s of ticks", 30*time.Second, func() bool { return e.dbNow().Sub(start) >= 8*time.Second })
	for _, s := range ss {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}
	rows := e.runs("every1s")
	cov := checkCoverage(t, "every1s", sched, rows)
	if cov.byStatus["missed"] != 0 || cov.byStatus["skipped"] != 0 {
		for _, r := range rows {
			if r.Status != "succeeded" {
				t.Logf("%s..%s: %s (%s) by %s", fmtT(r.Tick), fmtT(r.Through), r.Status, r.Kind, r.Instance)
			}
		}
	}
	if cov.byStatus["succeeded"] != cov.ticks || cov.ticks < 7 {
		t.Errorf("ticks %d, by status %v; want every tick succeeded, at least 7", cov.ticks, cov.byStatus)
	}
	if dup.Load() != 0 {
		t.Errorf("%d ticks ran twice", dup.Load())
	}
	if n := evs.count("every1s", periodic.EventMissed); n != 0 {
		t.Errorf("%d missed events", n)
	}
}
