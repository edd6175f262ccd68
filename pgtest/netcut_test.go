package pgtest_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// keepaliveDSN makes the server probe an idle client after 1 s, every
// 1 s, and give up after 2 unanswered probes (about 3 s).
const keepaliveDSN = " tcp_keepalives_idle=1 tcp_keepalives_interval=1 tcp_keepalives_count=2 tcp_user_timeout=2000"

// lockHolder opens a TCP session that holds advisory lock key and
// returns it with its local port.
func lockHolder(t *testing.T, ctx context.Context, dsn string, key int) (*pgx.Conn, int) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn+keepaliveDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		conn.Close(ctx)
	})
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		t.Fatal(err)
	}
	_, port, _ := splitHostPort(conn.PgConn().Conn().LocalAddr().String())
	return conn, port
}

func splitHostPort(addr string) (string, int, error) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			p, err := strconv.Atoi(addr[i+1:])
			return addr[:i], p, err
		}
	}
	return addr, 0, errors.New("no port")
}

// TestCutPortServerFreesLock: with a packet-filter cut of one client's
// connection, the server's keepalives go unanswered, it ends the session
// and the advisory lock becomes free for another session.
func TestCutPortServerFreesLock(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"nft", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c := pgtest.Shared()
			ctx := testCtx(t, 30*time.Second)
			db, dsn := c.NewDB(t)
			_, clientPort := lockHolder(t, ctx, c.TCPDSN(db), 99)

			cut, err := pgtest.CutPortWith(ctx, clientPort, backend)
			if errors.Is(err, pgtest.ErrNetCutUnsupported) {
				t.Skipf("network cut unavailable: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := cut.Heal(); err != nil {
					t.Error(err)
				}
			}()
			start := time.Now()
			waiter := connect(t, ctx, dsn) // unix socket: unaffected by the cut
			// Blocks until the server drops the cut session.
			if _, err := waiter.Exec(ctx, "SELECT pg_advisory_lock(99)"); err != nil {
				t.Fatalf("lock not freed after the cut: %v", err)
			}
			t.Logf("%s: server released the lock %v after the cut", cut.Backend(), time.Since(start).Round(time.Millisecond))
			if err := cut.Heal(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestProxyBlackHoleServerKeepsLock documents why CutPort exists: behind a
// black-holed proxy the server's keepalives are still answered (by the
// proxy's kernel), so the session and its lock outlive the time in which
// a real cut frees them.
func TestProxyBlackHoleServerKeepsLock(t *testing.T) {
	t.Parallel()
	c, p := newProxy(t)
	ctx := testCtx(t, 30*time.Second)
	db, dsn := c.NewDB(t)
	lockHolder(t, ctx, c.ProxyDSN(p, db), 98)
	p.BlackHole()
	waiter := connect(t, ctx, dsn)
	// Twice the ~3 s a real cut takes with these keepalive settings.
	short, cancel := context.WithTimeout(ctx, 6*time.Second)
	defer cancel()
	if _, err := waiter.Exec(short, "SELECT pg_advisory_lock(98)"); err == nil {
		t.Fatal("lock freed behind a black-holed proxy; CutPort's reason to exist is gone")
	}
	p.Heal()
}
