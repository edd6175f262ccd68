package pgbaton

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

var errorsIs = errors.Is

func TestTryAcquireBusyAndRelease(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	a := newTestLocker(t, dsn)
	b := newTestLocker(t, dsn)
	ctx := testCtx(t)
	k := KeyName("orders.reconcile")

	ls, err := a.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if ls.Err() != nil {
		t.Fatalf("Err while held = %v", ls.Err())
	}
	_, err = b.TryAcquire(ctx, k)
	var nae *NotAcquiredError
	if !errors.Is(err, ErrNotAcquired) || !errors.As(err, &nae) || nae.Key != k || nae.Local {
		t.Fatalf("second holder: err = %v, want a remote *NotAcquiredError for %q", err, k)
	}
	admin := adminConn(t, dsn)
	_, pid := ls.Session()
	if hs := holders(t, admin, k); len(hs) != 1 || hs[0].PID != int(pid) || hs[0].Mode != "ExclusiveLock" {
		t.Fatalf("pg_locks = %+v, want one ExclusiveLock held by pid %d", hs, pid)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatalf("second Release = %v, want nil (idempotent)", err)
	}
	select {
	case <-ls.Done():
	default:
		t.Fatal("Done not closed after Release")
	}
	if !errors.Is(ls.Err(), ErrReleased) || !errors.Is(context.Cause(ls.Context()), ErrReleased) {
		t.Fatalf("after Release: Err = %v, cause = %v", ls.Err(), context.Cause(ls.Context()))
	}
	if hs := holders(t, admin, k); len(hs) != 0 {
		t.Fatalf("pg_locks after Release = %+v, want none", hs)
	}
	ls2, err := b.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("after release, other locker: %v", err)
	}
	_ = ls2.Release()
}

func TestKeySpacesAndForms(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	l := newTestLocker(t, dsn)
	other := newTestLocker(t, dsn)
	ctx := testCtx(t)
	admin := adminConn(t, dsn)
	// Same bits, different key spaces: no conflict.
	k64 := KeyInt64(1<<32 | 2)
	kp := KeyPair(1, 2)
	a, err := l.TryAcquire(ctx, k64)
	if err != nil {
		t.Fatal(err)
	}
	b, err := other.TryAcquire(ctx, kp)
	if err != nil {
		t.Fatalf("pair key conflicted with int8 key of the same bits: %v", err)
	}
	if len(holders(t, admin, k64)) != 1 || len(holders(t, admin, kp)) != 1 {
		t.Fatal("pg_locks does not show both keys in their spaces")
	}
	// Interop: raw SQL on the same key space sees the lock.
	var got bool
	if err := admin.QueryRow(ctx, "SELECT pg_try_advisory_lock(1, 2)").Scan(&got); err != nil || got {
		t.Fatalf("raw pg_try_advisory_lock(1,2) = %v, %v; want false (held by pgbaton)", got, err)
	}
	negative := KeyPair(-7, -1)
	c, err := l.TryAcquire(ctx, negative)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, "SELECT pg_try_advisory_lock(-7, -1)").Scan(&got); err != nil || got {
		t.Fatalf("negative pair key not visible to raw SQL: %v %v", got, err)
	}
	for _, ls := range []*Lease{a, b, c} {
		if err := ls.Release(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.TryAcquire(ctx, Key{}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("zero key: %v", err)
	}
}

func TestSharedExclusiveMatrix(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	cases := []struct {
		first, second Mode
		compatible    bool
	}{
		{Shared, Shared, true},
		{Shared, Exclusive, false},
		{Exclusive, Shared, false},
		{Exclusive, Exclusive, false},
	}
	for i, tc := range cases {
		for _, sameLocker := range []bool{false, true} {
			a := newTestLocker(t, dsn)
			b := a
			if !sameLocker {
				b = newTestLocker(t, dsn)
			}
			k := KeyInt64(int64(100 + i))
			first, err := a.TryAcquire(ctx, k, tc.first)
			if err != nil {
				t.Fatal(err)
			}
			second, err := b.TryAcquire(ctx, k, tc.second)
			if tc.compatible != (err == nil) {
				t.Fatalf("%s then %s (same locker %v): err = %v, compatible = %v", tc.first, tc.second, sameLocker, err, tc.compatible)
			}
			if err == nil {
				if err := second.Release(); err != nil {
					t.Fatal(err)
				}
			} else if nae := (*NotAcquiredError)(nil); !errors.As(err, &nae) || nae.Local != sameLocker {
				t.Fatalf("want NotAcquiredError with Local=%v, got %v", sameLocker, err)
			}
			if err := first.Release(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Leases are not re-entrant: the same Locker asking again is contention,
// decided locally without a round trip, and never a silent second grant on
// the same session (which PostgreSQL itself would allow).
func TestNotReentrant(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 1 })
	ctx := testCtx(t)
	k := KeyName("reentrant")
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.TryAcquire(ctx, k)
	var nae *NotAcquiredError
	if !errors.As(err, &nae) || !nae.Local {
		t.Fatalf("second TryAcquire on the same Locker = %v, want local busy", err)
	}
	start := time.Now()
	_, err = l.Acquire(ctx, k, Wait(50*time.Millisecond))
	if !errors.As(err, &nae) || nae.Waited <= 0 {
		t.Fatalf("bounded Acquire on the same Locker = %v, want wait expiry", err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("bounded wait returned before its bound")
	}
	// A waiter of the same Locker gets the key when the holder releases.
	got := make(chan error, 1)
	go func() {
		ls2, err := l.Acquire(ctx, k, Wait(10*time.Second))
		if err == nil {
			err = ls2.Release()
		}
		got <- err
	}()
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("local waiter: %v", err)
	}
}

func TestAcquireWaitsFIFOAndHandsOff(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	holder := newTestLocker(t, dsn)
	k := KeyName("handoff")
	ls, err := holder.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	admin := adminConn(t, dsn)
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		w := newTestLocker(t, dsn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := w.Acquire(ctx, k, Wait(30*time.Second))
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			if err := got.Release(); err != nil {
				t.Errorf("waiter %d release: %v", i, err)
			}
		}()
		// Enqueue waiters one at a time so FIFO order is defined.
		waitFor(t, 10*time.Second, "waiter to queue", func() bool {
			var waiting int
			_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&waiting)
			return waiting == i+1
		})
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d got the lock in position %d: not FIFO", got, want)
		}
		want++
	}
}

func TestAcquireBoundedWaitExpires(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	a := newTestLocker(t, dsn)
	b := newTestLocker(t, dsn)
	k := KeyName("bounded")
	ls, err := a.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Release()
	start := time.Now()
	_, err = b.Acquire(ctx, k, Wait(150*time.Millisecond))
	var nae *NotAcquiredError
	if !errors.As(err, &nae) || nae.Waited < 150*time.Millisecond {
		t.Fatalf("err = %v, want NotAcquiredError after the 150ms bound", err)
	}
	if time.Since(start) < 150*time.Millisecond {
		t.Fatal("returned before the bound")
	}
	// A context deadline shorter than the wait bounds it too.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = b.Acquire(cctx, k, Wait(time.Hour))
	if err == nil {
		t.Fatal("acquired a held lock")
	}
	if !errors.Is(err, ErrNotAcquired) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ctx deadline: err = %v", err)
	}
	if ls.Err() != nil {
		t.Fatalf("holder affected: %v", ls.Err())
	}
}

// Cancelling the context of a wait ends that wait only: leases already held
// by the same Locker stay held, and its connections survive.
func TestCancelWaitKeepsOtherLeases(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2 })
	other := newTestLocker(t, dsn)
	admin := adminConn(t, dsn)
	held := []Key{KeyName("kept-1"), KeyName("kept-2")}
	var leases []*Lease
	for _, k := range held {
		ls, err := l.TryAcquire(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, ls)
	}
	busy := KeyName("busy")
	blocker, err := other.TryAcquire(ctx, busy)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Release()
	for _, mode := range []Mode{Exclusive, Shared} {
		wctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := l.Acquire(wctx, busy, Wait(time.Minute), mode)
			errc <- err
		}()
		waitFor(t, 10*time.Second, "the wait to queue", func() bool {
			var n int
			_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
			return n >= 1
		})
		cancel()
		err := <-errc
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled wait returned %v, want context.Canceled", err)
		}
	}
	for i, ls := range leases {
		if ls.Err() != nil {
			t.Fatalf("lease %d lost by a cancelled wait: %v", i, ls.Err())
		}
		if hs := holders(t, admin, held[i]); len(hs) != 1 {
			t.Fatalf("lease %d no longer in pg_locks", i)
		}
	}
	if st := l.Stats(); st.Lost != 0 {
		t.Fatalf("stats after cancelled waits: %+v", st)
	}
	// The connections still work.
	ls, err := l.Acquire(ctx, KeyName("after-cancel"), Wait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range append(leases, ls) {
		if err := x.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWithLock(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	other := newTestLocker(t, dsn)
	k := KeyName("with-lock")
	ran := false
	err := l.WithLock(ctx, k, func(ctx context.Context) error {
		ran = true
		if _, err := other.TryAcquire(ctx, k); !errors.Is(err, ErrNotAcquired) {
			t.Errorf("inside WithLock another locker got %v", err)
		}
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("WithLock = %v, ran = %v", err, ran)
	}
	boom := errors.New("boom")
	if err := l.WithLock(ctx, k, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error not returned: %v", err)
	}
	ls, err := other.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("lock not released after WithLock: %v", err)
	}
	// Busy: WithLock with Wait(0) fails without running fn.
	err = l.WithLock(ctx, k, func(context.Context) error { t.Error("fn ran while busy"); return nil }, Wait(0))
	if !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("busy WithLock = %v", err)
	}
	_ = ls.Release()
}
