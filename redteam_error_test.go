package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// Attacks on "an error means the caller holds nothing and the key is free
// of this Locker".

// A shared try that fails after its grant on the only connection, which
// already carries a shared lease of the same key: the session's count
// cannot be known, so the connection is closed and the other lease reported
// lost. Afterwards nothing of the Locker holds the key, and the Locker works.
func TestRedteamSharedTryFailingOnSessionSharingTheKey(t *testing.T) {
	t.Parallel()
	// The try is retried once on a new connection after its own was
	// closed; that dial waits for the blocked fence_prepare() until
	// ConnectTimeout.
	dsn, admin, l := fencedLocker(t, func(c *Config) { c.MaxConns = 1; c.ConnectTimeout = time.Second })
	ctx := testCtx(t)
	k := KeyName("redteam/shared-same-session")
	base, err := l.TryAcquire(ctx, k, Shared)
	if err != nil {
		t.Fatal(err)
	}
	unblock := blockFence(t, dsn)
	errc := make(chan error, 1)
	go func() {
		ls, err := l.TryAcquire(ctx, k, Shared)
		if err == nil {
			_ = ls.Release()
			err = errors.New("granted")
		}
		errc <- err
	}()
	pid := connPIDs(l)[0]
	waitingOnFence(t, admin, pid)
	if _, err := admin.Exec(ctx, "SELECT pg_cancel_backend($1)", int(pid)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = <-errc
	t.Logf("try error after %s: %v", time.Since(start), err)
	if err == nil || errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryAcquire = %v, want a failure", err)
	}
	_ = mustLose(t, base, time.Second) // it has already checked the error is ErrLeaseLost
	unblock()
	// The connection was closed: the server frees its locks when the
	// backend has read the goodbye.
	if hs := holders(t, admin, k); len(hs) > 0 {
		t.Logf("right after the error: key still held by %+v (the backend is exiting)", hs)
		waitFor(t, 2*time.Second, "the closed session's locks to go", func() bool { return len(holders(t, admin, k)) == 0 })
	}
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("Stats.Held = %d, want 0", st.Held)
	}
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("the Locker after the clean-up: %v", err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	t.Logf("done after %s", time.Since(start))
}

// A cancel storm on a single lock connection that keeps a shared lease of
// the key it also tries in shared mode: every failed try either closed the
// connection (the base lease is lost, and the key is free of the Locker) or
// left the session's count exactly as before (releasing the base frees the
// key on the server: no extra count leaked).
func TestRedteamSharedChurnUnderCancelStorm(t *testing.T) {
	t.Parallel()
	dsn, admin, l := fencedLocker(t, func(c *Config) {
		c.MaxConns = 1
		c.HeartbeatInterval = 10 * time.Millisecond
	})
	ctx := testCtx(t)
	k := KeyName("redteam/shared-churn")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	storm := adminConn(t, dsn)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = storm.Exec(ctx, `SELECT pg_cancel_backend(pid) FROM pg_stat_activity
				WHERE application_name LIKE 'pgbaton:%' AND datname = current_database()`)
		}
	})
	defer func() { close(stop); wg.Wait() }()
	take := func() *Lease {
		for {
			ls, err := l.TryAcquire(ctx, k, Shared)
			if err == nil {
				return ls
			}
			if !errors.Is(err, ErrStatementCanceled) && !errors.Is(err, ErrConnLost) && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrConnect) { // a cancel can land on a dial's set-up
				t.Fatalf("base TryAcquire: %v", err)
			}
		}
	}
	base := take()
	errs, closed := 0, 0
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		ls, err := l.TryAcquire(ctx, k, Shared)
		if err == nil {
			if rerr := ls.Release(); rerr != nil && base.Err() == nil {
				t.Fatalf("Release of the second shared lease: %v", rerr)
			}
			continue
		}
		errs++
		if errors.Is(err, ErrConnect) {
			continue // the storm cancelled a new connection's set-up: nothing was locked on it
		}
		if errors.Is(err, ErrNotAcquired) {
			t.Fatalf("a shared try on a key only we hold shared: %v", err)
		}
		if base.Err() != nil {
			closed++
			waitFor(t, 2*time.Second, "the closed session's locks to go", func() bool { return len(holders(t, admin, k)) == 0 })
			base = take()
			continue
		}
		// The connection survived: its count on k must be exactly the
		// base's one. Release the base (retrying the storm's cancels
		// inside Release is the Locker's job) and look.
		if rerr := base.Release(); rerr != nil {
			if !errors.Is(rerr, ErrLeaseLost) {
				t.Fatalf("base Release: %v", rerr)
			}
		}
		if l.Stats().Held == 0 {
			if hs := holders(t, admin, k); len(hs) > 0 {
				t.Fatalf("after try error %q and releasing the only lease, key still held by %+v", err, hs)
			}
		}
		base = take()
	}
	_ = base.Release()
	t.Logf("%d failed tries, %d of them closed the connection", errs, closed)
}

// WithXactLock and Acquire racing a holder's Release with short waits and
// context cancels, with MaxConns 1 (polling on the only connection) and 2
// (a blocking wait): after every call, a failure left nothing on the server,
// nothing idle in a transaction, and Stats.Held is 0.
func TestRedteamXactAndAcquireRacingRelease(t *testing.T) {
	t.Parallel()
	for _, mc := range []int{1, 2} {
		t.Run(fmt.Sprintf("MaxConns=%d", mc), func(t *testing.T) {
			t.Parallel()
			dsn := pgtest.Shared().NewDatabase(t)
			admin := adminConn(t, dsn)
			if err := Migrate(testCtx(t), admin, ""); err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t)
			a := newTestLocker(t, dsn)
			b := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = mc })
			granted, failed := 0, 0
			for i := range 40 {
				k := KeyName(fmt.Sprintf("redteam/xrace-%d", i))
				mode := Exclusive
				if i%4 == 3 {
					mode = Shared
				}
				h, err := a.TryAcquire(ctx, k)
				if err != nil {
					t.Fatal(err)
				}
				hold := time.Duration(3+rand.IntN(8)) * time.Millisecond
				wctx, cancel := context.WithCancel(ctx)
				wait := Wait(time.Duration(3+rand.IntN(10)) * time.Millisecond)
				if i%2 == 1 {
					wait = Wait(5 * time.Second)
					time.AfterFunc(hold+time.Duration(rand.IntN(3000))*time.Microsecond, cancel)
				}
				var berr error
				done := make(chan struct{})
				go func() {
					defer close(done)
					if i%3 == 0 {
						var ls *Lease
						ls, berr = b.Acquire(wctx, k, wait, mode)
						if berr == nil {
							berr = ls.Release()
							if berr != nil {
								berr = fmt.Errorf("release: %w", berr)
							}
						}
						return
					}
					berr = b.WithXactLock(wctx, k, func(context.Context) error { return nil }, wait, mode)
				}()
				time.Sleep(hold)
				if err := h.Release(); err != nil {
					t.Fatal(err)
				}
				<-done
				cancel()
				if berr == nil {
					granted++
				} else {
					failed++
					if errors.Is(berr, ErrLeaseLost) {
						t.Fatalf("round %d: %v", i, berr)
					}
				}
				mustBeFree(t, admin, k, fmt.Sprintf("round %d (error: %v)", i, berr))
				if st := b.Stats(); st.Held != 0 {
					t.Fatalf("round %d: Stats.Held = %d", i, st.Held)
				}
				if n := idleInTx(t, admin); n != 0 {
					t.Fatalf("round %d (error %v): %d lock sessions idle in transaction", i, berr, n)
				}
			}
			t.Logf("%d granted, %d ended without the lock", granted, failed)
		})
	}
}
