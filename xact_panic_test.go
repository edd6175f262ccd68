package pgbaton

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgbaton/pgbaton/pgtest"
)

// panicValue is a value no library code could produce by accident, so the
// recovered value proves the caller's panic went on unchanged.
type panicValue struct{ n int }

// recovered runs f and returns what it panicked with (nil if it did not).
func recovered(f func()) (v any) {
	defer func() { v = recover() }()
	f()
	return nil
}

// idleInTx counts this database's pgbaton backends idle in a transaction.
func idleInTx(t testing.TB, admin *pgx.Conn) int {
	t.Helper()
	var n int
	if err := admin.QueryRow(testCtx(t), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'pgbaton:%'
		  AND state LIKE 'idle in transaction%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// backendState is pg_stat_activity.state of pid, or "" if it is gone.
func backendState(t testing.TB, admin *pgx.Conn, pid int) string {
	t.Helper()
	var s string
	err := admin.QueryRow(testCtx(t), "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// xactConn returns the lock connection carrying l's (only) xact lease.
func xactConn(t testing.TB, l *Locker) *lockConn {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		for ls := range c.leases {
			if _, ok := ls.b.(xactBackend); ok {
				return c
			}
		}
	}
	t.Fatal("no xact lease on any lock connection")
	return nil
}

// mustBeClean checks that nothing of a finished WithXactLock remains: no
// lock on k in pg_locks, no backend idle in a transaction, nothing held
// in-process, and the lock connection pid idle (or closed).
func mustBeClean(t *testing.T, l *Locker, admin *pgx.Conn, k Key, pid int) {
	t.Helper()
	if hs := holders(t, admin, k); len(hs) != 0 {
		t.Fatalf("pg_locks still shows %+v on %q", hs, k)
	}
	if n := idleInTx(t, admin); n != 0 {
		t.Fatalf("%d lock backends idle in transaction", n)
	}
	if s := backendState(t, admin, pid); s != "idle" && s != "" {
		t.Fatalf("lock connection (pid %d) left in state %q, want idle or closed", pid, s)
	}
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("the Locker still reserves %d keys", st.Held)
	}
}

// A panic in WithXactLock's fn rolls the lock transaction back (work done on
// the lock connection is not committed), frees the key at once, returns the
// connection idle, and goes on with its own value.
func TestWithXactLockPanicRollsBackAndPropagates(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	admin := adminConn(t, dsn)
	if _, err := admin.Exec(ctx, "CREATE TABLE marker (n int)"); err != nil {
		t.Fatal(err)
	}
	k := KeyName("xact-panic")
	want := &panicValue{1}
	pid := 0
	got := recovered(func() {
		_ = l.WithXactLock(ctx, k, func(ctx context.Context) error {
			hs := holders(t, admin, k)
			if len(hs) != 1 {
				t.Errorf("pg_locks inside fn: %+v", hs)
			} else {
				pid = hs[0].PID
			}
			// Work on the lock connection itself: it must not commit.
			c := xactConn(t, l)
			if err := c.do(time.Now().Add(5*time.Second), func(ctx context.Context) error {
				_, err := c.pg.Exec(ctx, "INSERT INTO marker VALUES (1)").ReadAll()
				return err
			}); err != nil {
				t.Errorf("insert on the lock connection: %v", err)
			}
			panic(want)
		})
	})
	if got != want {
		t.Fatalf("recovered %v, want the original panic value %v", got, want)
	}
	mustBeClean(t, l, admin, k, pid)
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM marker").Scan(&n); err != nil || n != 0 {
		t.Fatalf("marker rows = %d (%v): the lock transaction committed after a panic", n, err)
	}
	ran := false
	if err := l.WithXactLock(ctx, k, func(context.Context) error { ran = true; return nil }, Wait(time.Second)); err != nil || !ran {
		t.Fatalf("next WithXactLock on the same key: ran=%v err=%v", ran, err)
	}
}

// runtime.Goexit in fn (t.FailNow does it) leaves nothing behind either.
func TestWithXactLockGoexitReleases(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	admin := adminConn(t, dsn)
	k := KeyName("xact-goexit")
	pid := 0
	exited := make(chan bool, 1)
	go func() {
		returned := false
		defer func() { exited <- returned }()
		_ = l.WithXactLock(ctx, k, func(ctx context.Context) error {
			if hs := holders(t, admin, k); len(hs) == 1 {
				pid = hs[0].PID
			}
			runtime.Goexit()
			return nil
		})
		returned = true
	}()
	if <-exited {
		t.Fatal("WithXactLock returned after runtime.Goexit in fn")
	}
	if pid == 0 {
		t.Fatal("the lock was not held inside fn")
	}
	mustBeClean(t, l, admin, k, pid)
	ran := false
	if err := l.WithXactLock(ctx, k, func(context.Context) error { ran = true; return nil }, Wait(time.Second)); err != nil || !ran {
		t.Fatalf("next WithXactLock on the same key: ran=%v err=%v", ran, err)
	}
}

// A panic in WithLock's fn releases the lease and goes on unchanged.
func TestWithLockPanicReleases(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	other := newTestLocker(t, dsn)
	admin := adminConn(t, dsn)
	k := KeyName("withlock-panic")
	want := &panicValue{2}
	var fctx context.Context
	got := recovered(func() {
		_ = l.WithLock(ctx, k, func(ctx context.Context) error {
			fctx = ctx
			if hs := holders(t, admin, k); len(hs) != 1 {
				t.Errorf("pg_locks inside fn: %+v", hs)
			}
			panic(want)
		})
	})
	if got != want {
		t.Fatalf("recovered %v, want the original panic value %v", got, want)
	}
	if hs := holders(t, admin, k); len(hs) != 0 {
		t.Fatalf("pg_locks after the panic: %+v", hs)
	}
	if fctx.Err() == nil {
		t.Fatal("fn's context still live after the panic")
	}
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("the Locker still reserves %d keys", st.Held)
	}
	ls, err := other.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("key not free after the panic: %v", err)
	}
	_ = ls.Release()
}

// With a single lock connection ("a dedicated client, max 1") WithXactLock
// runs, and tries and waits interleaved with it stay bounded and typed.
func TestWithXactLockMaxConnsOne(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) {
		c.MaxConns = 1
		c.ConnectTimeout = 300 * time.Millisecond // bounds a try's wait for the connection
	})
	admin := adminConn(t, dsn)
	kx, ky, kz := KeyName("one.x"), KeyName("one.y"), KeyName("one.z")

	ran := false
	if err := l.WithXactLock(ctx, kx, func(context.Context) error { ran = true; return nil }, Wait(5*time.Second)); err != nil || !ran {
		t.Fatalf("WithXactLock with MaxConns 1: ran=%v err=%v", ran, err)
	}

	// The only connection carries a session lease: the xact waits, bounded.
	ls, err := l.TryAcquire(ctx, ky)
	if err != nil {
		t.Fatal(err)
	}
	ran = false
	err = l.WithXactLock(ctx, kx, func(context.Context) error { ran = true; return nil }, Wait(200*time.Millisecond))
	if ran || !errors.Is(err, ErrTooManyLocks) {
		t.Fatalf("WithXactLock while the only connection carries a lease: ran=%v err=%v, want ErrTooManyLocks", ran, err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}

	// While an xact holds the only connection.
	inside, leave := make(chan struct{}), make(chan struct{})
	xerr := make(chan error, 1)
	go func() {
		xerr <- l.WithXactLock(ctx, kx, func(context.Context) error {
			close(inside)
			<-leave
			return nil
		})
	}()
	<-inside
	// The same key is decided in-process, without the connection.
	_, err = l.TryAcquire(ctx, kx)
	var na *NotAcquiredError
	if !errors.As(err, &na) || !na.Local {
		t.Fatalf("TryAcquire of the xact's key: %v, want a local *NotAcquiredError", err)
	}
	// Another key needs the connection: bounded, typed.
	if _, err := l.TryAcquire(ctx, ky); !errors.Is(err, ErrTooManyLocks) {
		t.Fatalf("TryAcquire during the xact: %v, want ErrTooManyLocks", err)
	}
	if _, err := l.Acquire(ctx, ky, Wait(200*time.Millisecond)); !errors.Is(err, ErrTooManyLocks) {
		t.Fatalf("Acquire during the xact: %v, want ErrTooManyLocks", err)
	}
	// A second xact and an Acquire wait for the connection and then run.
	second := make(chan error, 1)
	go func() {
		second <- l.WithXactLock(ctx, kz, func(context.Context) error { return nil }, Wait(20*time.Second))
	}()
	acq := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, ky, Wait(20*time.Second))
		if err == nil {
			err = ls.Release()
		}
		acq <- err
	}()
	close(leave)
	if err := <-xerr; err != nil {
		t.Fatalf("first WithXactLock: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second WithXactLock after the first: %v", err)
	}
	if err := <-acq; err != nil {
		t.Fatalf("Acquire after the xact: %v", err)
	}
	if n := idleInTx(t, admin); n != 0 {
		t.Fatalf("%d lock backends idle in transaction", n)
	}
	if st := l.Stats(); st.Conns != 1 || st.Held != 0 {
		t.Fatalf("stats %+v, want one connection and nothing held", st)
	}
}

// Every entry point refuses unusable options with ErrInvalidOption.
func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	k := KeyName("options")
	fn := func(context.Context) error { t.Error("fn ran with an invalid option"); return nil }
	for name, opt := range map[string]Option{"negative wait": Wait(-time.Second), "unknown mode": Mode(7)} {
		errs := map[string]error{
			"Acquire":      func() error { _, err := l.Acquire(ctx, k, opt); return err }(),
			"WithLock":     l.WithLock(ctx, k, fn, opt),
			"WithXactLock": l.WithXactLock(ctx, k, fn, opt),
		}
		if opt == Mode(7) {
			_, errs["TryAcquire"] = l.TryAcquire(ctx, k, opt)
		}
		for entry, err := range errs {
			if !errors.Is(err, ErrInvalidOption) {
				t.Errorf("%s with %s: %v, want ErrInvalidOption", entry, name, err)
			}
		}
	}
}

// A nil Option is skipped, as ResolveOptions, WithXactLock and the fake do
// (Acquire, TryAcquire and WithLock used to panic on it).
func TestNilOptionIgnored(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	k := KeyName("nil-option")
	for name, f := range map[string]func() error{
		"TryAcquire": func() error {
			ls, err := l.TryAcquire(ctx, k, nil)
			if err == nil {
				err = ls.Release()
			}
			return err
		},
		"Acquire": func() error {
			ls, err := l.Acquire(ctx, k, nil)
			if err == nil {
				err = ls.Release()
			}
			return err
		},
		"WithLock":     func() error { return l.WithLock(ctx, k, func(context.Context) error { return nil }, nil) },
		"WithXactLock": func() error { return l.WithXactLock(ctx, k, func(context.Context) error { return nil }, nil) },
	} {
		var err error
		if v := recovered(func() { err = f() }); v != nil || err != nil {
			t.Errorf("%s with a nil Option: panic %v, err %v", name, v, err)
		}
	}
}

// An error that aborts the lock transaction frees the lock (the lease ends
// lost) and the block is rolled back, so the connection is reused idle,
// never left "idle in transaction (aborted)".
func TestWithXactLockAbortedTransactionIsEnded(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	admin := adminConn(t, dsn)
	k := KeyName("xact-aborted")
	pid := 0
	err := l.WithXactLock(ctx, k, func(ctx context.Context) error {
		c := xactConn(t, l)
		pid = int(c.pid)
		_ = c.do(time.Now().Add(5*time.Second), func(ctx context.Context) error {
			_, err := c.pg.Exec(ctx, "SELECT 1/0").ReadAll()
			return err
		})
		return nil
	})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("WithXactLock after its transaction aborted: %v, want ErrLeaseLost", err)
	}
	mustBeClean(t, l, admin, k, pid)
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("TryAcquire on the same Locker: %v", err)
	}
	_ = ls.Release()
}
