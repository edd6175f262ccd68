package pgbaton

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

func xactConfig(c *Config) {
	fastLoss(c)
	c.XactIdleTimeout = 400 * time.Millisecond
}

// The lock transaction outlives idle_in_transaction_session_timeout while
// fn runs, because the Locker heartbeats inside it.
func TestWithXactLockHeartbeatsOutliveIdleTimeout(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, xactConfig)
	other := newTestLocker(t, dsn)
	k := KeyName("long-job")
	err := l.WithXactLock(ctx, k, func(ctx context.Context) error {
		// The job's own work: three times the server's idle timeout.
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(3 * l.Config().XactIdleTimeout):
		}
		if _, err := other.TryAcquire(ctx, k); !errors.Is(err, ErrNotAcquired) {
			return errors.New("the xact lock was not held at the end of fn")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("WithXactLock = %v", err)
	}
	ls, err := other.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("COMMIT did not release: %v", err)
	}
	_ = ls.Release()
}

// A stalled process (no heartbeats) is reaped by the server, which frees the
// lock; the stalled holder's fn context is cancelled with the loss.
func TestWithXactLockStalledProcessIsReaped(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, xactConfig)
	admin := adminConn(t, dsn)
	k := KeyName("stalled-job")
	err := l.WithXactLock(ctx, k, func(fctx context.Context) error {
		l.mu.Lock()
		for _, c := range l.conns {
			if len(c.leases) > 0 {
				c.pauseHeartbeats.Store(true)
			}
		}
		l.mu.Unlock()
		select {
		case <-fctx.Done():
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("fn's context not cancelled after the server reaped the transaction")
		}
	})
	if !errors.Is(err, ErrLeaseLost) || !containsCode(err, "25P03") {
		t.Fatalf("WithXactLock = %v, want ErrLeaseLost caused by 25P03", err)
	}
	// The backend sends its FATAL and then exits; the lock goes with the
	// exit, a moment later.
	waitFor(t, 5*time.Second, "the reaped backend to free the lock", func() bool { return len(holders(t, admin, k)) == 0 })
}

func TestWithXactLockBusyAndShared(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	other := newTestLocker(t, dsn)
	k := KeyName("xact-busy")
	ls, err := other.TryAcquire(ctx, k, Shared)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	// Shared xact lock coexists with a shared session lease.
	if err := l.WithXactLock(ctx, k, func(context.Context) error { ran++; return nil }, Shared, Wait(time.Second)); err != nil {
		t.Fatal(err)
	}
	// Exclusive waits, bounded, and reports busy without running fn.
	err = l.WithXactLock(ctx, k, func(context.Context) error { ran++; return nil }, Wait(100*time.Millisecond))
	if !errors.Is(err, ErrNotAcquired) || ran != 1 {
		t.Fatalf("exclusive while shared held: err = %v, ran = %d", err, ran)
	}
	_ = ls.Release()
	// A failed fn still ends the transaction and frees the lock.
	boom := errors.New("boom")
	if err := l.WithXactLock(ctx, k, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error = %v", err)
	}
	again, err := other.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("after a failed fn: %v", err)
	}
	_ = again.Release()
}

// Within one Locker, a waiting exclusive request queues new shared requests
// behind it, as PostgreSQL's queue does across sessions (and as the fake
// does): otherwise a stream of shared leases of one process starves its own
// writer, here a WithXactLock.
func TestLocalWaitingExclusiveQueuesNewShared(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	k := KeyName("local-writer-first")
	reader, err := l.TryAcquire(ctx, k, Shared)
	if err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() {
		werr <- l.WithXactLock(ctx, k, func(context.Context) error { return nil }, Wait(20*time.Second))
	}()
	waitFor(t, 10*time.Second, "the writer to wait in-process", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		h := l.held[k.ident()]
		return h != nil && h.free != nil
	})
	ls, err := l.TryAcquire(ctx, k, Shared)
	if err == nil {
		_ = ls.Release()
	}
	if !errors.Is(err, ErrNotAcquired) {
		t.Errorf("shared try while an exclusive request of the same Locker waits: %v, want ErrNotAcquired", err)
	}
	if err := reader.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writer: %v", err)
	}
}
