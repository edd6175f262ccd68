package pgbaton

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// Fencing tokens cost: TryAcquire+Release with tokens (migrated schema),
// without (no schema), and raw pgx on one connection, in the same run; and
// raw pgx with the candidate ways of drawing a token in the lock statement:
// a sequence (what pgbaton does), a per-key counter row, and the
// transaction id. Every token-drawing session runs with
// synchronous_commit=on, as lock sessions do, so a drawn token survives a
// crash.
//
//	go test -run '^$' -bench 'TryAcquireRelease' -benchtime 3s .
//
// BenchmarkTryAcquireRelease runs on the shared test cluster (fsync=off);
// BenchmarkTryAcquireReleaseDurable starts a cluster with fsync=on, where
// a commit that must flush WAL pays for the disk.

func BenchmarkTryAcquireRelease(b *testing.B) {
	c := pgtest.Shared()
	benchTokens(b, func(b *testing.B) string { return c.NewDatabase(b) })
}

func BenchmarkTryAcquireReleaseDurable(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{
		"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n := 0
	benchTokens(b, func(b *testing.B) string {
		n++
		name := fmt.Sprintf("bench_%d", n)
		if err := c.CreateDatabase(ctx, name); err != nil {
			b.Fatal(err)
		}
		return c.DSN(name)
	})
}

func benchTokens(b *testing.B, newDB func(*testing.B) string) {
	key := KeyName("bench/token")
	migrated := func(b *testing.B) string {
		dsn := newDB(b)
		if err := Migrate(testCtx(b), adminConn(b, dsn), ""); err != nil {
			b.Fatal(err)
		}
		return dsn
	}
	locker := func(b *testing.B, dsn string, wantToken bool) {
		ctx := testCtx(b)
		l := newTestLocker(b, dsn, func(c *Config) { c.MaxConns = 1 })
		b.ResetTimer()
		for range b.N {
			ls, err := l.TryAcquire(ctx, key)
			if err != nil {
				b.Fatal(err)
			}
			if _, ok := ls.Token(); ok != wantToken {
				b.Fatalf("Token() ok = %v, want %v", ok, wantToken)
			}
			if err := ls.Release(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("locker/tokens", func(b *testing.B) { locker(b, migrated(b), true) })
	b.Run("locker/no-tokens", func(b *testing.B) { locker(b, newDB(b), false) })

	raw := func(b *testing.B, dsn, setup, lock string, scan func(pgx.Row) (bool, error)) {
		ctx := testCtx(b)
		c := adminConn(b, dsn)
		if _, err := c.Exec(ctx, "SET synchronous_commit = on"); err != nil {
			b.Fatal(err)
		}
		if setup != "" {
			if _, err := c.Exec(ctx, setup); err != nil {
				b.Fatal(err)
			}
		}
		id := key.ID()
		b.ResetTimer()
		for range b.N {
			ok, err := scan(c.QueryRow(ctx, lock, id))
			if err != nil || !ok {
				b.Fatalf("lock: %v, %v", ok, err)
			}
			var unlocked bool
			if err := c.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", id).Scan(&unlocked); err != nil || !unlocked {
				b.Fatalf("unlock: %v, %v", unlocked, err)
			}
		}
	}
	plain := func(r pgx.Row) (bool, error) {
		var ok bool
		err := r.Scan(&ok)
		return ok, err
	}
	withToken := func(r pgx.Row) (bool, error) {
		var ok bool
		var tok *int64
		err := r.Scan(&ok, &tok)
		return ok && tok != nil, err
	}
	b.Run("raw-pgx/no-token", func(b *testing.B) {
		raw(b, newDB(b), "", "SELECT pg_try_advisory_lock($1)", plain)
	})
	b.Run("raw-pgx/sequence", func(b *testing.B) {
		raw(b, migrated(b), "",
			"SELECT l, CASE WHEN l THEN nextval('pgbaton.fence_token') END FROM pg_try_advisory_lock($1) AS l", withToken)
	})
	b.Run("raw-pgx/counter-row", func(b *testing.B) {
		raw(b, newDB(b), "CREATE TABLE fence_counter (key bigint PRIMARY KEY, token bigint NOT NULL)",
			`WITH l AS (SELECT pg_try_advisory_lock($1) AS ok),
			      t AS (INSERT INTO fence_counter AS f (key, token) SELECT $1, 1 FROM l WHERE ok
			            ON CONFLICT (key) DO UPDATE SET token = f.token + 1 RETURNING f.token)
			 SELECT ok, (SELECT token FROM t) FROM l`, withToken)
	})
	b.Run("raw-pgx/xact-id", func(b *testing.B) {
		raw(b, newDB(b), "",
			"SELECT l, CASE WHEN l THEN pg_current_xact_id()::text::bigint END FROM pg_try_advisory_lock($1) AS l", withToken)
	})
}
