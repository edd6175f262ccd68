package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton/pgtest"
)

// The first seed: a session lock taken through a pool stays on the backend
// that took it after the connection goes back to the pool, and an unlock
// that lands on another pooled connection silently does nothing.
func TestSeed1PooledUnlockLeaksButLeaseReleases(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	admin := adminConn(t, dsn)
	k := KeyName("integrity-hash-retry")

	t.Run("control: plain pool leaks the lock", func(t *testing.T) {
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		// The job's lock statement runs on one pooled connection...
		c1, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ok bool
		if err := c1.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", k.ID()).Scan(&ok); err != nil || !ok {
			t.Fatalf("lock: %v %v", ok, err)
		}
		lockPID := int(c1.Conn().PgConn().PID())
		// ...its work borrows another while the first is still busy...
		c2, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c1.Release() // back to the pool, still locked
		// ...and the unlock runs there: false, plus a warning nobody reads.
		if err := c2.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", k.ID()).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		c2.Release()
		if ok {
			t.Fatal("control: the unlock on another pooled connection succeeded; the bug did not reproduce")
		}
		hs := holders(t, admin, k)
		if len(hs) != 1 || hs[0].PID != lockPID || hs[0].State != "idle" {
			t.Fatalf("control: pg_locks = %+v, want the lock still held by idle pooled backend %d", hs, lockPID)
		}
		// It stays held until that pooled connection is closed.
		pool.Close()
		waitFor(t, 5*time.Second, "pool close to free the leaked lock", func() bool { return len(holders(t, admin, k)) == 0 })
	})

	t.Run("pgbaton releases on the connection that took it", func(t *testing.T) {
		l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2 })
		// Many cycles, interleaved with other leases on the same
		// connections: every release lands on the right backend.
		var others []*Lease
		for i := range 20 {
			ls, err := l.TryAcquire(ctx, k)
			if err != nil {
				t.Fatalf("cycle %d: %v", i, err)
			}
			o, err := l.TryAcquire(ctx, KeyInt64(int64(i)))
			if err != nil {
				t.Fatal(err)
			}
			others = append(others, o)
			if err := ls.Release(); err != nil {
				t.Fatalf("cycle %d release: %v", i, err)
			}
			if hs := holders(t, admin, k); len(hs) != 0 {
				t.Fatalf("cycle %d: lock still held after Release: %+v", i, hs)
			}
		}
		for _, o := range others {
			if err := o.Release(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// The second seed: lock holders and their work drawing from one pool.
// At concurrency >= pool size every slot holds a lock and waits for a work
// connection that never frees up.
func TestSeed2SharedPoolDeadlocksButLockerDoesNot(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	const poolSize = 2
	const concurrency = 20 * poolSize
	newPool := func(t *testing.T) *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = poolSize
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	work := func(ctx context.Context, pool *pgxpool.Pool, i int) error {
		_, err := pool.Exec(ctx, "SELECT pg_sleep(0.001), $1::int", i)
		return err
	}

	t.Run("control: one pool for locks and work deadlocks", func(t *testing.T) {
		pool := newPool(t)
		// Every caller first takes its lock connection (BEGIN;
		// pg_advisory_xact_lock) from the pool, then needs a work
		// connection from the same pool. The test's timeout stands in
		// for "forever".
		allHeld := make(chan struct{}) // closed once every slot holds a lock
		var holdingLocks atomic.Int32
		var hung, done atomic.Int32
		var wg sync.WaitGroup
		// One deadline for every caller: when it passes, the holders give
		// their connections back at the same instant their waiters give
		// up, so a connection freed by the test's own timeout cannot count
		// as progress.
		deadline := time.Now().Add(2 * time.Second)
		for i := range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithDeadline(ctx, deadline)
				defer cancel()
				lockConn, err := pool.Acquire(cctx)
				if err != nil {
					hung.Add(1)
					return
				}
				defer lockConn.Release()
				tx, err := lockConn.Begin(cctx)
				if err != nil {
					hung.Add(1)
					return
				}
				defer tx.Rollback(context.Background())
				if _, err := tx.Exec(cctx, "SELECT pg_advisory_xact_lock($1)", int64(i)); err != nil {
					hung.Add(1)
					return
				}
				if holdingLocks.Add(1) == poolSize {
					close(allHeld)
				}
				select { // all slots hold a lock: the seed's steady state
				case <-allHeld:
				case <-cctx.Done():
				}
				if err := work(cctx, pool, i); err != nil {
					if errors.Is(err, context.DeadlineExceeded) {
						hung.Add(1)
					}
					return
				}
				done.Add(1)
			}()
		}
		wg.Wait()
		if done.Load() != 0 || hung.Load() != concurrency {
			t.Fatalf("control: %d calls completed, %d hung; want every call hung (the deadlock did not reproduce)", done.Load(), hung.Load())
		}
	})

	t.Run("pgbaton: locks on the lock pool, work on the app pool", func(t *testing.T) {
		pool := newPool(t)
		l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = poolSize })
		allHeld := make(chan struct{})
		var holding atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, 2*concurrency)
		for i := range concurrency {
			wg.Add(2)
			go func() { // session leases
				defer wg.Done()
				err := l.WithLock(ctx, KeyName(fmt.Sprintf("system:%d", i)), func(ctx context.Context) error {
					if holding.Add(1) == concurrency {
						close(allHeld)
					}
					select { // every caller holds its lock before any work starts
					case <-allHeld:
					case <-time.After(20 * time.Second):
						return errors.New("not every caller got its lock")
					}
					return work(ctx, pool, i)
				}, Wait(30*time.Second))
				if err != nil {
					errs <- fmt.Errorf("WithLock %d: %w", i, err)
				}
			}()
			go func() { // xact locks on the lock pool
				defer wg.Done()
				err := l.WithXactLock(ctx, KeyName(fmt.Sprintf("xact:%d", i%3)), func(ctx context.Context) error {
					return work(ctx, pool, i)
				}, Wait(30*time.Second))
				if err != nil {
					errs <- fmt.Errorf("WithXactLock %d: %w", i, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}
