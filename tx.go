package pgbaton

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrTxAborted: a lock statement failed inside the caller's transaction, so
// PostgreSQL aborted the transaction; every later statement fails (25P02)
// until it is rolled back. Errors of LockTx and LockSQLTx that match it also
// match the cause ([ErrNotAcquired], [ErrDeadlock], [ErrLockTableFull], the
// context's cause when it ended the wait, or a connection error).
var ErrTxAborted = errors.New("pgbaton: the transaction is aborted; roll it back")

// ErrNotInTx: the helper was given a transaction that is already finished
// (committed or rolled back).
var ErrNotInTx = errors.New("pgbaton: not in an open transaction; transaction-scoped locks need one (an autocommit lock is released at the end of its own statement)")

// boundStmt goes before a wait's lock statement, in the same round trip:
// statement_timeout is armed when a statement starts, so a value set inside
// the lock statement would come too late for it. It keeps the transaction's
// statement_timeout in a placeholder setting, local to the transaction,
// from which the lock statement restores it. PostgreSQL (13+) starts a
// fresh statement_timeout for each statement of a pipeline or of a
// multi-statement query, so the lock statement runs under this one.
const boundStmt = "SELECT set_config('pgbaton.statement_timeout', current_setting('statement_timeout'), true), set_config('statement_timeout', $1::text, true)"

// waitMargin is added to the wait for the lock statement's
// statement_timeout: lock_timeout ends the wait first, and the
// statement_timeout only bounds the rest of the statement.
const waitMargin = time.Second

// xactStmts are the statements, indexed by [try/wait][mode][space].
var xactStmts = func() (s [2][2][3]string) {
	for _, mode := range []Mode{Exclusive, Shared} {
		sfx := ""
		if mode == Shared {
			sfx = "_shared"
		}
		for _, space := range []keySpace{spaceInt64, spacePair} {
			s[0][mode][space] = "SELECT pg_try_advisory_xact_lock" + sfx + "(" + keyArgs(space, 1) + ")"
			// The old lock_timeout is read in a subquery that OFFSET 0
			// keeps from being flattened, so it is evaluated before the
			// first set_config; the target list is evaluated left to
			// right, so the transaction's own lock_timeout, and the
			// statement_timeout boundStmt kept, are back in place when
			// the statement returns.
			s[1][mode][space] = "SELECT set_config('lock_timeout', $1::text, true), pg_advisory_xact_lock" + sfx + "(" + keyArgs(space, 2) +
				"), set_config('lock_timeout', o.v, true), set_config('statement_timeout', current_setting('pgbaton.statement_timeout'), true)" +
				" FROM (SELECT current_setting('lock_timeout') AS v OFFSET 0) AS o"
		}
	}
	return s
}()

// xactArgs returns the statement and its arguments for one lock request.
func xactArgs(key Key, mode Mode, wait time.Duration) (string, []any) {
	var args []any
	kind := 0
	if wait > 0 {
		kind = 1
		args = append(args, pgMillis(wait))
	}
	if a, b, ok := key.Pair(); ok {
		args = append(args, a, b)
	} else {
		args = append(args, key.ID())
	}
	return xactStmts[kind][mode][key.space], args
}

// xactRequest is one resolved call of a helper.
type xactRequest struct {
	key   Key
	mode  Mode
	wait  time.Duration
	start time.Time
}

// newXactRequest validates one call. Bad input is rejected before anything
// is sent, so the transaction is untouched: the zero or an invalid Key
// ([ErrInvalidKey]), an unknown Mode or, when waiting, a negative Wait
// ([ErrInvalidOption]; the try helpers ignore Wait, as TryAcquire does),
// and a context already done (its cause).
func newXactRequest(ctx context.Context, key Key, try bool, opts []Option) (xactRequest, error) {
	r := xactRequest{key: key, start: time.Now()}
	if err := key.validate(); err != nil {
		return r, err
	}
	noteTxName(key)
	o := ResolveOptions(opts...)
	r.mode = o.Mode
	switch {
	case o.Mode != Exclusive && o.Mode != Shared:
		return r, fmt.Errorf("%w: unknown Mode %d; use Exclusive or Shared", ErrInvalidOption, o.Mode)
	case try:
	case o.HasWait && o.Wait < 0:
		return r, fmt.Errorf("%w: negative wait %s; use Wait(0) to try once", ErrInvalidOption, o.Wait)
	case o.HasWait:
		r.wait = o.Wait
	default:
		r.wait = DefaultAcquireTimeout
	}
	if err := context.Cause(ctx); err != nil {
		return r, err
	}
	if d, ok := ctx.Deadline(); ok && r.wait > 0 {
		// Let the server end the wait (55P03, a clean typed error) rather
		// than the driver reacting to the context.
		left := time.Until(d)
		left -= min(left/10, 50*time.Millisecond)
		if left < time.Millisecond {
			return r, fmt.Errorf("pgbaton: lock %q: %w", key, context.DeadlineExceeded)
		}
		r.wait = min(r.wait, left)
	}
	return r, nil
}

// result interprets the outcome of the lock statement. intact is true when
// the driver knows that the transaction is still usable (nothing failed on
// the server).
func (r xactRequest) result(ctx context.Context, granted bool, err error, intact bool) error {
	if err == nil {
		if granted || r.wait > 0 {
			return nil
		}
		return &NotAcquiredError{Key: r.key, Mode: r.mode}
	}
	aborted := func(cause error) error { return fmt.Errorf("%w (%w)", cause, ErrTxAborted) }
	state := sqlState(err)
	if cause := context.Cause(ctx); cause != nil && (state == "57014" || state == "") {
		// The caller gave up. pgx's default context handling closes the
		// connection (the transaction is gone with it); with
		// pgconn.CancelRequestContextWatcherHandler a cancel request ends
		// the statement with 57014, which aborts the transaction.
		// err is detail only, out of the chain: the context's cause is the
		// error, and the 57014 its cancel produced is not the server's answer.
		e := fmt.Errorf("pgbaton: lock %q: waiting ended by the context after %s: %w (%v)",
			r.key, time.Since(r.start).Round(time.Millisecond), cause, err) //nolint:errorlint // see above
		if intact {
			return e
		}
		return aborted(e)
	}
	switch {
	case state == "55P03":
		// lock_timeout: the Wait bound.
		return aborted(&NotAcquiredError{Key: r.key, Mode: r.mode, Waited: max(time.Since(r.start), time.Millisecond)})
	case state == "57014":
		// Not the Wait bound: the statement_timeout in force (a try does
		// not override the transaction's) or pg_cancel_backend.
		return aborted(fmt.Errorf("%w: the server cancelled the statement (statement_timeout of the transaction, role or database, or pg_cancel_backend): %w",
			&NotAcquiredError{Key: r.key, Mode: r.mode, Waited: max(time.Since(r.start), time.Millisecond)}, err))
	case state == "40P01":
		return aborted(fmt.Errorf("%w: key %q: %w", ErrDeadlock, r.key, err))
	case state == "53200":
		return aborted(fmt.Errorf("%w: key %q: %w", ErrLockTableFull, r.key, err))
	case state == "25P02":
		return fmt.Errorf("pgbaton: lock %q: %w: %w", r.key, ErrTxAborted, err)
	case errors.Is(err, pgx.ErrTxClosed), errors.Is(err, sql.ErrTxDone):
		return fmt.Errorf("pgbaton: lock %q: %w: %w", r.key, ErrNotInTx, err)
	}
	return aborted(fmt.Errorf("pgbaton: lock %q in a transaction: %w", r.key, err))
}

// sqlState returns the SQLSTATE of a server error from pgx or any
// database/sql driver whose errors have a SQLState method (pgx's stdlib,
// lib/pq).
func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// TryLockTx takes key in tx if it is free, in one statement and one round
// trip. If it is busy it returns a [*NotAcquiredError] and tx stays usable.
// The lock is released when tx ends, and also at the first error in tx:
// see [LockTx] for this and the other sharp edges. Options: [Shared]; Wait is ignored.
//
// tx may be any pgx.Tx: from pgx.Conn, pgxpool.Pool, or a nested
// (savepoint) transaction, whose rollback releases the locks taken in it.
func TryLockTx(ctx context.Context, tx pgx.Tx, key Key, opts ...Option) error {
	return lockPgx(ctx, tx, key, true, opts)
}

// LockTx takes key in tx, waiting in the server's FIFO queue at most the
// Wait option (default 30s, [DefaultAcquireTimeout]) or until ctx's
// deadline. Wait(0) makes it a try. The bound is lock_timeout set for the
// lock statement only, and the transaction's (or role's, or database's)
// statement_timeout cannot cut the wait short: statement_timeout is set to
// the wait plus 1s for that statement by a statement sent just before it in
// the same round trip (a pgx batch). The lock statement restores both
// settings, so one round trip leaves nothing behind but the placeholder
// setting pgbaton.statement_timeout, set locally (empty after the
// transaction). These per-statement timeouts need PostgreSQL 13 or later.
//
// An expired wait returns a [*NotAcquiredError] that also matches
// [ErrTxAborted]: PostgreSQL aborted tx, which must be rolled back. A ctx
// cancelled during the wait returns an error that matches ctx's cause
// (context.Canceled, or the cause given to a CancelCauseFunc) and
// [ErrTxAborted]: pgx closed the connection (its default) or its cancel
// request ended the statement (pgconn.CancelRequestContextWatcherHandler).
// Bad input
// (the zero Key, a negative Wait, an unknown Mode, a nil tx) returns
// [ErrInvalidKey] or [ErrInvalidOption] (a nil tx also matches
// [ErrNotInTx]) and leaves tx untouched.
//
// # Transaction-scoped locks
//
// TryLockTx, LockTx, TryLockSQLTx and LockSQLTx run pg_advisory_xact_lock
// (or its try/shared variants) as one statement inside a transaction the
// caller owns: a pgx.Tx, or a *sql.Tx from database/sql (and therefore from
// sqlx, bun, GORM's ConnPool or any library that exposes it). The lock then
// lives on the same backend as every statement of the transaction and is
// released by the server when the transaction ends: there is no unlock to
// forget, to send on the wrong pooled connection, or to lose to a cancelled
// context.
//
// This is the only pattern in which the lock also fences the work: the
// work's writes commit in the same transaction that holds the lock, so no
// write can commit after the lock was lost. A process frozen past any
// timeout cannot commit either: its transaction is gone with its lock. With
// every other pattern (session leases, [Locker.WithXactLock]) the work
// commits on other connections and needs a fencing token to be safe across
// pauses.
//
// Sharp edges, each verified against PostgreSQL by this package's tests:
//
//   - The lock is released at the FIRST error in the transaction, not at
//     ROLLBACK: once any statement fails, the aborted transaction no longer
//     holds it, even though the caller has not rolled back yet.
//   - Inside a savepoint (a nested pgx.Tx, or SAVEPOINT in SQL), an error
//     and ROLLBACK TO SAVEPOINT release only the locks taken inside the
//     savepoint; locks taken before it stay held. A released savepoint hands
//     its locks to the enclosing transaction.
//   - In autocommit (the statement run on a pool, a *sql.DB or a bare
//     connection) the lock is released at the end of that very statement,
//     guarding nothing. That is why these helpers take a transaction.
//   - A failed lock statement (a bounded wait that expired, a deadlock, a
//     full lock table) aborts the caller's transaction: the error matches
//     [ErrTxAborted] and the transaction must be rolled back. A try that
//     finds the lock busy ([ErrNotAcquired] without ErrTxAborted) leaves the
//     transaction usable.
//   - A transaction holds its locks while it is open, so keep it short. The
//     server's idle_in_transaction_session_timeout, if set, ends a
//     transaction that pauses between statements for longer (and frees the
//     lock). statement_timeout does not bound a wait (see above) but does
//     bound a try.
//
// Behind PgBouncer in transaction mode these helpers work (a transaction
// keeps one server connection until it ends); with pgx, configure the
// connection with default_query_exec_mode=exec (or simple_protocol) because
// PgBouncer before 1.21 cannot keep pgx's prepared statements.
func LockTx(ctx context.Context, tx pgx.Tx, key Key, opts ...Option) error {
	return lockPgx(ctx, tx, key, false, opts)
}

// errNilTx is returned for a nil transaction.
var errNilTx = fmt.Errorf("pgbaton: nil transaction: %w (%w)", ErrInvalidOption, ErrNotInTx)

// isNil reports whether tx is nil or a nil pointer in an interface.
func isNil(tx any) bool {
	if tx == nil {
		return true
	}
	v := reflect.ValueOf(tx)
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

func lockPgx(ctx context.Context, tx pgx.Tx, key Key, try bool, opts []Option) error {
	if isNil(tx) {
		return errNilTx
	}
	r, err := newXactRequest(ctx, key, try, opts)
	if err != nil {
		return err
	}
	if c := tx.Conn(); c != nil {
		switch c.PgConn().TxStatus() {
		case 'E':
			return fmt.Errorf("pgbaton: lock %q: %w (an earlier statement failed, which already released any lock it held)", key, ErrTxAborted)
		case 'I':
			return fmt.Errorf("pgbaton: lock %q: %w", key, ErrNotInTx)
		}
	}
	q, args := xactArgs(key, r.mode, r.wait)
	var granted bool
	if r.wait > 0 {
		b := &pgx.Batch{}
		b.Queue(boundStmt, pgMillis(r.wait+waitMargin))
		b.Queue(q, args...)
		br := tx.SendBatch(ctx, b)
		if _, err = br.Exec(); err == nil {
			err = br.QueryRow().Scan(nil, nil, nil, nil)
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	} else {
		err = tx.QueryRow(ctx, q, args...).Scan(&granted)
	}
	intact := false
	if c := tx.Conn(); err != nil && c != nil && !c.IsClosed() {
		intact = c.PgConn().TxStatus() == 'T'
	}
	return r.result(ctx, granted, err, intact)
}

// TryLockSQLTx is [TryLockTx] for database/sql: tx is a *sql.Tx, or any
// transaction type that embeds one (sqlx.Tx, bun.Tx). With GORM, pass
// db.Statement.ConnPool.(*sql.Tx) inside db.Transaction.
func TryLockSQLTx(ctx context.Context, tx SQLTx, key Key, opts ...Option) error {
	return lockSQL(ctx, tx, key, true, opts)
}

// LockSQLTx is [LockTx] for database/sql. An expired wait aborts tx
// ([ErrTxAborted]): roll it back. database/sql cannot send two statements
// in one round trip, so a wait costs two: the statement that sets the
// wait's statement_timeout, then the lock statement (a try costs one). A
// ctx that ends between the two returns its cause with [ErrTxAborted]
// too, since the transaction's statement_timeout is not restored then.
func LockSQLTx(ctx context.Context, tx SQLTx, key Key, opts ...Option) error {
	return lockSQL(ctx, tx, key, false, opts)
}

// SQLTx is a database/sql transaction: *sql.Tx and the transaction types
// that embed it. Commit and Rollback are required so that a *sql.DB or
// *sql.Conn, where the lock would be released at the end of its own
// statement, cannot be passed by mistake.
type SQLTx interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	Commit() error
	Rollback() error
}

var _ SQLTx = (*sql.Tx)(nil)

func lockSQL(ctx context.Context, tx SQLTx, key Key, try bool, opts []Option) error {
	if isNil(tx) {
		return errNilTx
	}
	r, err := newXactRequest(ctx, key, try, opts)
	if err != nil {
		return err
	}
	q, args := xactArgs(key, r.mode, r.wait)
	var granted bool
	if r.wait > 0 {
		var a, b any
		if err = tx.QueryRowContext(ctx, boundStmt, pgMillis(r.wait+waitMargin)).Scan(&a, &b); err == nil {
			var c, d any
			err = tx.QueryRowContext(ctx, q, args...).Scan(&a, &b, &c, &d)
		}
	} else {
		err = tx.QueryRowContext(ctx, q, args...).Scan(&granted)
	}
	return r.result(ctx, granted, err, false)
}
