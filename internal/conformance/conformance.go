// Package conformance is one suite of lock semantics that runs against every
// implementation of [pgbaton.Interface]: the real Locker on PostgreSQL and
// the in-memory fake of package pgbatontest. A test that passes on one and
// fails on the other is a bug in the fake (or in the suite's assumptions).
//
// The suite asserts outcomes and orderings only, never durations, so it
// holds on a loaded machine and on both implementations.
package conformance

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton"
)

// Env is one isolated lock space: Lockers made by one Env contend with each
// other like processes sharing a database; different Envs never contend.
type Env interface {
	// NewLocker returns one more Locker (one more process), closed at the
	// end of the test.
	NewLocker(t *testing.T) pgbaton.Interface
	// LoseKey makes every lease on k lost the way the implementation loses
	// leases (the real one: its backend is terminated).
	LoseKey(t *testing.T, k pgbaton.Key)
	// Waiting returns how many requests wait for k in the server's queue.
	Waiting(t *testing.T, k pgbaton.Key) int
}

// Run runs every case, each in parallel with an Env of its own.
func Run(t *testing.T, newEnv func(t *testing.T) Env) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, newEnv(t))
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAcquire(t *testing.T, l pgbaton.Interface, k pgbaton.Key, opts ...pgbaton.Option) *pgbaton.Lease {
	t.Helper()
	ls, err := l.TryAcquire(ctxFor(t), k, opts...)
	if err != nil {
		t.Fatalf("TryAcquire(%q): %v", k, err)
	}
	return ls
}

// mustBusy checks err is a try's NotAcquiredError for k and mode.
func mustBusy(t *testing.T, err error, k pgbaton.Key, mode pgbaton.Mode, local bool) {
	t.Helper()
	var na *pgbaton.NotAcquiredError
	if !errors.Is(err, pgbaton.ErrNotAcquired) || !errors.As(err, &na) {
		t.Fatalf("got %v, want a *NotAcquiredError", err)
	}
	if na.Key != k || na.Mode != mode || na.Waited != 0 || na.Local != local {
		t.Fatalf("NotAcquiredError %+v, want key %q mode %s waited 0 local %v", *na, k, mode, local)
	}
}

func mustRelease(t *testing.T, ls *pgbaton.Lease) {
	t.Helper()
	if err := ls.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// mustEndLost checks a lease ended as lost, on every channel.
func mustEndLost(t *testing.T, ls *pgbaton.Lease) {
	t.Helper()
	select {
	case <-ls.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("lease not ended after its loss")
	}
	var lost *pgbaton.LeaseLostError
	if err := ls.Err(); !errors.As(err, &lost) || lost.Key != ls.Key() {
		t.Fatalf("Err() = %v, want a *LeaseLostError for %q", err, ls.Key())
	}
	if cause := context.Cause(ls.Context()); !errors.Is(cause, pgbaton.ErrLeaseLost) {
		t.Fatalf("Context cause = %v, want ErrLeaseLost", cause)
	}
	if err := ls.Release(); !errors.Is(err, pgbaton.ErrLeaseLost) {
		t.Fatalf("Release after loss = %v, want ErrLeaseLost", err)
	}
}

var cases = []struct {
	name string
	fn   func(t *testing.T, e Env)
}{
	{"BusyAcrossProcesses", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.busy")
		ls := mustAcquire(t, a, k)
		_, err := b.TryAcquire(ctxFor(t), k)
		mustBusy(t, err, k, pgbaton.Exclusive, false)
		_, err = b.Acquire(ctxFor(t), k, pgbaton.Wait(0))
		mustBusy(t, err, k, pgbaton.Exclusive, false)
		mustRelease(t, ls)
		mustRelease(t, mustAcquire(t, b, k))
	}},
	{"LocalContentionNotReentrant", func(t *testing.T, e Env) {
		a := e.NewLocker(t)
		k := pgbaton.KeyPair(3, 4)
		ls := mustAcquire(t, a, k)
		_, err := a.TryAcquire(ctxFor(t), k)
		mustBusy(t, err, k, pgbaton.Exclusive, true)
		_, err = a.TryAcquire(ctxFor(t), k, pgbaton.Shared)
		mustBusy(t, err, k, pgbaton.Shared, true)
		mustRelease(t, ls)
		mustRelease(t, mustAcquire(t, a, k))
	}},
	{"SharedExclusiveMatrix", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		modes := []pgbaton.Mode{pgbaton.Shared, pgbaton.Exclusive}
		for _, held := range modes {
			for _, req := range modes {
				k := pgbaton.KeyName("conformance.matrix." + held.String() + "." + req.String())
				ls := mustAcquire(t, a, k, held)
				other, err := b.TryAcquire(ctxFor(t), k, req)
				if held == pgbaton.Shared && req == pgbaton.Shared {
					if err != nil {
						t.Fatalf("shared after shared: %v", err)
					}
					mustRelease(t, other)
				} else {
					mustBusy(t, err, k, req, false)
				}
				mustRelease(t, ls)
			}
		}
	}},
	{"BoundedWaitExpires", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.bounded")
		ls := mustAcquire(t, a, k)
		ctx := ctxFor(t)
		_, err := b.Acquire(ctx, k, pgbaton.Wait(100*time.Millisecond))
		var na *pgbaton.NotAcquiredError
		if !errors.As(err, &na) || na.Waited <= 0 || na.Key != k {
			t.Fatalf("bounded wait: %v, want a *NotAcquiredError with Waited > 0", err)
		}
		if ctx.Err() != nil {
			t.Fatal("the context ended before the Wait bound")
		}
		if ls.Err() != nil {
			t.Fatalf("holder affected by a waiter's expiry: %v", ls.Err())
		}
		if n := e.Waiting(t, k); n != 0 {
			t.Fatalf("%d requests still queued after the wait expired", n)
		}
		mustRelease(t, ls)
		mustRelease(t, mustAcquire(t, b, k))
	}},
	{"WaiterGrantedOnRelease", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.handoff")
		ls := mustAcquire(t, a, k)
		got := make(chan *pgbaton.Lease, 1)
		errc := make(chan error, 1)
		go func() {
			l, err := b.Acquire(ctxFor(t), k, pgbaton.Wait(20*time.Second))
			got <- l
			errc <- err
		}()
		waitUntil(t, "the waiter to queue", func() bool { return e.Waiting(t, k) == 1 })
		released := time.Now()
		mustRelease(t, ls)
		l2, err := <-got, <-errc
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
		if l2.AcquiredAt().Before(released) {
			t.Fatal("the waiter was granted before the holder released")
		}
		if !errors.Is(ls.Err(), pgbaton.ErrReleased) || l2.Err() != nil {
			t.Fatalf("after handoff: old %v, new %v", ls.Err(), l2.Err())
		}
		mustRelease(t, l2)
	}},
	{"SharedQueuesBehindWaitingExclusive", func(t *testing.T, e Env) {
		a, b, c := e.NewLocker(t), e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.writer-first")
		reader := mustAcquire(t, a, k, pgbaton.Shared)
		errc := make(chan error, 1)
		leases := make(chan *pgbaton.Lease, 1)
		go func() {
			l, err := b.Acquire(ctxFor(t), k, pgbaton.Exclusive, pgbaton.Wait(20*time.Second))
			leases <- l
			errc <- err
		}()
		waitUntil(t, "the writer to queue", func() bool { return e.Waiting(t, k) == 1 })
		_, err := c.TryAcquire(ctxFor(t), k, pgbaton.Shared)
		mustBusy(t, err, k, pgbaton.Shared, false)
		mustRelease(t, reader)
		w := <-leases
		if err := <-errc; err != nil {
			t.Fatalf("writer: %v", err)
		}
		mustRelease(t, w)
	}},
	{"CancelledWaitEnds", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.cancel")
		ls := mustAcquire(t, a, k)
		ctx, cancel := context.WithCancel(ctxFor(t))
		errc := make(chan error, 1)
		go func() {
			_, err := b.Acquire(ctx, k, pgbaton.Wait(20*time.Second))
			errc <- err
		}()
		waitUntil(t, "the waiter to queue", func() bool { return e.Waiting(t, k) == 1 })
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled wait: %v, want context.Canceled", err)
		}
		if ls.Err() != nil {
			t.Fatalf("holder affected: %v", ls.Err())
		}
		mustRelease(t, ls)
		mustRelease(t, mustAcquire(t, b, k))
		if _, err := b.TryAcquire(ctx, k); !errors.Is(err, context.Canceled) {
			t.Fatalf("try with a cancelled context: %v", err)
		}
	}},
	{"ReleaseIdempotent", func(t *testing.T, e Env) {
		a := e.NewLocker(t)
		ls := mustAcquire(t, a, pgbaton.KeyInt64(-9))
		if ls.Err() != nil {
			t.Fatalf("Err while held: %v", ls.Err())
		}
		select {
		case <-ls.Done():
			t.Fatal("Done closed while held")
		default:
		}
		mustRelease(t, ls)
		mustRelease(t, ls)
		<-ls.Done()
		if !errors.Is(ls.Err(), pgbaton.ErrReleased) || !errors.Is(context.Cause(ls.Context()), pgbaton.ErrReleased) {
			t.Fatalf("after Release: Err %v, cause %v", ls.Err(), context.Cause(ls.Context()))
		}
	}},
	{"ForcedLoss", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.loss")
		ls := mustAcquire(t, a, k)
		e.LoseKey(t, k)
		mustEndLost(t, ls)
		// The lock is free for someone else.
		waitUntil(t, "the lost lock to be free", func() bool {
			l, err := b.TryAcquire(ctxFor(t), k)
			if err == nil {
				mustRelease(t, l)
			}
			return err == nil
		})
	}},
	{"WithLockCancelsWorkOnLoss", func(t *testing.T, e Env) {
		a := e.NewLocker(t)
		k := pgbaton.KeyName("conformance.withlock-loss")
		started := make(chan struct{})
		causes := make(chan error, 1)
		errc := make(chan error, 1)
		go func() {
			errc <- a.WithLock(ctxFor(t), k, func(ctx context.Context) error {
				close(started)
				<-ctx.Done()
				causes <- context.Cause(ctx)
				return ctx.Err()
			}, pgbaton.Wait(time.Second))
		}()
		<-started
		e.LoseKey(t, k)
		err := <-errc
		if cause := <-causes; !errors.Is(cause, pgbaton.ErrLeaseLost) || !errors.Is(err, pgbaton.ErrLeaseLost) {
			t.Fatalf("fn's context cause %v, WithLock %v; want ErrLeaseLost in both", cause, err)
		}
	}},
	{"WithLockRunsExclusively", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.withlock")
		errFn := errors.New("fn failed")
		err := a.WithLock(ctxFor(t), k, func(ctx context.Context) error {
			_, err := b.TryAcquire(ctx, k)
			mustBusy(t, err, k, pgbaton.Exclusive, false)
			return errFn
		})
		if !errors.Is(err, errFn) {
			t.Fatalf("WithLock returned %v, want fn's error", err)
		}
		mustRelease(t, mustAcquire(t, b, k))
		ls := mustAcquire(t, b, k)
		ran := false
		err = a.WithLock(ctxFor(t), k, func(context.Context) error { ran = true; return nil }, pgbaton.Wait(0))
		if ran || !errors.Is(err, pgbaton.ErrNotAcquired) {
			t.Fatalf("WithLock on a busy key with Wait(0): ran=%v err=%v", ran, err)
		}
		mustRelease(t, ls)
	}},
	{"WithXactLockSerialises", func(t *testing.T, e Env) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.xact")
		inside, leave := make(chan struct{}), make(chan struct{})
		errc := make(chan error, 1)
		go func() {
			errc <- a.WithXactLock(ctxFor(t), k, func(context.Context) error {
				close(inside)
				<-leave
				return nil
			})
		}()
		<-inside
		err := b.WithXactLock(ctxFor(t), k, func(context.Context) error {
			t.Error("second WithXactLock ran while the first held the key")
			return nil
		}, pgbaton.Wait(100*time.Millisecond))
		if !errors.Is(err, pgbaton.ErrNotAcquired) {
			t.Fatalf("second WithXactLock: %v, want ErrNotAcquired", err)
		}
		_, err = b.TryAcquire(ctxFor(t), k)
		mustBusy(t, err, k, pgbaton.Exclusive, false)
		close(leave)
		if err := <-errc; err != nil {
			t.Fatalf("first WithXactLock: %v", err)
		}
		ran := false
		if err := b.WithXactLock(ctxFor(t), k, func(context.Context) error { ran = true; return nil }); err != nil || !ran {
			t.Fatalf("after the first committed: ran=%v err=%v", ran, err)
		}
	}},
	{"InvalidInput", func(t *testing.T, e Env) {
		a := e.NewLocker(t)
		if _, err := a.TryAcquire(ctxFor(t), pgbaton.Key{}); !errors.Is(err, pgbaton.ErrInvalidKey) {
			t.Fatalf("zero key: %v", err)
		}
		if _, err := a.Acquire(ctxFor(t), pgbaton.KeyName(string([]byte{0xff}))); !errors.Is(err, pgbaton.ErrInvalidKey) {
			t.Fatalf("invalid UTF-8 name: %v", err)
		}
		if _, err := a.Acquire(ctxFor(t), pgbaton.KeyName("x"), pgbaton.Wait(-time.Second)); err == nil {
			t.Fatal("negative wait accepted")
		}
	}},
}
