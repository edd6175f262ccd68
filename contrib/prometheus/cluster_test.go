package prometheus_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	prom "github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgbaton/pgbaton"
	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/inspect"
	"github.com/pgbaton/pgbaton/pgtest"
)

// countingQuerier counts the statements snapshots send.
type countingQuerier struct {
	*pgxpool.Pool
	n atomic.Int64
}

func (q *countingQuerier) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	q.n.Add(1)
	return q.Pool.QueryRow(ctx, sql, args...)
}

func (q *countingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	q.n.Add(1)
	return q.Pool.Query(ctx, sql, args...)
}

func TestClusterCollector(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	a := openLocker(t, dsn, func(c *pgbaton.Config) { c.InstanceName = "a" })
	if err := a.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	b := openLocker(t, dsn, func(c *pgbaton.Config) { c.InstanceName = "b" })

	held, err := a.TryAcquire(ctx, pgbaton.KeyName("orders:42"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	waiting := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		ls, err := b.Acquire(wctx, pgbaton.KeyName("orders:42"), pgbaton.Wait(30*time.Second))
		if err == nil {
			_ = ls.Release()
		}
		waiting <- err
	}()
	waitUntil(t, func() bool {
		var n int
		_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		return n == 1
	})

	// The registry writes names in batches; name the key for this snapshot
	// as `pgbaton locks --name` would.
	names := inspect.Options{Names: []string{"orders:42"}}
	// Two instances register the collector; the election lets one export.
	q := &countingQuerier{Pool: admin}
	ca, err := pgbatonprom.NewClusterCollector(q, pgbatonprom.ClusterOptions{Locker: a, MinInterval: time.Hour, Inspect: names})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := pgbatonprom.NewClusterCollector(admin, pgbatonprom.ClusterOptions{Locker: b, MinInterval: time.Hour, Inspect: names})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	regA, regB := prom.NewRegistry(), prom.NewRegistry()
	regA.MustRegister(ca)
	regB.MustRegister(cb)

	mfs := scrape(t, regA)
	if v := series(t, mfs, "pgbaton_cluster_exporter", dto.MetricType_GAUGE).GetGauge().GetValue(); v != 1 {
		t.Fatalf("first instance exporter = %v, want 1", v)
	}
	if v := series(t, mfs, "pgbaton_cluster_leases_held", dto.MetricType_GAUGE, "family", "orders", "mode", "exclusive").GetGauge().GetValue(); v != 1 {
		t.Errorf("orders exclusive held = %v, want 1", v)
	}
	if v := series(t, mfs, "pgbaton_cluster_lock_waiters", dto.MetricType_GAUGE, "family", "orders").GetGauge().GetValue(); v != 1 {
		t.Errorf("orders waiters = %v, want 1", v)
	}
	if v := series(t, mfs, "pgbaton_cluster_locks", dto.MetricType_GAUGE, "class", "waiting").GetGauge().GetValue(); v < 1 {
		t.Errorf("waiting keys = %v, want >= 1", v)
	}
	series(t, mfs, "pgbaton_cluster_oldest_wait_seconds", dto.MetricType_GAUGE, "family", "orders")

	mfsB := scrape(t, regB)
	if v := series(t, mfsB, "pgbaton_cluster_exporter", dto.MetricType_GAUGE).GetGauge().GetValue(); v != 0 {
		t.Fatalf("second instance exporter = %v, want 0", v)
	}
	if _, ok := mfsB["pgbaton_cluster_leases_held"]; ok {
		t.Fatal("the second instance exported the cluster's figures too: they would be counted twice")
	}

	// Within MinInterval the cached snapshot is served: the database sees
	// no new snapshot, however many scrapes.
	before := q.n.Load()
	if before == 0 {
		t.Fatal("the first scrape sent no statement")
	}
	for range 5 {
		scrape(t, regA)
	}
	if after := q.n.Load(); after != before {
		t.Errorf("5 scrapes inside MinInterval sent %d more statements, want 0", after-before)
	}

	// The exporter leaves: the other takes over at its next scrape.
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	if v := series(t, scrape(t, regB), "pgbaton_cluster_exporter", dto.MetricType_GAUGE).GetGauge().GetValue(); v != 1 {
		t.Fatalf("after the exporter closed, second instance exporter = %v, want 1", v)
	}
	cancel()
	if err := <-waiting; !errors.Is(err, context.Canceled) {
		t.Errorf("the waiting Acquire, cancelled while the key was held, returned %v; want context.Canceled", err)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
