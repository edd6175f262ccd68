package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The application's own pool.
//
// pgbaton's lock connections are separate from the pool the application
// does its work with, so that lock holders never wait for that pool. That
// pool still needs two properties the seeds learned the hard way, and which
// pgxpool does not have by default:
//
//   - Every wait for a connection is bounded. pgxpool waits for a free
//     connection until the caller's context ends, forever with
//     context.Background(). NewPool bounds every acquisition, however it is
//     reached (including through the embedded *pgxpool.Pool and code that
//     takes one), by PoolConfig.AcquireTimeout; the Pool's own methods turn
//     an expired wait into a [*PoolExhaustedError] (errors.Is
//     ErrPoolExhausted), and the pool recovers by itself as soon as
//     connections are released.
//   - An idle connection whose backend died (terminated, idle timeout,
//     server restart) is not handed out. pgx does not read idle sockets, so
//     it would learn of the death only by failing the next query. On each
//     acquisition the Pool peeks at the socket without blocking or a round
//     trip (one non-blocking recv on Linux and the BSDs); an idle connection
//     with pending bytes or EOF is discarded and another one is taken.

// Environment variables read by [PoolConfigFromEnv], next to those of
// [ConfigFromEnv] (DATABASE_URL and DATABASE_POOL_CONNECTION_TIMEOUT_MS are
// shared).
const (
	EnvPoolMax           = "DATABASE_POOL_MAX"             // PoolConfig.MaxConns
	EnvPoolIdleTimeoutMS = "DATABASE_POOL_IDLE_TIMEOUT_MS" // PoolConfig.IdleTimeout
)

// Pool defaults, the seeds' values.
const (
	DefaultPoolMaxConns       = 20
	DefaultPoolAcquireTimeout = 10 * time.Second
	DefaultPoolIdleTimeout    = 30 * time.Second
)

// ErrPoolExhausted: no connection of the application's pool became free
// within PoolConfig.AcquireTimeout. See [PoolExhaustedError].
var ErrPoolExhausted = errors.New("pgbaton: application pool exhausted")

// PoolExhaustedError says how big the pool is and how long the caller
// waited. It matches ErrPoolExhausted.
type PoolExhaustedError struct {
	MaxConns int32
	Waited   time.Duration
}

func (e *PoolExhaustedError) Error() string {
	return fmt.Sprintf("pgbaton: application pool exhausted: all %d connections stayed in use for %s; "+
		"make sure every acquired connection, Rows and transaction is released, shorten what runs while one is held, "+
		"or raise %s within the connection budget that pgbaton.Check reports",
		e.MaxConns, e.Waited.Round(time.Millisecond), EnvPoolMax)
}

// Is makes errors.Is(err, ErrPoolExhausted) true.
func (e *PoolExhaustedError) Is(target error) bool { return target == ErrPoolExhausted }

// PoolConfig configures [NewPool]. Zero fields take the defaults.
type PoolConfig struct {
	// ConnString is the PostgreSQL connection string (DATABASE_URL).
	ConnString string
	// MaxConns bounds the pool. Default 20 (DATABASE_POOL_MAX).
	MaxConns int
	// AcquireTimeout bounds every wait for a connection, and connecting.
	// Default 10s (DATABASE_POOL_CONNECTION_TIMEOUT_MS).
	AcquireTimeout time.Duration
	// IdleTimeout closes connections idle for longer. Default 30s
	// (DATABASE_POOL_IDLE_TIMEOUT_MS).
	IdleTimeout time.Duration
	// Configure, if set, adjusts the pgxpool configuration last (for
	// example ConnConfig.DefaultQueryExecMode behind PgBouncer). A Tracer,
	// PrepareConn or BeforeAcquire set here is kept: the acquire bound and
	// the liveness check are added next to it.
	Configure func(*pgxpool.Config)
}

// PoolConfigFromEnv reads DATABASE_URL, DATABASE_POOL_MAX,
// DATABASE_POOL_CONNECTION_TIMEOUT_MS and DATABASE_POOL_IDLE_TIMEOUT_MS
// through getenv. Unset variables keep the defaults; a malformed one is a
// [*ConfigError] naming it.
func PoolConfigFromEnv(getenv func(string) string) (PoolConfig, error) {
	var c PoolConfig
	c.ConnString = getenv(EnvDatabaseURL)
	if c.ConnString == "" {
		return c, &ConfigError{Field: EnvDatabaseURL, Msg: "not set; export DATABASE_URL=postgres://user@host/db"}
	}
	var err error
	if c.MaxConns, err = envInt(getenv, EnvPoolMax); err != nil {
		return c, err
	}
	for _, f := range []struct {
		env string
		dst *time.Duration
	}{{EnvConnectTimeoutMS, &c.AcquireTimeout}, {EnvPoolIdleTimeoutMS, &c.IdleTimeout}} {
		v, err := envInt(getenv, f.env)
		if err != nil {
			return c, err
		}
		*f.dst = time.Duration(v) * time.Millisecond
	}
	return c, nil
}

func (c PoolConfig) resolve() (PoolConfig, error) {
	if c.MaxConns == 0 {
		c.MaxConns = DefaultPoolMaxConns
	}
	if c.AcquireTimeout == 0 {
		c.AcquireTimeout = DefaultPoolAcquireTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultPoolIdleTimeout
	}
	switch {
	case c.ConnString == "":
		return c, &ConfigError{Field: "ConnString", Msg: "empty; set it (or DATABASE_URL) to a PostgreSQL connection string"}
	case c.MaxConns < 1 || c.MaxConns > 1<<20:
		return c, &ConfigError{Field: "MaxConns", Msg: fmt.Sprintf("%d; need at least 1", c.MaxConns)}
	case c.AcquireTimeout < 0:
		return c, &ConfigError{Field: "AcquireTimeout", Msg: fmt.Sprintf("negative (%s); use a positive duration or 0 for the default", c.AcquireTimeout)}
	case c.IdleTimeout < 0:
		return c, &ConfigError{Field: "IdleTimeout", Msg: fmt.Sprintf("negative (%s); use a positive duration or 0 for the default", c.IdleTimeout)}
	}
	return c, nil
}

// Pool is the application's pgxpool with bounded acquisition and a
// liveness check on idle connections. Its methods mirror pgxpool's and
// return a [*PoolExhaustedError] when no connection frees up in time.
// The embedded *pgxpool.Pool can be handed to code that wants one: its
// acquisitions are bounded too, but report context.DeadlineExceeded.
type Pool struct {
	*pgxpool.Pool
	cfg PoolConfig
}

// NewPool builds the application's pool from cfg. It connects lazily:
// a bad server shows at the first use, bounded by AcquireTimeout, or at
// Ping.
func NewPool(ctx context.Context, cfg PoolConfig) (*Pool, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.ConnString)
	if err != nil {
		return nil, &ConfigError{Field: "ConnString", Msg: fmt.Sprintf("cannot parse: %v", err)}
	}
	pc.MaxConns = int32(cfg.MaxConns)
	pc.MaxConnIdleTime = cfg.IdleTimeout
	pc.HealthCheckPeriod = max(min(pc.HealthCheckPeriod, cfg.IdleTimeout/2), time.Second)
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > cfg.AcquireTimeout {
		pc.ConnConfig.ConnectTimeout = cfg.AcquireTimeout
	}
	if cfg.Configure != nil {
		cfg.Configure(pc)
	}
	// The liveness check runs first, then the caller's own hook if any.
	userPrepare, userBefore := pc.PrepareConn, pc.BeforeAcquire //nolint:staticcheck // a caller's Configure may still set the deprecated hook; it keeps working
	pc.PrepareConn = func(ctx context.Context, c *pgx.Conn) (bool, error) {
		switch {
		case idleConnBroken(c.PgConn()):
			return false, nil // destroyed; pgxpool takes another connection
		case userPrepare != nil:
			return userPrepare(ctx, c)
		case userBefore != nil:
			return userBefore(ctx, c), nil
		}
		return true, nil
	}
	bound := &acquireBound{timeout: cfg.AcquireTimeout, max: pc.MaxConns}
	if pc.ConnConfig.Tracer != nil {
		pc.ConnConfig.Tracer = multitracer.New(bound, pc.ConnConfig.Tracer)
	} else {
		pc.ConnConfig.Tracer = bound
	}
	p, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("pgbaton: application pool: %w", err)
	}
	return &Pool{Pool: p, cfg: cfg}, nil
}

// PoolConfig returns the resolved configuration.
func (p *Pool) PoolConfig() PoolConfig { return p.cfg }

// acquireBound is a pgxpool acquire tracer that puts a deadline on every
// acquisition and records, for the Pool's methods, that it expired.
type acquireBound struct {
	timeout time.Duration
	max     int32
}

type acquireKey struct{}

// acquireState is one acquisition in progress.
type acquireState struct {
	start  time.Time
	cancel context.CancelFunc
}

// probeKey marks a context passed by a Pool method, which wants to know
// whether its acquisition expired.
type probeKey struct{}

type acquireProbe struct{ err error }

var errAcquireTimeout = errors.New("pgbaton: pool acquire timeout")

func (b *acquireBound) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	actx, cancel := context.WithTimeoutCause(ctx, b.timeout, errAcquireTimeout)
	return context.WithValue(actx, acquireKey{}, &acquireState{start: time.Now(), cancel: cancel})
}

func (b *acquireBound) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, data pgxpool.TraceAcquireEndData) {
	st, ok := ctx.Value(acquireKey{}).(*acquireState)
	if !ok {
		return
	}
	expired := data.Err != nil && errors.Is(context.Cause(ctx), errAcquireTimeout)
	st.cancel()
	if probe, ok := ctx.Value(probeKey{}).(*acquireProbe); ok && expired {
		probe.err = &PoolExhaustedError{MaxConns: b.max, Waited: time.Since(st.start)}
	}
}

// The tracer must be a QueryTracer to be installed; it traces nothing else.
func (b *acquireBound) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (b *acquireBound) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// probe returns a context that records whether its acquisition expired.
func probe(ctx context.Context) (context.Context, *acquireProbe) {
	pr := &acquireProbe{}
	return context.WithValue(ctx, probeKey{}, pr), pr
}

// typed replaces an acquisition's timeout error with the typed one.
func (pr *acquireProbe) typed(err error) error {
	if err != nil && pr.err != nil {
		return pr.err
	}
	return err
}

// Acquire returns a connection, waiting at most AcquireTimeout.
func (p *Pool) Acquire(ctx context.Context) (*pgxpool.Conn, error) {
	ctx, pr := probe(ctx)
	c, err := p.Pool.Acquire(ctx)
	return c, pr.typed(err)
}

// AcquireFunc acquires a connection, calls f with it and releases it.
func (p *Pool) AcquireFunc(ctx context.Context, f func(*pgxpool.Conn) error) error {
	c, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	return f(c)
}

// Exec runs sql on a pooled connection.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c, err := p.Acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer c.Release()
	return c.Exec(ctx, sql, args...)
}

// Query runs sql on a pooled connection, released when the rows are closed.
func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	pctx, pr := probe(ctx)
	rows, err := p.Pool.Query(pctx, sql, args...)
	if pr.err != nil {
		return errRows{pr.err}, pr.err
	}
	return rows, err
}

// QueryRow runs sql on a pooled connection; errors show at Scan.
func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	pctx, pr := probe(ctx)
	row := p.Pool.QueryRow(pctx, sql, args...)
	if pr.err != nil {
		return errRows{pr.err}
	}
	return row
}

// SendBatch sends b on a pooled connection.
func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	pctx, pr := probe(ctx)
	br := p.Pool.SendBatch(pctx, b)
	if pr.err != nil {
		_ = br.Close() // it holds only the acquisition error
		return pgx.FailedBatchResults(b, pr.err)
	}
	return br
}

// Begin starts a transaction on a pooled connection.
func (p *Pool) Begin(ctx context.Context) (pgx.Tx, error) {
	return p.BeginTx(ctx, pgx.TxOptions{})
}

// BeginTx starts a transaction with options on a pooled connection.
func (p *Pool) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	pctx, pr := probe(ctx)
	tx, err := p.Pool.BeginTx(pctx, opts)
	return tx, pr.typed(err)
}

// CopyFrom runs COPY FROM on a pooled connection.
func (p *Pool) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	c, err := p.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Release()
	return c.Conn().CopyFrom(ctx, table, columns, src)
}

// Ping acquires a connection and runs an empty statement on it.
func (p *Pool) Ping(ctx context.Context) error {
	c, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	return c.Ping(ctx)
}

// errRows is the Rows and Row of a failed acquisition.
type errRows struct{ err error }

func (e errRows) Close()                                       {}
func (e errRows) Err() error                                   { return e.err }
func (e errRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (e errRows) FieldDescriptions() []pgconn.FieldDescription { return nil }
func (e errRows) Next() bool                                   { return false }
func (e errRows) Scan(...any) error                            { return e.err }
func (e errRows) Values() ([]any, error)                       { return nil, e.err }
func (e errRows) RawValues() [][]byte                          { return nil }
func (e errRows) Conn() *pgx.Conn                              { return nil }
func (e errRows) TypeMap() *pgtype.Map                         { return pgtype.NewMap() }
