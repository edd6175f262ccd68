package pgbaton

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgbaton/pgbaton/pgtest"
)

// The transaction-scoped helpers are tested through one suite that runs for
// pgx and database/sql, directly against PostgreSQL here and through
// PgBouncer in pgbouncer_test.go.

// txTarget says how the transactions under test reach the database.
type txTarget struct {
	// dsn maps a direct DSN of a fresh test database to the DSN the
	// transactions under test use (identity for direct connections).
	dsn func(direct, db string) string
}

var directTarget = txTarget{dsn: func(direct, _ string) string { return direct }}

// testTx is one transaction (or savepoint) under test, pgx or database/sql.
type testTx interface {
	try(ctx context.Context, k Key, opts ...Option) error
	lock(ctx context.Context, k Key, opts ...Option) error
	exec(ctx context.Context, q string) error
	show(ctx context.Context, setting string) string
	savepoint(ctx context.Context) testTx
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
}

// txOpener begins transactions of one flavour on one database.
type txOpener func(t *testing.T) testTx

type pgxTx struct {
	t  *testing.T
	tx pgx.Tx
}

func (p pgxTx) try(ctx context.Context, k Key, o ...Option) error {
	return TryLockTx(ctx, p.tx, k, o...)
}
func (p pgxTx) lock(ctx context.Context, k Key, o ...Option) error { return LockTx(ctx, p.tx, k, o...) }
func (p pgxTx) exec(ctx context.Context, q string) error {
	_, err := p.tx.Exec(ctx, q)
	return err
}
func (p pgxTx) show(ctx context.Context, s string) string {
	var v string
	if err := p.tx.QueryRow(ctx, "SELECT current_setting($1)", s).Scan(&v); err != nil {
		p.t.Fatalf("current_setting(%s): %v", s, err)
	}
	return v
}
func (p pgxTx) savepoint(ctx context.Context) testTx {
	sp, err := p.tx.Begin(ctx)
	if err != nil {
		p.t.Fatalf("savepoint: %v", err)
	}
	return pgxTx{p.t, sp}
}
func (p pgxTx) commit(ctx context.Context) error   { return p.tx.Commit(ctx) }
func (p pgxTx) rollback(ctx context.Context) error { return p.tx.Rollback(ctx) }

type sqlTx struct {
	t  *testing.T
	tx *sql.Tx
	sp string // savepoint name, "" for the transaction itself
}

func (s sqlTx) try(ctx context.Context, k Key, o ...Option) error {
	return TryLockSQLTx(ctx, s.tx, k, o...)
}
func (s sqlTx) lock(ctx context.Context, k Key, o ...Option) error {
	return LockSQLTx(ctx, s.tx, k, o...)
}
func (s sqlTx) exec(ctx context.Context, q string) error {
	_, err := s.tx.ExecContext(ctx, q)
	return err
}
func (s sqlTx) show(ctx context.Context, name string) string {
	var v string
	if err := s.tx.QueryRowContext(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		s.t.Fatalf("current_setting(%s): %v", name, err)
	}
	return v
}
func (s sqlTx) savepoint(ctx context.Context) testTx {
	if err := s.exec(ctx, "SAVEPOINT sp1"); err != nil {
		s.t.Fatalf("savepoint: %v", err)
	}
	return sqlTx{s.t, s.tx, "sp1"}
}
func (s sqlTx) commit(ctx context.Context) error {
	if s.sp != "" {
		return s.exec(ctx, "RELEASE SAVEPOINT "+s.sp)
	}
	return s.tx.Commit()
}
func (s sqlTx) rollback(ctx context.Context) error {
	if s.sp != "" {
		return s.exec(ctx, "ROLLBACK TO SAVEPOINT "+s.sp)
	}
	return s.tx.Rollback()
}

// pgxOpener begins pgx transactions, each on its own connection.
func pgxOpener(dsn string) txOpener {
	return func(t *testing.T) testTx {
		t.Helper()
		c := adminConn(t, dsn)
		tx, err := c.Begin(testCtx(t))
		if err != nil {
			t.Fatalf("begin: %v", err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		return pgxTx{t, tx}
	}
}

// sqlOpener begins database/sql transactions on a *sql.DB (pgx's stdlib
// driver).
func sqlOpener(t *testing.T, dsn string) txOpener {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { _ = db.Close() })
	return func(t *testing.T) testTx {
		t.Helper()
		tx, err := db.BeginTx(testCtx(t), nil)
		if err != nil {
			t.Fatalf("begin: %v", err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		return sqlTx{t: t, tx: tx}
	}
}

// observer answers "could another session take k right now?" with an
// autocommit try of the transaction-scoped lock, which holds nothing once the
// statement ends.
type observer struct {
	t *testing.T
	c *pgx.Conn
}

func (o observer) free(k Key) bool {
	o.t.Helper()
	q, args := xactArgs(k, Exclusive, 0)
	var ok bool
	if err := o.c.QueryRow(testCtx(o.t), q, args...).Scan(&ok); err != nil {
		o.t.Fatalf("observer: %v", err)
	}
	return ok
}

func (o observer) mustBeHeld(k Key, when string) {
	o.t.Helper()
	if o.free(k) {
		o.t.Fatalf("%s: %q is free, want it held", when, k)
	}
}

func (o observer) mustBeFree(k Key, when string) {
	o.t.Helper()
	if !o.free(k) {
		o.t.Fatalf("%s: %q is held, want it free", when, k)
	}
}

// waitedLongest reports how long the oldest advisory lock request of this
// database has been waiting (pg_locks.waitstart, PostgreSQL 14+), or 0.
func (o observer) waitedLongest() time.Duration {
	var ms float64
	err := o.c.QueryRow(testCtx(o.t), `SELECT coalesce(max(extract(epoch FROM clock_timestamp() - waitstart)) * 1000, 0)::float8
		FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&ms)
	if err != nil {
		o.t.Fatalf("pg_locks: %v", err)
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// waiting reports how many advisory lock requests wait in this database.
func (o observer) waiting() int {
	var n int
	err := o.c.QueryRow(testCtx(o.t), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
	if err != nil {
		o.t.Fatalf("pg_locks: %v", err)
	}
	return n
}

// txFixture is one test's database, observer and transaction factory.
type txFixture struct {
	obs   observer
	begin txOpener
	db    string
}

type txFlavour struct {
	name   string
	opener func(t *testing.T, dsn string) txOpener
}

var txFlavours = []txFlavour{
	{"pgx", func(_ *testing.T, dsn string) txOpener { return pgxOpener(dsn) }},
	{"sql", sqlOpener},
}

// runTxSuite runs every transaction-scoped test for both flavours against
// target.
func runTxSuite(t *testing.T, target txTarget) {
	for _, fl := range txFlavours {
		t.Run(fl.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range txCases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					db, direct := pgtest.Shared().NewDB(t)
					f := txFixture{
						obs:   observer{t, adminConn(t, direct)},
						begin: fl.opener(t, target.dsn(direct, db)),
						db:    db,
					}
					tc.fn(t, f)
				})
			}
		})
	}
}

func TestTxHelpers(t *testing.T) {
	t.Parallel()
	runTxSuite(t, directTarget)
}

var txCases = []struct {
	name string
	fn   func(t *testing.T, f txFixture)
}{
	{"ReleasedAtCommit", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyName("tx.commit")
		tx := f.begin(t)
		if err := tx.try(ctx, k); err != nil {
			t.Fatalf("TryLock: %v", err)
		}
		f.obs.mustBeHeld(k, "inside the transaction")
		if err := tx.exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		f.obs.mustBeHeld(k, "after another statement")
		if err := tx.commit(ctx); err != nil {
			t.Fatal(err)
		}
		f.obs.mustBeFree(k, "after COMMIT")
	}},
	{"ReleasedAtRollback", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyPair(7, -3)
		tx := f.begin(t)
		if err := tx.lock(ctx, k, Wait(time.Second)); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		f.obs.mustBeHeld(k, "inside the transaction")
		if err := tx.rollback(ctx); err != nil {
			t.Fatal(err)
		}
		f.obs.mustBeFree(k, "after ROLLBACK")
	}},
	{"ReleasedAtFirstErrorNotAtRollback", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyName("tx.first-error")
		tx := f.begin(t)
		if err := tx.lock(ctx, k); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		f.obs.mustBeHeld(k, "before the error")
		if err := tx.exec(ctx, "SELECT 1/0"); err == nil {
			t.Fatal("1/0 succeeded")
		}
		// The transaction is still open (not rolled back), yet the lock
		// is gone: the sharp edge the documentation warns about.
		f.obs.mustBeFree(k, "after the first error, before ROLLBACK")
		err := tx.try(ctx, k)
		if !errors.Is(err, ErrTxAborted) {
			t.Fatalf("lock in an aborted transaction: %v, want ErrTxAborted", err)
		}
		if err := tx.rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}},
	{"SavepointErrorReleasesOnlyItsLocks", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		outer, inner, kept := KeyName("tx.outer"), KeyName("tx.inner"), KeyName("tx.kept")
		tx := f.begin(t)
		if err := tx.lock(ctx, outer); err != nil {
			t.Fatal(err)
		}
		// A released savepoint hands its locks to the transaction.
		sp1 := tx.savepoint(ctx)
		if err := sp1.try(ctx, kept); err != nil {
			t.Fatal(err)
		}
		if err := sp1.commit(ctx); err != nil {
			t.Fatal(err)
		}
		sp2 := tx.savepoint(ctx)
		if err := sp2.try(ctx, inner); err != nil {
			t.Fatal(err)
		}
		f.obs.mustBeHeld(inner, "inside the savepoint")
		if err := sp2.exec(ctx, "SELECT 1/0"); err == nil {
			t.Fatal("1/0 succeeded")
		}
		f.obs.mustBeFree(inner, "after an error inside the savepoint")
		f.obs.mustBeHeld(outer, "after an error inside the savepoint")
		f.obs.mustBeHeld(kept, "after an error inside a later savepoint")
		if err := sp2.rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// The transaction goes on, still holding its own locks.
		if err := tx.exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("transaction unusable after ROLLBACK TO SAVEPOINT: %v", err)
		}
		f.obs.mustBeHeld(outer, "after ROLLBACK TO SAVEPOINT")
		f.obs.mustBeHeld(kept, "after ROLLBACK TO SAVEPOINT")
		if err := tx.commit(ctx); err != nil {
			t.Fatal(err)
		}
		f.obs.mustBeFree(outer, "after COMMIT")
		f.obs.mustBeFree(kept, "after COMMIT")
	}},
	{"TryBusyLeavesTxUsable", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyInt64(42)
		holder := f.begin(t)
		if err := holder.try(ctx, k, Shared); err != nil {
			t.Fatal(err)
		}
		other := f.begin(t)
		if err := other.try(ctx, k, Shared); err != nil {
			t.Fatalf("second shared: %v", err)
		}
		tx := f.begin(t)
		err := tx.try(ctx, k)
		var na *NotAcquiredError
		if !errors.As(err, &na) || na.Key != k || na.Mode != Exclusive || na.Waited != 0 {
			t.Fatalf("exclusive try on a shared-held key: %v, want a *NotAcquiredError for %q", err, k)
		}
		if errors.Is(err, ErrTxAborted) {
			t.Fatalf("a busy try claims the transaction is aborted: %v", err)
		}
		if err := tx.exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("transaction unusable after a busy try: %v", err)
		}
		if err := tx.lock(ctx, k, Wait(0)); !errors.Is(err, ErrNotAcquired) || errors.Is(err, ErrTxAborted) {
			t.Fatalf("Wait(0) is a try: got %v", err)
		}
		_ = holder.commit(ctx)
		_ = other.commit(ctx)
		if err := tx.try(ctx, k); err != nil {
			t.Fatalf("after the shared holders committed: %v", err)
		}
	}},
	{"BoundedWaitExpiresAndAbortsTx", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyName("tx.bounded")
		holder := f.begin(t)
		if err := holder.lock(ctx, k); err != nil {
			t.Fatal(err)
		}
		tx := f.begin(t)
		// The transaction's own lock_timeout is an hour: only the Wait
		// bound set in the lock statement can end the wait before ctx.
		if err := tx.exec(ctx, "SET LOCAL lock_timeout = '1h'"); err != nil {
			t.Fatal(err)
		}
		err := tx.lock(ctx, k, Wait(150*time.Millisecond))
		var na *NotAcquiredError
		if !errors.As(err, &na) || na.Waited <= 0 || !errors.Is(err, ErrNotAcquired) || !errors.Is(err, ErrTxAborted) {
			t.Fatalf("bounded wait: %v, want a *NotAcquiredError with Waited > 0 that also matches ErrTxAborted", err)
		}
		if ctx.Err() != nil {
			t.Fatal("the test context ended first: the Wait bound was not applied")
		}
		if err := tx.exec(ctx, "SELECT 1"); err == nil {
			t.Fatal("the transaction is usable after an expired wait; PostgreSQL should have aborted it")
		}
		f.obs.mustBeHeld(k, "the holder is unaffected")
	}},
	{"WaitIsGrantedInFIFOOrder", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyName("tx.fifo")
		holder := f.begin(t)
		if err := holder.lock(ctx, k); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		waiter := f.begin(t)
		go func() { done <- waiter.lock(ctx, k, Wait(20*time.Second)) }()
		waitFor(t, 10*time.Second, "the waiter to queue", func() bool { return f.obs.waiting() == 1 })
		select {
		case err := <-done:
			t.Fatalf("the waiter returned while the holder held the lock: %v", err)
		default:
		}
		if err := holder.commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("waiter: %v", err)
		}
		f.obs.mustBeHeld(k, "the waiter was granted")
		if err := waiter.commit(ctx); err != nil {
			t.Fatal(err)
		}
		f.obs.mustBeFree(k, "after the waiter committed")
	}},
	{"WaitRestoresLockTimeout", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		tx := f.begin(t)
		before := tx.show(ctx, "lock_timeout")
		if err := tx.lock(ctx, KeyName("tx.lt1"), Wait(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		if got := tx.show(ctx, "lock_timeout"); got != before {
			t.Fatalf("lock_timeout after LockTx = %q, want the transaction's %q", got, before)
		}
		if err := tx.exec(ctx, "SET LOCAL lock_timeout = '7s'; SET LOCAL statement_timeout = '9s'"); err != nil {
			t.Fatal(err)
		}
		if err := tx.lock(ctx, KeyName("tx.lt2"), Wait(250*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if got := tx.show(ctx, "lock_timeout"); got != "7s" {
			t.Fatalf("lock_timeout after LockTx = %q, want the transaction's own 7s", got)
		}
		if got := tx.show(ctx, "statement_timeout"); got != "9s" {
			t.Fatalf("statement_timeout after LockTx = %q, want the transaction's own 9s", got)
		}
	}},
	{"SameKeyDerivationAsSQL", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		name := "incident.dedupe-open-for-system:42"
		tx := f.begin(t)
		if err := tx.try(ctx, KeyName(name)); err != nil {
			t.Fatal(err)
		}
		var free bool
		if err := f.obs.c.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock("+KeySQL+")", name).Scan(&free); err != nil {
			t.Fatal(err)
		}
		if free {
			t.Fatalf("SQL derivation of %q took the lock the helper holds: the derivations differ", name)
		}
	}},
	{"WaitOutlastsStatementTimeout", func(t *testing.T, f txFixture) {
		// The database's statement_timeout (1s) is shorter than the Wait
		// (3s) and than how long the holder keeps the lock (until the
		// waiter has waited 1.5s): the wait is still granted, and the
		// transaction's statement_timeout is back afterwards.
		ctx := testCtx(t)
		if err := pgtest.Shared().AlterDatabaseSet(ctx, f.db, "statement_timeout", "1s"); err != nil {
			t.Fatal(err)
		}
		k := KeyName("tx.statement-timeout")
		holder := f.begin(t)
		if err := holder.lock(ctx, k); err != nil {
			t.Fatal(err)
		}
		waiter := f.begin(t)
		if got := waiter.show(ctx, "statement_timeout"); got != "1s" {
			t.Fatalf("statement_timeout in the waiter's transaction = %q, want the database's 1s", got)
		}
		done := make(chan error, 1)
		go func() { done <- waiter.lock(ctx, k, Wait(3*time.Second)) }()
		waitFor(t, 10*time.Second, "the waiter to have waited 1.5s, past statement_timeout", func() bool {
			select {
			case err := <-done:
				t.Fatalf("the waiter returned before the holder released the lock: %v; want it granted", err)
			default:
			}
			return f.obs.waitedLongest() > 1500*time.Millisecond
		})
		if err := holder.commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("LockTx(Wait(3s)) under a 1s statement_timeout, released after 1.5s: %v; want it granted", err)
		}
		f.obs.mustBeHeld(k, "the waiter was granted")
		if got := waiter.show(ctx, "statement_timeout"); got != "1s" {
			t.Fatalf("statement_timeout after the wait = %q, want the transaction's 1s back", got)
		}
		if got := waiter.show(ctx, "lock_timeout"); got != "0" {
			t.Fatalf("lock_timeout after the wait = %q, want the transaction's 0 back", got)
		}
		if err := waiter.commit(ctx); err != nil {
			t.Fatal(err)
		}
	}},
	{"ContextCancelDuringWait", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		k := KeyName("tx.cancel")
		holder := f.begin(t)
		if err := holder.lock(ctx, k); err != nil {
			t.Fatal(err)
		}
		waiter := f.begin(t)
		cctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		shutdown := errors.New("shutting down")
		done := make(chan error, 1)
		go func() { done <- waiter.lock(cctx, k, Wait(20*time.Second)) }()
		waitFor(t, 10*time.Second, "the waiter to queue", func() bool { return f.obs.waiting() == 1 })
		cancel(shutdown)
		err := <-done
		if !errors.Is(err, shutdown) || !errors.Is(err, ErrTxAborted) || errors.Is(err, ErrNotAcquired) {
			t.Fatalf("LockTx whose context was cancelled during the wait: %v; want the context's cause and ErrTxAborted", err)
		}
		// With pgx's default context handling the connection is closed
		// (the server drops the queued wait when it notices), so whether
		// the wait is still queued is not checked here: see
		// TestLockTxCancelRequestEndsWait.
		f.obs.mustBeHeld(k, "the holder is unaffected")
	}},
	{"InvalidOptionsRejectedUntouched", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		tx := f.begin(t)
		k := KeyName("tx.invalid")
		for _, tc := range []struct {
			name string
			err  error
			want error
		}{
			{"lock, zero key", tx.lock(ctx, Key{}), ErrInvalidKey},
			{"try, zero key", tx.try(ctx, Key{}), ErrInvalidKey},
			{"lock, negative wait", tx.lock(ctx, k, Wait(-time.Second)), ErrInvalidOption},
			{"lock, unknown mode", tx.lock(ctx, k, Mode(7)), ErrInvalidOption},
			{"try, unknown mode", tx.try(ctx, k, Mode(7)), ErrInvalidOption},
		} {
			if !errors.Is(tc.err, tc.want) || errors.Is(tc.err, ErrTxAborted) {
				t.Errorf("%s: %v; want %v, the transaction untouched", tc.name, tc.err, tc.want)
			}
		}
		if err := tx.exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("bad input touched the transaction: %v", err)
		}
		f.obs.mustBeFree(k, "after rejected calls")
	}},
	{"InvalidInput", func(t *testing.T, f txFixture) {
		ctx := testCtx(t)
		tx := f.begin(t)
		if err := tx.try(ctx, Key{}); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("zero key: %v", err)
		}
		if err := tx.lock(ctx, KeyName("x"), Wait(-time.Second)); err == nil {
			t.Fatal("negative wait accepted")
		}
		if err := tx.exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("bad input touched the transaction: %v", err)
		}
		if err := tx.commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := tx.try(ctx, KeyName("x")); !errors.Is(err, ErrNotInTx) {
			t.Fatalf("lock in a committed transaction: %v, want ErrNotInTx", err)
		}
	}},
}

// TestXactLockInAutocommitIsReleasedAtStatementEnd is the control for why
// the helpers take a transaction: the same statement outside one guards
// nothing.
func TestXactLockInAutocommitIsReleasedAtStatementEnd(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t)
	c := adminConn(t, dsn)
	obs := observer{t, adminConn(t, dsn)}
	k := KeyName("autocommit")
	q, args := xactArgs(k, Exclusive, 0)
	var ok bool
	if err := c.QueryRow(ctx, q, args...).Scan(&ok); err != nil || !ok {
		t.Fatalf("autocommit try: %v %v", ok, err)
	}
	obs.mustBeFree(k, "right after the autocommit statement that took it")
}

// TestLockTxContextDeadlineBoundsWait: a ctx deadline shorter than the Wait
// option bounds the wait in the server, so the caller gets the typed error.
func TestLockTxContextDeadlineBoundsWait(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	k := KeyName("ctx-deadline")
	holder, err := adminConn(t, dsn).Begin(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.Background())
	if err := TryLockTx(testCtx(t), holder, k); err != nil {
		t.Fatal(err)
	}
	tx, err := adminConn(t, dsn).Begin(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	err = LockTx(ctx, tx, k, Wait(time.Hour))
	if !errors.Is(err, ErrNotAcquired) || !errors.Is(err, ErrTxAborted) {
		t.Fatalf("LockTx with a 300ms ctx and Wait(1h): %v, want ErrNotAcquired and ErrTxAborted", err)
	}
	if tx.Conn().IsClosed() {
		t.Fatal("the connection was closed: the driver's context handling ended the wait, not the server")
	}
}

// TestTxHelpersRejectNilTx: a nil transaction, untyped or a typed nil
// pointer, is rejected by every helper with ErrInvalidOption (and
// ErrNotInTx), without a panic.
func TestTxHelpersRejectNilTx(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	k := KeyName("nil-tx")
	for name, err := range map[string]error{
		"LockTx nil":                  LockTx(ctx, nil, k),
		"TryLockTx nil":               TryLockTx(ctx, nil, k),
		"LockSQLTx nil":               LockSQLTx(ctx, nil, k),
		"TryLockSQLTx nil":            TryLockSQLTx(ctx, nil, k),
		"LockSQLTx (*sql.Tx)(nil)":    LockSQLTx(ctx, (*sql.Tx)(nil), k),
		"TryLockSQLTx (*sql.Tx)(nil)": TryLockSQLTx(ctx, (*sql.Tx)(nil), k),
	} {
		if !errors.Is(err, ErrInvalidOption) || !errors.Is(err, ErrNotInTx) {
			t.Errorf("%s: %v; want ErrInvalidOption and ErrNotInTx", name, err)
		}
	}
}

// TestLockTxCancelRequestEndsWait: with pgx configured to answer a cancelled
// context with a cancel request (pgconn.CancelRequestContextWatcherHandler),
// the server ends the wait with 57014 and keeps the connection; LockTx
// reports the context's cause, typed, with ErrTxAborted, and the wait is no
// longer queued.
func TestLockTxCancelRequestEndsWait(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	obs := observer{t, adminConn(t, dsn)}
	k := KeyName("cancel-request")
	holder, err := adminConn(t, dsn).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.Background())
	if err := TryLockTx(ctx, holder, k); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, CancelRequestDelay: 0, DeadlineDelay: 10 * time.Second}
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	shutdown := errors.New("shutting down")
	done := make(chan error, 1)
	go func() { done <- LockTx(cctx, tx, k, Wait(20*time.Second)) }()
	waitFor(t, 10*time.Second, "the waiter to queue", func() bool { return obs.waiting() == 1 })
	cancel(shutdown)
	err = <-done
	var pgErr *pgconn.PgError
	if !errors.Is(err, shutdown) || !errors.Is(err, ErrTxAborted) || errors.Is(err, ErrNotAcquired) {
		t.Fatalf("LockTx cancelled by a cancel request: %v; want the context's cause and ErrTxAborted", err)
	}
	if c.IsClosed() {
		t.Fatal("the connection was closed: the cancel request was not used")
	}
	if errors.As(err, &pgErr) {
		t.Fatalf("the server's 57014 is exposed as the error's chain (%v); it should be context only", err)
	}
	if n := obs.waiting(); n != 0 {
		t.Fatalf("%d waits still queued after the cancel request ended the statement", n)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("rollback after the cancelled wait: %v", err)
	}
	obs.mustBeHeld(k, "the holder is unaffected")
}
