package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
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
// with the [*LeaseLostError]. When fn returns, COMMIT releases the lock. If fn
// panics or ends its goroutine with runtime.Goexit (t.FailNow), the
// transaction is rolled back instead, the lock connection is returned idle
// (or closed when its state is not known) and the panic goes on unchanged.
//
// The transaction needs a lock connection of its own, with no leases, for
// the whole of fn. Blocking waits and these transactions together use at
// most MaxConns-1 connections, so one is left for tries; with MaxConns 1 the
// only connection serves one WithXactLock at a time, once it carries no
// lease. While it does, TryAcquire and Acquire of other keys on the same
// Locker wait for it within their own bounds and then return
// ErrTooManyLocks (a conflicting key is decided in-process, without it), so
// with MaxConns 1 do not take other locks of the same Locker inside fn.
// Waiting for a free connection counts against the Wait option and returns
// an error matching ErrTooManyLocks when it expires. An invalid option
// returns an error matching [ErrInvalidOption].
//
// The lock does not fence fn's work: fn commits on other connections, so a
// process frozen past the lease bound can still write. When the work fits in
// one transaction, take the lock in that transaction instead ([LockTx]).
func (l *Locker) WithXactLock(ctx context.Context, key Key, fn func(ctx context.Context) error, opts ...Option) error {
	o := acquireOptions{}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	if !o.hasWait {
		o.wait = l.cfg.AcquireTimeout
	}
	if err := key.validate(); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	start := time.Now()
	ls, c, b, err := l.beginXact(ctx, key, o, start)
	l.observeAcquire(key, o.mode, start, err)
	if err != nil {
		return err
	}

	fctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(ls.Context(), func() { cancel(context.Cause(ls.Context())) })
	returned := false
	defer func() {
		if returned {
			return
		}
		// fn panicked or called runtime.Goexit: roll back, give the
		// connection back, and let the panic (or the exit) go on as it was.
		stop()
		cancel(errFnAborted)
		b.rollback.Store(true)
		_ = ls.Release() // a failure is logged as a loss and closes the connection
		l.done(c)
	}()
	ferr := fn(fctx)
	returned = true
	stop()
	cancel(nil)
	rerr := ls.Release() // COMMIT
	l.done(c)
	return errors.Join(ferr, rerr)
}

// beginXact takes key in a transaction on a lock connection: the
// acquisition half of WithXactLock.
func (l *Locker) beginXact(ctx context.Context, key Key, o acquireOptions, start time.Time) (*Lease, *lockConn, xactBackend, error) {
	deadline := start.Add(o.wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := l.reserveWait(ctx, key, o, start, deadline); err != nil {
		return nil, nil, xactBackend{}, err
	}
	c, err := l.pickEmptyUntil(ctx, deadline)
	if err != nil {
		l.unreserve(key.ident())
		return nil, nil, xactBackend{}, err
	}
	token, err := c.beginXactLock(ctx, l.closeCtx, key, o.mode, time.Until(deadline))
	if err == nil {
		// Unlike a session lock, an error inside the transaction (a cancel
		// landing on the confirmation) aborts it and frees the lock: end
		// the transaction and report the failure.
		if err = c.refresh(); err != nil && c.answered(err) {
			c.endXact()
		}
	}
	if err != nil {
		l.done(c)
		l.unreserve(key.ident())
		switch {
		case isCode(err, "55P03"):
			return nil, nil, xactBackend{}, l.busy(key, o.mode, time.Since(start), false)
		case context.Cause(ctx) != nil && c.failedErr() == nil:
			return nil, nil, xactBackend{}, l.waitEnded(ctx, key, o.mode, time.Since(start), context.Cause(ctx))
		case l.closeCtx.Err() != nil:
			return nil, nil, xactBackend{}, ErrLockerClosed
		}
		return nil, nil, xactBackend{}, l.lockErr(key, err)
	}
	b := xactBackend{c: c, rollback: new(atomic.Bool)}
	ls := newLease(b, key, o.mode, c.name, c.pid, l.log)
	ls.token, ls.hasToken = token, c.fence != ""
	ls.observe = l.cfg.Observer
	l.mu.Lock()
	if c.dead {
		l.unreserveLocked(key.ident())
		l.mu.Unlock()
		l.done(c)
		return nil, nil, xactBackend{}, l.lockErr(key, c.failedErr())
	}
	c.addLeaseLocked(ls)
	l.mu.Unlock()
	l.stats.acquired.Add(1)
	l.noteName(key)
	return ls, c, b, nil
}

// errFnAborted is the cause of fn's context when fn panicked or called
// runtime.Goexit, for goroutines fn started that are still running.
var errFnAborted = errors.New("pgbaton: the function run under the lock panicked or exited its goroutine; the lock was released")

// validate checks resolved options. Errors match ErrInvalidOption.
func (o acquireOptions) validate() error {
	switch {
	case o.mode != Exclusive && o.mode != Shared:
		return fmt.Errorf("%w: mode %d; use pgbaton.Exclusive or pgbaton.Shared", ErrInvalidOption, uint8(o.mode))
	case o.wait < 0:
		return fmt.Errorf("%w: negative wait %s; use Wait(0) to try once", ErrInvalidOption, o.wait)
	}
	return nil
}

// pickEmptyUntil waits, bounded, for a lock connection with no leases.
func (l *Locker) pickEmptyUntil(ctx context.Context, deadline time.Time) (*lockConn, error) {
	for {
		l.mu.Lock()
		ch := l.availLocked()
		l.mu.Unlock()
		c, err := l.pickEmptyFor(ctx, true)
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
		// Bounded, and ended at once by Close.
		cctx, cancel := context.WithTimeout(c.l.closeCtx, c.l.cfg.ConnectTimeout)
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

// xactBackend ends an xact lease by COMMIT, or by ROLLBACK once rollback is
// set (fn panicked). Either way the connection is left idle, outside any
// transaction, or closed.
type xactBackend struct {
	c        *lockConn
	rollback *atomic.Bool
}

func (b xactBackend) Unlock(ls *Lease) (bool, error) {
	c := b.c
	deadline := time.Now().Add(c.l.cfg.ReleaseTimeout)
	if bd := c.bound(); bd.Before(deadline) {
		deadline = bd
	}
	var held bool
	err := c.do(deadline, func(ctx context.Context) error {
		end := "COMMIT"
		if b.rollback != nil && b.rollback.Load() {
			end = "ROLLBACK"
		}
		switch c.pg.TxStatus() {
		case 'T':
			held = true
		case 'E':
			// An error aborted the transaction, which freed the lock; the
			// block still has to be ended before the connection is reused.
			end = "ROLLBACK"
		default:
			return nil // the transaction ended: the lock is gone
		}
		_, err := c.pg.Exec(ctx, end).ReadAll()
		if err == nil && c.pg.TxStatus() != 'I' {
			err = fmt.Errorf("pgbaton: lock connection still in a transaction (status %q) after %s", c.pg.TxStatus(), end)
		}
		if err != nil {
			held = false
			if !c.pg.IsClosed() {
				// The session's state is not known: close it, which ends
				// the transaction and frees its locks.
				c.failLocked(err)
				return c.failedErr()
			}
		}
		return err
	})
	if held {
		c.l.stats.released.Add(1)
	} else if err == nil {
		c.l.stats.lost.Add(1)
	}
	return held, err
}

func (b xactBackend) Forget(ls *Lease) bool { return connBackend{b.c}.Forget(ls) }
