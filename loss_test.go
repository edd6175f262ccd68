package pgbaton

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// privateCluster starts a cluster of the test's own, for faults that would
// disturb every other test (restart, crash, a full lock table).
func privateCluster(t *testing.T, settings map[string]string) *pgtest.Cluster {
	t.Helper()
	c, err := pgtest.Start(testCtx(t), pgtest.Options{Settings: settings, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestLossOnTerminateBackend(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	dsn := cl.NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 1 })
	// Two leases on one connection: losing it loses both at once.
	a, err := l.TryAcquire(ctx, KeyName("a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.TryAcquire(ctx, KeyName("b"))
	if err != nil {
		t.Fatal(err)
	}
	_, pidA := a.Session()
	if _, pidB := b.Session(); pidA != pidB {
		t.Fatalf("want both leases on one connection, got pids %d and %d", pidA, pidB)
	}
	if err := cl.TerminateBackend(ctx, int(pidA)); err != nil {
		t.Fatal(err)
	}
	for _, ls := range []*Lease{a, b} {
		err := mustLose(t, ls, 5*time.Second)
		var lost *LeaseLostError
		if !errors.As(err, &lost) || lost.Key != ls.Key() || !isCode(errors.Unwrap(errors.Unwrap(lost.Cause)), "57P01") && !containsCode(err, "57P01") {
			t.Fatalf("loss cause = %v, want the 57P01 termination", err)
		}
		if rerr := ls.Release(); !errors.Is(rerr, ErrLeaseLost) {
			t.Fatalf("Release after loss = %v, want the loss", rerr)
		}
	}
	// The Locker recovers: a new connection takes the key again.
	c, err := l.TryAcquire(ctx, KeyName("a"))
	if err != nil {
		t.Fatalf("after the loss: %v", err)
	}
	_ = c.Release()
	if st := l.Stats(); st.Lost != 2 {
		t.Fatalf("Stats.Lost = %d, want 2", st.Lost)
	}
}

func containsCode(err error, code string) bool {
	return err != nil && (isCode(err, code) || contains(err.Error(), code))
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestWithLockContextCancelledOnLoss(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	dsn := cl.NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	k := KeyName("with-lock-loss")
	inside := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- l.WithLock(ctx, k, func(ctx context.Context) error {
			inside <- "in"
			<-ctx.Done()
			if !errors.Is(context.Cause(ctx), ErrLeaseLost) {
				return errors.New("fn context cancelled without the loss as its cause")
			}
			return nil
		})
	}()
	<-inside
	n, err := cl.TerminateApp(ctx, dbName(t, dsn), "pgbaton:test:%")
	if err != nil || n == 0 {
		t.Fatalf("TerminateApp = %d, %v", n, err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("WithLock = %v, want ErrLeaseLost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fn's context was not cancelled on loss")
	}
}

func dbName(t testing.TB, dsn string) string {
	var name string
	if err := adminConn(t, dsn).QueryRow(testCtx(t), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}

// A server restart and a crash of an unrelated backend (the postmaster then
// restarts every session) both end every lease, loudly, and the Locker
// recovers once the server is back.
func TestLossOnRestartAndCrash(t *testing.T) {
	t.Parallel()
	cl := privateCluster(t, nil)
	ctx := testCtx(t)
	dsn := cl.DSN("postgres")
	l := newTestLocker(t, dsn)
	faults := []struct {
		name   string
		inject func() error
	}{
		{"restart", func() error { return cl.Restart(ctx) }},
		{"crash of an unrelated backend", func() error { return cl.Crash(ctx) }},
	}
	for _, f := range faults {
		ls, err := l.TryAcquire(ctx, KeyName(f.name))
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if err := f.inject(); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		_ = mustLose(t, ls, 10*time.Second) // it has already checked the error is ErrLeaseLost
		var again *Lease
		waitFor(t, 20*time.Second, "the locker to take a lock again after "+f.name, func() bool {
			again, err = l.TryAcquire(ctx, KeyName(f.name))
			return err == nil
		})
		if err := again.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

// idle_session_timeout set on the database (or role) would end an idle lock
// session and silently free its locks; lock sessions pin it to 0. The control
// shows the setting does kill an ordinary session.
func TestIdleSessionTimeoutCannotEndLease(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	dsn := cl.NewDatabase(t)
	ctx := testCtx(t)
	if err := cl.AlterDatabaseSet(ctx, dbName(t, dsn), "idle_session_timeout", "300ms"); err != nil {
		t.Fatal(err)
	}
	// HeartbeatInterval 1s: without the pin, the session would sit idle
	// longer than 300ms between heartbeats.
	l := newTestLocker(t, dsn)
	ls, err := l.TryAcquire(ctx, KeyName("idle"))
	if err != nil {
		t.Fatal(err)
	}
	control := adminConn(t, dsn)
	deadline := time.After(2 * time.Second)
	select {
	case <-ls.Done():
		t.Fatalf("lease lost to idle_session_timeout: %v", ls.Err())
	case <-deadline:
	}
	if err := control.Ping(ctx); err == nil {
		t.Fatal("control: an ordinary idle session survived idle_session_timeout; the test proves nothing")
	}
	if hs := holders(t, adminConn(t, dsn), KeyName("idle")); len(hs) != 1 {
		t.Fatalf("lock no longer held: %+v", hs)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
}

// A black-holed network (packets silently dropped, no FIN, no RST): the
// client stops confirming heartbeats and reports the loss within LeaseTimeout.
func TestLossOnProxyBlackHole(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, _ := cl.NewDB(t)
	ctx := testCtx(t)
	p, err := pgtest.NewProxy(cl.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	l := newTestLocker(t, cl.ProxyDSN(p, name), fastLoss)
	ls, err := l.TryAcquire(ctx, KeyName("black-hole"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.BlackHole()
	err = mustLose(t, ls, 10*time.Second)
	if !errors.Is(err, ErrHeartbeatTimeout) {
		t.Fatalf("cause = %v, want ErrHeartbeatTimeout", err)
	}
	t.Logf("loss reported %s after the black hole (LeaseTimeout %s)", time.Since(start).Round(time.Millisecond), l.Config().LeaseTimeout)
	p.Heal()
}

// Under a real network cut the holder must learn of the loss BEFORE the
// server frees the lock for someone else: the order, measured on both sides.
func TestLossReportedBeforeServerFrees(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, dsn := cl.NewDB(t)
	ctx := testCtx(t)
	l := newTestLocker(t, cl.TCPDSN(name), fastLoss)
	k := KeyName("partitioned")
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	local := ls.conn().pg.Conn().LocalAddr().(*net.TCPAddr)
	cut, err := pgtest.CutPort(ctx, local.Port)
	if errors.Is(err, pgtest.ErrNetCutUnsupported) && os.Getenv("CI") == "" {
		t.Skipf("no packet filter here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cut.Heal() })
	cutAt := time.Now()
	admin := adminConn(t, dsn)
	var clientLost, serverFreed time.Duration
	for clientLost == 0 || serverFreed == 0 {
		if time.Since(cutAt) > 30*time.Second {
			t.Fatalf("after 30s: client lost at %v, server freed at %v", clientLost, serverFreed)
		}
		if clientLost == 0 {
			select {
			case <-ls.Done():
				clientLost = time.Since(cutAt)
			default:
			}
		}
		if serverFreed == 0 && len(holders(t, admin, k)) == 0 {
			serverFreed = time.Since(cutAt)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("client reported the loss after %s; server freed the lock after %s", clientLost.Round(time.Millisecond), serverFreed.Round(time.Millisecond))
	if clientLost >= serverFreed {
		t.Fatalf("the server freed the lock (%s) before the holder knew it lost it (%s)", serverFreed, clientLost)
	}
	if !errors.Is(ls.Err(), ErrLeaseLost) {
		t.Fatalf("Err = %v", ls.Err())
	}
}

// A lease granted after a wait longer than LeaseTimeout starts with a fresh
// bound: the wait's answer alone only proves the connection was alive when
// the wait began.
func TestLongWaitGrantIsNotBornLost(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	holder := newTestLocker(t, dsn)
	waiter := newTestLocker(t, dsn, fastLoss)
	k := KeyName("long-wait")
	ls, err := holder.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	granted := make(chan *Lease, 1)
	go func() {
		got, err := waiter.Acquire(ctx, k, Wait(30*time.Second))
		if err != nil {
			t.Error(err)
		}
		granted <- got
	}()
	admin := adminConn(t, dsn)
	waitFor(t, 10*time.Second, "the waiter to queue", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
		return n == 1
	})
	// Hold for twice the waiter's lease bound.
	time.Sleep(2 * waiter.Config().LeaseTimeout)
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	got := <-granted
	if got == nil {
		return
	}
	select {
	case <-got.Done():
		t.Fatalf("lease granted after a long wait was lost at once: %v", got.Err())
	case <-time.After(3 * waiter.Config().LeaseTimeout):
	}
	if err := got.Release(); err != nil {
		t.Fatal(err)
	}
}

// Releases racing the loss of their connection all return, each with a
// definite outcome (released or lost), never hanging.
func TestReleaseRacingConnectionLoss(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	dsn := cl.NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 1 })
	for round := range 5 {
		var leases []*Lease
		for i := range 40 {
			ls, err := l.TryAcquire(ctx, KeyInt64(int64(round*100+i)))
			if err != nil {
				t.Fatal(err)
			}
			leases = append(leases, ls)
		}
		_, pid := leases[0].Session()
		results := make(chan error, len(leases))
		for _, ls := range leases {
			go func() { results <- ls.Release() }()
		}
		if err := cl.TerminateBackend(ctx, int(pid)); err != nil {
			t.Logf("terminate: %v (the releases may have finished first)", err)
		}
		for range leases {
			select {
			case err := <-results:
				if err != nil && !errors.Is(err, ErrLeaseLost) {
					t.Fatalf("Release = %v, want nil or ErrLeaseLost", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a Release racing the connection's loss hung")
			}
		}
		for _, ls := range leases {
			if ls.Err() == nil {
				t.Fatal("a lease has no outcome after Release returned")
			}
		}
	}
}

// The window in which a failing connection has dropped its leases but not
// yet reported them: a Release that lands there must still end the lease
// and return, not wait on itself.
func TestReleaseInsideTheLossWindow(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn)
	ls, err := l.TryAcquire(ctx, KeyName("window"))
	if err != nil {
		t.Fatal(err)
	}
	c := ls.conn()
	l.mu.Lock() // what failLocked does first, before it reports the loss
	delete(c.leases, ls)
	c.nleases.Store(int32(len(c.leases)))
	l.unreserveLocked(ls.key.ident())
	l.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- ls.Release() }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("Release = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Release waited on itself")
	}
	if ls.Err() == nil {
		t.Fatal("lease has no outcome")
	}
}
