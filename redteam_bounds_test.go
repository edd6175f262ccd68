package pgbaton

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgbaton/pgbaton/pgtest"
)

// Attacks on "every call returns within its bound" (GUARANTEES.md): a try
// within ConnectTimeout + LeaseTimeout; a wait within Wait plus that;
// Release within ReleaseTimeout; WithXactLock within Wait + ConnectTimeout +
// LeaseTimeout + ReleaseTimeout; Close within about 300 ms.

// boundSlop is added to every documented bound for a loaded 2-core machine
// running -race; it is far below the unbounded waits these tests guard
// against (AcquireTimeout, pgconn's 15 s clean-up, the kernel's TCP timeouts).
const boundSlop = 750 * time.Millisecond

func shortBounds(c *Config) {
	fastLoss(c) // LeaseTimeout 600ms
	c.ConnectTimeout = time.Second
	c.ReleaseTimeout = time.Second
	c.AcquireTimeout = 30 * time.Second // never reached: a call past its bound shows
	c.MaxConns = 3
}

type boundCheck struct {
	t  *testing.T
	mu sync.Mutex
}

// run times f against bound, in a goroutine; wait with wg.
func (b *boundCheck) run(wg *sync.WaitGroup, name string, bound time.Duration, f func() error) {
	wg.Go(func() {
		start := time.Now()
		err := f()
		took := time.Since(start)
		b.mu.Lock()
		defer b.mu.Unlock()
		b.t.Logf("%-40s %8s (bound %s) err=%v", name, took.Round(time.Millisecond), bound, err)
		if took > bound+boundSlop {
			b.t.Errorf("%s took %s, past its bound %s", name, took.Round(time.Millisecond), bound)
		}
	})
}

// exercise runs every call of l at once against cfg's bounds: Release of
// held, TryAcquire, Acquire with a wait, WithXactLock with a wait.
func exercise(t *testing.T, l *Locker, held *Lease, tag string) {
	cfg := l.Config()
	ctx := testCtx(t)
	b := &boundCheck{t: t}
	var wg sync.WaitGroup
	try := cfg.ConnectTimeout + cfg.LeaseTimeout
	wait := 300 * time.Millisecond
	if held != nil {
		b.run(&wg, tag+" Release", cfg.ReleaseTimeout, held.Release)
	}
	b.run(&wg, tag+" TryAcquire", try, func() error {
		ls, err := l.TryAcquire(ctx, KeyInt64(900101))
		if err == nil {
			err = ls.Release()
		}
		return err
	})
	b.run(&wg, tag+" Acquire(Wait 300ms)", wait+try, func() error {
		ls, err := l.Acquire(ctx, KeyInt64(900102), Wait(wait))
		if err == nil {
			err = ls.Release()
		}
		return err
	})
	b.run(&wg, tag+" WithXactLock(Wait 300ms)", wait+try+cfg.ReleaseTimeout, func() error {
		return l.WithXactLock(ctx, KeyInt64(900103), func(context.Context) error { return nil }, Wait(wait))
	})
	b.run(&wg, tag+" WithLock(Wait 300ms)", wait+try+cfg.ReleaseTimeout, func() error {
		return l.WithLock(ctx, KeyInt64(900104), func(context.Context) error { return nil }, Wait(wait))
	})
	wg.Wait()
}

func timeClose(t *testing.T, l *Locker, tag string) {
	start := time.Now()
	_ = l.Close()
	took := time.Since(start)
	t.Logf("%-40s %8s (about 300ms promised)", tag+" Close", took.Round(time.Millisecond))
	if took > 300*time.Millisecond+boundSlop {
		t.Errorf("%s: Close took %s", tag, took.Round(time.Millisecond))
	}
}

// Under a proxy black hole every call of a Locker holding a lease returns
// within its bound, and Close (with a WithXactLock in its function and a
// long wait in flight) within about 300 ms.
func TestRedteamBoundsUnderBlackHole(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, dsn := cl.NewDB(t)
	ctx := testCtx(t)
	p, err := pgtest.NewProxy(cl.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	busyKey := KeyInt64(900100) // int keys: no name writer (see TestRedteamCloseUnderBlackHoleWaitsForNameWriter)
	other := newTestLocker(t, dsn)
	busy, err := other.TryAcquire(ctx, busyKey)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Release()

	l := newTestLocker(t, cl.ProxyDSN(p, name), shortBounds)
	held, err := l.TryAcquire(ctx, KeyInt64(900106))
	if err != nil {
		t.Fatal(err)
	}
	l2 := newTestLocker(t, cl.ProxyDSN(p, name), shortBounds)
	inFn := make(chan struct{})
	xactDone := make(chan error, 1)
	go func() {
		xactDone <- l2.WithXactLock(ctx, KeyInt64(900107), func(fctx context.Context) error {
			close(inFn)
			<-fctx.Done()
			return context.Cause(fctx)
		})
	}()
	<-inFn
	waitDone := make(chan error, 1)
	go func() {
		_, err := l2.Acquire(ctx, busyKey, Wait(20*time.Second))
		waitDone <- err
	}()
	admin := adminConn(t, dsn)
	waitFor(t, 10*time.Second, "the wait to queue", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
		return n == 1
	})
	p.BlackHole()
	defer p.Heal()
	exercise(t, l, held, "black hole:")
	timeClose(t, l, "black hole:")
	timeClose(t, l2, "black hole, xact fn + wait in flight:")
	for _, ch := range []chan error{xactDone, waitDone} {
		select {
		case err := <-ch:
			t.Logf("in-flight call ended with %v", err)
		case <-time.After(2 * time.Second):
			t.Fatal("a call in flight did not end after Close")
		}
	}
}

// A silent network cut of the server's port (private cluster): the same
// calls, then Close.
func TestRedteamBoundsUnderNetworkCut(t *testing.T) {
	t.Parallel()
	c := privateCluster(t, nil)
	dsn := c.TCPDSN("postgres")
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, shortBounds)
	held, err := l.TryAcquire(ctx, KeyInt64(900109))
	if err != nil {
		t.Fatal(err)
	}
	cut, err := pgtest.CutPort(ctx, c.Port())
	if err != nil {
		t.Skipf("no network cut here: %v", err)
	}
	defer cut.Heal()
	exercise(t, l, held, "cut:")
	timeClose(t, l, "cut:")
}

// A stopped server, and a server whose max_connections are all taken.
func TestRedteamBoundsServerStoppedAndFull(t *testing.T) {
	t.Parallel()
	c := privateCluster(t, map[string]string{"max_connections": "12", "superuser_reserved_connections": "2"})
	dsn := c.DSN("postgres")
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, shortBounds)
	held, err := l.TryAcquire(ctx, KeyInt64(900110))
	if err != nil {
		t.Fatal(err)
	}
	// Take every slot left.
	var fill []*pgx.Conn
	for {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Logf("server full after %d more connections: %v", len(fill), err)
			break
		}
		fill = append(fill, conn)
		if len(fill) > 20 {
			t.Fatal("max_connections not reached")
		}
	}
	exercise(t, l, nil, "full:")
	if err := held.Err(); err != nil {
		t.Fatalf("held lease lost while the server was full: %v", err)
	}
	for _, conn := range fill {
		_ = conn.Close(ctx)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	exercise(t, l, held, "stopped:")
	timeClose(t, l, "stopped:")
}

// Close "within about 300 ms even under a black hole" waits for the key-name
// writer: its last flush of names noted since the previous one dials a new
// connection bounded at 1 s, and a periodic flush already dialling when
// Close is called is bounded only by ConnectTimeout (10 s by default; 3 s
// here). Any Locker that took a KeyName in the last 2 s pays the first; one
// whose flush began during the black hole pays the second.
func TestRedteamCloseUnderBlackHoleWaitsForNameWriter(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, dsn := cl.NewDB(t)
	if err := Migrate(testCtx(t), adminConn(t, dsn), ""); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for _, inFlight := range []bool{false, true} {
		p, err := pgtest.NewProxy(cl.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })
		l := newTestLocker(t, cl.ProxyDSN(p, name), func(c *Config) { c.ConnectTimeout = 3 * time.Second })
		ls, err := l.TryAcquire(ctx, KeyName("redteam/named"))
		if err != nil {
			t.Fatal(err)
		}
		if err := ls.Release(); err != nil {
			t.Fatal(err)
		}
		p.BlackHole()
		if inFlight {
			// The name writer's periodic flush (every 2 s) dials through the proxy.
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := p.WaitConns(wctx, 2)
			cancel()
			if err != nil {
				t.Fatalf("the name writer never dialled: %v", err)
			}
		}
		start := time.Now()
		_ = l.Close()
		took := time.Since(start)
		t.Logf("flush in flight %v: Close under a black hole took %s", inFlight, took.Round(time.Millisecond))
		if took > 3*300*time.Millisecond {
			t.Errorf("flush in flight %v: Close under a black hole took %s, promised about 300ms", inFlight, took.Round(time.Millisecond))
		}
		p.Heal()
	}
}
