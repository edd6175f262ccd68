package pgbaton

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultSchema is where pgbaton keeps its tables and sequences.
const DefaultSchema = "pgbaton"

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one versioned schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string // with {{schema}} for the schema name
}

var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Migrations returns pgbaton's migrations in order.
func Migrations() []Migration {
	files, _ := fs.Glob(migrationFS, "migrations/*.sql")
	ms := make([]Migration, 0, len(files))
	for _, f := range files {
		base := strings.TrimSuffix(strings.TrimPrefix(f, "migrations/"), ".sql")
		num, name, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			panic("pgbaton: migration file without a version: " + f)
		}
		b, _ := migrationFS.ReadFile(f)
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms
}

// DefaultMigrateLockTimeout bounds how long the package function [Migrate]
// waits for the migration lock (and for the table locks its DDL needs) when
// pending migrations have to be applied. [Locker.Migrate] uses the Locker's
// Config.AcquireTimeout instead.
const DefaultMigrateLockTimeout = DefaultAcquireTimeout

// ErrMigrationLockTimeout: Migrate had migrations to apply but did not get
// the migration lock within its bound ([MigrateOptions].LockTimeout or the
// context's deadline). Another session holds it: an instance migrating right
// now (retry), or a stuck session (the error names it; end it with
// pg_terminate_backend). See [MigrationLockError].
var ErrMigrationLockTimeout = errors.New("pgbaton: migration lock not acquired in time")

// MigrationLockError says how long Migrate waited for the migration lock
// and, when pg_locks showed it, which session held it. It matches
// [ErrMigrationLockTimeout] and [ErrNotAcquired], and unwraps to the
// server's error (55P03 lock_timeout).
type MigrationLockError struct {
	Schema string
	Waited time.Duration
	// HolderPID is the backend pid of the session holding the migration
	// lock when the wait ended; 0 if none was found (it was released in
	// between, or the lock that timed out was a table lock of a migration).
	HolderPID int
	// HolderApplicationName is the holder's application_name
	// (pgbaton:<instance>:migrate for Locker.Migrate).
	HolderApplicationName string
	Cause                 error
}

func (e *MigrationLockError) Error() string {
	msg := fmt.Sprintf("pgbaton: migrate %s: the migration lock was not acquired within %s", e.Schema, e.Waited.Round(time.Millisecond))
	if e.HolderPID != 0 {
		msg += fmt.Sprintf("; held by backend pid %d (application_name %q): if it is stuck, end it with pg_terminate_backend(%d)", e.HolderPID, e.HolderApplicationName, e.HolderPID)
	}
	msg += "; or raise the bound (MigrateOptions.LockTimeout, Config.AcquireTimeout)"
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

// Is makes errors.Is(err, ErrMigrationLockTimeout) and errors.Is(err,
// ErrNotAcquired) true.
func (e *MigrationLockError) Is(target error) bool {
	return target == ErrMigrationLockTimeout || target == ErrNotAcquired
}

// Unwrap returns the server's error.
func (e *MigrationLockError) Unwrap() error { return e.Cause }

// MigrateOptions configures [MigrateWithOptions].
type MigrateOptions struct {
	// Schema is where pgbaton's tables live. Default [DefaultSchema]; a
	// plain lower-case identifier.
	Schema string
	// LockTimeout bounds the wait for the migration lock, and for the
	// table locks of the migrations, when migrations are pending. Default
	// [DefaultMigrateLockTimeout]; the context's deadline bounds it too.
	// Negative is a [ConfigError].
	LockTimeout time.Duration
}

// Migrate creates or upgrades pgbaton's schema (default [DefaultSchema]) on
// conn, waiting at most [DefaultMigrateLockTimeout] for the migration lock.
// It is [MigrateWithOptions] with only the schema set.
func Migrate(ctx context.Context, conn *pgx.Conn, schema string) error {
	return MigrateWithOptions(ctx, conn, MigrateOptions{Schema: schema})
}

// MigrateWithOptions creates or upgrades pgbaton's schema on conn. It is
// idempotent and safe to run from many instances at once:
//
//   - It first reads the applied versions with read-only queries. When none
//     is pending (the schema is up to date, or newer than this binary) it
//     returns nil: no write, no DDL, no lock that conflicts with running
//     instances, so a role that does not own the schema (USAGE on it and
//     SELECT on its migrations table are enough) can call it at start-up,
//     even while another session holds the migration lock.
//   - Otherwise it applies the pending migrations in one transaction that
//     holds an advisory transaction lock (the migration lock), and re-reads
//     the versions under it, so concurrent callers apply each migration
//     once, in order; a failure leaves nothing behind.
//   - The wait for that lock is bounded by opts.LockTimeout (or the
//     context's deadline, if sooner), which it sets as lock_timeout for its
//     own transaction (set_config(..., true)); it also sets
//     statement_timeout to 0 there. The database's or role's lock_timeout
//     and statement_timeout therefore neither end the wait early nor cut a
//     migration short. A lock timeout (55P03) or deadlock (40P01) that
//     arrives before the bound is retried within it.
//
// Errors: a [*ConfigError] for a bad schema name or option; a
// [*MigrationLockError] ([ErrMigrationLockTimeout]) when the lock was not
// acquired within the bound, naming the session holding it; the context's
// cause when ctx ends first; otherwise the server's error with the step
// that failed. Without the schema, leases work and report no fencing token.
//
// The per-statement timeouts rely on PostgreSQL 13 or later.
func MigrateWithOptions(ctx context.Context, conn *pgx.Conn, opts MigrateOptions) error {
	schema := opts.Schema
	if schema == "" {
		schema = DefaultSchema
	}
	if !schemaRE.MatchString(schema) {
		return &ConfigError{Field: "Schema", Msg: fmt.Sprintf("%q is not a plain lower-case identifier", schema)}
	}
	bound := opts.LockTimeout
	switch {
	case bound < 0:
		return &ConfigError{Field: "LockTimeout", Msg: fmt.Sprintf("%s is negative; use 0 for the default (%s)", bound, DefaultMigrateLockTimeout)}
	case bound == 0:
		bound = DefaultMigrateLockTimeout
	}
	if conn == nil {
		return fmt.Errorf("%w: Migrate needs a connection, got nil", ErrInvalidOption)
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	m := migrator{schema: schema, q: pgx.Identifier{schema}.Sanitize(), start: time.Now()}
	pending, err := m.pending(ctx, conn)
	if err != nil {
		return m.ctxErr(ctx, "reading the applied migrations (the role needs USAGE on the schema and SELECT on its migrations table)", err)
	}
	if len(pending) == 0 {
		return nil
	}
	m.deadline = m.start.Add(bound)
	if d, ok := ctx.Deadline(); ok {
		// Let the server end the wait (55P03, a typed error naming the
		// holder) rather than the driver reacting to the context.
		left := time.Until(d)
		left -= min(left/10, 50*time.Millisecond)
		if dl := time.Now().Add(left); dl.Before(m.deadline) {
			m.deadline = dl
		}
	}
	backoff := 5 * time.Millisecond
	for {
		err := m.once(ctx, conn)
		if err == nil {
			return nil
		}
		var le *MigrationLockError
		retry := isCode(err, "55P03") || isCode(err, "40P01")
		if !retry && !errors.As(err, &le) {
			return err
		}
		left := time.Until(m.deadline)
		if retry && left > 10*time.Millisecond && ctx.Err() == nil {
			sleep := min(backoff/2+rand.N(backoff), left/2)
			t := time.NewTimer(sleep)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("pgbaton: migrate %s: %w", schema, context.Cause(ctx))
			}
			backoff = min(2*backoff, 200*time.Millisecond)
			continue
		}
		if errors.As(err, &le) {
			le.Waited = time.Since(m.start)
			le.HolderPID, le.HolderApplicationName = m.holder(ctx, conn)
			return le
		}
		return err
	}
}

// migrator is one call of MigrateWithOptions.
type migrator struct {
	schema   string
	q        string // the schema, quoted
	start    time.Time
	deadline time.Time
}

func (m migrator) lockKey() Key { return KeyName("pgbaton.migrate:" + m.schema) }

// pending returns the migrations not recorded in the schema's migrations
// table, with read-only queries.
func (m migrator) pending(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]Migration, error) {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = 'migrations')`, m.schema).Scan(&exists); err != nil {
		return nil, err
	}
	applied := map[int]bool{}
	if exists {
		rows, err := db.Query(ctx, "SELECT version FROM "+m.q+".migrations")
		if err != nil {
			return nil, err
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			applied[int(v)] = true
		}
	}
	var ms []Migration
	for _, mg := range Migrations() {
		if !applied[mg.Version] {
			ms = append(ms, mg)
		}
	}
	return ms, nil
}

// ctxErr wraps err from step, reporting the context's cause when ctx ended
// (the driver's cancel request turns into 57014 on the server).
func (m migrator) ctxErr(ctx context.Context, step string, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		// err is detail only, out of the chain: the context's cause is the
		// error, and the SQLSTATE its cancel provoked (57014) is not the
		// server's answer to the migration, for callers that look for one
		// with errors.As(*pgconn.PgError) or isCode.
		return fmt.Errorf("pgbaton: migrate %s: %s: %w (%v)", m.schema, step, cause, err) //nolint:errorlint // see above
	}
	return fmt.Errorf("pgbaton: migrate %s: %s: %w", m.schema, step, err)
}

// once runs one attempt: the migration transaction.
func (m migrator) once(ctx context.Context, conn *pgx.Conn) error {
	left := time.Until(m.deadline)
	if left < time.Millisecond {
		return &MigrationLockError{Schema: m.schema}
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// Set for this transaction only; in their own statement, because a
		// statement's statement_timeout is armed when it starts.
		if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1::text, true), set_config('statement_timeout', '0', true)", pgMillis(left)); err != nil {
			return m.ctxErr(ctx, "setting the transaction's timeouts", err)
		}
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", m.lockKey().ID()); err != nil {
			if isCode(err, "55P03") {
				return &MigrationLockError{Schema: m.schema, Cause: err}
			}
			return m.ctxErr(ctx, "taking the migration lock", err)
		}
		pending, err := m.pending(ctx, tx)
		if err != nil {
			return m.ctxErr(ctx, "reading the applied migrations under the migration lock", err)
		}
		if len(pending) == 0 {
			return nil // another instance applied them while we waited
		}
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+m.q+
			"; CREATE TABLE IF NOT EXISTS "+m.q+".migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"); err != nil {
			return m.ctxErr(ctx, "creating the schema", err)
		}
		for _, mg := range pending {
			if _, err := tx.Exec(ctx, strings.ReplaceAll(mg.SQL, "{{schema}}", m.q)); err != nil {
				return m.ctxErr(ctx, fmt.Sprintf("%03d_%s", mg.Version, mg.Name), err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+m.q+".migrations (version, name) VALUES ($1, $2)", mg.Version, mg.Name); err != nil {
				return m.ctxErr(ctx, fmt.Sprintf("recording %03d_%s", mg.Version, mg.Name), err)
			}
		}
		return nil
	})
}

// holder returns the session holding the migration lock, from pg_locks, or
// 0 if none is found within a short bound.
func (m migrator) holder(ctx context.Context, conn *pgx.Conn) (int, string) {
	if ctx.Err() != nil || conn.IsClosed() {
		return 0, ""
	}
	hctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var pid int
	var app string
	err := conn.QueryRow(hctx, `SELECT l.pid, coalesce(a.application_name, '')
		FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
		  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
		LIMIT 1`, m.lockKey().ID()).Scan(&pid, &app)
	if err != nil {
		return 0, "" // no holder any more, or no answer: the error says what it can without it
	}
	return pid, app
}

// Migrate is the package function [MigrateWithOptions] with the Locker's
// settings, for services that migrate at start-up: it runs on a short-lived
// connection made from the Locker's connection settings, in Config.Schema,
// waiting at most Config.AcquireTimeout for the migration lock. (The package
// functions take a connection, for tools, tests and other schemas.) Lock
// connections opened afterwards hand out fencing tokens; existing ones keep
// their state until they close.
func (l *Locker) Migrate(ctx context.Context) error {
	opts := MigrateOptions{Schema: l.cfg.Schema, LockTimeout: l.cfg.AcquireTimeout}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return err
	}
	cfg.Config = *l.connCfg.Copy()
	cfg.RuntimeParams["application_name"] = "pgbaton:" + l.cfg.InstanceName + ":migrate"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConnect, err)
	}
	defer func() {
		// The migration's own result is what the caller needs; a failed close
		// only drops this short-lived connection.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	return MigrateWithOptions(ctx, conn, opts)
}
