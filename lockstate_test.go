package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgbaton/pgbaton/pgtest"
)

// These tests hold the promise "an error means the caller holds nothing, and
// the key is free of us": session advisory locks outlive statement errors,
// and PostgreSQL can grant a lock and still fail the statement.

// blockFence makes drawing a fencing token wait: ALTER SEQUENCE on the
// counter takes SHARE ROW EXCLUSIVE, which conflicts with nextval's ROW
// EXCLUSIVE, until the returned function ends the transaction. A lock
// statement that draws a token then fails AFTER its grant, at will.
func blockFence(t *testing.T, dsn string) (unblock func()) {
	t.Helper()
	c := adminConn(t, dsn)
	tx, err := c.Begin(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(testCtx(t), "ALTER SEQUENCE pgbaton.fence_counter INCREMENT BY 1"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unblock = func() { once.Do(func() { _ = tx.Rollback(context.Background()) }) }
	t.Cleanup(unblock)
	return unblock
}

// waitingOnFence waits until the lock connection pid is blocked on a
// relation lock (nextval behind blockFence).
func waitingOnFence(t *testing.T, admin *pgx.Conn, pid uint32) {
	t.Helper()
	waitFor(t, 10*time.Second, "the lock statement to block in nextval", func() bool {
		var n int
		_ = admin.QueryRow(testCtx(t), `SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted AND locktype = 'relation'`, int(pid)).Scan(&n)
		return n > 0
	})
}

func fencedLocker(t *testing.T, mod ...func(*Config)) (dsn string, admin *pgx.Conn, l *Locker) {
	t.Helper()
	dsn = pgtest.Shared().NewDatabase(t)
	admin = adminConn(t, dsn)
	if err := Migrate(testCtx(t), admin, ""); err != nil {
		t.Fatal(err)
	}
	return dsn, admin, newTestLocker(t, dsn, append([]func(*Config){func(c *Config) { c.MaxConns = 2 }}, mod...)...)
}

// connPIDs lists the backend pids of l's lock connections.
func connPIDs(l *Locker) []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pids []uint32
	for _, c := range l.conns {
		pids = append(pids, c.pid)
	}
	return pids
}

// mustBeFree fails if anyone still holds k, naming the holders.
func mustBeFree(t *testing.T, admin *pgx.Conn, k Key, what string) {
	t.Helper()
	if hs := holders(t, admin, k); len(hs) > 0 {
		t.Fatalf("%s: key %q still held on the server by %+v", what, k, hs)
	}
}

// A lock granted and then failed by lock_timeout (55P03 at the grant: here
// the grant's nextval waits past the bound): the caller gets NotAcquired and
// the key must be free.
func TestWaitFailingAfterGrantLeavesNothing(t *testing.T) {
	t.Parallel()
	dsn, admin, l := fencedLocker(t)
	ctx := testCtx(t)
	k := KeyName("grant-then-timeout")
	unblock := blockFence(t, dsn)
	_, err := l.Acquire(ctx, k, Wait(300*time.Millisecond))
	if !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("Acquire = %v, want ErrNotAcquired", err)
	}
	mustBeFree(t, admin, k, "after a wait that failed at its grant")
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("Stats.Held = %d, want 0", st.Held)
	}
	unblock()
	// The Locker still works, on the same connections.
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	mustBeFree(t, admin, k, "after Release")
}

// An operator's pg_cancel_backend landing on a try after its grant.
func TestTryCancelledAfterGrantLeavesNothing(t *testing.T) {
	t.Parallel()
	dsn, admin, l := fencedLocker(t, func(c *Config) { c.MaxConns = 1 })
	ctx := testCtx(t)
	k := KeyName("try-then-cancel")
	// Another lease on the same connection must survive the clean-up.
	other, err := l.TryAcquire(ctx, KeyName("bystander"))
	if err != nil {
		t.Fatal(err)
	}
	unblock := blockFence(t, dsn)
	errc := make(chan error, 1)
	go func() {
		ls, err := l.TryAcquire(ctx, k)
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
	err = <-errc
	if !errors.Is(err, ErrStatementCanceled) || !containsCode(err, "57014") {
		t.Fatalf("TryAcquire = %v, want ErrStatementCanceled with the 57014", err)
	}
	unblock()
	mustBeFree(t, admin, k, "after a try cancelled after its grant")
	if st := l.Stats(); st.Held != 1 {
		t.Fatalf("Stats.Held = %d, want 1 (the bystander)", st.Held)
	}
	if other.Err() != nil {
		t.Fatalf("bystander lease ended: %v", other.Err())
	}
	if err := other.Release(); err != nil {
		t.Fatal(err)
	}
}

// The caller's context ends while its granted wait is still in the
// statement (drawing the token): Acquire returns the context's error and the
// key is free.
func TestWaitCancelledByCallerAfterGrantLeavesNothing(t *testing.T) {
	t.Parallel()
	dsn, admin, l := fencedLocker(t)
	k := KeyName("grant-then-ctx-cancel")
	unblock := blockFence(t, dsn)
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, k, Wait(20*time.Second))
		if err == nil {
			_ = ls.Release()
			err = errors.New("granted")
		}
		errc <- err
	}()
	waitFor(t, 10*time.Second, "the wait to block in nextval", func() bool {
		var n int
		_ = admin.QueryRow(testCtx(t), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE NOT l.granted AND l.locktype = 'relation' AND a.application_name LIKE 'pgbaton:%'`).Scan(&n)
		return n > 0
	})
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Acquire = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire did not return after its context was cancelled")
	}
	unblock()
	mustBeFree(t, admin, k, "after a wait cancelled after its grant")
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("Stats.Held = %d, want 0", st.Held)
	}
}

// An operator's pg_cancel_backend of a waiting lock connection does not end
// the caller's wait: the wait goes on for what is left of its bound.
func TestWaitSurvivesServerCancel(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	holder := newTestLocker(t, dsn)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2 })
	k := KeyName("cancelled-wait")
	h, err := holder.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, k, Wait(20*time.Second))
		if err == nil {
			err = ls.Release()
		}
		got <- err
	}()
	var pid int
	waitFor(t, 10*time.Second, "the waiter to queue", func() bool {
		_ = admin.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&pid)
		return pid != 0
	})
	if _, err := admin.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	// Queued again after the cancel.
	waitFor(t, 10*time.Second, "the waiter to queue again", func() bool {
		var n int
		_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		return n == 1
	})
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the wait ended with %v; want a grant after the holder released", err)
	}
	mustBeFree(t, admin, k, "after both released")
}

// The races of the issue, as found: a short wait expiring as the holder
// releases, and a caller's context ending right around the release. After
// every round, a waiter that got an error holds nothing on the server.
func TestWaitRacingReleaseLeavesNothing(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	a := newTestLocker(t, dsn)
	b := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2 })
	rounds := 120
	if testing.Short() {
		rounds = 40
	}
	granted, failed := 0, 0
	for i := range rounds {
		k := KeyName(fmt.Sprintf("race-%d", i))
		h, err := a.TryAcquire(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		hold := time.Duration(5+rand.IntN(10)) * time.Millisecond
		var ls *Lease
		var berr error
		done := make(chan struct{})
		if i%2 == 0 {
			go func() {
				defer close(done)
				ls, berr = b.Acquire(ctx, k, Wait(time.Duration(5+rand.IntN(10))*time.Millisecond))
			}()
		} else {
			wctx, cancel := context.WithCancel(ctx)
			go func() {
				defer close(done)
				ls, berr = b.Acquire(wctx, k, Wait(5*time.Second))
			}()
			time.AfterFunc(hold+time.Duration(rand.IntN(3000))*time.Microsecond, cancel)
		}
		time.Sleep(hold)
		if err := h.Release(); err != nil {
			t.Fatal(err)
		}
		<-done
		if berr == nil {
			granted++
			if err := ls.Release(); err != nil {
				t.Fatal(err)
			}
		} else {
			failed++
		}
		mustBeFree(t, admin, k, fmt.Sprintf("round %d (waiter error: %v)", i, berr))
		if st := b.Stats(); st.Held != 0 {
			t.Fatalf("round %d: Stats.Held = %d", i, st.Held)
		}
	}
	t.Logf("%d rounds: %d granted, %d ended without the lock; none left a lock behind", rounds, granted, failed)
}

// An operator's script cancelling "long-running queries" in a loop
// (pg_cancel_backend of every pgbaton backend): cancels land on heartbeats,
// tries and unlocks at random. A held lease is never lost to them, Release
// never fails because of them, and whatever a try reports, nothing but the
// held key is left on the server.
func TestServerCancelsNeverLoseOrLeak(t *testing.T) {
	t.Parallel()
	dsn, admin, l := fencedLocker(t, func(c *Config) {
		c.MaxConns = 1
		c.HeartbeatInterval = 10 * time.Millisecond
	})
	ctx := testCtx(t)
	held, err := l.TryAcquire(ctx, KeyName("held"))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var cancels int
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	defer halt()
	c := adminConn(t, dsn)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := c.QueryRow(ctx, `SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
				WHERE application_name LIKE 'pgbaton:%' AND datname = current_database()`).Scan(&n); err != nil {
				t.Error(err)
				return
			}
			cancels += n
		}
	})
	tries, tryErrs := 0, 0
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		k := KeyName(fmt.Sprintf("churn-%d", i%7))
		tries++
		ls, err := l.TryAcquire(ctx, k)
		if err != nil {
			if !errors.Is(err, ErrStatementCanceled) {
				t.Fatalf("try %d: %v", i, err)
			}
			tryErrs++
			continue
		}
		if err := ls.Release(); err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
	}
	halt()
	if err := held.Err(); err != nil {
		t.Fatalf("held lease lost to a cancel: %v", err)
	}
	for i := range 7 {
		mustBeFree(t, admin, KeyName(fmt.Sprintf("churn-%d", i)), "after the churn")
	}
	if hs := holders(t, admin, KeyName("held")); len(hs) != 1 {
		t.Fatalf("held key holders = %+v", hs)
	}
	if err := held.Release(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d cancels sent; %d tries, %d ended by a cancel", cancels, tries, tryErrs)
}

// A lock connection whose backend was terminated while idle, not yet
// noticed: the next try must not fail because of it (the statement never
// reached a live session, so it is retried on another connection).
func TestTryAfterIdleBackendTerminated(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 1 })
	for i := range 30 {
		k := KeyName(fmt.Sprintf("after-terminate-%d", i))
		pid := connPIDs(l)[0]
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", int(pid)); err != nil {
			t.Fatal(err)
		}
		ls, err := l.TryAcquire(ctx, k)
		if err != nil {
			t.Fatalf("round %d: TryAcquire right after the idle connection's backend was terminated: %v", i, err)
		}
		if err := ls.Release(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "a fresh connection", func() bool { return len(connPIDs(l)) == 1 && connPIDs(l)[0] != pid })
	}
}
