package pgbaton

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton/pgtest"
)

func newTestPool(t *testing.T, cfg PoolConfig) *Pool {
	t.Helper()
	p, err := NewPool(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// holdAll acquires n connections and releases them at test end.
func holdAll(t *testing.T, p *pgxpool.Pool, n int) []*pgxpool.Conn {
	t.Helper()
	var cs []*pgxpool.Conn
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
		c, err := p.Acquire(ctx)
		cancel()
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.Release()
		}
	})
	return cs
}

func mustExhaust(t *testing.T, what string, err error) {
	t.Helper()
	var pe *PoolExhaustedError
	if !errors.Is(err, ErrPoolExhausted) || !errors.As(err, &pe) || pe.MaxConns != 2 || pe.Waited <= 0 {
		t.Fatalf("%s on an exhausted pool: %v, want a *PoolExhaustedError", what, err)
	}
	if !strings.Contains(err.Error(), EnvPoolMax) {
		t.Fatalf("the error does not name the fix: %v", err)
	}
}

func TestPoolExhaustionFailsFastAndRecovers(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	ctx := testCtx(t) // 60s: far longer than the pool's bound
	p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 2, AcquireTimeout: 200 * time.Millisecond})

	// Control: the same exhaustion on a plain pgxpool waits as long as the
	// caller's context allows, forever with context.Background().
	plainCfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	plainCfg.MaxConns = 1
	plain, err := pgxpool.NewWithConfig(ctx, plainCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plainHeld := holdAll(t, plain, 1)
	plainDone := make(chan error, 1)
	go func() {
		_, err := plain.Exec(context.Background(), "SELECT 1")
		plainDone <- err
	}()

	held := holdAll(t, p.Pool, 2)
	_, err = p.Exec(ctx, "SELECT 1")
	mustExhaust(t, "Exec", err)
	if ctx.Err() != nil {
		t.Fatal("the caller's context ended first: the pool's bound did not apply")
	}
	var one int
	mustExhaust(t, "QueryRow", p.QueryRow(ctx, "SELECT 1").Scan(&one))
	rows, err := p.Query(ctx, "SELECT 1")
	mustExhaust(t, "Query", err)
	mustExhaust(t, "Rows.Err", rows.Err())
	rows.Close()
	_, err = p.Begin(ctx)
	mustExhaust(t, "Begin", err)
	_, err = p.Acquire(ctx)
	mustExhaust(t, "Acquire", err)
	mustExhaust(t, "AcquireFunc", p.AcquireFunc(ctx, func(*pgxpool.Conn) error { return nil }))
	br := p.SendBatch(ctx, &pgx.Batch{QueuedQueries: []*pgx.QueuedQuery{{SQL: "SELECT 1"}}})
	_, err = br.Exec()
	mustExhaust(t, "SendBatch", err)
	_ = br.Close()
	// The embedded pgxpool is bounded too, with the context's error.
	if _, err := p.Pool.Exec(ctx, "SELECT 1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("embedded pgxpool.Pool.Exec on an exhausted pool: %v, want context.DeadlineExceeded", err)
	}

	select {
	case err := <-plainDone:
		t.Fatalf("the plain pgxpool's wait ended while its only connection was held: %v", err)
	default:
	}

	// Recovery needs nothing but a released connection.
	held[0].Release()
	if _, err := p.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after one connection was released: %v", err)
	}
	if err := p.QueryRow(ctx, "SELECT 2").Scan(&one); err != nil || one != 2 {
		t.Fatalf("QueryRow after recovery: %v %d", err, one)
	}

	plainHeld[0].Release()
	if err := <-plainDone; err != nil {
		t.Fatalf("plain pgxpool after release: %v", err)
	}
}

func TestPoolCallerDeadlineWinsOverBound(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 1, AcquireTimeout: time.Minute})
	holdAll(t, p.Pool, 1)
	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	_, err := p.Exec(ctx, "SELECT 1")
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("caller's deadline before the pool's bound: %v, want the context's error", err)
	}
}

// TestPoolServesAfterIdleBackendsTerminated: every idle backend of the pool
// is terminated; the next calls succeed. The control shows a plain pgxpool
// (pinging disabled, as it is for connections idle under a second) failing
// the next call.
func TestPoolServesAfterIdleBackendsTerminated(t *testing.T) {
	t.Parallel()
	db, dsn := pgtest.Shared().NewDB(t)
	ctx := testCtx(t)
	noPing := func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	}
	p := newTestPool(t, PoolConfig{ConnString: dsn + " application_name=app", MaxConns: 4, Configure: noPing})

	plainCfg, err := pgxpool.ParseConfig(dsn + " application_name=plain")
	if err != nil {
		t.Fatal(err)
	}
	plainCfg.MaxConns = 4
	noPing(plainCfg)
	plain, err := pgxpool.NewWithConfig(ctx, plainCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	warm := func(pool *pgxpool.Pool) {
		for _, c := range holdAll(t, pool, 4) {
			c.Release()
		}
	}
	warm(p.Pool)
	warm(plain)
	for _, app := range []string{"app", "plain"} {
		n, err := pgtest.Shared().TerminateApp(ctx, db, app)
		if err != nil || n != 4 {
			t.Fatalf("terminate %s: %d backends, %v; want 4", app, n, err)
		}
	}

	if _, err := plain.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("control: a plain pgxpool served a query on a terminated idle connection; the test cannot tell the check works")
	}
	for i := 0; i < 6; i++ {
		if _, err := p.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("call %d after every idle backend was terminated: %v", i, err)
		}
	}
	if got := p.Stat().TotalConns(); got > 4 {
		t.Fatalf("%d connections in a pool of 4", got)
	}
}

func TestPoolConfigFromEnv(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if _, err := PoolConfigFromEnv(env(nil)); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), EnvDatabaseURL) {
		t.Fatalf("no DATABASE_URL: %v", err)
	}
	c, err := PoolConfigFromEnv(env(map[string]string{
		EnvDatabaseURL: "postgres://u@h/db", EnvPoolMax: "7",
		EnvConnectTimeoutMS: "1500", EnvPoolIdleTimeoutMS: "2500",
	}))
	if err != nil || c.MaxConns != 7 || c.AcquireTimeout != 1500*time.Millisecond || c.IdleTimeout != 2500*time.Millisecond {
		t.Fatalf("from env: %+v %v", c, err)
	}
	_, err = PoolConfigFromEnv(env(map[string]string{EnvDatabaseURL: "postgres://u@h/db", EnvPoolMax: "many"}))
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != EnvPoolMax {
		t.Fatalf("bad DATABASE_POOL_MAX: %v", err)
	}
	r, err := PoolConfig{ConnString: "postgres://u@h/db"}.resolve()
	if err != nil || r.MaxConns != 20 || r.AcquireTimeout != 10*time.Second || r.IdleTimeout != 30*time.Second {
		t.Fatalf("defaults: %+v %v", r, err)
	}
	if _, err := NewPool(context.Background(), PoolConfig{ConnString: "postgres://u@h/db", MaxConns: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative MaxConns: %v", err)
	}
}

type countingTracer struct{ queries atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.queries.Add(1)
	return ctx
}
func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestPoolKeepsCallerHooks: a Tracer and PrepareConn set through Configure
// still run next to the acquire bound and the liveness check.
func TestPoolKeepsCallerHooks(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	tr := &countingTracer{}
	var prepared atomic.Int64
	p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 1, AcquireTimeout: 100 * time.Millisecond, Configure: func(c *pgxpool.Config) {
		c.ConnConfig.Tracer = tr
		c.PrepareConn = func(context.Context, *pgx.Conn) (bool, error) { prepared.Add(1); return true, nil }
	}})
	if _, err := p.Exec(testCtx(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if tr.queries.Load() == 0 || prepared.Load() == 0 {
		t.Fatalf("caller's hooks did not run: %d queries traced, %d prepares", tr.queries.Load(), prepared.Load())
	}
	holdAll(t, p.Pool, 1)
	if _, err := p.Exec(testCtx(t), "SELECT 1"); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("with a caller's tracer the bound is gone: %v", err)
	}
}
