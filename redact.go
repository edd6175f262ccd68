package pgbaton

import (
	"log/slog"
	"net/url"
	"regexp"
)

var (
	kvPasswordRE  = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)`)
	urlPasswordRE = regexp.MustCompile(`(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]*)(@)`)
	qPasswordRE   = regexp.MustCompile(`(?i)([?&]password=)([^&\s]*)`)
)

// RedactConnString returns s, a URL or key=value connection string, with its
// password replaced by "xxxxx", for logs and messages. The config types'
// LogValue methods use it, so logging a Config never prints a password.
func RedactConnString(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	s = urlPasswordRE.ReplaceAllString(s, "${1}xxxxx${3}")
	s = qPasswordRE.ReplaceAllString(s, "${1}xxxxx")
	return kvPasswordRE.ReplaceAllString(s, "${1}xxxxx")
}

// LogValue logs the configuration with the connection string's password
// redacted (ConnConfig's password is never logged).
func (c Config) LogValue() slog.Value {
	conn := RedactConnString(c.ConnString)
	if c.ConnConfig != nil {
		conn = "host=" + c.ConnConfig.Host + " user=" + c.ConnConfig.User + " database=" + c.ConnConfig.Database
	}
	return slog.GroupValue(
		slog.String("conn", conn),
		slog.String("instance", c.InstanceName),
		slog.String("schema", c.Schema),
		slog.Int("max_conns", c.MaxConns),
		slog.Duration("acquire_timeout", c.AcquireTimeout),
		slog.Duration("lease_timeout", c.LeaseTimeout),
		slog.Duration("heartbeat_interval", c.HeartbeatInterval),
	)
}

// LogValue logs the pool configuration with the password redacted.
func (c PoolConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("conn", RedactConnString(c.ConnString)),
		slog.Int("max_conns", c.MaxConns),
		slog.Duration("acquire_timeout", c.AcquireTimeout),
		slog.Duration("idle_timeout", c.IdleTimeout),
	)
}

// LogValue logs the check configuration with the password redacted.
func (c CheckConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("conn", RedactConnString(c.ConnString)),
		slog.Int("pods", c.Pods),
		slog.Int("pool_max", c.PoolMax),
		slog.Int("lock_pool_max", c.LockPoolMax),
	)
}
