package pgbatontest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgbatontest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The shared semantics are tested by internal/conformance against both the
// fake and PostgreSQL; these tests cover what only the fake offers.

func TestDropIsNoticedAtRelease(t *testing.T) {
	ctx := context.Background()
	db := pgbatontest.NewDB()
	a, b := db.NewLocker(pgbatontest.Options{}), db.NewLocker(pgbatontest.Options{})
	k := pgbaton.KeyName("drop")
	ls, err := a.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Drop(ls) {
		t.Fatal("Drop found no lock")
	}
	if ls.Err() != nil {
		t.Fatal("a dropped lease looks lost before the process notices")
	}
	other, err := b.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("the dropped lock is not free: %v", err)
	}
	err = ls.Release()
	if !errors.Is(err, pgbaton.ErrLeaseLost) || !errors.Is(err, pgbaton.ErrUnlockFalse) {
		t.Fatalf("Release of a dropped lease: %v, want ErrLeaseLost caused by ErrUnlockFalse", err)
	}
	if err := other.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseLosesLeasesAndEndsWaits(t *testing.T) {
	ctx := context.Background()
	db := pgbatontest.NewDB()
	a, b := db.NewLocker(pgbatontest.Options{}), db.NewLocker(pgbatontest.Options{})
	k := pgbaton.KeyName("close")
	ls, err := a.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := a.Acquire(ctx, pgbaton.KeyName("other-held"), pgbaton.Wait(time.Minute))
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("uncontended Acquire: %v", err)
	}
	// A waiter of b on k, then close b: its wait ends.
	go func() {
		_, err := b.Acquire(ctx, k, pgbaton.Wait(time.Minute))
		errc <- err
	}()
	for db.Waiters(k) != 1 {
		time.Sleep(time.Millisecond)
	}
	_ = b.Close()
	if err := <-errc; !errors.Is(err, pgbaton.ErrLockerClosed) {
		t.Fatalf("wait across Close: %v", err)
	}
	_ = a.Close()
	<-ls.Done()
	if err := ls.Err(); !errors.Is(err, pgbaton.ErrLeaseLost) || !errors.Is(err, pgbaton.ErrLockerClosed) {
		t.Fatalf("lease after Close: %v", err)
	}
	if db.Holders(k) != 0 || a.Held() != 0 {
		t.Fatalf("holders %d, held %d after Close", db.Holders(k), a.Held())
	}
	if _, err := a.TryAcquire(ctx, k); !errors.Is(err, pgbaton.ErrLockerClosed) {
		t.Fatalf("TryAcquire after Close: %v", err)
	}
}

func TestTokensIncreasePerGrant(t *testing.T) {
	ctx := context.Background()
	l := pgbatontest.New()
	var last int64
	for i := 0; i < 3; i++ {
		ls, err := l.TryAcquire(ctx, pgbaton.KeyName("token"))
		if err != nil {
			t.Fatal(err)
		}
		tok, ok := ls.Token()
		if !ok || tok <= last {
			t.Fatalf("token %d (ok %v) after %d", tok, ok, last)
		}
		last = tok
		if err := ls.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

// The shared suite checks panics in WithLock and WithXactLock on both
// implementations; this checks the fake's own record of leases too.
func TestWithLockPanicLeavesNothingHeld(t *testing.T) {
	l := pgbatontest.New()
	k := pgbaton.KeyName("panic")
	want := errors.New("boom")
	func() {
		defer func() {
			got := recover()
			if err, _ := got.(error); !errors.Is(err, want) {
				t.Fatalf("recovered %v, want %v", got, want)
			}
		}()
		_ = l.WithXactLock(context.Background(), k, func(context.Context) error { panic(want) })
	}()
	if l.Held() != 0 || l.DB().Holders(k) != 0 {
		t.Fatalf("after a panic: held %d, holders %d", l.Held(), l.DB().Holders(k))
	}
}
