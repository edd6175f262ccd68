package pgbaton

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// countingConn counts the client's writes: one per round trip.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// connCounting opens a pgx connection whose socket writes are counted.
func connCounting(t testing.TB, dsn string) (*pgx.Conn, *atomic.Int64) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	writes := new(atomic.Int64)
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, writes}, nil
	}
	c, err := pgx.ConnectConfig(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c, writes
}

// TestTxHelpersOneRoundTrip: once pgx has cached the statement, TryLockTx
// and LockTx each cost exactly one round trip, like the raw statement.
func TestTxHelpersOneRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c, writes := connCounting(t, pgtest.Shared().NewDatabase(t))
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, tc := range []struct {
		name string
		fn   func() error
	}{
		{"TryLockTx", func() error { return TryLockTx(ctx, tx, KeyName("rt")) }},
		{"LockTx", func() error { return LockTx(ctx, tx, KeyName("rt")) }},
		{"raw", func() error {
			var ok bool
			return tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1::int8)", int64(7)).Scan(&ok)
		}},
	} {
		if err := tc.fn(); err != nil { // warm pgx's statement cache
			t.Fatal(err)
		}
		before := writes.Load()
		if err := tc.fn(); err != nil {
			t.Fatal(err)
		}
		if n := writes.Load() - before; n != 1 {
			t.Fatalf("%s: %d round trips, want 1", tc.name, n)
		}
	}
}

// benchTx runs op b.N times in transactions of 1,000 operations on one
// connection (the key is taken re-entrantly, so the lock table does not
// grow).
func benchTx(b *testing.B, op func(ctx context.Context, tx pgx.Tx) error) {
	ctx := context.Background()
	c, _ := connCounting(b, pgtest.Shared().NewDatabase(b))
	tx, err := c.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 && i%1000 == 0 {
			b.StopTimer()
			if err := tx.Commit(ctx); err != nil {
				b.Fatal(err)
			}
			if tx, err = c.Begin(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if err := op(ctx, tx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = tx.Commit(ctx)
}

func BenchmarkTryLockTx(b *testing.B) {
	k := KeyName("bench")
	benchTx(b, func(ctx context.Context, tx pgx.Tx) error { return TryLockTx(ctx, tx, k) })
}

func BenchmarkRawTryXactLock(b *testing.B) {
	id := KeyName("bench").ID()
	benchTx(b, func(ctx context.Context, tx pgx.Tx) error {
		var ok bool
		return tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1::int8)", id).Scan(&ok)
	})
}

func BenchmarkLockTx(b *testing.B) {
	k := KeyName("bench")
	benchTx(b, func(ctx context.Context, tx pgx.Tx) error { return LockTx(ctx, tx, k, Wait(5*time.Second)) })
}
