package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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
// pool still needs properties the seeds learned the hard way:
//
//   - Every wait for a connection is bounded. pgxpool waits for a free
//     connection until the caller's context ends, forever with
//     context.Background(). NewPool bounds every acquisition, however it is
//     reached (including through the embedded *pgxpool.Pool and code that
//     takes one), by PoolConfig.AcquireTimeout; the Pool's own methods turn
//     an expired wait into a [*PoolExhaustedError] (errors.Is
//     ErrPoolExhausted) when connections were in use all along, and into a
//     [*PoolConnectError] (errors.Is ErrConnect) when the time went into
//     opening a connection or checking an idle one. The pool recovers by
//     itself as soon as connections are released.
//   - An idle connection whose backend died (terminated, idle timeout,
//     server restart) is checked before it is handed out once it has been
//     idle for PoolConfig.PingAfterIdle (default 1 s, pgxpool's own default
//     for Config.ShouldPing): pgxpool pings it (one round trip through pgx,
//     bounded by the acquisition's deadline) and replaces it if the ping
//     fails. A backend that dies while its connection was idle for less
//     than that fails the next statement on it, as with a plain pgxpool;
//     set PingAfterIdle lower to check more often, at a round trip per
//     acquisition (BENCHMARKS.md, "Application pool").
//
// Nothing here touches a socket that pgx owns: pgx may have a background
// reader parked on an idle connection's socket (it starts one when a write
// takes more than about 15 ms), and only pgx knows. Every hook installed in
// pgx (the acquire and connect tracer, ShouldPing) only records what it
// sees and never blocks.

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
	DefaultPoolPingAfterIdle  = time.Second // pgxpool's default for ShouldPing
)

// ErrPoolExhausted: no connection of the application's pool became free
// within PoolConfig.AcquireTimeout. See [PoolExhaustedError].
var ErrPoolExhausted = errors.New("pgbaton: application pool exhausted")

// PoolConnectError: the application pool could not open a connection, or
// an idle connection did not answer its liveness ping, within
// PoolConfig.AcquireTimeout, or opening one failed. It matches ErrConnect
// and unwraps to the cause (a *pgconn.ConnectError, or
// context.DeadlineExceeded when the bound expired first).
type PoolConnectError struct {
	// What was under way: "opening a connection", "waiting for
	// connections being opened" or "pinging an idle connection".
	Doing  string
	Waited time.Duration
	Cause  error
}

func (e *PoolConnectError) Error() string {
	return fmt.Sprintf("pgbaton: application pool: no connection to PostgreSQL after %s (%s: %v); "+
		"check that the connection string (%s) points at a server that answers, or raise %s",
		e.Waited.Round(time.Millisecond), e.Doing, e.Cause, EnvDatabaseURL, EnvConnectTimeoutMS)
}

// Is makes errors.Is(err, ErrConnect) true.
func (e *PoolConnectError) Is(target error) bool { return target == ErrConnect }

// Unwrap returns the cause.
func (e *PoolConnectError) Unwrap() error { return e.Cause }

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
	// PingAfterIdle: a connection idle for longer is pinged (one round trip,
	// within the acquisition's bound) before it is handed out, and replaced
	// if the ping fails. Default 1s, pgxpool's. Lower catches more dead
	// connections before the application sees them, at a round trip on more
	// acquisitions; a ShouldPing set through Configure replaces it.
	PingAfterIdle time.Duration
	// Configure, if set, adjusts the pgxpool configuration last (for
	// example ConnConfig.DefaultQueryExecMode behind PgBouncer). A Tracer,
	// ShouldPing, PrepareConn or BeforeAcquire set here is kept: the acquire
	// bound is added next to it.
	Configure func(*pgxpool.Config)
}

// PoolConfigFromEnv reads DATABASE_URL (or, when it is unset, the PG*
// variables, as [ConfigFromEnv] does), DATABASE_POOL_MAX,
// DATABASE_POOL_CONNECTION_TIMEOUT_MS and DATABASE_POOL_IDLE_TIMEOUT_MS
// through getenv. Unset variables keep the defaults; a malformed one is a
// [*ConfigError] naming it.
func PoolConfigFromEnv(getenv func(string) string) (PoolConfig, error) {
	var c PoolConfig
	var err error
	if c.ConnString, err = connStringFromEnv(getenv); err != nil {
		return c, err
	}
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

// resolve fills the defaults: a field left zero takes the connection
// string's pool_max_conns or pool_max_conn_idle_time when it has one, else
// pgbaton's default. It returns the parsed connection string too.
func (c PoolConfig) resolve() (PoolConfig, *connSettings, error) {
	if c.ConnString == "" {
		return c, nil, &ConfigError{Field: "ConnString", Msg: "empty; set it (or DATABASE_URL) to a PostgreSQL connection string"}
	}
	cs, err := parseConnString("ConnString", c.ConnString)
	if err != nil {
		return c, nil, err
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultPoolMaxConns
		if _, ok := cs.given["pool_max_conns"]; ok {
			c.MaxConns = int(cs.pool.MaxConns)
		}
	}
	if c.AcquireTimeout == 0 {
		c.AcquireTimeout = DefaultPoolAcquireTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultPoolIdleTimeout
		if _, ok := cs.given["pool_max_conn_idle_time"]; ok && cs.pool.MaxConnIdleTime > 0 {
			c.IdleTimeout = cs.pool.MaxConnIdleTime
		}
	}
	if c.PingAfterIdle == 0 {
		c.PingAfterIdle = DefaultPoolPingAfterIdle
	}
	bad := func(field, format string, args ...any) (PoolConfig, *connSettings, error) {
		return c, nil, &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case c.MaxConns < 1 || c.MaxConns > 1<<20:
		return bad("MaxConns", "%d; need at least 1", c.MaxConns)
	case c.AcquireTimeout < 0:
		return bad("AcquireTimeout", "negative (%s); use a positive duration or 0 for the default", c.AcquireTimeout)
	case c.IdleTimeout < 0:
		return bad("IdleTimeout", "negative (%s); use a positive duration or 0 for the default", c.IdleTimeout)
	case c.PingAfterIdle < 0:
		return bad("PingAfterIdle", "negative (%s); use a positive duration or 0 for the default", c.PingAfterIdle)
	}
	return c, cs, nil
}

// Pool is the application's pgxpool with bounded acquisition and a
// liveness ping on connections idle for longer than PingAfterIdle. Its
// methods mirror pgxpool's and return a [*PoolExhaustedError] when no
// connection frees up in time, a [*PoolConnectError] when none can be
// opened. The embedded *pgxpool.Pool can be handed to code that wants one:
// its acquisitions are bounded too, but report pgx's own errors
// (context.DeadlineExceeded at the bound).
type Pool struct {
	*pgxpool.Pool
	cfg PoolConfig
}

// NewPool builds the application's pool from cfg. It connects lazily:
// a bad server shows at the first use, bounded by AcquireTimeout, or at
// Ping.
func NewPool(ctx context.Context, cfg PoolConfig) (*Pool, error) {
	cfg, cs, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	pc := cs.pool
	pc.MaxConns = int32(cfg.MaxConns)
	pc.MaxConnIdleTime = cfg.IdleTimeout
	pc.HealthCheckPeriod = max(min(pc.HealthCheckPeriod, cfg.IdleTimeout/2), time.Second)
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > cfg.AcquireTimeout {
		pc.ConnConfig.ConnectTimeout = cfg.AcquireTimeout
	}
	if cfg.Configure != nil {
		cfg.Configure(pc)
	}
	// pgxpool pings the connections ShouldPing picks, with the acquisition's
	// context (so within its bound), and replaces those that fail. The
	// wrapper only notes the decision, for the error report.
	shouldPing := pc.ShouldPing
	if shouldPing == nil {
		after := cfg.PingAfterIdle
		shouldPing = func(_ context.Context, p pgxpool.ShouldPingParams) bool { return p.IdleDuration > after }
	}
	pc.ShouldPing = func(ctx context.Context, p pgxpool.ShouldPingParams) bool {
		ping := shouldPing(ctx, p)
		if st, ok := ctx.Value(acquireKey{}).(*acquireState); ok {
			st.pinging.Store(ping)
		}
		return ping
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

// acquireBound is a pgxpool acquire tracer and a pgx connect tracer: it
// puts a deadline on every acquisition and records, for the Pool's
// methods, why one failed. Its methods never block.
type acquireBound struct {
	timeout time.Duration
	max     int32
}

type acquireKey struct{}

// acquireState is one acquisition in progress. The connect fields are
// written by the goroutine that opens the connection, which pgxpool lets
// outlive an expired acquisition.
type acquireState struct {
	start  time.Time
	cancel context.CancelFunc
	// connecting: a connection opened for this acquisition has not
	// connected, or failed to (pgx's connect tracer sees the acquisition's
	// context values).
	connecting atomic.Bool
	// pinging: ShouldPing chose to ping the connection this acquisition
	// took last. Set until the next ShouldPing of the same acquisition: a
	// failed ping followed by an expired wait is still reported as the
	// connection problem it was.
	pinging atomic.Bool
}

// probeKey marks a context passed by a Pool method, which wants to know
// why its acquisition failed.
type probeKey struct{}

type acquireProbe struct{ err error }

var errAcquireTimeout = errors.New("pgbaton: pool acquire timeout")

func (b *acquireBound) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	actx, cancel := context.WithTimeoutCause(ctx, b.timeout, errAcquireTimeout)
	return context.WithValue(actx, acquireKey{}, &acquireState{start: time.Now(), cancel: cancel})
}

func (b *acquireBound) TraceAcquireEnd(ctx context.Context, pool *pgxpool.Pool, data pgxpool.TraceAcquireEndData) {
	st, ok := ctx.Value(acquireKey{}).(*acquireState)
	if !ok {
		return
	}
	expired := data.Err != nil && errors.Is(context.Cause(ctx), errAcquireTimeout)
	st.cancel()
	pr, ok := ctx.Value(probeKey{}).(*acquireProbe)
	if !ok || data.Err == nil {
		return
	}
	waited := time.Since(st.start)
	var ce *pgconn.ConnectError
	switch {
	case errors.As(data.Err, &ce):
		pr.err = &PoolConnectError{Doing: "opening a connection", Waited: waited, Cause: data.Err}
	case !expired:
		// The caller's own context ended, or the pool was closed: its error.
	case st.connecting.Load():
		pr.err = &PoolConnectError{Doing: "opening a connection", Waited: waited, Cause: context.DeadlineExceeded}
	case st.pinging.Load():
		pr.err = &PoolConnectError{Doing: "pinging an idle connection", Waited: waited, Cause: context.DeadlineExceeded}
	case stillOpening(pool):
		pr.err = &PoolConnectError{Doing: "waiting for connections being opened", Waited: waited, Cause: context.DeadlineExceeded}
	default:
		pr.err = &PoolExhaustedError{MaxConns: b.max, Waited: waited}
	}
}

// stillOpening: connections are being opened, or none is in use, so an
// expired wait was not for a connection to be released.
func stillOpening(pool *pgxpool.Pool) bool {
	s := pool.Stat()
	return s.ConstructingConns() > 0 || s.AcquiredConns() == 0
}

// TraceConnectStart notes that the acquisition (if any) is waiting for a
// connection being opened.
func (b *acquireBound) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	if st, ok := ctx.Value(acquireKey{}).(*acquireState); ok {
		st.connecting.Store(true)
	}
	return ctx
}

// TraceConnectEnd notes that the connection is open. A failed connect
// leaves the mark: its timeout and the acquisition's fire together, and
// the acquisition may see only its own.
func (b *acquireBound) TraceConnectEnd(ctx context.Context, data pgx.TraceConnectEndData) {
	if st, ok := ctx.Value(acquireKey{}).(*acquireState); ok && data.Err == nil {
		st.connecting.Store(false)
	}
}

// The tracer must be a QueryTracer to be installed; it traces nothing else.
func (b *acquireBound) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (b *acquireBound) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// probe returns a context that records why its acquisition failed.
func probe(ctx context.Context) (context.Context, *acquireProbe) {
	pr := &acquireProbe{}
	return context.WithValue(ctx, probeKey{}, pr), pr
}

// typed replaces an acquisition's error with the typed one.
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
