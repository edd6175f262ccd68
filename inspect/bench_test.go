package inspect_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/inspect"
	"github.com/pgbaton/pgbaton/pgtest"
)

// BenchmarkSnapshot10k: one Take with 10,000 held advisory locks (10
// sessions × 1,000 keys) and 10 waiters, against a raw count of pg_locks in
// the same run. The cluster is private because it needs a lock table larger
// than the default (max_locks_per_transaction = 256).
func BenchmarkSnapshot10k(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"max_locks_per_transaction": "256"}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateDatabase(ctx, "snap"); err != nil {
		b.Fatal(err)
	}
	dsn := c.DSN("snap")
	var conns []*pgx.Conn
	defer func() {
		for _, x := range conns {
			_ = x.Close(context.Background())
		}
	}()
	open := func(app string) *pgx.Conn {
		x, err := pgx.Connect(ctx, dsn+" application_name="+app)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, x)
		return x
	}
	const sessions, perSession, waiters = 10, 1000, 10
	for i := range sessions {
		x := open(fmt.Sprintf("pgbaton:bench-%d:1", i))
		if _, err := x.Exec(ctx, "SELECT count(pg_advisory_lock(g)) FROM generate_series($1::int8, $2::int8) g", i*perSession, (i+1)*perSession-1); err != nil {
			b.Fatal(err)
		}
	}
	for range waiters {
		x := open("waiter")
		x.PgConn().Exec(ctx, "SELECT pg_advisory_lock(0)") // queued; never read
		_ = x
	}
	admin := open("inspector")
	waitCount := func() int {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FILTER (WHERE NOT granted) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
		return n
	}
	for waitCount() < waiters {
		time.Sleep(5 * time.Millisecond)
	}
	s, err := inspect.Take(ctx, admin, inspect.Options{})
	if err != nil {
		b.Fatal(err)
	}
	held := 0
	for _, k := range s.Keys {
		held += len(k.Holders)
	}
	if held != sessions*perSession || len(s.Keys[0].Waiters) != waiters {
		b.Fatalf("snapshot: %d held, %d waiters", held, len(s.Keys[0].Waiters))
	}
	var took, raw time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := inspect.Take(ctx, admin, inspect.Options{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'").Scan(&n); err != nil {
			b.Fatal(err)
		}
		took, raw = took+t1.Sub(t0), raw+time.Since(t1)
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(took.Microseconds())/1000/float64(b.N), "snapshot-ms")
	b.ReportMetric(float64(raw.Microseconds())/1000/float64(b.N), "raw-count-ms")
	// The waiters' statements end when their connections close (deferred).
	for _, x := range conns[:sessions] {
		_, _ = x.Exec(ctx, "SELECT pg_advisory_unlock_all()")
	}
}
