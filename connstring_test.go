package pgbaton

import (
	"context"
	"errors"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

// clientParamsKV are pgx's and pgxpool's own connection-string parameters,
// which the server does not know.
var clientParamsKV = [][2]string{
	{"pool_max_conns", "3"}, {"pool_max_conn_idle_time", "10s"}, {"pool_health_check_period", "5s"},
	{"statement_cache_capacity", "16"}, {"description_cache_capacity", "8"}, {"default_query_exec_mode", "exec"},
}

// oneConnString exercises one connection string with pgx's and pgxpool's
// parameters in it through Validate, New, NewPool and Check.
func oneConnString(t *testing.T, dsn string) {
	t.Helper()
	ctx := testCtx(t)
	if err := (Config{ConnString: dsn}).Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	l := newTestLocker(t, dsn)
	ls, err := l.TryAcquire(ctx, KeyName("connstring."+t.Name()))
	if err != nil {
		t.Fatalf("Locker on %q: %v", dsn, err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	p := newTestPool(t, PoolConfig{ConnString: dsn})
	if _, err := p.Exec(ctx, "SELECT $1::int", 1); err != nil {
		t.Fatalf("Pool on %q: %v", dsn, err)
	}
	if got := p.PoolConfig().MaxConns; got != 3 {
		t.Fatalf("pool_max_conns=3 in the connection string, MaxConns %d", got)
	}
	if got := p.Config().ConnConfig.DefaultQueryExecMode; got != pgx.QueryExecModeExec {
		t.Fatalf("default_query_exec_mode=exec in the connection string, mode %v", got)
	}
	r, err := Check(ctx, CheckConfig{ConnString: dsn})
	if err != nil {
		t.Fatalf("Check on %q: %v", dsn, err)
	}
	if r.Budget.PoolMax != 3 {
		t.Fatalf("Check's budget ignores pool_max_conns=3: PoolMax %d", r.Budget.PoolMax)
	}
}

// TestConnStringWithClientParams: one DATABASE_URL carrying pgx's and
// pgxpool's parameters serves the Locker, the pool and Check, in URL and
// keyword/value forms; a malformed one fails validation, not the connect.
func TestConnStringWithClientParams(t *testing.T) {
	t.Parallel()
	db, dsn := pgtest.Shared().NewDB(t)
	t.Run("keyword/value", func(t *testing.T) {
		kv := dsn
		for _, p := range clientParamsKV {
			kv += " " + p[0] + "=" + p[1]
		}
		oneConnString(t, kv)
	})
	t.Run("URL", func(t *testing.T) {
		q := url.Values{}
		q.Set("host", pgtest.Shared().Host())
		q.Set("port", strconv.Itoa(pgtest.Shared().Port()))
		q.Set("sslmode", "disable")
		for _, p := range clientParamsKV {
			q.Set(p[0], p[1])
		}
		u := url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db, RawQuery: q.Encode()}
		oneConnString(t, u.String())
	})
	for _, bad := range []string{
		dsn + " pool_max_conns=0", dsn + " pool_max_conn_idle_time=soon",
		dsn + " statement_cache_capacity=many", dsn + " default_query_exec_mode=fast",
	} {
		var ce *ConfigError
		if err := (Config{ConnString: bad}).Validate(); !errors.As(err, &ce) || ce.Field != "ConnString" {
			t.Errorf("Validate(%q): %v, want a ConnString ConfigError", bad, err)
		}
		if _, err := Check(context.Background(), CheckConfig{ConnString: bad}); !errors.As(err, &ce) || ce.Field != "ConnString" {
			t.Errorf("Check(%q): %v, want a ConnString ConfigError", bad, err)
		}
	}
}

// TestConnStringFromEnvQuoting: values with spaces, quotes and backslashes
// survive the PG* variables' translation to a connection string.
func TestConnStringFromEnvQuoting(t *testing.T) {
	t.Parallel()
	env := map[string]string{"PGHOST": "db.internal", "PGUSER": "app", "PGPASSWORD": `it's a \secret`, "PGDATABASE": "my db"}
	s, err := connStringFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgconn.ParseConfig(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	if c.Host != "db.internal" || c.User != "app" || c.Password != env["PGPASSWORD"] || c.Database != "my db" {
		t.Fatalf("%q parsed as host %q user %q password %q database %q", s, c.Host, c.User, c.Password, c.Database)
	}
	if s, err := connStringFromEnv(func(k string) string { return map[string]string{EnvDatabaseURL: "postgres://x/y", "PGHOST": "z"}[k] }); err != nil || s != "postgres://x/y" {
		t.Fatalf("DATABASE_URL comes first: %q %v", s, err)
	}
}

// clearPGEnv unsets DATABASE_URL and every PG* variable for the test.
func clearPGEnv(t *testing.T) {
	t.Setenv(EnvDatabaseURL, "")
	for _, e := range pgEnvKeywords {
		t.Setenv(e.env, "")
		// pgconn tells unset from empty for some (PGSSLCERTMODE); t.Setenv
		// above restores the value after the test.
		if err := os.Unsetenv(e.env); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFromEnvPGVariablesOnly: with DATABASE_URL unset, the standard PG*
// variables alone configure the Locker, the pool and Check, as they do psql
// and pgx. Not parallel: it sets the process environment.
func TestFromEnvPGVariablesOnly(t *testing.T) {
	db, _ := pgtest.Shared().NewDB(t)
	clearPGEnv(t)
	ctx := testCtx(t)

	_, err := ConfigFromEnv(os.Getenv)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != EnvDatabaseURL || !strings.Contains(err.Error(), "PGHOST") {
		t.Fatalf("nothing set: %v, want a ConfigError naming DATABASE_URL and PGHOST", err)
	}
	if _, err := PoolConfigFromEnv(os.Getenv); !errors.As(err, &ce) || ce.Field != EnvDatabaseURL {
		t.Fatalf("nothing set, pool: %v", err)
	}

	t.Setenv("PGHOST", pgtest.Shared().Host())
	t.Setenv("PGPORT", strconv.Itoa(pgtest.Shared().Port()))
	t.Setenv("PGUSER", "postgres")
	t.Setenv("PGDATABASE", db)
	t.Setenv("PGSSLMODE", "disable")
	t.Setenv("PGAPPNAME", "from-pg-env")

	lc, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		t.Fatalf("ConfigFromEnv with PG* only: %v", err)
	}
	lc.Logger = quietLogger()
	l, err := New(ctx, lc)
	if err != nil {
		t.Fatalf("New with PG* only: %v", err)
	}
	defer l.Close()
	ls, err := l.TryAcquire(ctx, KeyName("pgenv"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}

	pcfg, err := PoolConfigFromEnv(os.Getenv)
	if err != nil {
		t.Fatalf("PoolConfigFromEnv with PG* only: %v", err)
	}
	p := newTestPool(t, pcfg)
	var gotDB, gotApp string
	if err := p.QueryRow(ctx, "SELECT current_database(), current_setting('application_name')").Scan(&gotDB, &gotApp); err != nil {
		t.Fatalf("pool with PG* only: %v", err)
	}
	if gotDB != db || gotApp != "from-pg-env" {
		t.Fatalf("pool connected to %q as %q, want %q as from-pg-env", gotDB, gotApp, db)
	}
	if r, err := Check(ctx, CheckConfig{ConnString: lc.ConnString}); err != nil || r.Database != db {
		t.Fatalf("Check with PG* only: %v", err)
	}
}
