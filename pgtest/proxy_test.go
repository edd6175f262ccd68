package pgtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

// newProxy starts a proxy to the shared cluster, closed at test end.
func newProxy(t *testing.T) (*pgtest.Cluster, *pgtest.Proxy) {
	t.Helper()
	c := pgtest.Shared()
	p, err := pgtest.NewProxy(c.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return c, p
}

// TestProxyForward: queries go through; Conns counts client connections;
// a client's close is forwarded and the pair torn down.
func TestProxyForward(t *testing.T) {
	t.Parallel()
	c, p := newProxy(t)
	ctx := testCtx(t, 30*time.Second)
	db, _ := c.NewDB(t)
	conn, err := pgx.Connect(ctx, c.ProxyDSN(p, db)+" application_name=via-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, conn, "SELECT $1::int + 1", 41); n != 42 {
		t.Fatalf("got %d", n)
	}
	if p.Conns() != 1 {
		t.Fatalf("Conns = %d, want 1", p.Conns())
	}
	if pids, err := c.BackendPIDs(ctx, db, "via-proxy"); err != nil || len(pids) != 1 {
		t.Fatalf("server sees %v, %v; want one backend", pids, err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitConns(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

// TestProxyBlackHole: under BlackHole an open session's query hangs until
// its deadline and a new connection cannot complete; the bytes held back
// are delivered by Heal; after Heal new sessions work.
func TestProxyBlackHole(t *testing.T) {
	t.Parallel()
	c, p := newProxy(t)
	ctx := testCtx(t, 30*time.Second)
	dsn := c.ProxyDSN(p, "postgres")
	hung := connect(t, ctx, dsn)
	held := connect(t, ctx, dsn)

	p.BlackHole()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := hung.Exec(short, "SELECT 1")
	cancel()
	if err == nil || (!errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err)) {
		t.Fatalf("query under BlackHole: err = %v, want a deadline error", err)
	}
	short, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = pgx.Connect(short, dsn)
	cancel()
	if err == nil {
		t.Fatal("connected through a black hole")
	}

	// A query sent under the black hole completes once healed.
	result := make(chan int, 1)
	go func() {
		var n int
		if err := held.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil {
			n = -1
		}
		result <- n
	}()
	if err := p.WaitStalled(ctx, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-result:
		t.Fatalf("query answered (%d) through a black hole", n)
	default:
	}
	p.Heal()
	if n := <-result; n != 7 {
		t.Fatalf("held query after Heal = %d, want 7", n)
	}
	fresh := connect(t, ctx, dsn)
	if n := queryInt(t, ctx, fresh, "SELECT 1"); n != 1 {
		t.Fatal("new session after Heal failed")
	}
}

// TestProxyResetAll: every client sees an error, the server's backend
// ends, and the proxy forgets the connections.
func TestProxyResetAll(t *testing.T) {
	t.Parallel()
	c, p := newProxy(t)
	ctx := testCtx(t, 30*time.Second)
	db, _ := c.NewDB(t)
	a := connect(t, ctx, c.ProxyDSN(p, db)+" application_name=reset-me")
	b := connect(t, ctx, c.ProxyDSN(p, db)+" application_name=reset-me")
	if err := p.WaitConns(ctx, 2); err != nil {
		t.Fatal(err)
	}
	p.ResetAll()
	if p.Conns() != 0 {
		t.Fatalf("Conns after ResetAll = %d", p.Conns())
	}
	for _, conn := range []*pgx.Conn{a, b} {
		if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
			t.Fatal("query on a reset connection succeeded")
		} else {
			t.Logf("client error: %v", err)
		}
	}
	// The server side got the RST too (external state: poll, bounded).
	for {
		pids, err := c.BackendPIDs(ctx, db, "reset-me")
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("backends %v survived ResetAll", pids)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestProxyLatency: a round trip takes at least twice the one-way delay,
// and removing the delay restores speed.
func TestProxyLatency(t *testing.T) {
	t.Parallel()
	c, p := newProxy(t)
	ctx := testCtx(t, 30*time.Second)
	conn := connect(t, ctx, c.ProxyDSN(p, "postgres"))
	p.SetLatency(100 * time.Millisecond)
	start := time.Now()
	queryInt(t, ctx, conn, "SELECT 1")
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("round trip with 100ms one-way latency took %v", d)
	}
	p.SetLatency(0)
	start = time.Now()
	queryInt(t, ctx, conn, "SELECT 1")
	if d := time.Since(start); d >= 200*time.Millisecond {
		t.Fatalf("round trip without latency took %v", d)
	}
}

// TestProxyClose: Close ends open (even black-holed) connections and is
// idempotent; goroutine leaks are caught by TestMain's goleak check.
func TestProxyClose(t *testing.T) {
	t.Parallel()
	c, p := newProxy(t)
	ctx := testCtx(t, 30*time.Second)
	conn := connect(t, ctx, c.ProxyDSN(p, "postgres"))
	p.BlackHole()
	stuck := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT 1")
		stuck <- err
	}()
	if err := p.WaitStalled(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-stuck; err == nil {
		t.Fatal("query succeeded through a closed proxy")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if p.Conns() != 0 {
		t.Fatalf("Conns after Close = %d", p.Conns())
	}
}
