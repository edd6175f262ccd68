package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// WithXactLock runs fn while a transaction on one of the Locker's own lock
// connections holds key with pg_advisory_xact_lock: the lock-pool half of
// "lock on the lock pool, work on the application's pool". fn does its work
// through the application's own pool; lock connections never wait for that
// pool, so lock holders cannot starve their own work.
//
// BEGIN and the lock go in one round trip, waiting at most the Wait option
// (default Config.AcquireTimeout). While fn runs, the transaction is
// heartbeated, so the server's idle_in_transaction_session_timeout (set on
// this transaction to Config.XactIdleTimeout) reaps only a stalled process,
// never a healthy long fn; if the lock is lost, fn's context is cancelled
// with the [*LeaseLostError]. COMMIT releases the lock.
//
// The lock does not fence fn's work: fn commits on other connections, so a
// process frozen past the lease bound can still write. When the work fits in
// one transaction, take the lock in that transaction instead ([LockTx]).
func (l *Locker) WithXactLock(ctx context.Context, key Key, fn func(ctx context.Context) error, opts ...Option) error {
	o := acquireOptions{}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if !o.hasWait {
		o.wait = l.cfg.AcquireTimeout
	}
	if err := key.validate(); err != nil {
		return err
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(o.wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := l.reserveWait(ctx, key, o, start, deadline); err != nil {
		return err
	}
	c, err := l.pickEmptyUntil(ctx, deadline)
	if err != nil {
		l.unreserve(key.ident())
		return err
	}
	token, err := c.beginXactLock(ctx, l.closeCtx, key, o.mode, time.Until(deadline))
	if err == nil {
		err = c.refresh()
	}
	if err != nil {
		l.done(c)
		l.unreserve(key.ident())
		switch {
		case isCode(err, "55P03"):
			return l.busy(key, o.mode, time.Since(start), false)
		case context.Cause(ctx) != nil && c.failedErr() == nil:
			return l.waitEnded(ctx, key, o.mode, time.Since(start), context.Cause(ctx))
		case l.closeCtx.Err() != nil:
			return ErrLockerClosed
		}
		return l.lockErr(key, err)
	}
	ls := newLease(xactBackend{c}, key, o.mode, c.name, c.pid, l.log)
	ls.token, ls.hasToken = token, c.fence != ""
	l.mu.Lock()
	if c.dead {
		l.unreserveLocked(key.ident())
		l.mu.Unlock()
		l.done(c)
		return l.lockErr(key, c.failedErr())
	}
	c.addLeaseLocked(ls)
	l.mu.Unlock()
	l.stats.acquired.Add(1)
	l.noteName(key)

	fctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(ls.Context(), func() { cancel(context.Cause(ls.Context())) })
	ferr := fn(fctx)
	stop()
	cancel(nil)
	rerr := ls.Release() // COMMIT
	l.done(c)
	return errors.Join(ferr, rerr)
}

// pickEmptyUntil waits, bounded, for a lock connection with no leases.
func (l *Locker) pickEmptyUntil(ctx context.Context, deadline time.Time) (*lockConn, error) {
	for {
		l.mu.Lock()
		ch := l.availLocked()
		l.mu.Unlock()
		c, err := l.pickEmpty(ctx)
		if c != nil || err != nil {
			return c, err
		}
		if err := waitChan(ctx, l.closeCtx, ch, deadline); err != nil {
			if errors.Is(err, errWaitExpired) {
				return nil, fmt.Errorf("%w: no free lock connection within the wait (MaxConns %d)", ErrTooManyLocks, l.cfg.MaxConns)
			}
			return nil, err
		}
	}
}

// beginXactLock opens a transaction and takes the xact lock in one round
// trip: BEGIN and a prepared lock statement in one pipeline. On failure the
// transaction is rolled back.
func (c *lockConn) beginXactLock(ctx, closeCtx context.Context, k Key, mode Mode, wait time.Duration) (token int64, err error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopClose := context.AfterFunc(closeCtx, func() { cancel(ErrLockerClosed) })
	defer stopClose()
	deadline := time.Now().Add(wait + c.l.cfg.LeaseTimeout)
	err = c.do(deadline, func(opCtx context.Context) error {
		s := stmtID{stmtXact, mode, k.space, c.fence}
		if err := c.prepare(opCtx, s); err != nil {
			return err
		}
		params := append([][]byte{
			[]byte(pgMillis(c.l.cfg.XactIdleTimeout)),
			[]byte(pgMillis(wait)),
		}, keyParams(k)...)
		var batch pgconn.Batch
		batch.ExecParams("BEGIN", nil, nil, nil, nil)
		batch.ExecPrepared(s.name(), params, fmtXact[:len(params)], nil)
		cancelled := c.cancelOn(wctx)
		results, err := c.pg.ExecBatch(opCtx, &batch).ReadAll()
		cancelled(opCtx)
		if err == nil && c.fence != "" {
			if len(results) != 2 || len(results[1].Rows) != 1 || len(results[1].Rows[0]) != 4 {
				err = errors.New("pgbaton: unexpected answer to BEGIN and lock")
			} else {
				token, _ = strconv.ParseInt(string(results[1].Rows[0][3]), 10, 64)
			}
		}
		if err != nil && c.pg.TxStatus() != 'I' && !c.pg.IsClosed() {
			if _, rerr := c.pg.Exec(opCtx, "ROLLBACK").ReadAll(); rerr != nil {
				return errors.Join(err, rerr)
			}
		}
		return err
	})
	return token, err
}

// cancelOn sends a cancel request to the server if ctx ends while the
// returned function has not been called. The returned function must be
// called after the statement; it absorbs a cancel that arrived late.
func (c *lockConn) cancelOn(ctx context.Context) func(opCtx context.Context) {
	cancelled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		cctx, cancel := context.WithTimeout(context.Background(), c.l.cfg.ConnectTimeout)
		defer cancel()
		_ = c.pg.CancelRequest(cctx) // if it is lost, lock_timeout still ends the wait
	})
	return func(opCtx context.Context) {
		if stop() {
			return
		}
		// A cancel request was sent. The server ignores one that arrives
		// while the session is idle; a probe absorbs one that arrives late.
		<-cancelled
		for range 2 {
			if _, err := c.pg.Exec(opCtx, "SELECT 1").ReadAll(); !isCode(err, "57014") {
				return
			}
		}
	}
}

// xactBackend ends an xact lease by COMMIT.
type xactBackend struct{ c *lockConn }

func (b xactBackend) Unlock(ls *Lease) (bool, error) {
	c := b.c
	deadline := time.Now().Add(c.l.cfg.ReleaseTimeout)
	if bd := c.bound(); bd.Before(deadline) {
		deadline = bd
	}
	var held bool
	err := c.do(deadline, func(ctx context.Context) error {
		if c.pg.TxStatus() != 'T' {
			return nil // the transaction ended (an error aborted it): the lock is gone
		}
		if _, err := c.pg.Exec(ctx, "COMMIT").ReadAll(); err != nil {
			return err
		}
		held = true
		return nil
	})
	if held {
		c.l.stats.released.Add(1)
	} else if err == nil {
		c.l.stats.lost.Add(1)
	}
	return held, err
}

func (b xactBackend) Forget(ls *Lease) bool { return connBackend(b).Forget(ls) }
