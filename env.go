package pgbaton

import (
	"fmt"
	"strconv"
	"time"
)

// Environment variables read by [ConfigFromEnv]. The names follow the
// convention of services that run a separate lock pool next to their
// application pool.
const (
	EnvDatabaseURL      = "DATABASE_URL"
	EnvLockPoolMax      = "DATABASE_LOCK_POOL_MAX"              // Config.MaxConns
	EnvLockTimeoutMS    = "DATABASE_LOCK_TIMEOUT_MS"            // Config.AcquireTimeout
	EnvConnectTimeoutMS = "DATABASE_POOL_CONNECTION_TIMEOUT_MS" // Config.ConnectTimeout
	EnvLockIdleTxMS     = "DATABASE_LOCK_IDLE_TX_TIMEOUT_MS"    // Config.XactIdleTimeout
	EnvLeaseTimeoutMS   = "PGBATON_LEASE_TIMEOUT_MS"            // Config.LeaseTimeout
	EnvHeartbeatMS      = "PGBATON_HEARTBEAT_INTERVAL_MS"       // Config.HeartbeatInterval
	EnvInstanceName     = "PGBATON_INSTANCE"                    // Config.InstanceName
)

// ConfigFromEnv builds a Config from environment variables, using getenv
// (os.Getenv in production; a map lookup in tests). The connection string
// is DATABASE_URL or, when it is unset, the standard PG* variables that are
// set (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE, ...), as
// psql and pgx read them. Unset variables keep the defaults; a malformed one
// is a [*ConfigError] naming the variable. The result is validated.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	var c Config
	var err error
	if c.ConnString, err = connStringFromEnv(getenv); err != nil {
		return c, err
	}
	ints := []struct {
		env string
		dst *int
	}{{EnvLockPoolMax, &c.MaxConns}}
	for _, f := range ints {
		v, err := envInt(getenv, f.env)
		if err != nil {
			return c, err
		}
		*f.dst = v
	}
	durs := []struct {
		env string
		dst *time.Duration
	}{
		{EnvLockTimeoutMS, &c.AcquireTimeout},
		{EnvConnectTimeoutMS, &c.ConnectTimeout},
		{EnvLockIdleTxMS, &c.XactIdleTimeout},
		{EnvLeaseTimeoutMS, &c.LeaseTimeout},
		{EnvHeartbeatMS, &c.HeartbeatInterval},
	}
	for _, f := range durs {
		v, err := envInt(getenv, f.env)
		if err != nil {
			return c, err
		}
		*f.dst = time.Duration(v) * time.Millisecond
	}
	c.InstanceName = getenv(EnvInstanceName)
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, nil
}

func envInt(getenv func(string) string, name string) (int, error) {
	s := getenv(name)
	if s == "" {
		return 0, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 || v > 1<<30 {
		return 0, &ConfigError{Field: name, Msg: fmt.Sprintf("%q is not a positive integer", s)}
	}
	return v, nil
}
