package pgbaton

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// CheckConfig says what [Check] inspects and for how many processes.
type CheckConfig struct {
	// ConnString is the connection string the service uses
	// (DATABASE_URL): its role and database decide which settings apply.
	ConnString string
	// Pods is how many processes (pods, instances) connect. Default 1.
	Pods int
	// PoolMax is each process's application pool size. Default the
	// connection string's pool_max_conns if it has one, else 20
	// (DATABASE_POOL_MAX).
	PoolMax int
	// LockPoolMax is each process's lock connections (Config.MaxConns).
	// Default 10 (DATABASE_LOCK_POOL_MAX).
	LockPoolMax int
	// Timeout bounds the whole check. Default 10s.
	Timeout time.Duration
}

// CheckReport is what [Check] found, as data.
type CheckReport struct {
	ServerVersion    string
	ServerVersionNum int
	Database         string
	Role             string
	Superuser        bool
	// Pooler is true when the connection goes through a pooler or proxy.
	Pooler bool

	MaxConnections               int
	SuperuserReservedConnections int
	ReservedConnections          int // reserved_connections, PostgreSQL 16+; 0 before
	RoleConnLimit                int // -1: no limit
	DatabaseConnLimit            int // -1: no limit
	ConnectionsInUse             int // client backends in the whole cluster now
	ConnectionsInUseDatabase     int // of which in this database

	// Settings that can end lock sessions or bound lock waits, as a new
	// session of this role in this database gets them.
	Settings []CheckSetting
	Budget   Budget
	Findings []Finding
	// OK is true when no finding has severity "error".
	OK bool
}

// CheckSetting is one setting and where its value comes from.
type CheckSetting struct {
	Name  string
	Value string // as SHOW prints it, e.g. "30s" or "0"
	// Source is "default", "server" (postgresql.conf, ALTER SYSTEM,
	// command line), "database" (ALTER DATABASE ... SET), "role" (ALTER
	// ROLE ... SET), "role in database" (ALTER ROLE ... IN DATABASE ...
	// SET), "connection string" (options or startup parameters), or
	// PostgreSQL's own word for anything else.
	Source string
	// SourceDetail is file:line for server settings when the role may see
	// it, else PostgreSQL's pg_settings.source.
	SourceDetail string
	// Effect says what the current value does to lock sessions; empty when
	// it does nothing to them.
	Effect string
}

// Budget is the connection budget: every process opens up to PoolMax +
// LockPoolMax connections, and all of them must fit in what the server
// gives an ordinary role.
type Budget struct {
	Pods, PoolMax, LockPoolMax int
	Need                       int // Pods × (PoolMax + LockPoolMax)
	// Available is max_connections − superuser_reserved_connections −
	// reserved_connections: what ordinary roles can open in the cluster.
	Available int
	// Limit is the smallest of Available and the role's and database's
	// connection limits; LimitedBy names which.
	Limit     int
	LimitedBy string
	Headroom  int // Limit − Need; negative when over budget
	OK        bool
}

// Finding is one thing worth acting on.
type Finding struct {
	Severity string // "error", "warning" or "info"
	Subject  string // a setting name, "budget", "role", "connection"
	Message  string
}

// Settings read by Check, in report order.
var checkedSettings = []string{
	"idle_session_timeout", "idle_in_transaction_session_timeout", "statement_timeout", "lock_timeout",
	"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
	"client_connection_check_interval",
}

// Check connects once with cfg.ConnString and reports the server's
// connection limits, the settings that can kill lock sessions (with where
// they come from) and the connection budget
// Pods × (PoolMax + LockPoolMax) <= available, with findings.
//
// Settings set by ALTER ROLE or ALTER DATABASE apply to sessions started
// afterwards, as they apply to Check's own session. pgbaton's lock
// connections override the session-killing settings for themselves; the
// findings are about everything else that holds locks (LockTx, raw SQL).
func Check(ctx context.Context, cfg CheckConfig) (*CheckReport, error) {
	if cfg.ConnString == "" {
		return nil, &ConfigError{Field: "ConnString", Msg: "empty; set it (or DATABASE_URL) to the service's connection string"}
	}
	// The string the service uses, parsed as NewPool and New parse it:
	// pgx's and pgxpool's client parameters are consumed, not sent.
	cs, err := parseConnString("ConnString", cfg.ConnString)
	if err != nil {
		return nil, err
	}
	poolMax := DefaultPoolMaxConns
	if _, ok := cs.given["pool_max_conns"]; ok {
		poolMax = int(cs.pool.MaxConns) // what NewPool uses when PoolMax is unset
	}
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{{"Pods", &cfg.Pods, 1}, {"PoolMax", &cfg.PoolMax, poolMax}, {"LockPoolMax", &cfg.LockPoolMax, DefaultMaxConns}} {
		if *f.v == 0 {
			*f.v = f.def
		}
		if *f.v < 0 {
			return nil, &ConfigError{Field: f.name, Msg: fmt.Sprintf("%d; use a positive number or 0 for the default", *f.v)}
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cc := cs.pool.ConnConfig
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "pgbaton-check"
	}
	// One statement per round trip, no prepared statements: works through
	// poolers too.
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("pgbaton: check: connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx) // the report is complete; a failed goodbye changes nothing
	}()

	r := &CheckReport{}
	var pid uint32
	var reserved *string
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int,
		current_database(), current_user, r.rolsuper, r.rolconnlimit, d.datconnlimit,
		current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int,
		current_setting('reserved_connections', true), pg_backend_pid(),
		(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
		(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = current_database())
		FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()`).Scan(
		&r.ServerVersion, &r.ServerVersionNum, &r.Database, &r.Role, &r.Superuser, &r.RoleConnLimit, &r.DatabaseConnLimit,
		&r.MaxConnections, &r.SuperuserReservedConnections, &reserved, &pid, &r.ConnectionsInUse, &r.ConnectionsInUseDatabase)
	if err != nil {
		return nil, fmt.Errorf("pgbaton: check: reading limits: %w", err)
	}
	if reserved != nil {
		r.ReservedConnections, _ = strconv.Atoi(*reserved)
	}
	r.Pooler = pid != conn.PgConn().PID()

	rows, err := conn.Query(ctx, `SELECT name, current_setting(name), source, coalesce(sourcefile || ':' || sourceline, '')
		FROM pg_settings WHERE name = ANY($1)`, checkedSettings)
	if err != nil {
		return nil, fmt.Errorf("pgbaton: check: reading settings: %w", err)
	}
	got := map[string]CheckSetting{}
	for rows.Next() {
		var s CheckSetting
		var src, file string
		if err := rows.Scan(&s.Name, &s.Value, &src, &file); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgbaton: check: reading settings: %w", err)
		}
		s.Source, s.SourceDetail = settingSource(src), src
		if file != "" {
			s.SourceDetail = file
		}
		got[s.Name] = s
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgbaton: check: reading settings: %w", err)
	}
	for _, name := range checkedSettings {
		if s, ok := got[name]; ok {
			s.Effect = settingEffect(name, s.Value)
			r.Settings = append(r.Settings, s)
		}
	}
	r.Budget = budget(r, cfg)
	r.Findings = findings(r)
	r.OK = true
	for _, f := range r.Findings {
		if f.Severity == "error" {
			r.OK = false
		}
	}
	return r, nil
}

// Setting returns the named setting of the report, if it was read.
func (r *CheckReport) Setting(name string) (CheckSetting, bool) {
	for _, s := range r.Settings {
		if s.Name == name {
			return s, true
		}
	}
	return CheckSetting{}, false
}

func settingSource(src string) string {
	switch src {
	case "default", "override":
		return "default"
	case "configuration file", "command line", "global", "environment variable":
		return "server"
	case "database":
		return "database"
	case "user":
		return "role"
	case "database user":
		return "role in database"
	case "client":
		return "connection string"
	}
	return src
}

func isZero(v string) bool { return v == "0" || v == "0ms" || v == "0s" }

func settingEffect(name, v string) string {
	switch name {
	case "idle_session_timeout":
		if !isZero(v) {
			return "ends any session idle for " + v + " (57P05) and frees its session locks; pgbaton's lock connections set it to 0 for themselves"
		}
	case "idle_in_transaction_session_timeout":
		if !isZero(v) {
			return "ends a transaction that pauses " + v + " between statements (25P03) and frees its locks: a LockTx transaction must not pause that long"
		}
	case "statement_timeout":
		if !isZero(v) {
			return "ends any statement after " + v + " (57014), including a lock wait of the application's own SQL; pgbaton's lock waits do not fail early: " +
				"its lock connections set it to 0, LockTx/LockSQLTx waits set their own for the wait's statement, Migrate sets 0 in its transaction"
		}
	case "lock_timeout":
		if !isZero(v) {
			return "bounds the lock waits of statements that set no bound of their own: the application's SQL and the periodic scheduler's bookkeeping (its row locks), " +
				"which fail with 55P03 after " + v + "; pgbaton's advisory lock waits (Acquire, WithXactLock, LockTx/LockSQLTx with a wait) and Migrate's transaction set their own"
		}
	case "tcp_keepalives_idle":
		if isZero(v) {
			return "the operating system's keepalive (about 2 hours on Linux) decides when the server notices a vanished client over TCP; pgbaton's lock connections set their own"
		}
	}
	return ""
}

func budget(r *CheckReport, cfg CheckConfig) Budget {
	b := Budget{Pods: cfg.Pods, PoolMax: cfg.PoolMax, LockPoolMax: cfg.LockPoolMax}
	b.Need = cfg.Pods * (cfg.PoolMax + cfg.LockPoolMax)
	b.Available = r.MaxConnections - r.SuperuserReservedConnections - r.ReservedConnections
	b.Limit, b.LimitedBy = b.Available, "max_connections"
	if r.RoleConnLimit >= 0 && r.RoleConnLimit < b.Limit {
		b.Limit, b.LimitedBy = r.RoleConnLimit, "role connection limit"
	}
	if r.DatabaseConnLimit >= 0 && r.DatabaseConnLimit < b.Limit {
		b.Limit, b.LimitedBy = r.DatabaseConnLimit, "database connection limit"
	}
	b.Headroom = b.Limit - b.Need
	b.OK = b.Headroom >= 0
	return b
}

func findings(r *CheckReport) []Finding {
	var fs []Finding
	add := func(sev, subj, format string, args ...any) {
		fs = append(fs, Finding{Severity: sev, Subject: subj, Message: fmt.Sprintf(format, args...)})
	}
	b := r.Budget
	if !b.OK {
		add("error", "budget", "%d pods × (pool %d + lock pool %d) = %d connections, over the %s of %d: "+
			"lower %s or %s, run fewer pods, or raise the limit",
			b.Pods, b.PoolMax, b.LockPoolMax, b.Need, b.LimitedBy, b.Limit, EnvPoolMax, EnvLockPoolMax)
	} else {
		add("info", "budget", "%d pods × (pool %d + lock pool %d) = %d connections of %d (%s): %d to spare",
			b.Pods, b.PoolMax, b.LockPoolMax, b.Need, b.Limit, b.LimitedBy, b.Headroom)
		if others := r.ConnectionsInUse; b.Need+others > b.Available {
			add("warning", "budget", "%d client connections are in use now; unless they are this service's own, %d more would exceed the %d available",
				others, b.Need, b.Available)
		}
	}
	if r.Superuser {
		add("warning", "role", "role %q is a superuser: it can also take the %d superuser-reserved slots meant for emergencies; run the service as an ordinary role",
			r.Role, r.SuperuserReservedConnections)
	}
	if r.Pooler {
		add("warning", "connection", "the connection goes through a pooler or proxy: session leases (pgbaton.New) need a direct connection; LockTx and the database/sql helpers work through transaction pooling")
	}
	for _, s := range r.Settings {
		if s.Effect == "" {
			continue
		}
		sev := "warning"
		if s.Name == "lock_timeout" || s.Name == "tcp_keepalives_idle" {
			sev = "info"
		}
		add(sev, s.Name, "%s = %s (from %s): %s", s.Name, s.Value, s.Source, s.Effect)
	}
	return fs
}
