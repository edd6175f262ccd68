package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
// is terminated; the next calls succeed, because a connection idle for
// longer than PingAfterIdle is pinged through pgx before it is handed out
// and replaced when the ping fails. Here PingAfterIdle is a nanosecond so
// that the test need not wait for the default second to pass. The
// controls, the same Pool and a plain pgxpool with pinging disabled, fail
// the next call: the ping is what saves it.
func TestPoolServesAfterIdleBackendsTerminated(t *testing.T) {
	t.Parallel()
	db, dsn := pgtest.Shared().NewDB(t)
	ctx := testCtx(t)
	noPing := func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	}
	p := newTestPool(t, PoolConfig{ConnString: dsn + " application_name=app", MaxConns: 4, PingAfterIdle: time.Nanosecond})
	unpinged := newTestPool(t, PoolConfig{ConnString: dsn + " application_name=unpinged", MaxConns: 4, Configure: noPing})

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
	warm(unpinged.Pool)
	warm(plain)
	for _, app := range []string{"app", "unpinged", "plain"} {
		n, err := pgtest.Shared().TerminateApp(ctx, db, app)
		if err != nil || n != 4 {
			t.Fatalf("terminate %s: %d backends, %v; want 4", app, n, err)
		}
	}

	if _, err := plain.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("control: a plain pgxpool served a query on a terminated idle connection; the test cannot tell the check works")
	}
	if _, err := unpinged.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("control: a Pool that pings nothing served a query on a terminated idle connection; the test cannot tell the ping works")
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
	r, _, err := PoolConfig{ConnString: "postgres://u@h/db"}.resolve()
	if err != nil || r.MaxConns != 20 || r.AcquireTimeout != 10*time.Second || r.IdleTimeout != 30*time.Second || r.PingAfterIdle != time.Second {
		t.Fatalf("defaults: %+v %v", r, err)
	}
	// The connection string's pool parameters fill the fields left zero;
	// the fields win over them.
	r, _, err = PoolConfig{ConnString: "postgres://u@h/db?pool_max_conns=7&pool_max_conn_idle_time=5s"}.resolve()
	if err != nil || r.MaxConns != 7 || r.IdleTimeout != 5*time.Second {
		t.Fatalf("from the URL: %+v %v", r, err)
	}
	r, _, err = PoolConfig{ConnString: "host=h pool_max_conns=7", MaxConns: 3}.resolve()
	if err != nil || r.MaxConns != 3 {
		t.Fatalf("field over the URL: %+v %v", r, err)
	}
	for _, bad := range []string{"postgres://u@h/db?pool_max_conns=many", "host=h default_query_exec_mode=fast"} {
		var ce *ConfigError
		if _, err := NewPool(context.Background(), PoolConfig{ConnString: bad}); !errors.As(err, &ce) || ce.Field != "ConnString" {
			t.Fatalf("%s: %v, want a ConnString ConfigError", bad, err)
		}
	}
	if _, err := NewPool(context.Background(), PoolConfig{ConnString: "postgres://u@h/db", PingAfterIdle: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative PingAfterIdle: %v", err)
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

// TestPoolKeepsCallerHooks: a Tracer, PrepareConn and ShouldPing set
// through Configure still run next to the acquire bound. The bound (200 ms)
// is short, so the connection is opened first by the pool's own MinConns
// (unbounded by it: ConnectTimeout is raised through Configure), and the
// test waits for it; otherwise connecting under -race on a loaded machine
// could take longer than the bound.
func TestPoolKeepsCallerHooks(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	tr := &countingTracer{}
	var prepared, pingAsked atomic.Int64
	p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 1, AcquireTimeout: 200 * time.Millisecond, Configure: func(c *pgxpool.Config) {
		c.MinConns = 1
		c.ConnConfig.ConnectTimeout = time.Minute
		c.ConnConfig.Tracer = tr
		c.PrepareConn = func(context.Context, *pgx.Conn) (bool, error) { prepared.Add(1); return true, nil }
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { pingAsked.Add(1); return false }
	}})
	waitFor(t, time.Minute, "the pool's first connection", func() bool { return p.Stat().IdleConns() == 1 })
	if _, err := p.Exec(testCtx(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if tr.queries.Load() == 0 || prepared.Load() == 0 || pingAsked.Load() == 0 {
		t.Fatalf("caller's hooks did not run: %d queries traced, %d prepares, %d ShouldPing", tr.queries.Load(), prepared.Load(), pingAsked.Load())
	}
	holdAll(t, p.Pool, 1)
	if _, err := p.Exec(testCtx(t), "SELECT 1"); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("with a caller's tracer the bound is gone: %v", err)
	}
}

// connRecorder wraps pgx's dialer through PoolConfig.Configure: it keeps
// every connection it opens, so a test that catches a hang can close them
// (which ends every read and wait on them) and fail instead of blocking
// the test binary; with slowWrite set, every Write returns that long after
// writing, as on a congested network or a descheduled process.
type connRecorder struct {
	slowWrite time.Duration
	slowOver  int // only writes of more bytes than this are slow

	mu    sync.Mutex
	conns []net.Conn
}

func (r *connRecorder) install(c *pgxpool.Config) {
	dial := c.ConnConfig.DialFunc
	c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.conns = append(r.conns, nc)
		r.mu.Unlock()
		if r.slowWrite > 0 {
			return &slowWriteConn{Conn: nc, delay: r.slowWrite, over: r.slowOver}, nil
		}
		return nc, nil
	}
}

func (r *connRecorder) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		_ = c.Close()
	}
}

// slowWriteConn returns from Write delay after the bytes were written. The
// real socket stays reachable through SyscallConn, as it is on a plain
// connection.
type slowWriteConn struct {
	net.Conn
	delay time.Duration
	over  int
}

func (c *slowWriteConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if len(b) > c.over {
		time.Sleep(c.delay)
	}
	return n, err
}

func (c *slowWriteConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// hung reports a call still blocked after its bound: it logs every
// goroutine's stack, closes the recorded connections so the blocked calls
// (and the pool's Close) can end, and fails the test.
func hung(t *testing.T, rec *connRecorder, what string, bound time.Duration) {
	t.Helper()
	buf := make([]byte, 256<<10)
	buf = buf[:runtime.Stack(buf, true)]
	t.Logf("goroutines when %s was still blocked:\n%s", what, buf)
	rec.closeAll()
	t.Fatalf("%s still blocked after %s; stacks above", what, bound)
}

// within runs f and returns its error, or reports it hung after bound.
func within(t *testing.T, rec *connRecorder, bound time.Duration, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		defer func() { // closed connections end f; the test fails either way
			select {
			case err := <-done:
				t.Logf("%s, after the connections were closed: %v", what, err)
			case <-time.After(10 * time.Second):
			}
		}()
		hung(t, rec, what, bound)
		return nil
	}
}

// TestPoolSlowWriteDoesNotHang: pgx starts a background reader when a
// write takes more than about 15 ms (its guard against a write/read
// deadlock), and after the query that reader can stay parked in Read on the
// idle socket. Nothing of the Pool may wait on that socket behind pgx's
// back: every Exec returns within its bound.
func TestPoolSlowWriteDoesNotHang(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	rec := &connRecorder{slowWrite: 20 * time.Millisecond}
	p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 1, AcquireTimeout: time.Second, Configure: rec.install})
	ctx := testCtx(t)
	for i := range 4 {
		err := within(t, rec, 8*time.Second, fmt.Sprintf("Exec %d", i+1), func() error {
			_, err := p.Exec(ctx, "SELECT $1::int", i)
			return err
		})
		if err != nil {
			t.Fatalf("Exec %d: %v", i+1, err)
		}
	}
}

// TestPoolConcurrentReuseNeverHangs: many goroutines share few connections,
// half of the calls sending a 200 kB parameter. Writing that much takes
// long enough, now and then, for pgx's background reader to start (on a
// loaded machine or network); the dialer makes every write over 64 kB take
// 20 ms so that it happens on every such call rather than now and then.
// Every call completes, each within a bound far above its cost.
func TestPoolConcurrentReuseNeverHangs(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	rec := &connRecorder{slowWrite: 20 * time.Millisecond, slowOver: 64 << 10}
	p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 2, AcquireTimeout: time.Minute, Configure: rec.install})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	big := strings.Repeat("x", 200<<10)
	const workers, calls = 8, 30
	results := make(chan error, workers*calls)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				if ctx.Err() != nil {
					return
				}
				var err error
				if (w+i)%2 == 0 {
					var n int
					if err = p.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err == nil && n != len(big) {
						err = fmt.Errorf("length %d, want %d", n, len(big))
					}
				} else {
					_, err = p.Exec(ctx, "SELECT $1::int", i)
				}
				results <- err
			}
		}()
	}
	defer wg.Wait()
	const bound = 20 * time.Second // per call; a call costs milliseconds
	for n := range workers * calls {
		select {
		case err := <-results:
			if err != nil {
				cancel()
				t.Fatalf("call %d: %v", n, err)
			}
		case <-time.After(bound):
			cancel()
			hung(t, rec, fmt.Sprintf("call %d of %d", n+1, workers*calls), bound)
		}
	}
}

// TestPoolConnectFailureIsNotExhaustion: a server that accepts TCP and
// never answers, and a port nobody listens on. Nothing is in use, so the
// error is a connect error (ErrConnect), never "pool exhausted", and it
// comes within the bound.
func TestPoolConnectFailureIsNotExhaustion(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	held.Add(1)
	var mu sync.Mutex
	var accepted []net.Conn
	go func() {
		defer held.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		held.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range accepted {
			_ = c.Close()
		}
	})
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedPort := refused.Addr().(*net.TCPAddr).Port
	_ = refused.Close()

	for _, tc := range []struct {
		name string
		port int
	}{{"silent server", ln.Addr().(*net.TCPAddr).Port}, {"refused", refusedPort}} {
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=u dbname=d sslmode=disable", tc.port)
		rec := &connRecorder{}
		p := newTestPool(t, PoolConfig{ConnString: dsn, MaxConns: 2, AcquireTimeout: 300 * time.Millisecond, Configure: rec.install})
		ctx := testCtx(t)
		calls := map[string]func() error{
			"Exec":  func() error { _, err := p.Exec(ctx, "SELECT 1"); return err },
			"Query": func() error { _, err := p.Query(ctx, "SELECT 1"); return err },
			"Begin": func() error { _, err := p.Begin(ctx); return err },
			"Ping":  func() error { return p.Ping(ctx) },
		}
		for name, call := range calls {
			err := within(t, rec, 10*time.Second, tc.name+" "+name, func() error { return call() })
			if !errors.Is(err, ErrConnect) || errors.Is(err, ErrPoolExhausted) || strings.Contains(err.Error(), EnvPoolMax) {
				t.Fatalf("%s: %s: %v; want an ErrConnect, not ErrPoolExhausted", tc.name, name, err)
			}
		}
	}
}

// BenchmarkPoolExec: Pool.Exec("SELECT $1::int") against a plain pgxpool
// on the same database, one goroutine, unix socket, pools of 4. The
// implementations run in the same benchmark, interleaved in blocks of 20
// calls (rotating which goes first), so a burst of load elsewhere hits them
// alike; b.N calls are made with EACH. Metrics, as medians over the blocks
// (robust to the bursts of a shared machine): <impl>-us/exec, the time per
// Exec; <impl>-vs-pgxpool, its time over pgxpool's in the same round (1 =
// as fast); <impl>-cpu-us/exec, the process's CPU time per Exec.
func BenchmarkPoolExec(b *testing.B) {
	dsn := pgtest.Shared().NewDatabase(b)
	ctx := testCtx(b)
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	pc.MaxConns = 4
	plain, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		b.Fatal(err)
	}
	defer plain.Close()
	type impl struct {
		name string
		exec func(i int) error
	}
	impls := []impl{{"pgxpool", func(i int) error { _, err := plain.Exec(ctx, "SELECT $1::int", i); return err }}}
	for _, v := range benchPoolVariants {
		cfg := PoolConfig{ConnString: dsn, MaxConns: 4}
		v.set(&cfg)
		p, err := NewPool(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		impls = append(impls, impl{v.name, func(i int) error { _, err := p.Exec(ctx, "SELECT $1::int", i); return err }})
	}
	for _, im := range impls { // connect and cache the statement
		for i := range 8 {
			if err := im.exec(i); err != nil {
				b.Fatal(err)
			}
		}
	}
	const block = 20
	wall := make([][]float64, len(impls)) // µs per Exec, per block
	cpu := make([][]float64, len(impls))
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(block, b.N-done)
		for k := range impls {
			j := (k + round) % len(impls)
			c0 := procCPU()
			start := time.Now()
			for i := range n {
				if err := impls[j].exec(i); err != nil {
					b.Fatal(err)
				}
			}
			wall[j] = append(wall[j], float64(time.Since(start).Nanoseconds())/1e3/float64(n))
			cpu[j] = append(cpu[j], float64((procCPU()-c0).Nanoseconds())/1e3/float64(n))
		}
		done += n
	}
	b.StopTimer()
	for j, im := range impls {
		b.ReportMetric(median(wall[j]), im.name+"-us/exec")
		b.ReportMetric(median(cpu[j]), im.name+"-cpu-us/exec")
		if j > 0 {
			ratio := make([]float64, len(wall[j]))
			for r := range ratio {
				ratio[r] = wall[j][r] / wall[0][r]
			}
			b.ReportMetric(median(ratio), im.name+"-vs-pgxpool")
		}
	}
}

// benchPoolVariants are the Pools BenchmarkPoolExec runs next to pgxpool.
var benchPoolVariants = []struct {
	name string
	set  func(*PoolConfig)
}{
	{"pool", func(*PoolConfig) {}},
	// Checks every idle connection before use: what a promise that no dead
	// idle connection is ever handed out costs, in one round trip.
	{"pool-ping-always", func(c *PoolConfig) { c.PingAfterIdle = time.Nanosecond }},
}

// procCPU is the process's user+system CPU time.
func procCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
