package pgbaton

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgbaton/pgbaton/pgtest"
)

func findingOf(r *CheckReport, subject, severity string) (Finding, bool) {
	for _, f := range r.Findings {
		if f.Subject == subject && f.Severity == severity {
			return f, true
		}
	}
	return Finding{}, false
}

func TestCheckBudget(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	var maxConns, reserved int
	c := adminConn(t, dsn)
	if err := c.QueryRow(ctx, "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int").Scan(&maxConns, &reserved); err != nil {
		t.Fatal(err)
	}
	available := maxConns - reserved

	r, err := Check(ctx, CheckConfig{ConnString: dsn, Pods: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r.MaxConnections != maxConns || r.SuperuserReservedConnections != reserved || r.ServerVersionNum < 90600 {
		t.Fatalf("limits: %+v", r)
	}
	b := r.Budget
	if b.Need != 2*(20+10) || b.Available != available || b.Limit != available || b.LimitedBy != "max_connections" || !b.OK || !r.OK {
		t.Fatalf("budget for 2 pods with default pools: %+v", b)
	}
	if r.ConnectionsInUse < 2 || r.ConnectionsInUseDatabase < 1 {
		t.Fatalf("in use: %d cluster, %d database; at least the admin and check connections exist", r.ConnectionsInUse, r.ConnectionsInUseDatabase)
	}
	if !r.Superuser {
		t.Fatal("the test role is a superuser")
	}
	if _, ok := findingOf(r, "role", "warning"); !ok {
		t.Fatalf("no warning about a superuser service role: %+v", r.Findings)
	}

	// One pod too many.
	pods := available/30 + 1
	r, err = Check(ctx, CheckConfig{ConnString: dsn, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	if r.Budget.OK || r.OK || r.Budget.Headroom != available-pods*30 {
		t.Fatalf("%d pods × 30 against %d available reported OK: %+v", pods, available, r.Budget)
	}
	f, ok := findingOf(r, "budget", "error")
	if !ok || !strings.Contains(f.Message, EnvPoolMax) {
		t.Fatalf("over budget without an error finding naming the fix: %+v", r.Findings)
	}

	if _, err := Check(ctx, CheckConfig{ConnString: dsn, Pods: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative pods: %v", err)
	}
	if _, err := Check(ctx, CheckConfig{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("no connection string: %v", err)
	}
}

// TestCheckSettingSources sets each session-killing setting at a different
// level and checks the report says where each comes from.
func TestCheckSettingSources(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	cl := pgtest.Shared()
	db, dsn := cl.NewDB(t)
	role := db + "_svc"
	if err := cl.Exec(ctx, "postgres", `CREATE ROLE "`+role+`" LOGIN CONNECTION LIMIT 25`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Exec(testCtx(t), "postgres", `DROP ROLE IF EXISTS "`+role+`"`) })
	for _, q := range []string{
		`ALTER ROLE "` + role + `" SET statement_timeout = '7s'`,
		`ALTER DATABASE "` + db + `" SET idle_in_transaction_session_timeout = '5s'`,
		`ALTER ROLE "` + role + `" IN DATABASE "` + db + `" SET idle_session_timeout = '9s'`,
	} {
		if err := cl.Exec(ctx, "postgres", q); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Check(ctx, CheckConfig{ConnString: dsn + " user=" + role + " options='-c lock_timeout=2s'"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"statement_timeout":                   {"7s", "role"},
		"idle_in_transaction_session_timeout": {"5s", "database"},
		"idle_session_timeout":                {"9s", "role in database"},
		"lock_timeout":                        {"2s", "connection string"},
		"tcp_keepalives_idle":                 {"0", "default"},
	}
	for name, w := range want {
		s, ok := r.Setting(name)
		if !ok || s.Value != w[0] || s.Source != w[1] {
			t.Errorf("%s: %+v, want value %s from %s", name, s, w[0], w[1])
		}
		if name != "tcp_keepalives_idle" && s.Effect == "" {
			t.Errorf("%s = %s has no effect described", name, s.Value)
		}
	}
	for _, name := range []string{"statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout"} {
		if _, ok := findingOf(r, name, "warning"); !ok {
			t.Errorf("no warning for %s: %+v", name, r.Findings)
		}
	}
	if r.Role != role || r.Superuser || r.RoleConnLimit != 25 {
		t.Fatalf("role: %q superuser=%v limit=%d", r.Role, r.Superuser, r.RoleConnLimit)
	}
	// The role's limit of 25 is below one pod's 30.
	if r.Budget.Limit != 25 || r.Budget.LimitedBy != "role connection limit" || r.Budget.OK || r.OK {
		t.Fatalf("budget with a role limit of 25: %+v", r.Budget)
	}
}

func TestCheckThroughPooler(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	b := pgtest.Shared().NewPgBouncer(t, pgtest.PoolTransaction)
	r, err := Check(testCtx(t), CheckConfig{ConnString: b.DSN(db)})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findingOf(r, "connection", "warning"); !r.Pooler || !ok {
		t.Fatalf("pooler not reported: pooler=%v findings %+v", r.Pooler, r.Findings)
	}
}
