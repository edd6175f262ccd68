package pgbaton

import (
	"context"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// A section that panics after its lease was lost (the backend terminated
// under it), for WithLock and WithXactLock: the panic goes on unchanged,
// nothing is held, and the Locker still works.
func TestRedteamPanicAfterLoss(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	l := newTestLocker(t, dsn, func(c *Config) { c.MaxConns = 2 })
	for _, xact := range []bool{false, true} {
		k := KeyName("redteam/panic-after-loss")
		fn := func(fctx context.Context) error {
			hs := holders(t, admin, k)
			if len(hs) != 1 {
				t.Errorf("holders in fn: %+v", hs)
			} else if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", hs[0].PID); err != nil {
				t.Error(err)
			}
			select {
			case <-fctx.Done():
			case <-time.After(5 * time.Second):
				t.Error("loss not reported to fn")
			}
			panic("boom")
		}
		v := recovered(func() {
			if xact {
				_ = l.WithXactLock(ctx, k, fn)
			} else {
				_ = l.WithLock(ctx, k, fn)
			}
		})
		if v != "boom" {
			t.Fatalf("xact %v: recovered %v, want the panic", xact, v)
		}
		mustBeFree(t, admin, k, "after the panic")
		if st := l.Stats(); st.Held != 0 {
			t.Fatalf("xact %v: Stats.Held = %d", xact, st.Held)
		}
		if n := idleInTx(t, admin); n != 0 {
			t.Fatalf("xact %v: %d idle in transaction", xact, n)
		}
		ls, err := l.TryAcquire(ctx, k)
		if err != nil {
			t.Fatalf("xact %v: the Locker after the panic: %v", xact, err)
		}
		_ = ls.Release()
	}
}
