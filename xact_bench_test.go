package pgbaton

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// BenchmarkWithXactLock compares WithXactLock with an empty fn against raw
// pgx doing BEGIN; pg_advisory_xact_lock; COMMIT on a pinned connection, in
// the same run, alternating in blocks so drift hits both alike.
//
//	go test -run '^$' -bench '^BenchmarkWithXactLock$' -benchtime 3000x -count 6 .
func BenchmarkWithXactLock(b *testing.B) {
	dsn := pgtest.Shared().NewDatabase(b)
	ctx := context.Background()
	l := newTestLocker(b, dsn, func(c *Config) { c.MaxConns = 2 })
	raw, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close(ctx)
	k := KeyName("bench.xact")
	noop := func(context.Context) error { return nil }
	rawOnce := func() error {
		return pgx.BeginFunc(ctx, raw, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", k.ID())
			return err
		})
	}
	baton := func() error { return l.WithXactLock(ctx, k, noop) }
	for range 200 { // warm up both paths
		if err := rawOnce(); err != nil {
			b.Fatal(err)
		}
		if err := baton(); err != nil {
			b.Fatal(err)
		}
	}
	var tRaw, tBaton time.Duration
	const block = 100
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		start := time.Now()
		for range n {
			if err := rawOnce(); err != nil {
				b.Fatal(err)
			}
		}
		tRaw += time.Since(start)
		start = time.Now()
		for range n {
			if err := baton(); err != nil {
				b.Fatal(err)
			}
		}
		tBaton += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(b.N)/tRaw.Seconds(), "raw-ops/s")
	b.ReportMetric(float64(b.N)/tBaton.Seconds(), "pgbaton-ops/s")
	b.ReportMetric(tRaw.Seconds()/tBaton.Seconds(), "pgbaton/raw")
}
