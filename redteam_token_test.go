package pgbaton

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgbaton/pgbaton/pgtest"
)

// Attacks on "fencing tokens strictly increase per key across crashes and
// restarts" with the epoch << 44 | unlogged counter scheme.

// rtCluster starts a private cluster with the schema migrated and returns a
// function opening admin connections (retried while the server recovers).
func rtCluster(t *testing.T) (*pgtest.Cluster, string, func() *pgx.Conn) {
	t.Helper()
	c := privateCluster(t, nil)
	dsn := c.DSN("postgres")
	admin := func() *pgx.Conn {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			conn, err := pgx.Connect(testCtx(t), dsn)
			if err == nil {
				t.Cleanup(func() { _ = conn.Close(context.Background()) })
				return conn
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // the server is recovering
		}
	}
	if err := Migrate(testCtx(t), admin(), ""); err != nil {
		t.Fatal(err)
	}
	return c, dsn, admin
}

// rtTake takes key with a try (retrying while the server restarts) and
// returns the lease's token.
func rtTake(t *testing.T, l *Locker, key Key) int64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ls, err := l.TryAcquire(testCtx(t), key)
		if err == nil {
			tok, ok := ls.Token()
			if rerr := ls.Release(); rerr != nil {
				t.Fatal(rerr)
			}
			if !ok {
				t.Fatal("no token on a migrated database")
			}
			return tok
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the server is restarting
	}
}

func fmtTok(v int64) string { return fmt.Sprintf("%d (epoch %d, counter %d)", v, v>>44, v&(1<<44-1)) }

// Package periodic draws tokens with <schema>.fence_next() on the
// application's pool (periodic/store.go), on sessions that never ran
// fence_prepare(). After a crash the first such draw used to mark the reset
// counter as called, so the epoch was never bumped and tokens went back.
// Now fence_next() refuses (PB001) until the epoch is bumped; periodic then
// runs fence_prepare() and marks the counter, as lock sessions do.
func TestRedteamTokenFenceNextAfterCrashGoesBack(t *testing.T) {
	t.Parallel()
	c, dsn, admin := rtCluster(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	key := KeyName("redteam/periodic-and-locker")
	var before int64
	for range 5 {
		before = rtTake(t, l, key)
	}
	var periodicBefore int64
	if err := admin().QueryRow(ctx, "SELECT pgbaton.fence_next()").Scan(&periodicBefore); err != nil {
		t.Fatal(err)
	}
	before = max(before, periodicBefore)
	if err := c.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	// A periodic run claims its tick first (as periodic's store does).
	var periodicAfter int64
	raw := admin()
	err := raw.QueryRow(ctx, "SELECT pgbaton.fence_next()").Scan(&periodicAfter)
	if !isCode(err, "PB001") {
		t.Fatalf("the first draw after a crash, before any epoch bump: %v (token %s), want refused with PB001", err, fmtTok(periodicAfter))
	}
	if _, err := raw.Exec(ctx, "SELECT pgbaton.fence_prepare()"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(ctx, "SELECT nextval('pgbaton.fence_counter')"); err != nil {
		t.Fatal(err)
	}
	if err := raw.QueryRow(ctx, "SELECT pgbaton.fence_next()").Scan(&periodicAfter); err != nil {
		t.Fatal(err)
	}
	after := rtTake(t, l, key)
	if periodicAfter <= before || after <= periodicAfter {
		t.Fatalf("tokens went back after a crash: largest before %s; periodic run after %s; Locker lease after %s",
			fmtTok(before), fmtTok(periodicAfter), fmtTok(after))
	}
}

// Tokens of periodic-style draws (fence_next() on a plain session) and
// Locker leases interleave monotonically while nothing crashes, and across
// a clean restart (the unlogged counter survives a shutdown checkpoint).
func TestRedteamTokenInterleaveAndCleanRestart(t *testing.T) {
	t.Parallel()
	c, dsn, admin := rtCluster(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	key := KeyName("redteam/interleave")
	raw := admin()
	var last int64
	step := func(what string, v int64) {
		t.Helper()
		if v <= last {
			t.Fatalf("%s: token %s not above %s", what, fmtTok(v), fmtTok(last))
		}
		last = v
	}
	for i := range 20 {
		if i%3 == 0 {
			var v int64
			if err := raw.QueryRow(ctx, "SELECT pgbaton.fence_next()").Scan(&v); err != nil {
				t.Fatal(err)
			}
			step("fence_next", v)
			continue
		}
		step("lease", rtTake(t, l, key))
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var epochAfter int64
	step("lease after a clean restart", rtTake(t, l, key))
	if err := admin().QueryRow(ctx, "SELECT epoch FROM pgbaton.fence_epoch").Scan(&epochAfter); err != nil {
		t.Fatal(err)
	}
	if epochAfter != last>>44 {
		t.Fatalf("epoch %d after a clean restart, last token %s", epochAfter, fmtTok(last))
	}
	var v int64
	if err := admin().QueryRow(ctx, "SELECT pgbaton.fence_next()").Scan(&v); err != nil {
		t.Fatal(err)
	}
	step("fence_next after a clean restart", v)
}

// Several Lockers connecting at once right after a crash race the epoch
// bump in fence_prepare(); a Locker whose connections were opened before the
// crash reconnects after it. Every token after the crash is above every
// token before, and no token repeats.
func TestRedteamTokenConcurrentConnectAfterCrash(t *testing.T) {
	t.Parallel()
	c, dsn, admin := rtCluster(t)
	ctx := testCtx(t)
	const n = 6
	lockers := make([]*Locker, n)
	for i := range lockers {
		lockers[i] = newTestLocker(t, dsn, func(cfg *Config) { cfg.MaxConns = 3 })
	}
	old := lockers[0] // connected before every crash
	var max0 int64
	for round := range 2 {
		for i := range 5 {
			max0 = max(max0, rtTake(t, old, KeyName(fmt.Sprintf("redteam/crash-%d", i))))
		}
		if err := c.Crash(ctx); err != nil {
			t.Fatal(err)
		}
		// Fresh Lockers (New dials at once) racing the existing ones.
		var mu sync.Mutex
		seen := map[int64]string{}
		var wg sync.WaitGroup
		for g := range 2 * n {
			wg.Go(func() {
				var l *Locker
				if g < n {
					l = lockers[g]
				} else {
					l = newTestLocker(t, dsn)
				}
				for i := range 5 {
					tok := rtTake(t, l, KeyName(fmt.Sprintf("redteam/crash-%d-%d", g, i)))
					mu.Lock()
					if prev, dup := seen[tok]; dup {
						t.Errorf("round %d: token %s handed out twice (%s and g%d)", round, fmtTok(tok), prev, g)
					}
					seen[tok] = fmt.Sprintf("g%d", g)
					mu.Unlock()
					if tok <= max0 {
						t.Errorf("round %d: g%d drew %s after the crash, not above %s", round, g, fmtTok(tok), fmtTok(max0))
					}
				}
			})
		}
		wg.Wait()
		var e int64
		if err := admin().QueryRow(ctx, "SELECT epoch FROM pgbaton.fence_epoch").Scan(&e); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: epoch %d after one crash, was %d", round, e, max0>>44)
		for tok := range seen {
			max0 = max(max0, tok)
		}
	}
}
