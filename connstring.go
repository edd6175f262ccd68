package pgbaton

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// One connection string for everything.
//
// A DATABASE_URL may carry parameters meant for the client, not the
// server: pgxpool's pool_max_conns, pool_min_conns, pool_min_idle_conns,
// pool_max_conn_lifetime, pool_max_conn_lifetime_jitter,
// pool_max_conn_idle_time, pool_health_check_period and pool_ping_timeout,
// and pgx's statement_cache_capacity, description_cache_capacity and
// default_query_exec_mode. pgconn.ParseConfig knows none of them and keeps
// them as run-time parameters, which the server rejects at connect (FATAL
// 42704 unrecognized configuration parameter). Every connection string
// pgbaton reads goes through parseConnString, which is pgxpool.ParseConfig:
// it consumes both sets (pgx.ParseConfig the second, pgxpool the first), so
// the same string serves the Locker, [NewPool] and [Check], and a malformed
// value fails validation instead of the first connect.

// connSettings is a parsed connection string.
type connSettings struct {
	// pool is pgxpool's parse: client parameters consumed, validated and
	// applied; what remains in pool.ConnConfig.Config.RuntimeParams goes
	// to the server.
	pool *pgxpool.Config
	// given holds the client parameters the string itself sets (keyword
	// to value), so an explicit setting can be told from pgxpool's default.
	given map[string]string
}

// clientParams are the connection-string keywords pgx and pgxpool consume
// (pgx v5 ParseConfig and pgxpool.ParseConfig).
var clientParams = []string{
	"pool_max_conns", "pool_min_conns", "pool_min_idle_conns", "pool_max_conn_lifetime",
	"pool_max_conn_lifetime_jitter", "pool_max_conn_idle_time", "pool_health_check_period", "pool_ping_timeout",
	"statement_cache_capacity", "description_cache_capacity", "default_query_exec_mode",
}

// parseConnString parses a URL or keyword/value connection string (with
// the PG* environment variables filling what it leaves out, as pgconn does)
// into pgxpool's configuration. A malformed string or client parameter is
// a [*ConfigError] on field, with pgconn's message (passwords redacted).
func parseConnString(field, s string) (*connSettings, error) {
	raw, err := pgconn.ParseConfig(s)
	if err != nil {
		return nil, &ConfigError{Field: field, Msg: fmt.Sprintf("cannot parse: %v", err)}
	}
	pc, err := pgxpool.ParseConfig(s)
	if err != nil {
		return nil, &ConfigError{Field: field, Msg: fmt.Sprintf("cannot parse: %v", err)}
	}
	cs := &connSettings{pool: pc, given: map[string]string{}}
	for _, k := range clientParams {
		if v, ok := raw.RuntimeParams[k]; ok {
			cs.given[k] = v
		}
	}
	return cs, nil
}

// lockConnConfig returns the pgconn configuration of lock connections for a
// connection string: pgconn's, without the client parameters pgx and
// pgxpool consume, which mean nothing to a lock connection and which the
// server would refuse.
func lockConnConfig(connString string) (*pgconn.Config, error) {
	cs, err := parseConnString("ConnString", connString)
	if err != nil {
		return nil, err
	}
	return cs.pool.ConnConfig.Config.Copy(), nil
}

// pgEnvKeywords maps libpq's environment variables to connection-string
// keywords, as pgconn.ParseConfig reads them (pgconn's parseEnvSettings,
// pgx v5).
var pgEnvKeywords = []struct{ env, keyword string }{
	{"PGHOST", "host"}, {"PGPORT", "port"}, {"PGDATABASE", "dbname"}, {"PGUSER", "user"},
	{"PGPASSWORD", "password"}, {"PGPASSFILE", "passfile"}, {"PGAPPNAME", "application_name"},
	{"PGCONNECT_TIMEOUT", "connect_timeout"}, {"PGSSLMODE", "sslmode"}, {"PGSSLKEY", "sslkey"},
	{"PGSSLCERT", "sslcert"}, {"PGSSLCERTMODE", "sslcertmode"}, {"PGSSLSNI", "sslsni"},
	{"PGSSLROOTCERT", "sslrootcert"}, {"PGSSLPASSWORD", "sslpassword"}, {"PGSSLNEGOTIATION", "sslnegotiation"},
	{"PGTARGETSESSIONATTRS", "target_session_attrs"}, {"PGSERVICE", "service"}, {"PGSERVICEFILE", "servicefile"},
	{"PGTZ", "timezone"}, {"PGOPTIONS", "options"}, {"PGMINPROTOCOLVERSION", "min_protocol_version"},
	{"PGMAXPROTOCOLVERSION", "max_protocol_version"}, {"PGCHANNELBINDING", "channel_binding"},
	{"PGREQUIREAUTH", "require_auth"},
}

// connStringFromEnv returns DATABASE_URL or, when it is unset, a
// keyword/value connection string made of the PG* variables that are set
// (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE...), read
// through getenv. pgconn would read the PG* variables from the process
// environment by itself; spelling them out keeps getenv the only source
// (tests) and the result inspectable. Neither set is a [*ConfigError].
func connStringFromEnv(getenv func(string) string) (string, error) {
	if s := getenv(EnvDatabaseURL); s != "" {
		return s, nil
	}
	var kv []string
	for _, e := range pgEnvKeywords {
		if v := getenv(e.env); v != "" {
			kv = append(kv, e.keyword+"="+quoteConnValue(v))
		}
	}
	if len(kv) == 0 {
		return "", &ConfigError{Field: EnvDatabaseURL, Msg: "not set, and no PG* variable either; " +
			"export DATABASE_URL=postgres://user@host/db, or PGHOST, PGPORT, PGUSER, PGDATABASE (and PGPASSWORD) as for psql"}
	}
	return strings.Join(kv, " "), nil
}

// quoteConnValue quotes a keyword/value connection-string value.
func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
