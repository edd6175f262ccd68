package pgbaton

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgbaton/pgbaton/pgtest"
)

// slowProbe is a net.Conn that, once armed, turns the next simple query
// "SELECT 1" written by pgconn into "SELECT 1 FROM pg_sleep(...)": a round
// trip that the server answers slowly, so that an operator's
// pg_cancel_backend can land on it. The answer has the same shape.
type slowProbe struct {
	net.Conn
	armed *atomic.Bool
	hit   chan<- struct{}
}

var selectOne = append([]byte{'Q', 0, 0, 0, 13}, "SELECT 1\x00"...)

func (c slowProbe) Write(b []byte) (int, error) {
	if i := bytes.Index(b, selectOne); i >= 0 && c.armed.CompareAndSwap(true, false) {
		q := "SELECT 1 FROM pg_sleep(0.4)\x00"
		msg := append([]byte{'Q'}, binary.BigEndian.AppendUint32(nil, uint32(4+len(q)))...)
		msg = append(msg, q...)
		nb := append(append(append([]byte(nil), b[:i]...), msg...), b[i+len(selectOne):]...)
		if _, err := c.Conn.Write(nb); err != nil {
			return 0, err
		}
		select {
		case c.hit <- struct{}{}:
		default:
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// slowProbeLocker opens a Locker whose connections slow the next "SELECT 1"
// once armed; hit receives when it was sent.
func slowProbeLocker(t *testing.T, dsn string, mod ...func(*Config)) (*Locker, *atomic.Bool, <-chan struct{}) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	armed := new(atomic.Bool)
	hit := make(chan struct{}, 1)
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return slowProbe{Conn: c, armed: armed, hit: hit}, nil
	}
	l := newTestLocker(t, "", append([]func(*Config){func(c *Config) {
		c.ConnString, c.ConnConfig = "", cfg
		fastLoss(c) // LeaseTimeout 600ms: a wait longer than 300ms is confirmed again
		c.MaxConns = 2
	}}, mod...)...)
	return l, armed, hit
}

// cancelSlowProbe waits for the slowed probe to run on the server and
// cancels it, as an operator's "cancel long queries" script would.
func cancelSlowProbe(t *testing.T, admin *pgx.Conn, hit <-chan struct{}) {
	t.Helper()
	select {
	case <-hit:
	case <-time.After(10 * time.Second):
		t.Fatal("the confirming round trip after the grant was never sent")
	}
	var pid int
	waitFor(t, 5*time.Second, "the probe to run", func() bool {
		_ = admin.QueryRow(testCtx(t), `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE 'SELECT 1 FROM pg_sleep%'`).Scan(&pid)
		return pid != 0
	})
	if _, err := admin.Exec(testCtx(t), "SELECT pg_cancel_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
}

// waitLongerThanHalfLease holds a queued wait long enough that its grant is
// confirmed again by a fresh round trip (lockConn.refresh).
func waitLongerThanHalfLease(t *testing.T, admin *pgx.Conn) {
	t.Helper()
	waitFor(t, 10*time.Second, "the wait to queue", func() bool {
		var n int
		_ = admin.QueryRow(testCtx(t), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(&n)
		return n == 1
	})
	time.Sleep(450 * time.Millisecond) // > LeaseTimeout/2: the grant's answer is then too old to be trusted alone
}

// After a long blocking wait is granted, Acquire confirms the connection
// with a fresh SELECT 1 (refresh). That round trip goes through c.do, not
// c.doKey: when an operator's pg_cancel_backend lands on it, the 57014 is
// taken for a cancelled WAIT ("the key is known free of this session") and
// the wait is run again, on a session that already holds the key. The
// server grants it re-entrantly (count 2), the caller gets one lease, and
// its Release unlocks once: the key stays locked on a live lock connection
// with no lease, forever.
func TestRedteamRefreshCancelledAfterWaitLeaksLock(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	holder := newTestLocker(t, dsn)
	l, armed, hit := slowProbeLocker(t, dsn)
	k := KeyName("redteam/refresh-cancel")
	h, err := holder.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	var ls *Lease
	go func() {
		var err error
		ls, err = l.Acquire(ctx, k, Wait(5*time.Second))
		got <- err
	}()
	waitLongerThanHalfLease(t, admin)
	armed.Store(true)
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	cancelSlowProbe(t, admin, hit)
	if err := <-got; err != nil {
		mustBeFree(t, admin, k, "after Acquire failed with "+err.Error())
		return
	}
	if err := ls.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	mustBeFree(t, admin, k, "after the lease was released")
	if st := l.Stats(); st.Held != 0 {
		t.Fatalf("Stats.Held = %d", st.Held)
	}
}

// The same cancel after a WithXactLock grant: refresh fails (the cancel
// aborts the transaction, which frees the xact lock), WithXactLock returns
// ErrStatementCanceled, but the aborted transaction block is never ended:
// the lock connection goes back into service "idle in transaction
// (aborted)", and the next lock statement on it fails (25P02).
func TestRedteamRefreshCancelledAfterXactLockLeaksTransaction(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	holder := newTestLocker(t, dsn)
	l, armed, hit := slowProbeLocker(t, dsn, func(c *Config) { c.MaxConns = 1 })
	k := KeyName("redteam/xact-refresh-cancel")
	h, err := holder.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	ran := false
	go func() {
		got <- l.WithXactLock(ctx, k, func(context.Context) error { ran = true; return nil }, Wait(5*time.Second))
	}()
	waitLongerThanHalfLease(t, admin)
	armed.Store(true)
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	cancelSlowProbe(t, admin, hit)
	err = <-got
	t.Logf("WithXactLock = %v (fn ran: %v)", err, ran)
	// The cancel aborted the lock's transaction, freeing the lock: fn must
	// not run believing it holds it, and the caller gets the error.
	if ran || err == nil {
		t.Fatalf("WithXactLock ran fn (%v) or returned nil (%v) after its transaction was aborted", ran, err)
	}
	mustBeFree(t, admin, k, "after WithXactLock returned")
	n := idleInTx(t, admin)
	// The connection goes back into service: the next lock on it must work.
	ls, terr := l.TryAcquire(ctx, KeyName("redteam/next"))
	if terr == nil {
		_ = ls.Release()
	}
	if terr != nil {
		t.Fatalf("the next TryAcquire on the Locker = %v", terr)
	}
	if n != 0 {
		t.Fatalf("after WithXactLock returned: %d lock sessions idle in (aborted) transaction; the next TryAcquire on the Locker = %v", n, terr)
	}
}
