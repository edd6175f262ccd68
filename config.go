package pgbaton

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Config configures a [Locker]. The zero value of every field but ConnString
// (or ConnConfig) means "use the default" written next to it.
type Config struct {
	// ConnString is a PostgreSQL connection string (URL or key=value). It
	// must reach PostgreSQL directly: session leases refuse poolers. The
	// string the application pool uses works as it is: pgx's and pgxpool's
	// own parameters (pool_max_conns, statement_cache_capacity,
	// default_query_exec_mode, ...) are checked and not sent to the server.
	ConnString string
	// ConnConfig, if set, is used instead of ConnString (copied, not kept).
	ConnConfig *pgconn.Config

	// MaxConns bounds the Locker's dedicated lock connections, which are
	// never shared with the application's pool. Default 10
	// (DATABASE_LOCK_POOL_MAX). Blocking waits and WithXactLock transactions
	// each take a connection of their own, together at most MaxConns-1, so
	// one is left for tries. With MaxConns 1 Acquire polls with tries instead
	// of waiting in the server's queue, and the only connection serves one
	// WithXactLock at a time once it carries no lease; meanwhile tries and
	// acquires of other keys wait for it within their own bounds, then
	// return ErrTooManyLocks.
	MaxConns int
	// MaxLocksPerConn bounds the leases multiplexed on one connection. Every
	// statement on a session pays for each lock it holds (about 0.13 µs
	// each), so keep it well under 1,000. Default 64.
	MaxLocksPerConn int
	// MaxConnIdleTime closes a lock connection that has carried no lease
	// for this long (the Locker keeps at least one). Default 1m.
	MaxConnIdleTime time.Duration
	// MaxHeldKeys bounds the distinct keys the Locker holds at once, so one
	// process cannot fill PostgreSQL's shared lock table. Default and maximum
	// MaxConns × MaxLocksPerConn.
	MaxHeldKeys int

	// AcquireTimeout bounds Acquire's wait when the caller gives no Wait
	// option. Default 30s (DATABASE_LOCK_TIMEOUT_MS).
	AcquireTimeout time.Duration
	// ConnectTimeout bounds opening a lock connection. Default 10s
	// (DATABASE_POOL_CONNECTION_TIMEOUT_MS).
	ConnectTimeout time.Duration
	// ReleaseTimeout bounds Release, which never uses the caller's context
	// (an unlock sent with a cancelled context would never be sent). Default
	// 5s.
	ReleaseTimeout time.Duration

	// XactIdleTimeout is idle_in_transaction_session_timeout on the
	// transactions of WithXactLock: the server reaps a transaction (and frees
	// its lock) when the process holding it stops heartbeating for this
	// long. Default 30s (DATABASE_LOCK_IDLE_TX_TIMEOUT_MS).
	XactIdleTimeout time.Duration

	// HeartbeatInterval is how often an idle lock connection proves it is
	// alive. Default 1s.
	HeartbeatInterval time.Duration
	// LeaseTimeout is the client-side lease bound: a lease whose connection
	// has not confirmed a round trip for this long is reported lost, and its
	// connection closed. It must be shorter than the time the server takes to
	// free the locks of a client it cannot reach (ServerReleaseTimeout), so
	// the holder learns of the loss before anyone else can take the lock.
	// Default 4s.
	LeaseTimeout time.Duration

	// TCP settings sent to the server for each lock session, so that the
	// server frees the locks of an unreachable client. Defaults: idle 3s,
	// interval 1s, count 3, user timeout 6s (ServerReleaseTimeout = 6s).
	// They do nothing over a unix socket, where the kernel reports a dead
	// peer at once.
	KeepaliveIdle     time.Duration
	KeepaliveInterval time.Duration
	KeepaliveCount    int
	TCPUserTimeout    time.Duration
	// ClientConnectionCheckInterval makes a backend blocked in a lock wait
	// notice a dead client (PostgreSQL 14+). Default 1s.
	ClientConnectionCheckInterval time.Duration

	// InstanceName identifies this process in application_name
	// ("pgbaton:<InstanceName>"), logs and inspection. Default
	// "<hostname>-<pid>".
	InstanceName string

	// Logger receives structured events. Default slog.Default().
	Logger *slog.Logger
	// Observer, if set, receives every acquisition's outcome, release and
	// loss as an [Event], for metrics (see package contrib/prometheus). It
	// is called synchronously on the caller's goroutine (a loss: on the
	// goroutine that noticed it), so it must be fast and must not block or
	// call back into the Locker. Default none.
	Observer func(Event)
	// BusyLogLevel is the level of "lock busy" events. Default Info.
	BusyLogLevel slog.Level

	// Schema holds pgbaton's tables and the fencing-token sequence (see
	// Migrate). Default "pgbaton". Leases carry a fencing token when the
	// schema has been migrated, and none otherwise.
	Schema string

	// AllowPooler accepts a session-pooling proxy (PgBouncer in session
	// mode), where a client keeps one backend for its connection's life. Never
	// set it for transaction pooling: leases would leak. Default false.
	AllowPooler bool
}

// Defaults.
const (
	DefaultMaxConns                      = 10
	DefaultMaxLocksPerConn               = 64
	DefaultAcquireTimeout                = 30 * time.Second
	DefaultMaxConnIdleTime               = time.Minute
	DefaultConnectTimeout                = 10 * time.Second
	DefaultReleaseTimeout                = 5 * time.Second
	DefaultHeartbeatInterval             = time.Second
	DefaultXactIdleTimeout               = 30 * time.Second
	DefaultLeaseTimeout                  = 4 * time.Second
	DefaultKeepaliveIdle                 = 3 * time.Second
	DefaultKeepaliveInterval             = time.Second
	DefaultKeepaliveCount                = 3
	DefaultTCPUserTimeout                = 6 * time.Second
	DefaultClientConnectionCheckInterval = time.Second
)

// ServerReleaseTimeout is the earliest the server can free the locks of a
// client it stopped hearing from: min(keepalive idle + interval × count, TCP
// user timeout).
func (c *Config) ServerReleaseTimeout() time.Duration {
	ka := c.KeepaliveIdle + c.KeepaliveInterval*time.Duration(c.KeepaliveCount)
	if c.TCPUserTimeout > 0 && c.TCPUserTimeout < ka {
		return c.TCPUserTimeout
	}
	return ka
}

// withDefaults returns a copy with zero fields filled in.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxLocksPerConn == 0 {
		c.MaxLocksPerConn = DefaultMaxLocksPerConn
	}
	if c.MaxHeldKeys == 0 {
		c.MaxHeldKeys = c.MaxConns * c.MaxLocksPerConn
	}
	def(&c.AcquireTimeout, DefaultAcquireTimeout)
	def(&c.MaxConnIdleTime, DefaultMaxConnIdleTime)
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.ReleaseTimeout, DefaultReleaseTimeout)
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.XactIdleTimeout, DefaultXactIdleTimeout)
	def(&c.LeaseTimeout, DefaultLeaseTimeout)
	def(&c.KeepaliveIdle, DefaultKeepaliveIdle)
	def(&c.KeepaliveInterval, DefaultKeepaliveInterval)
	if c.KeepaliveCount == 0 {
		c.KeepaliveCount = DefaultKeepaliveCount
	}
	def(&c.TCPUserTimeout, DefaultTCPUserTimeout)
	def(&c.ClientConnectionCheckInterval, DefaultClientConnectionCheckInterval)
	if c.InstanceName == "" {
		host, _ := os.Hostname()
		c.InstanceName = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate fills defaults and checks the configuration, returning a
// [*ConfigError] that names the field and the fix.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

func (c Config) resolve() (Config, error) {
	c = c.withDefaults()
	bad := func(field, format string, args ...any) (Config, error) {
		return c, &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if c.ConnString == "" && c.ConnConfig == nil {
		return bad("ConnString", "empty; set it (or DATABASE_URL) to a PostgreSQL connection string")
	}
	if c.ConnConfig == nil {
		// As New parses it: pgx's and pgxpool's client parameters are
		// consumed (and checked), not sent to the server.
		if _, err := lockConnConfig(c.ConnString); err != nil {
			return c, err
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"AcquireTimeout", c.AcquireTimeout}, {"ConnectTimeout", c.ConnectTimeout}, {"MaxConnIdleTime", c.MaxConnIdleTime},
		{"ReleaseTimeout", c.ReleaseTimeout}, {"HeartbeatInterval", c.HeartbeatInterval},
		{"LeaseTimeout", c.LeaseTimeout}, {"KeepaliveIdle", c.KeepaliveIdle}, {"XactIdleTimeout", c.XactIdleTimeout},
		{"KeepaliveInterval", c.KeepaliveInterval}, {"TCPUserTimeout", c.TCPUserTimeout},
		{"ClientConnectionCheckInterval", c.ClientConnectionCheckInterval},
	} {
		if f.v < 0 {
			return bad(f.name, "negative (%s); use a positive duration or 0 for the default", f.v)
		}
		if f.v%time.Millisecond != 0 && f.name != "AcquireTimeout" && f.name != "ConnectTimeout" && f.name != "ReleaseTimeout" && f.name != "MaxConnIdleTime" {
			return bad(f.name, "%s is not a whole number of milliseconds, the server's resolution", f.v)
		}
	}
	switch {
	case c.MaxConns < 1:
		return bad("MaxConns", "%d; need at least 1", c.MaxConns)
	case c.MaxLocksPerConn < 1:
		return bad("MaxLocksPerConn", "%d; need at least 1", c.MaxLocksPerConn)
	case c.MaxHeldKeys < 1 || c.MaxHeldKeys > c.MaxConns*c.MaxLocksPerConn:
		return bad("MaxHeldKeys", "%d; must be between 1 and MaxConns×MaxLocksPerConn = %d", c.MaxHeldKeys, c.MaxConns*c.MaxLocksPerConn)
	case c.KeepaliveCount < 1:
		return bad("KeepaliveCount", "%d; need at least 1", c.KeepaliveCount)
	case c.LeaseTimeout < 2*c.HeartbeatInterval:
		return bad("LeaseTimeout", "%s must be at least twice HeartbeatInterval (%s), or one late heartbeat loses every lease", c.LeaseTimeout, c.HeartbeatInterval)
	case c.LeaseTimeout+c.HeartbeatInterval > c.ServerReleaseTimeout():
		return bad("LeaseTimeout", "%s plus HeartbeatInterval %s must not exceed the server's release time %s (min(KeepaliveIdle + KeepaliveInterval×KeepaliveCount, TCPUserTimeout)); otherwise the server could hand the lock to another client before this one learns it lost it: lower LeaseTimeout or raise the keepalive settings", c.LeaseTimeout, c.HeartbeatInterval, c.ServerReleaseTimeout())
	case c.XactIdleTimeout < 2*c.HeartbeatInterval:
		return bad("XactIdleTimeout", "%s must be at least twice HeartbeatInterval (%s), or the server would reap healthy WithXactLock transactions", c.XactIdleTimeout, c.HeartbeatInterval)
	case c.ReleaseTimeout > c.LeaseTimeout+c.AcquireTimeout:
		return bad("ReleaseTimeout", "%s is longer than any operation can usefully take", c.ReleaseTimeout)
	case !schemaRE.MatchString(c.Schema):
		return bad("Schema", "%q is not a plain lower-case identifier", c.Schema)
	case len(c.InstanceName) > 48:
		return bad("InstanceName", "%d bytes; application_name keeps 63, so use at most 48", len(c.InstanceName))
	}
	return c, nil
}
