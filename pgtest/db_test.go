package pgtest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// TestNewDatabaseIsolation: the same advisory key held in one test
// database does not conflict in another, while it does in the same one.
func TestNewDatabaseIsolation(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	ctx := testCtx(t, 30*time.Second)
	dsn1, dsn2 := c.NewDatabase(t), c.NewDatabase(t)
	if dsn1 == dsn2 {
		t.Fatalf("two NewDatabase calls returned the same DSN %q", dsn1)
	}
	holder := connect(t, ctx, dsn1)
	if n := queryInt(t, ctx, holder, "SELECT pg_try_advisory_lock(42)::int"); n != 1 {
		t.Fatal("could not take the lock in a fresh database")
	}
	if n := queryInt(t, ctx, connect(t, ctx, dsn2), "SELECT pg_try_advisory_lock(42)::int"); n != 1 {
		t.Fatal("lock held in database 1 blocks database 2")
	}
	if n := queryInt(t, ctx, connect(t, ctx, dsn1), "SELECT pg_try_advisory_lock(42)::int"); n != 0 {
		t.Fatal("control: a second session in database 1 got the lock")
	}
}

// TestNewDatabaseConcurrent: 20 parallel NewDatabase calls all succeed
// (the template is never connected to) and yield distinct databases.
func TestNewDatabaseConcurrent(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	for i := range 20 {
		t.Run(fmt.Sprintf("db%d", i), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t, 30*time.Second)
			name, dsn := c.NewDB(t)
			conn := connect(t, ctx, dsn)
			var got string
			if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&got); err != nil || got != name {
				t.Fatalf("current_database() = %q, %v; want %q", got, err, name)
			}
			if !strings.Contains(name, "newdatabaseconcurrent_db") {
				t.Fatalf("name %q not derived from the test name", name)
			}
		})
	}
}

// TestDatabaseName: names are sanitised, bounded and unique by counter.
func TestDatabaseName(t *testing.T) {
	t.Parallel()
	long := "TestX/" + strings.Repeat("Ünïcode and-spaces ", 10)
	for _, tc := range []struct {
		in   string
		n    uint64
		want string
	}{
		{"TestFoo", 1, "t_testfoo_1"},
		{"TestFoo/sub_test#01", 12, "t_testfoo_sub_test_01_12"},
	} {
		if got := pgtest.TestDBName(tc.in, tc.n); got != tc.want {
			t.Errorf("TestDBName(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	got := pgtest.TestDBName(long, 123456789)
	if len(got) > 63 || strings.Trim(got, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		t.Errorf("TestDBName(long) = %q: not a short plain identifier", got)
	}
}

// TestTerminateApp: only the matching sessions of the database are
// terminated, they have exited (and released their locks) when the call
// returns, and BackendPIDs sees the change.
func TestTerminateApp(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	ctx := testCtx(t, 30*time.Second)
	db, dsn := c.NewDB(t)
	v1 := connectApp(t, ctx, dsn, "victim-1")
	v2 := connectApp(t, ctx, dsn, "victim-2")
	bystander := connectApp(t, ctx, dsn, "bystander")
	if _, err := v1.Exec(ctx, "SELECT pg_advisory_lock(5)"); err != nil {
		t.Fatal(err)
	}
	pids, err := c.BackendPIDs(ctx, db, "victim-%")
	if err != nil || len(pids) != 2 {
		t.Fatalf("BackendPIDs = %v, %v; want the 2 victims", pids, err)
	}
	n, err := c.TerminateApp(ctx, db, "victim-%")
	if err != nil || n != 2 {
		t.Fatalf("TerminateApp = %d, %v; want 2", n, err)
	}
	if pids, err := c.BackendPIDs(ctx, db, "victim-%"); err != nil || len(pids) != 0 {
		t.Fatalf("after TerminateApp, BackendPIDs = %v, %v; want none", pids, err)
	}
	if n := queryInt(t, ctx, bystander, "SELECT pg_try_advisory_lock(5)::int"); n != 1 {
		t.Fatal("lock of a terminated session not released when TerminateApp returned")
	}
	for _, v := range []*pgx.Conn{v1, v2} {
		if err := v.Ping(ctx); err == nil {
			t.Fatal("terminated session still works")
		}
	}
	if all, err := c.BackendPIDs(ctx, db, "%"); err != nil || len(all) != 1 {
		t.Fatalf("BackendPIDs(%%) = %v, %v; want only the bystander", all, err)
	}
}

// TestTerminateBackend: one backend by pid; a second attempt on the same
// pid reports false as an error.
func TestTerminateBackend(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	ctx := testCtx(t, 30*time.Second)
	conn := connect(t, ctx, c.NewDatabase(t))
	pid := int(conn.PgConn().PID())
	if err := c.TerminateBackend(ctx, pid); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("terminated session still works")
	}
	if err := c.TerminateBackend(ctx, pid); err == nil {
		t.Fatal("terminating a gone backend did not fail")
	}
}

// TestAlterSet: AlterRoleSet and AlterDatabaseSet reach new sessions (not
// existing ones), with names and values quoted properly.
func TestAlterSet(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	ctx := testCtx(t, 30*time.Second)
	db, dsn := c.NewDB(t)
	role := "Role " + db // needs quoting
	if err := c.Exec(ctx, "postgres", "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Exec(context.Background(), "postgres", "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
	})
	roleDSN := dsn + " user='" + role + "'"
	old := connect(t, ctx, roleDSN)
	value := `it's \ 1`
	if err := c.AlterRoleSet(ctx, role, "pgbaton.flag", value); err != nil {
		t.Fatal(err)
	}
	if err := c.AlterRoleSet(ctx, role, "lock_timeout", "1234ms"); err != nil {
		t.Fatal(err)
	}
	if err := c.AlterDatabaseSet(ctx, db, "statement_timeout", "4321ms"); err != nil {
		t.Fatal(err)
	}
	fresh := connect(t, ctx, roleDSN)
	var flag, lockTimeout, stmtTimeout string
	if err := fresh.QueryRow(ctx, "SELECT current_setting('pgbaton.flag'), current_setting('lock_timeout'), current_setting('statement_timeout')").
		Scan(&flag, &lockTimeout, &stmtTimeout); err != nil {
		t.Fatal(err)
	}
	if flag != value || lockTimeout != "1234ms" || stmtTimeout != "4321ms" {
		t.Fatalf("new session: flag %q lock_timeout %q statement_timeout %q; want %q 1234ms 4321ms", flag, lockTimeout, stmtTimeout, value)
	}
	if err := old.QueryRow(ctx, "SELECT current_setting('lock_timeout')").Scan(&lockTimeout); err != nil || lockTimeout != "0" {
		t.Fatalf("existing session: lock_timeout %q, %v; want unchanged 0", lockTimeout, err)
	}
}
