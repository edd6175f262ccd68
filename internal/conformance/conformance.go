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
	"runtime"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton"
)

// Topology says how the Lockers a case asks for relate to each other. Every
// case that uses several Lockers also runs with all of them being one Locker
// (callers in one process), and every case runs on a Locker with a single
// lock connection: in-process decisions must match what the server does
// between processes and what the documentation promises.
type Topology int

const (
	// Processes: every NewLocker is one more process.
	Processes Topology = iota
	// OneLocker: every NewLocker of a case returns the same Locker.
	OneLocker
	// OneConn: as OneLocker, with a single lock connection (MaxConns 1)
	// where the implementation has connections.
	OneConn
)

func (top Topology) String() string {
	switch top {
	case OneLocker:
		return "OneLocker"
	case OneConn:
		return "OneConn"
	}
	return "Processes"
}

// local is what NotAcquiredError.Local says of a try that conflicts with
// a lease of "another" Locker of the case.
func (top Topology) local() bool { return top != Processes }

// Env is one isolated lock space: Lockers made by one Env contend with each
// other like processes sharing a database (or, in the OneLocker and OneConn
// topologies, are one Locker); different Envs never contend.
type Env interface {
	// NewLocker returns one more Locker (one more process), or in the
	// OneLocker and OneConn topologies the Env's one Locker; it is closed at
	// the end of the test.
	NewLocker(t *testing.T) pgbaton.Interface
	// LoseKey makes every lease on k lost the way the implementation loses
	// leases (the real one: its backend is terminated).
	LoseKey(t *testing.T, k pgbaton.Key)
	// Waiting returns how many requests wait for k, or -1 if the Env
	// cannot see them (the real Locker queues requests that conflict with
	// its own leases in-process, where pg_locks does not show them).
	Waiting(t *testing.T, k pgbaton.Key) int
}

// Run runs every case, each in parallel with an Env of its own, in every
// topology where it means something new.
func Run(t *testing.T, newEnv func(t *testing.T, top Topology) Env) {
	for _, top := range []Topology{Processes, OneLocker, OneConn} {
		t.Run(top.String(), func(t *testing.T) {
			t.Parallel()
			for _, c := range cases {
				if top == OneLocker && !c.cross {
					continue // one Locker already: the same as Processes
				}
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					c.fn(t, newEnv(t, top), top)
				})
			}
		})
	}
}

// waitQueued waits until n requests wait for k. It returns false at once
// if the Env cannot see the queue.
func waitQueued(t *testing.T, e Env, k pgbaton.Key, n int) bool {
	t.Helper()
	if e.Waiting(t, k) < 0 {
		return false
	}
	waitUntil(t, "the waiter to queue", func() bool { return e.Waiting(t, k) == n })
	return true
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
	if na := mustNotAcquired(t, err, k, mode); na.Local != local {
		t.Fatalf("NotAcquiredError %+v, want local %v", *na, local)
	}
}

// mustNotAcquired checks err is a try's NotAcquiredError for k and mode,
// whatever its Local.
func mustNotAcquired(t *testing.T, err error, k pgbaton.Key, mode pgbaton.Mode) *pgbaton.NotAcquiredError {
	t.Helper()
	var na *pgbaton.NotAcquiredError
	if !errors.Is(err, pgbaton.ErrNotAcquired) || !errors.As(err, &na) {
		t.Fatalf("got %v, want a *NotAcquiredError", err)
	}
	if na.Key != k || na.Mode != mode || na.Waited != 0 {
		t.Fatalf("NotAcquiredError %+v, want key %q mode %s waited 0", *na, k, mode)
	}
	return na
}

// recovered runs f and returns what it panicked with (nil if it did not).
func recovered(f func()) (v any) {
	defer func() { v = recover() }()
	f()
	return nil
}

// panicValue is a value no implementation could produce by accident.
type panicValue struct{ name string }

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

// withFns are the two ways of running a function under a lock.
var withFns = []struct {
	name string
	run  func(l pgbaton.Interface, ctx context.Context, k pgbaton.Key, fn func(context.Context) error, opts ...pgbaton.Option) error
}{
	{"WithLock", pgbaton.Interface.WithLock},
	{"WithXactLock", pgbaton.Interface.WithXactLock},
}

// cases; cross marks those that use several Lockers.
var cases = []struct {
	name  string
	cross bool
	fn    func(t *testing.T, e Env, top Topology)
}{
	{"BusyAcrossProcesses", true, func(t *testing.T, e Env, top Topology) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.busy")
		ls := mustAcquire(t, a, k)
		_, err := b.TryAcquire(ctxFor(t), k)
		mustBusy(t, err, k, pgbaton.Exclusive, top.local())
		_, err = b.Acquire(ctxFor(t), k, pgbaton.Wait(0))
		mustBusy(t, err, k, pgbaton.Exclusive, top.local())
		mustRelease(t, ls)
		mustRelease(t, mustAcquire(t, b, k))
	}},
	{"LocalContentionNotReentrant", false, func(t *testing.T, e Env, top Topology) {
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
	{"SharedExclusiveMatrix", true, func(t *testing.T, e Env, top Topology) {
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
					mustBusy(t, err, k, req, top.local())
				}
				mustRelease(t, ls)
			}
		}
	}},
	{"BoundedWaitExpires", true, func(t *testing.T, e Env, top Topology) {
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
		if n := e.Waiting(t, k); n > 0 {
			t.Fatalf("%d requests still queued after the wait expired", n)
		}
		mustRelease(t, ls)
		mustRelease(t, mustAcquire(t, b, k))
	}},
	{"WaiterGrantedOnRelease", true, func(t *testing.T, e Env, top Topology) {
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
		waitQueued(t, e, k, 1) // if the queue is invisible, the handoff is checked without it
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
	{"SharedQueuesBehindWaitingExclusive", true, func(t *testing.T, e Env, top Topology) {
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
		if !waitQueued(t, e, k, 1) {
			mustRelease(t, reader)
			if err := <-errc; err != nil {
				t.Fatalf("writer: %v", err)
			}
			mustRelease(t, <-leases)
			t.Skip("the in-process queue is not visible here; pgbaton's TestLocalWaitingExclusiveQueuesNewShared checks it")
		}
		_, err := c.TryAcquire(ctxFor(t), k, pgbaton.Shared)
		if na := mustNotAcquired(t, err, k, pgbaton.Shared); top == Processes && na.Local {
			t.Fatalf("NotAcquiredError %+v, want local false", *na)
		}
		mustRelease(t, reader)
		w := <-leases
		if err := <-errc; err != nil {
			t.Fatalf("writer: %v", err)
		}
		mustRelease(t, w)
	}},
	{"CancelledWaitEnds", true, func(t *testing.T, e Env, top Topology) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.cancel")
		ls := mustAcquire(t, a, k)
		ctx, cancel := context.WithCancel(ctxFor(t))
		errc := make(chan error, 1)
		go func() {
			_, err := b.Acquire(ctx, k, pgbaton.Wait(20*time.Second))
			errc <- err
		}()
		waitQueued(t, e, k, 1) // if invisible, a cancel before the wait ends it just the same
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
	{"ReleaseIdempotent", false, func(t *testing.T, e Env, top Topology) {
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
	{"ForcedLoss", true, func(t *testing.T, e Env, top Topology) {
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
	{"WithLockCancelsWorkOnLoss", false, func(t *testing.T, e Env, top Topology) {
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
		select {
		case <-started:
		case err := <-errc:
			t.Fatalf("WithLock did not run fn: %v", err)
		}
		e.LoseKey(t, k)
		err := <-errc
		if cause := <-causes; !errors.Is(cause, pgbaton.ErrLeaseLost) || !errors.Is(err, pgbaton.ErrLeaseLost) {
			t.Fatalf("fn's context cause %v, WithLock %v; want ErrLeaseLost in both", cause, err)
		}
	}},
	{"WithLockRunsExclusively", true, func(t *testing.T, e Env, top Topology) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		k := pgbaton.KeyName("conformance.withlock")
		errFn := errors.New("fn failed")
		err := a.WithLock(ctxFor(t), k, func(ctx context.Context) error {
			_, err := b.TryAcquire(ctx, k)
			mustBusy(t, err, k, pgbaton.Exclusive, top.local())
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
	{"WithXactLockSerialises", true, func(t *testing.T, e Env, top Topology) {
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
		select {
		case <-inside:
		case err := <-errc:
			t.Fatalf("first WithXactLock did not run fn: %v", err)
		}
		err := b.WithXactLock(ctxFor(t), k, func(context.Context) error {
			t.Error("second WithXactLock ran while the first held the key")
			return nil
		}, pgbaton.Wait(100*time.Millisecond))
		if !errors.Is(err, pgbaton.ErrNotAcquired) {
			t.Fatalf("second WithXactLock: %v, want ErrNotAcquired", err)
		}
		_, err = b.TryAcquire(ctxFor(t), k)
		mustBusy(t, err, k, pgbaton.Exclusive, top.local())
		close(leave)
		if err := <-errc; err != nil {
			t.Fatalf("first WithXactLock: %v", err)
		}
		ran := false
		if err := b.WithXactLock(ctxFor(t), k, func(context.Context) error { ran = true; return nil }); err != nil || !ran {
			t.Fatalf("after the first committed: ran=%v err=%v", ran, err)
		}
	}},
	{"FnPanicReleases", true, func(t *testing.T, e Env, top Topology) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		for _, w := range withFns {
			k := pgbaton.KeyName("conformance.panic." + w.name)
			want := &panicValue{w.name}
			var fctx context.Context
			got := recovered(func() {
				_ = w.run(a, ctxFor(t), k, func(ctx context.Context) error {
					fctx = ctx
					panic(want)
				})
			})
			if got != want {
				t.Fatalf("%s: recovered %v, want the panic value unchanged", w.name, got)
			}
			if fctx == nil || fctx.Err() == nil {
				t.Fatalf("%s: fn's context still live after its panic", w.name)
			}
			// Free at once, for everyone: no wait.
			mustRelease(t, mustAcquire(t, b, k))
			mustRelease(t, mustAcquire(t, a, k))
		}
	}},
	{"FnGoexitReleases", true, func(t *testing.T, e Env, top Topology) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		for _, w := range withFns {
			k := pgbaton.KeyName("conformance.goexit." + w.name)
			returned := make(chan bool, 1)
			go func() {
				done := false
				defer func() { returned <- done }()
				_ = w.run(a, ctxFor(t), k, func(context.Context) error {
					runtime.Goexit() // as t.FailNow inside fn
					return nil
				})
				done = true
			}()
			if <-returned {
				t.Fatalf("%s returned after runtime.Goexit in fn", w.name)
			}
			mustRelease(t, mustAcquire(t, b, k))
		}
	}},
	{"FnCancelledReleases", true, func(t *testing.T, e Env, top Topology) {
		a, b := e.NewLocker(t), e.NewLocker(t)
		for _, w := range withFns {
			k := pgbaton.KeyName("conformance.cancel-fn." + w.name)
			ctx, cancel := context.WithCancel(ctxFor(t))
			inside := make(chan struct{})
			errc := make(chan error, 1)
			go func() {
				errc <- w.run(a, ctx, k, func(ctx context.Context) error {
					close(inside)
					<-ctx.Done()
					return ctx.Err()
				})
			}()
			select {
			case <-inside:
			case err := <-errc:
				t.Fatalf("%s did not run fn: %v", w.name, err)
			}
			cancel()
			if err := <-errc; !errors.Is(err, context.Canceled) || errors.Is(err, pgbaton.ErrLeaseLost) {
				t.Fatalf("%s cancelled: %v, want fn's context.Canceled and no loss", w.name, err)
			}
			mustRelease(t, mustAcquire(t, b, k))
		}
	}},
	{"InvalidInput", false, func(t *testing.T, e Env, top Topology) {
		a := e.NewLocker(t)
		if _, err := a.TryAcquire(ctxFor(t), pgbaton.Key{}); !errors.Is(err, pgbaton.ErrInvalidKey) {
			t.Fatalf("zero key: %v", err)
		}
		if _, err := a.Acquire(ctxFor(t), pgbaton.KeyName(string([]byte{0xff}))); !errors.Is(err, pgbaton.ErrInvalidKey) {
			t.Fatalf("invalid UTF-8 name: %v", err)
		}
		k := pgbaton.KeyName("x")
		fn := func(context.Context) error { t.Error("fn ran with invalid input"); return nil }
		for _, w := range withFns {
			if err := w.run(a, ctxFor(t), pgbaton.Key{}, fn); !errors.Is(err, pgbaton.ErrInvalidKey) {
				t.Fatalf("%s with the zero key: %v", w.name, err)
			}
		}
		for name, opt := range map[string]pgbaton.Option{"negative wait": pgbaton.Wait(-time.Second), "unknown mode": pgbaton.Mode(7)} {
			_, err := a.Acquire(ctxFor(t), k, opt)
			errs := map[string]error{"Acquire": err}
			if name == "unknown mode" { // TryAcquire ignores Wait
				_, errs["TryAcquire"] = a.TryAcquire(ctxFor(t), k, opt)
			}
			for _, w := range withFns {
				errs[w.name] = w.run(a, ctxFor(t), k, fn, opt)
			}
			for entry, err := range errs {
				if !errors.Is(err, pgbaton.ErrInvalidOption) {
					t.Errorf("%s with %s: %v, want ErrInvalidOption", entry, name, err)
				}
			}
		}
		// Nothing was left held by the refusals.
		mustRelease(t, mustAcquire(t, a, k))
	}},
}
