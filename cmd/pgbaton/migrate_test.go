//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMigrateUpStatus(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	n := len(pgbaton.Migrations())
	code, out, errOut := runCLI(t, "migrate", "status", "--dsn", dsn)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("0 applied, %d pending", n)) {
		t.Fatalf("status before: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = runCLI(t, "migrate", "up", "--dsn", dsn); code != 0 || !strings.Contains(out, fmt.Sprintf("%d applied, 0 pending", n)) {
		t.Fatalf("up: exit %d\n%s%s", code, out, errOut)
	}
	if !regexp.MustCompile(`(?m)^004\s+key_names\s+applied `).MatchString(out) {
		t.Errorf("status lacks the key_names migration:\n%s", out)
	}
	// Flags before the action work too; up again is a no-op.
	if code, out, _ = runCLI(t, "migrate", "--dsn", dsn, "up"); code != 0 || !strings.Contains(out, "0 pending") {
		t.Fatalf("second up: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"migrate"}, {"migrate", "sideways"}, {"migrate", "sql", "extra"}, {"migrate", "sql", "--schema", "Bad-Name"}} {
		if code, _, _ := runCLI(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// The printed SQL is what Migrate does: applied by hand, Migrate finds
// nothing to do.
func TestMigrateSQLAppliesCleanly(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	code, script, _ := runCLI(t, "migrate", "sql")
	if code != 0 {
		t.Fatalf("sql: exit %d", code)
	}
	admin := connectT(t, dsn)
	ddl, _, _ := strings.Cut(script, "-- Least privilege")
	if err := admin.PgConn().Exec(cliCtx(t), ddl).Close(); err != nil {
		t.Fatalf("applying the script: %v", err)
	}
	code, out, _ := runCLI(t, "migrate", "status", "--dsn", dsn)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d applied, 0 pending", len(pgbaton.Migrations()))) {
		t.Fatalf("status after the script: %d\n%s", code, out)
	}
}

func connectT(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(cliCtx(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

var roleSeq atomic.Int64

// newRole makes a login role with no privileges, dropped at the end.
func newRole(t *testing.T, admin *pgx.Conn) string {
	t.Helper()
	role := fmt.Sprintf("app_%d_%d", time.Now().UnixNano()%1e6, roleSeq.Add(1))
	if _, err := admin.Exec(cliCtx(t), "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = admin.Exec(ctx, "DROP OWNED BY "+role)
		_, _ = admin.Exec(ctx, "DROP ROLE "+role)
	})
	return role
}

// A role that did not run Migrate. Today: without grants, New fails with a
// raw "permission denied for schema" (42501); with USAGE on the schema alone,
// New succeeds and every TryAcquire fails with a raw 42501 on the sequence.
// With the GRANTs that `pgbaton migrate sql` prints, the Locker with fencing
// tokens, WithXactLock, periodic and the name registry all work.
func TestLeastPrivilegeRole(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := connectT(t, dsn)
	ctx := cliCtx(t)
	if err := pgbaton.Migrate(ctx, admin, ""); err != nil {
		t.Fatal(err)
	}
	role := newRole(t, admin)
	appDSN := dsn + " user=" + role
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := pgbaton.Config{ConnString: appDSN, InstanceName: "lp", Logger: quiet}

	// No grants: New fails, typed, naming the grant.
	_, err := pgbaton.New(ctx, cfg)
	if !errors.Is(err, pgbaton.ErrPermission) || !strings.Contains(err.Error(), "GRANT USAGE ON SCHEMA pgbaton") {
		t.Errorf("New without grants: %v, want ErrPermission naming GRANT USAGE ON SCHEMA", err)
	}
	// USAGE on the schema only: New refuses, naming the token grants,
	// instead of a raw 42501 at every TryAcquire.
	if _, err := admin.Exec(ctx, "GRANT USAGE ON SCHEMA pgbaton TO "+role); err != nil {
		t.Fatal(err)
	}
	_, err = pgbaton.New(ctx, cfg)
	if !errors.Is(err, pgbaton.ErrPermission) || !strings.Contains(err.Error(), "fence_counter") {
		t.Errorf("New with USAGE only: %v, want ErrPermission naming the token grants", err)
	}

	// The printed GRANTs are enough.
	code, script, _ := runCLI(t, "migrate", "sql", "--role", role)
	if code != 0 {
		t.Fatal("migrate sql failed")
	}
	_, grants, ok := strings.Cut(script, "-- Least privilege")
	if !ok {
		t.Fatalf("no GRANT section:\n%s", script)
	}
	if err := admin.PgConn().Exec(ctx, "-- Least privilege"+grants).Close(); err != nil {
		t.Fatalf("applying the GRANTs: %v", err)
	}
	l, err := pgbaton.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := l.TryAcquire(ctx, pgbaton.KeyName("lp.try"))
	if err != nil {
		t.Fatalf("TryAcquire with the grants: %v", err)
	}
	if tok, ok := ls.Token(); !ok || tok <= 0 {
		t.Errorf("token %d %v", tok, ok)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.WithXactLock(ctx, pgbaton.KeyName("lp.xact"), func(context.Context) error { return nil }); err != nil {
		t.Fatalf("WithXactLock: %v", err)
	}
	pool, err := pgxpool.New(ctx, appDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s, err := periodic.New(ctx, periodic.Config{Locker: l, Pool: pool, Logger: quiet})
	if err != nil {
		t.Fatalf("periodic.New: %v", err)
	}
	ran := make(chan struct{})
	var once atomic.Bool
	if err := s.Add(periodic.Job{Name: "lp-job", Schedule: periodic.Every(time.Hour), RunOnStart: true,
		RunTx: func(ctx context.Context, tx pgx.Tx, run periodic.Run) error {
			if once.CompareAndSwap(false, true) {
				close(ran)
			}
			return nil
		}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(30 * time.Second):
		t.Fatal("the periodic job did not run as the least-privilege role")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil { // writes the names
		t.Fatal(err)
	}
	var names int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pgbaton.key_names WHERE instance = 'lp'").Scan(&names); err != nil || names < 2 {
		t.Errorf("names recorded by the least-privilege role: %d, %v", names, err)
	}
	var status string
	if err := admin.QueryRow(ctx, "SELECT status FROM pgbaton.periodic_runs WHERE job = 'lp-job'").Scan(&status); err != nil || status != "succeeded" {
		t.Errorf("periodic run: %q %v", status, err)
	}
}
