package periodic_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/internal/testmain"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(testmain.Run(m))
}

// testLogger discards log output unless PGBATON_TEST_LOG=1.
func testLogger() *slog.Logger {
	if os.Getenv("PGBATON_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// env is one test's database: a migrated schema, a Locker and an
// application pool.
type env struct {
	t      testing.TB
	db     string
	dsn    string
	locker *pgbaton.Locker
	pool   *pgxpool.Pool
}

func newEnv(t testing.TB) *env {
	t.Helper()
	db, dsn := pgtest.Shared().NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgbaton.Migrate(ctx, conn, ""); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(ctx)
	e := &env{t: t, db: db, dsn: dsn}
	e.locker = openLocker(t, dsn, "test")
	e.pool, err = pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	return e
}

func openLocker(t testing.TB, dsn, instance string) *pgbaton.Locker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: instance, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// scheduler opens a Scheduler on e, closed at the end of the test (unless
// the test closes it itself).
func (e *env) scheduler(mod ...func(*periodic.Config)) *periodic.Scheduler {
	e.t.Helper()
	cfg := periodic.Config{Locker: e.locker, Pool: e.pool, Logger: testLogger(), Retention: -1,
		ShutdownGrace: 2 * time.Second, CancelWait: 2 * time.Second}
	for _, f := range mod {
		f(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := periodic.New(ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = s.Close() })
	return s
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.pool.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) queryInt(sql string, args ...any) int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int64
	if err := e.pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// runRow is one row of pgbaton.periodic_runs.
type runRow struct {
	Tick, Through time.Time
	Ticks         int64
	Status, Kind  string
	Instance      string
	Started       *time.Time
	Finished      *time.Time
	Error         *string
	Token         *int64
}

func (e *env) runs(job string) []runRow {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := e.pool.Query(ctx, `SELECT tick, through_tick, ticks, status, kind, instance, started_at, finished_at, error, token
FROM pgbaton.periodic_runs WHERE job = $1 ORDER BY tick`, job)
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (runRow, error) {
		var x runRow
		err := r.Scan(&x.Tick, &x.Through, &x.Ticks, &x.Status, &x.Kind, &x.Instance, &x.Started, &x.Finished, &x.Error, &x.Token)
		return x, err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// waitFor polls cond (external state: the database) until it holds or the
// deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// events collects scheduler events.
type events struct {
	mu       sync.Mutex
	evs      []periodic.Event
	consumed map[string]int // job/kind -> events returned by wait
	changed  chan struct{}  // closed and replaced on every event
}

func newEvents() *events {
	return &events{consumed: map[string]int{}, changed: make(chan struct{})}
}

func (c *events) hook(ev periodic.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *events) count(job string, kind periodic.EventKind) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.matching(job, kind))
}

func (c *events) matching(job string, kind periodic.EventKind) []periodic.Event {
	var out []periodic.Event
	for _, ev := range c.evs {
		if ev.Job == job && ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// wait returns the next not yet returned event of kind for job, failing
// after timeout.
func (c *events) wait(t testing.TB, job string, kind periodic.EventKind, timeout time.Duration) periodic.Event {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	key := job + "/" + string(kind)
	for {
		c.mu.Lock()
		m := c.matching(job, kind)
		if n := c.consumed[key]; len(m) > n {
			c.consumed[key] = n + 1
			c.mu.Unlock()
			return m[n]
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("no %s event for %s within %s", kind, job, timeout)
		}
	}
}

func pgtestCluster() *pgtest.Cluster { return pgtest.Shared() }

const (
	slogInfo = slog.LevelInfo
	slogWarn = slog.LevelWarn
)

// recordHandler is a slog.Handler that records messages and levels.
type recordHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func newSlog(h *recordHandler) *slog.Logger { return slog.New(h) }

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r)
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) count(msg string, level slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.recs {
		if r.Message == msg && r.Level == level {
			n++
		}
	}
	return n
}

// serve runs one GET through h.
func serve(h http.Handler, target string) (int, string) {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	return w.Code, w.Body.String()
}
