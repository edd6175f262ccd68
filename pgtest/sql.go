package pgtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// AdminApplicationName is the application_name of the harness's own
// short-lived connections. BackendPIDs and TerminateApp never match them.
const AdminApplicationName = "pgtest-admin"

// TemplateDatabase is the database that CreateDatabase copies. Nothing
// connects to it (ALLOW_CONNECTIONS false), so concurrent CREATE DATABASE
// commands never fail with "source database is being accessed by other
// users", as they can with template1.
const TemplateDatabase = "pgtest_template"

// connect opens an admin connection to db over the unix socket.
func (c *Cluster) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(c.DSN(db))
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = AdminApplicationName
	return pgx.ConnectConfig(ctx, cfg)
}

// withConn runs f on a short-lived admin connection to db.
func (c *Cluster) withConn(ctx context.Context, db string, f func(*pgx.Conn) error) error {
	conn, err := c.connect(ctx, db)
	if err != nil {
		return fmt.Errorf("pgtest: connect to %q: %w", db, err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx) // a short-lived admin connection; f's result is what counts
	}()
	return f(conn)
}

// Exec runs sql (several statements are allowed when args is empty) on a
// short-lived superuser connection to db.
func (c *Cluster) Exec(ctx context.Context, db, sql string, args ...any) error {
	return c.withConn(ctx, db, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
}

// initTemplate creates TemplateDatabase and records the server version.
func (c *Cluster) initTemplate(ctx context.Context) error {
	c.template = TemplateDatabase
	return c.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&c.version); err != nil {
			return fmt.Errorf("pgtest: server version: %w", err)
		}
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident(TemplateDatabase)+" TEMPLATE template0"); err != nil {
			return fmt.Errorf("pgtest: create %s: %w", TemplateDatabase, err)
		}
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident(TemplateDatabase)+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
			return fmt.Errorf("pgtest: alter %s: %w", TemplateDatabase, err)
		}
		return nil
	})
}

// CreateDatabase runs CREATE DATABASE name TEMPLATE pgtest_template. It is
// safe for concurrent use: a transient "being accessed by other users"
// failure is retried with a short backoff until ctx ends.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	sql := "CREATE DATABASE " + ident(name) + " TEMPLATE " + ident(c.template)
	backoff := 10 * time.Millisecond
	for {
		err := c.Exec(ctx, "postgres", sql)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" {
			if err != nil {
				return fmt.Errorf("pgtest: create database %q: %w", name, err)
			}
			return nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("pgtest: create database %q: %w (last error: %v)", name, ctx.Err(), err) //nolint:errorlint // ctx's error is the cause; the last attempt's is detail
		case <-t.C:
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// DropDatabase drops name if it exists, terminating its sessions first
// (DROP DATABASE ... WITH (FORCE)).
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	if err := c.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: drop database %q: %w", name, err)
	}
	return nil
}

var dbCounter atomic.Uint64

// NewDatabase creates a database for one test, named after t.Name() plus a
// counter, drops it in t.Cleanup, and returns its unix-socket DSN.
// Advisory locks are per database, so this isolates tests that share a
// cluster.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	_, dsn := c.NewDB(t)
	return dsn
}

// NewDB is NewDatabase that also returns the database name (for Exec,
// TerminateApp, BackendPIDs, ...).
func (c *Cluster) NewDB(t testing.TB) (name, dsn string) {
	t.Helper()
	name = testDBName(t.Name(), dbCounter.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if c.isClosed() {
			return // the whole cluster is gone already
		}
		if err := c.DropDatabase(ctx, name); err != nil {
			t.Errorf("%v", err)
		}
	})
	return name, c.DSN(name)
}

// testDBName makes a database name from a test name: lower case, runs of
// other characters as "_", at most 63 bytes with the counter.
func testDBName(testName string, n uint64) string {
	var b strings.Builder
	b.WriteString("t_")
	lastUnderscore := true
	for _, r := range strings.ToLower(testName) {
		if r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			b.WriteRune(r)
			lastUnderscore = false
		} else if !lastUnderscore {
			b.WriteByte('_')
			lastUnderscore = true
		}
		if b.Len() >= 40 {
			break
		}
	}
	return strings.TrimRight(b.String(), "_") + fmt.Sprintf("_%d", n)
}

// AlterRoleSet runs ALTER ROLE role SET name = value. It affects sessions
// started afterwards.
func (c *Cluster) AlterRoleSet(ctx context.Context, role, name, value string) error {
	return c.Exec(ctx, "postgres", "ALTER ROLE "+ident(role)+" SET "+gucName(name)+" = "+literal(value))
}

// AlterDatabaseSet runs ALTER DATABASE db SET name = value. It affects
// sessions started afterwards.
func (c *Cluster) AlterDatabaseSet(ctx context.Context, db, name, value string) error {
	return c.Exec(ctx, "postgres", "ALTER DATABASE "+ident(db)+" SET "+gucName(name)+" = "+literal(value))
}

// clientBackends selects client backends of database $1 whose
// application_name matches the LIKE pattern $2, except the calling
// session and the harness's own connections.
const clientBackends = `FROM pg_stat_activity
WHERE datname = $1 AND application_name LIKE $2
  AND backend_type = 'client backend'
  AND application_name <> '` + AdminApplicationName + `'
  AND pid <> pg_backend_pid()`

// BackendPIDs returns the pids of client backends of db whose
// application_name matches the LIKE pattern applicationName ("%" for all).
func (c *Cluster) BackendPIDs(ctx context.Context, db, applicationName string) ([]int, error) {
	var pids []int
	err := c.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "SELECT pid "+clientBackends+" ORDER BY pid", db, applicationName)
		if err != nil {
			return err
		}
		pids, err = pgx.CollectRows(rows, pgx.RowTo[int])
		return err
	})
	return pids, err
}

// terminateCall is pg_terminate_backend on the pid expression, waiting for
// the backend to exit where the server supports it (14+), so that its
// locks are released when the call returns.
func (c *Cluster) terminateCall(pidExpr string) string {
	if c.version >= 140000 {
		return "pg_terminate_backend(" + pidExpr + ", 10000)"
	}
	return "pg_terminate_backend(" + pidExpr + ")"
}

// TerminateBackend terminates one backend. On PostgreSQL 14+ it returns
// once the backend has exited. It is an error if pg_terminate_backend
// returned false.
func (c *Cluster) TerminateBackend(ctx context.Context, pid int) error {
	var ok bool
	err := c.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT "+c.terminateCall("$1"), pid).Scan(&ok)
	})
	if err != nil {
		return fmt.Errorf("pgtest: terminate backend %d: %w", pid, err)
	}
	if !ok {
		return fmt.Errorf("pgtest: pg_terminate_backend(%d) returned false (no such backend, or it did not exit in time)", pid)
	}
	return nil
}

// TerminateApp terminates every client backend of db whose
// application_name matches the LIKE pattern applicationName and returns
// how many were terminated. On PostgreSQL 14+ they have exited on return.
func (c *Cluster) TerminateApp(ctx context.Context, db, applicationName string) (int, error) {
	var n int
	err := c.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT count(*) FILTER (WHERE "+c.terminateCall("pid")+") "+clientBackends,
			db, applicationName).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("pgtest: terminate %q backends of %q: %w", applicationName, db, err)
	}
	return n, nil
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// gucName quotes a possibly qualified setting name ("lock_timeout",
// "myext.flag").
func gucName(name string) string { return pgx.Identifier(strings.Split(name, ".")).Sanitize() }

// literal quotes a string constant independently of
// standard_conforming_strings.
func literal(v string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}
