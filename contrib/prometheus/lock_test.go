package prometheus_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/pgtest"
)

// TestLockMetricsScraped drives a Locker through every outcome (acquired,
// busy, timeout, error, release, shared mode and a loss by
// pg_terminate_backend) against real PostgreSQL, then scrapes the promhttp
// handler and checks each metric by name, type, labels and value.
func TestLockMetricsScraped(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	dsn := cl.NewDatabase(t)
	ctx := testCtx(t)
	m, err := pgbatonprom.New(pgbatonprom.Options{Families: []string{"declared"}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewPedanticRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	lost := make(chan pgbaton.Event, 1)
	l := openLocker(t, dsn, func(c *pgbaton.Config) {
		c.Observer = func(e pgbaton.Event) {
			m.Observe(e)
			if e.Kind == pgbaton.EventLoss {
				lost <- e
			}
		}
	})
	defer m.WatchLocker(l)()
	other := openLocker(t, dsn)

	// Before any event: the watched Locker's gauges, the declared family's
	// series at zero, nothing for families not seen yet.
	mfs := scrape(t, reg)
	if v := series(t, mfs, "pgbaton_leases_held", gaugeType).GetGauge().GetValue(); v != 0 {
		t.Fatalf("leases_held before any lease = %v", v)
	}
	for _, mode := range []string{"exclusive", "shared"} {
		for _, o := range []string{"acquired", "busy", "timeout", "error"} {
			h := series(t, mfs, "pgbaton_lease_acquire_duration_seconds", histogramType, "family", "declared", "mode", mode, "outcome", o).GetHistogram()
			if h.GetSampleCount() != 0 || len(h.GetBucket()) != len(pgbatonprom.DefaultAcquireBuckets)+1 { // +Inf bucket included
				t.Fatalf("declared/%s/%s: count %d, %d buckets", mode, o, h.GetSampleCount(), len(h.GetBucket()))
			}
		}
	}

	// acquired, and the gauges while held.
	k := pgbaton.KeyName("orders:1")
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	mfs = scrape(t, reg)
	if v := series(t, mfs, "pgbaton_leases_held", gaugeType).GetGauge().GetValue(); v != 1 {
		t.Fatalf("leases_held while holding one = %v", v)
	}
	if v := series(t, mfs, "pgbaton_lock_connections", gaugeType).GetGauge().GetValue(); v < 1 {
		t.Fatalf("lock_connections while holding = %v", v)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}

	// busy and timeout on another key of the same family.
	busyKey := pgbaton.KeyName("orders:2")
	h, err := other.TryAcquire(ctx, busyKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.TryAcquire(ctx, busyKey); !errors.Is(err, pgbaton.ErrNotAcquired) {
		t.Fatalf("TryAcquire of a held key: %v", err)
	}
	const wait = 50 * time.Millisecond
	if _, err := l.Acquire(ctx, busyKey, pgbaton.Wait(wait)); !errors.Is(err, pgbaton.ErrNotAcquired) {
		t.Fatalf("Acquire of a held key: %v", err)
	}
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}

	// error: a try on a closed Locker (errors before the call starts, such
	// as an invalid key or an already cancelled context, are not events).
	closed := openLocker(t, dsn, func(c *pgbaton.Config) { c.Observer = m.Observe })
	_ = closed.Close()
	if _, err := closed.TryAcquire(ctx, pgbaton.KeyName("orders:3")); !errors.Is(err, pgbaton.ErrLockerClosed) {
		t.Fatalf("TryAcquire on a closed Locker: %v", err)
	}

	// shared mode, and a pair key.
	sh, err := l.TryAcquire(ctx, pgbaton.KeyName("reports:weekly"), pgbaton.Shared)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Release(); err != nil {
		t.Fatal(err)
	}
	pr, err := l.TryAcquire(ctx, pgbaton.KeyPair(7, 9))
	if err != nil {
		t.Fatal(err)
	}
	if err := pr.Release(); err != nil {
		t.Fatal(err)
	}

	// loss: the lock connection terminated by an operator.
	victim, err := l.TryAcquire(ctx, pgbaton.KeyInt64(42))
	if err != nil {
		t.Fatal(err)
	}
	_, pid := victim.Session()
	if err := cl.TerminateBackend(ctx, int(pid)); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-lost:
		if e.Key != pgbaton.KeyInt64(42) {
			t.Fatalf("loss of %v", e.Key)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no loss event within 10s of pg_terminate_backend")
	}

	mfs = scrape(t, reg)
	acq := func(family, mode, outcome string) (uint64, float64) {
		t.Helper()
		h := series(t, mfs, "pgbaton_lease_acquire_duration_seconds", histogramType, "family", family, "mode", mode, "outcome", outcome).GetHistogram()
		return h.GetSampleCount(), h.GetSampleSum()
	}
	for _, c := range []struct {
		family, mode, outcome string
		count                 uint64
	}{
		{"orders", "exclusive", "acquired", 1},
		{"orders", "exclusive", "busy", 1},
		{"orders", "exclusive", "timeout", 1},
		{"orders", "exclusive", "error", 1},
		{"reports", "shared", "acquired", 1},
		{"reports", "shared", "busy", 0},
		{"pair", "exclusive", "acquired", 1},
		{"int8", "exclusive", "acquired", 1},
		{"int8", "exclusive", "timeout", 0},
	} {
		if n, _ := acq(c.family, c.mode, c.outcome); n != c.count {
			t.Errorf("acquire %s/%s/%s count = %d, want %d", c.family, c.mode, c.outcome, n, c.count)
		}
	}
	if _, sum := acq("orders", "exclusive", "timeout"); sum < wait.Seconds() {
		t.Errorf("timeout wait sum = %vs, want >= %vs", sum, wait.Seconds())
	}
	for _, c := range []struct {
		family, mode string
		count        uint64
	}{{"orders", "exclusive", 1}, {"reports", "shared", 1}, {"pair", "exclusive", 1}, {"int8", "exclusive", 1}} {
		if n := series(t, mfs, "pgbaton_lease_held_duration_seconds", histogramType, "family", c.family, "mode", c.mode).GetHistogram().GetSampleCount(); n != c.count {
			t.Errorf("held %s/%s count = %d, want %d", c.family, c.mode, n, c.count)
		}
	}
	lostTotal := func(family, cause string) float64 {
		t.Helper()
		return series(t, mfs, "pgbaton_lease_lost_total", counterType, "family", family, "cause", cause).GetCounter().GetValue()
	}
	if v := lostTotal("int8", "terminated"); v != 1 {
		t.Errorf("lost_total{int8,terminated} = %v, want 1", v)
	}
	for _, cause := range []string{"heartbeat_timeout", "unlock_false", "locker_closed", "state_unknown", "connection", "other"} {
		if v := lostTotal("int8", cause); v != 0 {
			t.Errorf("lost_total{int8,%s} = %v, want 0", cause, v)
		}
		if v := lostTotal("orders", cause); v != 0 {
			t.Errorf("lost_total{orders,%s} = %v, want 0", cause, v)
		}
	}
	if v := series(t, mfs, "pgbaton_leases_held", gaugeType).GetGauge().GetValue(); v != 0 {
		t.Errorf("leases_held after everything ended = %v", v)
	}
	// Families are bounded names, never raw key names.
	fams := labelValues(mfs, "pgbaton_lease_acquire_duration_seconds", "family")
	if want := []string{"declared", "int8", "orders", "pair", "reports"}; !slices.Equal(fams, want) {
		t.Errorf("families = %v, want %v", fams, want)
	}
	for _, f := range fams {
		if strings.Contains(f, ":") {
			t.Errorf("family label %q carries a raw key name", f)
		}
	}
}
