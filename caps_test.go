package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMaxHeldKeysAndPerConnCap(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2; c.MaxLocksPerConn = 2; c.MaxHeldKeys = 3 })
	var held []*Lease
	for i := range 3 {
		ls, err := l.TryAcquire(ctx, KeyInt64(int64(i)))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ls)
	}
	if _, err := l.TryAcquire(ctx, KeyInt64(99)); !errors.Is(err, ErrTooManyLocks) {
		t.Fatalf("4th distinct key = %v, want ErrTooManyLocks (MaxHeldKeys)", err)
	}
	if err := held[0].Release(); err != nil {
		t.Fatal(err)
	}
	ls, err := l.TryAcquire(ctx, KeyInt64(99))
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	held = append(held[1:], ls)
	perConn := map[uint32]int{}
	for _, ls := range held {
		_, pid := ls.Session()
		perConn[pid]++
	}
	for pid, n := range perConn {
		if n > 2 {
			t.Fatalf("connection %d carries %d leases, MaxLocksPerConn is 2", pid, n)
		}
	}
	for _, ls := range held {
		_ = ls.Release()
	}

	// Per-connection cap: 2 connections × 2 locks, MaxHeldKeys at the max.
	l2 := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2; c.MaxLocksPerConn = 2 })
	held = nil
	for i := range 4 {
		ls, err := l2.TryAcquire(ctx, KeyInt64(int64(100+i)))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ls)
	}
	if _, err := l2.TryAcquire(ctx, KeyInt64(200)); !errors.Is(err, ErrTooManyLocks) {
		t.Fatalf("5th lease = %v, want ErrTooManyLocks", err)
	}
	for _, ls := range held {
		_ = ls.Release()
	}
}

// PostgreSQL's shared lock table is cluster-wide; when another session fills
// it, every session fails. pgbaton reports that as its own error and works
// again once there is room.
func TestLockTableFull(t *testing.T) {
	t.Parallel()
	cl := privateCluster(t, map[string]string{"max_locks_per_transaction": "10", "max_connections": "20"})
	ctx := testCtx(t)
	dsn := cl.DSN("postgres")
	l := newTestLocker(t, dsn)
	hog, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer hog.Close(context.Background())
	// Not atomic: the locks taken before the error stay held.
	_, err = hog.Exec(ctx, "SELECT pg_advisory_lock(g) FROM generate_series(1, 1000000) g")
	if !isCode(err, "53200") {
		t.Fatalf("filling the lock table: %v, want 53200", err)
	}
	_, err = l.TryAcquire(ctx, KeyName("no-room"))
	if !errors.Is(err, ErrLockTableFull) {
		t.Fatalf("TryAcquire with a full lock table = %v, want ErrLockTableFull", err)
	}
	if _, err := hog.Exec(ctx, "SELECT pg_advisory_unlock_all()"); err != nil {
		t.Fatal(err)
	}
	ls, err := l.TryAcquire(ctx, KeyName("no-room"))
	if err != nil {
		t.Fatalf("after the table drained: %v", err)
	}
	_ = ls.Release()
}

func TestRefuseHotStandby(t *testing.T) {
	t.Parallel()
	primary := privateCluster(t, nil)
	standby, err := primary.StartStandby(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Close() })
	_, err = New(testCtx(t), Config{ConnString: standby.DSN("postgres"), Logger: quietLogger()})
	if !errors.Is(err, ErrHotStandby) {
		t.Fatalf("New on a standby = %v, want ErrHotStandby", err)
	}
	l, err := New(testCtx(t), Config{ConnString: primary.DSN("postgres"), Logger: quietLogger()})
	if err != nil {
		t.Fatalf("control: New on the primary = %v", err)
	}
	_ = l.Close()
}

// 100,000 acquire/release cycles leave goroutines, connections and memory
// where they were. Not parallel: the heap and goroutine counts are the whole
// process's, and parallel tests would move them.
func TestNoLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 cycles")
	}
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 4 })
	const total, workers = 100_000, 4
	cycle := func(n, w int) {
		var wg sync.WaitGroup
		for g := range w {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range n / w {
					k := KeyInt64(int64(g*1_000_000 + i%50))
					ls, err := l.TryAcquire(ctx, k)
					if err != nil {
						t.Errorf("cycle %d: %v", i, err)
						return
					}
					if err := ls.Release(); err != nil {
						t.Errorf("cycle %d release: %v", i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	measure := func() (int, uint64) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapInuse
	}
	cycle(10_000, workers) // warm up: connections, prepared statements, pools
	g0, h0 := measure()
	conns0 := l.Stats().Conns
	cycle(total, workers)
	if t.Failed() {
		return
	}
	g1, h1 := measure()
	st := l.Stats()
	t.Logf("goroutines %d -> %d, heap in use %d KiB -> %d KiB, conns %d -> %d, stats %+v", g0, g1, h0>>10, h1>>10, conns0, st.Conns, st)
	if g1 > g0+2 { // other parallel tests may come and go
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
	if st.Conns > 4 || st.Held != 0 {
		t.Errorf("after the cycles: %d connections (max 4), %d keys held", st.Conns, st.Held)
	}
	if h1 > h0+8<<20 {
		t.Errorf("heap in use grew from %d KiB to %d KiB over %d cycles", h0>>10, h1>>10, total)
	}
	var backends int
	if err := adminConn(t, dsn).QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbaton:test:%' AND datname = current_database()").Scan(&backends); err != nil {
		t.Fatal(err)
	}
	if backends > 4 {
		t.Errorf("%d lock backends on the server, MaxConns is 4", backends)
	}
}

// Close ends waits, closes connections, reports held leases as lost with
// ErrLockerClosed, and is idempotent.
func TestClose(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	other := newTestLocker(t, dsn)
	ls, err := l.TryAcquire(ctx, KeyName("held"))
	if err != nil {
		t.Fatal(err)
	}
	blocker, err := other.TryAcquire(ctx, KeyName("busy"))
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Release()
	waitErr := make(chan error, 1)
	go func() {
		_, err := l.Acquire(ctx, KeyName("busy"), Wait(time.Minute))
		waitErr <- err
	}()
	admin := adminConn(t, dsn)
	waitFor(t, 10*time.Second, "the wait to queue", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
		return n == 1
	})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waitErr; !errors.Is(err, ErrLockerClosed) {
		t.Fatalf("wait during Close = %v, want ErrLockerClosed", err)
	}
	if !errors.Is(ls.Err(), ErrLeaseLost) || !errors.Is(ls.Err(), ErrLockerClosed) {
		t.Fatalf("held lease after Close: %v", ls.Err())
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.TryAcquire(ctx, KeyName("x")); !errors.Is(err, ErrLockerClosed) {
		t.Fatalf("TryAcquire after Close = %v", err)
	}
	waitFor(t, 5*time.Second, "the server to free the closed Locker's lock", func() bool { return len(holders(t, admin, KeyName("held"))) == 0 })
}

// Connections opened for a burst are closed once idle; the last one stays.
func TestIdleConnectionsRetire(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 4; c.MaxConnIdleTime = 200 * time.Millisecond })
	// Three blocking waits at once, behind another Locker's leases, each
	// on a connection of its own: the burst opens several connections,
	// whatever the machine's load.
	other := newTestLocker(t, dsn)
	var held []*Lease
	for i := range 3 {
		h, err := other.TryAcquire(ctx, KeyInt64(int64(i)))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			ls, err := l.Acquire(ctx, KeyInt64(int64(i)), Wait(20*time.Second))
			if err != nil {
				t.Error(err)
				return
			}
			_ = ls.Release()
		})
	}
	admin := adminConn(t, dsn)
	waitFor(t, 10*time.Second, "three waiters", func() bool {
		var n int
		_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		return n == 3
	})
	if n := l.Stats().Conns; n < 3 {
		t.Fatalf("three concurrent waits use %d connections, want at least 3", n)
	}
	for _, h := range held {
		_ = h.Release()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "idle connections to retire", func() bool { return l.Stats().Conns == 1 })
	if st := l.Stats(); st.Lost != 0 {
		t.Fatalf("retiring counted as loss: %+v", st)
	}
	ls, err := l.TryAcquire(ctx, KeyName("after-retire"))
	if err != nil {
		t.Fatal(err)
	}
	_ = ls.Release()
}

// Close must not wait for a network that answers nothing: a blocking wait
// and a held lease behind a black hole (the issue saw 39 s, longer than
// Kubernetes' 30 s grace).
func TestCloseBoundedUnderBlackHole(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, dsn := cl.NewDB(t)
	ctx := testCtx(t)
	p, err := pgtest.NewProxy(cl.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	other := newTestLocker(t, dsn)
	blocker, err := other.TryAcquire(ctx, KeyName("busy"))
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Release()
	l := newTestLocker(t, cl.ProxyDSN(p, name), func(c *Config) { c.MaxConns = 3 })
	held, err := l.TryAcquire(ctx, KeyName("held"))
	if err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() {
		_, err := l.Acquire(ctx, KeyName("busy"), Wait(20*time.Second))
		waitErr <- err
	}()
	admin := adminConn(t, dsn)
	waitFor(t, 10*time.Second, "the wait to queue", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
		return n == 1
	})
	p.BlackHole()
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if err := <-waitErr; !errors.Is(err, ErrLockerClosed) {
		t.Fatalf("wait during Close = %v, want ErrLockerClosed", err)
	}
	if !errors.Is(held.Err(), ErrLockerClosed) {
		t.Fatalf("held lease after Close: %v", held.Err())
	}
	// The documented bound is about 200 ms; 5 s leaves room for a loaded
	// machine and still fails the old behaviour (wait + LeaseTimeout).
	if took > 5*time.Second {
		t.Fatalf("Close took %s under a black hole", took)
	}
	t.Logf("Close under a black hole took %s", took.Round(time.Millisecond))
	p.Heal()
}

// A failed dial (the role's CONNECTION LIMIT) must not fail a try while an
// open lock connection has room.
func TestDialFailureFallsBackToOpenConnections(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	role := "limited_" + dbName(t, dsn)
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN CONNECTION LIMIT 1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = adminConn(t, dsn).Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
	})
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = role
	l := newTestLocker(t, "", func(c *Config) { c.ConnString = ""; c.ConnConfig = cfg; c.MaxConns = 4 })
	var wg sync.WaitGroup
	var failed atomic.Int32
	var first atomic.Value
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				ls, err := l.TryAcquire(ctx, KeyName(fmt.Sprintf("dial-%d-%d", g, i)))
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
					continue
				}
				if err := ls.Release(); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of 400 tries failed; first: %v", n, first.Load())
	}
}
