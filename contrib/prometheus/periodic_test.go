package prometheus_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/pgtest"
)

// TestPeriodicMetricsScraped runs a job that succeeds and fails on a real
// scheduler, stops it, then scrapes and checks every periodic metric by
// name, type and value against the events the scheduler emitted; a second
// job that never ran has its series at zero through WatchScheduler.
func TestPeriodicMetricsScraped(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	m, err := pgbatonprom.New(pgbatonprom.Options{ConstLabels: prom.Labels{"env": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewPedanticRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	l := openLocker(t, dsn)
	if err := l.Migrate(ctx); err != nil {
		t.Fatal(err)
	}

	var (
		mu      sync.Mutex
		tally   = map[periodic.EventKind]int{}
		ticks   = map[periodic.EventKind]int64{}
		enough  = make(chan struct{})
		closeIt sync.Once
	)
	s, err := periodic.New(ctx, periodic.Config{Locker: l, Logger: quietLogger(), Retention: -1,
		ShutdownGrace: 2 * time.Second, CancelWait: 2 * time.Second,
		OnEvent: func(e periodic.Event) {
			m.ObservePeriodic(e)
			if e.Job != "sync" {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			tally[e.Kind]++
			ticks[e.Kind] += e.Ticks
			if tally[periodic.EventSucceeded] >= 2 && tally[periodic.EventFailed] >= 1 {
				closeIt.Do(func() { close(enough) })
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	defer m.WatchScheduler(s)()

	start := time.Now()
	var calls atomic.Int64
	if err := s.Add(periodic.Job{Name: "sync", Schedule: periodic.Every(20 * time.Millisecond),
		Run: func(ctx context.Context, run periodic.Run) error {
			if calls.Add(1) == 2 {
				return errors.New("upstream unavailable")
			}
			return nil
		}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(periodic.Job{Name: "nightly", Schedule: periodic.Every(24 * time.Hour),
		Run: func(context.Context, periodic.Run) error { return nil }}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-enough:
	case <-time.After(30 * time.Second):
		t.Fatal("no two successes and a failure of a 20ms job within 30s")
	}
	if err := s.Close(); err != nil { // no event after this
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()

	mfs := scrape(t, reg)
	counter := func(name string, labels ...string) float64 {
		t.Helper()
		return series(t, mfs, name, counterType, labels...).GetCounter().GetValue()
	}
	hist := func(name string, labels ...string) uint64 {
		t.Helper()
		return series(t, mfs, name, histogramType, labels...).GetHistogram().GetSampleCount()
	}
	for _, c := range []struct {
		name string
		got  float64
		want int
	}{
		{"runs succeeded", counter("pgbaton_periodic_runs_total", "job", "sync", "status", "succeeded"), tally[periodic.EventSucceeded]},
		{"runs failed", counter("pgbaton_periodic_runs_total", "job", "sync", "status", "failed"), tally[periodic.EventFailed]},
		{"runs abandoned", counter("pgbaton_periodic_runs_total", "job", "sync", "status", "abandoned"), tally[periodic.EventAbandoned]},
		{"duration succeeded", float64(hist("pgbaton_periodic_run_duration_seconds", "job", "sync", "status", "succeeded")), tally[periodic.EventSucceeded]},
		{"duration failed", float64(hist("pgbaton_periodic_run_duration_seconds", "job", "sync", "status", "failed")), tally[periodic.EventFailed]},
		{"lateness", float64(hist("pgbaton_periodic_start_lateness_seconds", "job", "sync")), tally[periodic.EventStarted]},
		{"skipped ticks", counter("pgbaton_periodic_ticks_not_run_total", "job", "sync", "reason", "skipped"), int(ticks[periodic.EventSkipped])},
		{"missed ticks", counter("pgbaton_periodic_ticks_not_run_total", "job", "sync", "reason", "missed"), int(ticks[periodic.EventMissed])},
		{"lock busy", counter("pgbaton_periodic_ticks_elsewhere_total", "job", "sync", "reason", "lock_busy"), tally[periodic.EventBusy]},
		{"claimed elsewhere", counter("pgbaton_periodic_ticks_elsewhere_total", "job", "sync", "reason", "tick_already_claimed"), tally[periodic.EventClaimedElsewhere]},
		{"errors", counter("pgbaton_periodic_errors_total", "job", "sync"), tally[periodic.EventError]},
	} {
		if c.got != float64(c.want) {
			t.Errorf("%s = %v, want %d (from the events)", c.name, c.got, c.want)
		}
	}
	if tally[periodic.EventStarted] < 3 || tally[periodic.EventSucceeded] < 2 || tally[periodic.EventFailed] != 1 {
		t.Errorf("events %v: want 3+ starts, 2+ successes, 1 failure", tally)
	}
	last := series(t, mfs, "pgbaton_periodic_last_success_timestamp_seconds", gaugeType, "job", "sync").GetGauge().GetValue()
	if at := time.Unix(0, int64(last*1e9)); at.Before(start.Add(-time.Second)) || at.After(time.Now()) {
		t.Errorf("last success at %v, want between %v and now", at, start)
	}
	// The job that never ran: every series at zero, from WatchScheduler.
	for _, st := range []string{"succeeded", "failed", "abandoned"} {
		if v := counter("pgbaton_periodic_runs_total", "job", "nightly", "status", st); v != 0 {
			t.Errorf("nightly %s = %v", st, v)
		}
	}
	if v := series(t, mfs, "pgbaton_periodic_last_success_timestamp_seconds", gaugeType, "job", "nightly").GetGauge().GetValue(); v != 0 {
		t.Errorf("nightly last success = %v, want 0 (never)", v)
	}
	if n := hist("pgbaton_periodic_start_lateness_seconds", "job", "nightly"); n != 0 {
		t.Errorf("nightly lateness count = %d", n)
	}
	// ConstLabels reach every series.
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			found := false
			for _, lp := range s.GetLabel() {
				found = found || lp.GetName() == "env" && lp.GetValue() == "test"
			}
			if !found {
				t.Fatalf("%s: a series without the const label env=test", mf.GetName())
			}
		}
	}
}
