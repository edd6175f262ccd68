package pgbaton

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func adminConn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(testCtx(t), dsn)
	if err != nil {
		t.Fatalf("admin connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// lockHolder describes a granted advisory lock row in pg_locks.
type lockHolder struct {
	PID   int
	Mode  string
	State string // pg_stat_activity.state of the holder
}

// holders lists who holds k in the current database, from pg_locks.
func holders(t testing.TB, c *pgx.Conn, k Key) []lockHolder {
	t.Helper()
	sub := 1
	if k.space == spacePair {
		sub = 2
	}
	rows, err := c.Query(testCtx(t), `
		SELECT l.pid, l.mode, coalesce(a.state, '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.objsubid = $2
		  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1`, k.id, sub)
	if err != nil {
		t.Fatalf("pg_locks: %v", err)
	}
	hs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (lockHolder, error) {
		var h lockHolder
		err := r.Scan(&h.PID, &h.Mode, &h.State)
		return h, err
	})
	if err != nil {
		t.Fatalf("pg_locks: %v", err)
	}
	return hs
}

// waitFor polls cond (external state) until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mustLose waits for a lease to end and checks it ended as lost.
func mustLose(t testing.TB, ls *Lease, within time.Duration) error {
	t.Helper()
	select {
	case <-ls.Done():
	case <-time.After(within):
		t.Fatalf("lease on %q not reported lost within %s", ls.Key(), within)
	}
	err := ls.Err()
	if !errorsIs(err, ErrLeaseLost) {
		t.Fatalf("Err() = %v, want ErrLeaseLost", err)
	}
	if cause := context.Cause(ls.Context()); !errorsIs(cause, ErrLeaseLost) {
		t.Fatalf("context cause = %v, want ErrLeaseLost", cause)
	}
	return err
}
