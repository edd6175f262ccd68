package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

func heldLen(l *Locker) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// waitQueued waits until n Exclusive requests of l wait in-process for id.
func waitXwait(t *testing.T, l *Locker, id ident, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("%d exclusive waiters", n), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		h := l.held[id]
		return h != nil && h.xwait == n
	})
}

// In-process queueing: a Shared request queued behind a waiting Exclusive
// one proceeds at once when that Exclusive waiter's context is cancelled;
// Close ends every queued waiter; nothing stays in l.held.
func TestRedteamQueueExclusiveCancelAndClose(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 3 })
	k := KeyName("redteam/queue")
	s1, err := l.TryAcquire(ctx, k, Shared)
	if err != nil {
		t.Fatal(err)
	}
	ectx, cancelE := context.WithCancel(ctx)
	eErr := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ectx, k, Wait(20*time.Second))
		if err == nil {
			_ = ls.Release()
		}
		eErr <- err
	}()
	waitXwait(t, l, k.ident(), 1)
	s2c := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, k, Shared, Wait(20*time.Second))
		if err == nil {
			err = ls.Release()
		}
		s2c <- err
	}()
	select {
	case err := <-s2c:
		t.Fatalf("a Shared request did not queue behind the waiting Exclusive one: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	start := time.Now()
	cancelE()
	if err := <-eErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled exclusive waiter: %v", err)
	}
	select {
	case err := <-s2c:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("shared waiter went %s after the exclusive waiter's cancel", time.Since(start).Round(time.Microsecond))
	case <-time.After(2 * time.Second):
		t.Fatal("the shared waiter stayed queued after the exclusive waiter gave up")
	}

	// Close with an Exclusive and a Shared waiter queued in-process.
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, m := range []Mode{Exclusive, Shared} {
		wg.Go(func() {
			_, err := l.Acquire(ctx, k, m, Wait(20*time.Second))
			errs <- err
		})
		if m == Exclusive {
			waitXwait(t, l, k.ident(), 1)
		}
	}
	time.Sleep(50 * time.Millisecond) // the shared one queues behind it
	_ = l.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrLockerClosed) {
			t.Fatalf("queued waiter after Close: %v", err)
		}
	}
	if !errors.Is(s1.Err(), ErrLockerClosed) {
		t.Fatalf("held shared lease after Close: %v", s1.Err())
	}
	if n := heldLen(l); n != 0 {
		t.Fatalf("len(l.held) = %d after Close", n)
	}
}

// Many keys through every path (grant, local busy, server busy, expired
// waits, cancelled waits, WithLock, WithXactLock): once everything is
// released, l.held is empty.
func TestRedteamQueueManyKeysNoGrowth(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 3 })
	other := newTestLocker(t, dsn)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 60 {
				k := KeyInt64(int64(g*1000 + i))
				ls, err := l.TryAcquire(ctx, k)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = l.TryAcquire(ctx, k)                              // local busy
				_, _ = l.Acquire(ctx, k, Wait(time.Millisecond))         // local wait expires
				_, _ = l.Acquire(ctx, k, Shared, Wait(time.Millisecond)) // shared behind exclusive
				_ = ls.Release()
				o, err := other.TryAcquire(ctx, k)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = l.TryAcquire(ctx, k)                        // server busy
				_, _ = l.Acquire(ctx, k, Wait(2*time.Millisecond)) // server wait expires
				_ = l.WithXactLock(ctx, k, func(context.Context) error { return nil }, Wait(time.Millisecond))
				_ = o.Release()
				_ = l.WithLock(ctx, k, func(context.Context) error { return nil })
			}
		})
	}
	wg.Wait()
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("Stats.Held = %d", st.Held)
	}
	if n := heldLen(l); n != 0 {
		t.Fatalf("len(l.held) = %d after every lease was released", n)
	}
}
