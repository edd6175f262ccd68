package pgbaton

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// migrationRows returns the versions recorded in schema.migrations.
func migrationRows(t *testing.T, c *pgx.Conn, schema string) []int32 {
	t.Helper()
	rows, err := c.Query(testCtx(t), "SELECT version FROM "+pgx.Identifier{schema, "migrations"}.Sanitize()+" ORDER BY version")
	if err != nil {
		t.Fatalf("reading %s.migrations: %v", schema, err)
	}
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func wantAllVersions(t *testing.T, got []int32) {
	t.Helper()
	ms := Migrations()
	if len(got) != len(ms) {
		t.Fatalf("recorded versions %v, want one row per migration (%d)", got, len(ms))
	}
	for i, m := range ms {
		if int(got[i]) != m.Version {
			t.Fatalf("recorded versions %v, want %v in order", got, ms)
		}
	}
}

func TestMigrationsList(t *testing.T) {
	t.Parallel()
	ms := Migrations()
	if len(ms) == 0 || ms[0].Version != 1 || ms[0].Name != "fencing" {
		t.Fatalf("Migrations() = %+v; want 001_fencing first", ms)
	}
	for i, m := range ms {
		if i > 0 && m.Version <= ms[i-1].Version {
			t.Errorf("versions not strictly increasing: %d after %d", m.Version, ms[i-1].Version)
		}
		if !strings.Contains(m.SQL, "{{schema}}") {
			t.Errorf("migration %03d_%s does not use {{schema}}: the schema name would not be configurable", m.Version, m.Name)
		}
	}
}

// TestMigrateIdempotent: a second Migrate applies nothing and changes
// nothing; the fencing sequence exists and works.
func TestMigrateIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := adminConn(t, pgtest.Shared().NewDatabase(t))
	if err := Migrate(ctx, c, ""); err != nil {
		t.Fatal(err)
	}
	wantAllVersions(t, migrationRows(t, c, DefaultSchema))
	var first time.Time
	if err := c.QueryRow(ctx, "SELECT max(applied_at) FROM pgbaton.migrations").Scan(&first); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := Migrate(ctx, c, DefaultSchema); err != nil {
			t.Fatalf("second Migrate: %v", err)
		}
	}
	wantAllVersions(t, migrationRows(t, c, DefaultSchema))
	var again time.Time
	if err := c.QueryRow(ctx, "SELECT max(applied_at) FROM pgbaton.migrations").Scan(&again); err != nil || !again.Equal(first) {
		t.Fatalf("applied_at moved from %s to %s (%v): a migration was applied again", first, again, err)
	}
	var a, b int64
	if err := c.QueryRow(ctx, "SELECT nextval('pgbaton.fence_token'), nextval('pgbaton.fence_token')").Scan(&a, &b); err != nil || b <= a || a < 1 {
		t.Fatalf("fence_token sequence: %d, %d, %v", a, b, err)
	}
}

// TestMigrateConcurrent: many instances migrating one database at the same
// moment, each on its own connection, all succeed and apply each migration
// exactly once.
func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	const n = 12
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = adminConn(t, dsn)
	}
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = Migrate(ctx, c, "")
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	wantAllVersions(t, migrationRows(t, conns[0], DefaultSchema))

	// Lockers migrating at once, through Locker.Migrate.
	var lwg sync.WaitGroup
	lerrs := make([]error, 4)
	lockers := make([]*Locker, 4)
	for i := range lockers {
		lockers[i] = newTestLocker(t, dsn, func(c *Config) { c.Schema = "concurrent_locks" })
	}
	start2 := make(chan struct{})
	for i, l := range lockers {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			<-start2
			lerrs[i] = l.Migrate(ctx)
		}()
	}
	close(start2)
	lwg.Wait()
	for i, err := range lerrs {
		if err != nil {
			t.Errorf("locker %d: %v", i, err)
		}
	}
	wantAllVersions(t, migrationRows(t, conns[0], "concurrent_locks"))
}

// TestMigrateSchemaName: the schema is configurable; leases carry tokens
// only from the schema their Locker is configured with.
func TestMigrateSchemaName(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	custom := func(c *Config) { c.Schema = "app_locks" }
	if err := newTestLocker(t, dsn, custom).Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	c := adminConn(t, dsn)
	wantAllVersions(t, migrationRows(t, c, "app_locks"))
	var exists bool
	if err := c.QueryRow(ctx, "SELECT to_regnamespace('pgbaton') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("the default schema was created too (%v)", err)
	}
	key := KeyName("migrate/schema")
	withTok := newTestLocker(t, dsn, custom)
	ls, err := withTok.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if tok, ok := ls.Token(); !ok || tok < 1 {
		t.Fatalf("lease of a Locker on the migrated schema: token %d, %v", tok, ok)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	ls, err = newTestLocker(t, dsn).TryAcquire(ctx, key) // default schema: not migrated here
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Release()
	if _, ok := ls.Token(); ok {
		t.Fatal("a Locker whose schema does not exist handed out a token")
	}
}

// TestMigrateRejectsBadSchema: an unusable schema name is a ConfigError that
// says what a valid one looks like, and nothing is created.
func TestMigrateRejectsBadSchema(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := adminConn(t, pgtest.Shared().NewDatabase(t))
	for _, bad := range []string{"Locks", "locks; DROP TABLE x", "1locks", strings.Repeat("x", 64)} {
		err := Migrate(ctx, c, bad)
		var ce *ConfigError
		if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != "Schema" || !strings.Contains(err.Error(), "lower-case identifier") {
			t.Errorf("Migrate(%q) = %v; want a Schema ConfigError", bad, err)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('public', 'information_schema')").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d schemas created by rejected migrations (%v)", n, err)
	}
}

// TestMigrateAllOrNothing: a Migrate that fails part way (here: its context
// ends while another instance holds the migration lock) leaves nothing
// behind, and a later one completes.
func TestMigrateAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	holder := adminConn(t, dsn)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", KeyName("pgbaton.migrate:pgbaton").ID()); err != nil {
		t.Fatal(err)
	}
	c := adminConn(t, dsn)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = Migrate(short, c, "")
	cancel()
	if err == nil || !strings.Contains(err.Error(), "migration lock") {
		t.Fatalf("Migrate while another instance migrates, with a short deadline: %v; want it to fail waiting for the migration lock", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	check := adminConn(t, dsn)
	var exists bool
	if err := check.QueryRow(ctx, "SELECT to_regnamespace('pgbaton') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("the failed Migrate left schema pgbaton behind (%v)", err)
	}
	if err := Migrate(ctx, check, ""); err != nil {
		t.Fatal(err)
	}
	wantAllVersions(t, migrationRows(t, check, DefaultSchema))
}

// holdMigrationLock takes the migration lock of schema as a session lock on
// its own connection (application_name stuck-holder), as a stuck session
// would, and returns that connection and its backend pid.
func holdMigrationLock(t *testing.T, dsn, schema string) (*pgx.Conn, uint32) {
	t.Helper()
	c := adminConn(t, dsn+" application_name=stuck-holder")
	if _, err := c.Exec(testCtx(t), "SELECT pg_advisory_lock($1)", KeyName("pgbaton.migrate:"+schema).ID()); err != nil {
		t.Fatal(err)
	}
	return c, c.PgConn().PID()
}

// TestMigrateLockHeldIsBounded: a session that holds the migration lock
// makes Migrate return the typed error, naming that session, once the
// documented bound is over, for the package function (LockTimeout) and for
// Locker.Migrate (Config.AcquireTimeout), even with a context that has no
// deadline of its own.
func TestMigrateLockHeldIsBounded(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	_, pid := holdMigrationLock(t, dsn, DefaultSchema)
	// No deadline that the bound could borrow: only the bound can end it.
	// (The test's own context ends the wait after 30s if the bound fails.)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := context.AfterFunc(testCtx(t), cancel)
	defer stop()
	go func() {
		select {
		case <-time.After(30 * time.Second):
			cancel()
		case <-ctx.Done():
		}
	}()

	check := func(name string, err error, bound time.Duration) {
		t.Helper()
		var le *MigrationLockError
		if !errors.Is(err, ErrMigrationLockTimeout) || !errors.Is(err, ErrNotAcquired) || !errors.As(err, &le) {
			t.Fatalf("%s while another session holds the migration lock: %v; want a *MigrationLockError", name, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: the test's 30s fallback ended the wait, not the bound: %v", name, err)
		}
		if le.Waited < bound || le.HolderPID != int(pid) || le.HolderApplicationName != "stuck-holder" || le.Schema != DefaultSchema {
			t.Fatalf("%s: %+v; want Waited >= %s and the holder pid %d, application_name stuck-holder", name, le, bound, pid)
		}
		if !strings.Contains(err.Error(), "stuck-holder") || !strings.Contains(err.Error(), "pg_terminate_backend") {
			t.Fatalf("%s: %q does not name the holder and the fix", name, err)
		}
	}
	c := adminConn(t, dsn)
	err := MigrateWithOptions(ctx, c, MigrateOptions{LockTimeout: 400 * time.Millisecond})
	check("MigrateWithOptions", err, 400*time.Millisecond)
	var exists bool
	if err := c.QueryRow(ctx, "SELECT to_regnamespace('pgbaton') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("the timed-out Migrate left schema pgbaton behind (%v)", err)
	}

	l := newTestLocker(t, dsn, func(c *Config) { c.AcquireTimeout, c.ReleaseTimeout = 500*time.Millisecond, 2*time.Second })
	check("Locker.Migrate", l.Migrate(ctx), 500*time.Millisecond)
}

// TestMigrateUpToDateIgnoresHeldLock: on an up-to-date schema Migrate is a
// read-only no-op: it returns nil even while a session holds the migration
// lock (with a bound of an hour, so any wait would show).
func TestMigrateUpToDateIgnoresHeldLock(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	c := adminConn(t, dsn)
	if err := Migrate(ctx, c, ""); err != nil {
		t.Fatal(err)
	}
	holder, _ := holdMigrationLock(t, dsn, DefaultSchema)
	short, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := MigrateWithOptions(short, c, MigrateOptions{LockTimeout: time.Hour}); err != nil {
		t.Fatalf("Migrate on an up-to-date schema while the migration lock is held: %v; want nil without waiting", err)
	}
	l := newTestLocker(t, dsn, func(c *Config) { c.AcquireTimeout = time.Hour })
	if err := l.Migrate(short); err != nil {
		t.Fatalf("Locker.Migrate on an up-to-date schema while the migration lock is held: %v", err)
	}
	// The holder's lock is untouched and nothing queued behind it.
	if n := (observer{t, holder}).waiting(); n != 0 {
		t.Fatalf("%d advisory lock requests still waiting", n)
	}
}

// TestMigrateConcurrentUnderDatabaseLockTimeout: with the database's
// lock_timeout at 200ms, eight instances that start together on a fresh
// database (queued behind a session that holds the migration lock until
// each of them has waited longer than that) all succeed, and each
// migration is applied once.
func TestMigrateConcurrentUnderDatabaseLockTimeout(t *testing.T) {
	t.Parallel()
	for _, settings := range [][]string{{"lock_timeout"}, {"lock_timeout", "statement_timeout"}} {
		t.Run(strings.Join(settings, "+"), func(t *testing.T) {
			t.Parallel()
			migrateConcurrentUnder(t, settings)
		})
	}
}

// migrateConcurrentUnder runs TestMigrateConcurrentUnderDatabaseLockTimeout
// with each of settings at 200ms on the database.
func migrateConcurrentUnder(t *testing.T, settings []string) {
	ctx := testCtx(t)
	db, dsn := pgtest.Shared().NewDB(t)
	for _, name := range settings {
		if err := pgtest.Shared().AlterDatabaseSet(ctx, db, name, "200ms"); err != nil {
			t.Fatal(err)
		}
	}
	const n = 8
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = adminConn(t, dsn)
	}
	var lt string
	if err := conns[0].QueryRow(ctx, "SHOW lock_timeout").Scan(&lt); err != nil || lt != "200ms" {
		t.Fatalf("lock_timeout in a new session = %q (%v), want the database's 200ms", lt, err)
	}
	holder, _ := holdMigrationLock(t, dsn, DefaultSchema)
	obs := observer{t, adminConn(t, dsn)}

	errs := make([]error, n)
	var done sync.WaitGroup
	var returned atomic.Int32
	for i, c := range conns {
		done.Add(1)
		go func() {
			defer done.Done()
			errs[i] = Migrate(ctx, c, "")
			returned.Add(1)
		}()
	}
	// Release once every instance has waited longer than the database's
	// lock_timeout (or one gave up: the old failure).
	waitFor(t, 20*time.Second, "all instances to wait past the database's lock_timeout", func() bool {
		var queued int
		var newest float64
		if err := obs.c.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - max(waitstart)), 0)::float8
			FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&queued, &newest); err != nil {
			t.Fatal(err)
		}
		return returned.Load() > 0 || (queued == n && newest > 0.4)
	})
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock_all()"); err != nil {
		t.Fatal(err)
	}
	done.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	wantAllVersions(t, migrationRows(t, conns[0], DefaultSchema))
}

// TestMigrateUpToDateAsNonOwner: a role that may only read the schema
// (USAGE on it, SELECT on its tables, no CREATE anywhere) gets nil from
// Migrate on an up-to-date schema, and nothing is written.
func TestMigrateUpToDateAsNonOwner(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	db, dsn := pgtest.Shared().NewDB(t)
	admin := adminConn(t, dsn)
	if err := Migrate(ctx, admin, ""); err != nil {
		t.Fatal(err)
	}
	role := "reader_" + strings.TrimPrefix(db, "test")
	if len(role) > 63 {
		role = role[:63]
	}
	r := pgx.Identifier{role}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE ROLE "+r+" LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC; "+
		"GRANT CONNECT ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+r+"; "+
		"GRANT USAGE ON SCHEMA pgbaton TO "+r+"; GRANT SELECT ON ALL TABLES IN SCHEMA pgbaton TO "+r); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = pgtest.Shared().Exec(ctx, db, "DROP OWNED BY "+r)
		if err := pgtest.Shared().Exec(ctx, "postgres", "DROP ROLE "+r); err != nil {
			t.Errorf("dropping role %s: %v", role, err)
		}
	})
	var before int64
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pgbaton.migrations").Scan(&before); err != nil {
		t.Fatal(err)
	}
	reader := adminConn(t, dsn+" user="+role)
	var canCreate bool
	if err := reader.QueryRow(ctx, "SELECT has_database_privilege(current_database(), 'CREATE') OR has_schema_privilege('pgbaton', 'CREATE')").Scan(&canCreate); err != nil || canCreate {
		t.Fatalf("the reader role may create objects (%v): the test would not show a no-op", err)
	}
	holdMigrationLock(t, dsn, DefaultSchema)
	if err := Migrate(ctx, reader, ""); err != nil {
		t.Fatalf("Migrate as a role that does not own the up-to-date schema: %v; want a no-op nil", err)
	}
	var after int64
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pgbaton.migrations").Scan(&after); err != nil || after != before {
		t.Fatalf("pgbaton.migrations has %d rows, %d before (%v)", after, before, err)
	}
	wantAllVersions(t, migrationRows(t, admin, DefaultSchema))
}
