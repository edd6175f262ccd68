package pgbaton

import (
	"context"
	"errors"
	"strings"
	"sync"
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
