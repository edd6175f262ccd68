package web

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/internal/testmain"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) { os.Exit(testmain.Run(m)) }

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitFor polls until cond holds, bounded.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fixture is a database with what the dashboard shows: instance api-1
// holding "orders.sync" (recorded in the name registry), instance api-2
// waiting for it, and periodic history (a success, a failure, a missed
// range).
type fixture struct {
	db, dsn string
	admin   *pgx.Conn
}

const (
	lockName   = "orders.sync"
	jobOK      = "reports.daily"
	jobFailing = "billing.close"
)

func newFixture(t testing.TB) *fixture { return newFixtureOn(t, pgtest.Shared()) }

func newFixtureOn(t testing.TB, c *pgtest.Cluster) *fixture {
	t.Helper()
	ctx := testCtx(t)
	db, _ := c.NewDB(t)
	f := &fixture{db: db, dsn: c.TCPDSN(db)}
	admin, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	f.admin = admin

	l1 := newLocker(t, f.dsn, "api-1")
	if err := l1.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	l2 := newLocker(t, f.dsn, "api-2")
	key := pgbaton.KeyName(lockName)
	lease, err := l1.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		l, err := l2.Acquire(ctx, key, pgbaton.Wait(80*time.Second))
		if err == nil {
			err = l.Release()
		}
		done <- err
	}()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			if _, bench := t.(*testing.B); bench {
				// A benchmark measures the dashboard, not the lease: on a
				// machine loaded enough to starve a heartbeat, say so only.
				t.Logf("waiter: %v", err)
				return
			}
			t.Errorf("waiter: %v", err)
		}
	})
	t.Cleanup(func() { _ = lease.Release() })
	waitFor(t, "the waiter to queue", func() bool {
		var n int
		return admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n) == nil && n == 1
	})

	events := make(chan periodic.Event, 64)
	s, err := periodic.New(ctx, periodic.Config{Locker: l1, Logger: quiet(), OnEvent: func(e periodic.Event) {
		select {
		case events <- e:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []periodic.Job{
		{Name: jobOK, Schedule: periodic.Every(24 * time.Hour), RunOnStart: true, Run: func(context.Context, periodic.Run) error { return nil }},
		{Name: jobFailing, Schedule: periodic.Every(time.Hour), RunOnStart: true, Run: func(context.Context, periodic.Run) error {
			return errors.New("upstream answered 502")
		}},
	} {
		if err := s.Add(j); err != nil {
			t.Fatal(err)
		}
	}
	ended := map[string]periodic.EventKind{}
	for len(ended) < 2 {
		select {
		case e := <-events:
			if (e.Kind == periodic.EventSucceeded || e.Kind == periodic.EventFailed) && e.Job != periodic.PruneJob {
				ended[e.Job] = e.Kind
			}
		case <-ctx.Done():
			t.Fatalf("the jobs did not run: %v", ended)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A missed range, as a scheduler records one after an outage.
	if _, err := admin.Exec(ctx, `INSERT INTO pgbaton.periodic_runs (job, tick, through_tick, ticks, status, kind, instance)
		VALUES ($1, now() - interval '5 days', now() - interval '2 days', 4, 'missed', 'missed', 'api-1')`, jobOK); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the name registry to record "+lockName, func() bool {
		var n int
		return admin.QueryRow(ctx, `SELECT count(*) FROM pgbaton.key_names WHERE name = $1`, lockName).Scan(&n) == nil && n == 1
	})
	return f
}

func newLocker(t testing.TB, dsn, instance string) *pgbaton.Locker {
	t.Helper()
	l, err := pgbaton.New(testCtx(t), pgbaton.Config{ConnString: dsn, InstanceName: instance, MaxConns: 4, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func newPool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(testCtx(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func newDashboard(t testing.TB, cfg Config) *Dashboard {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// get serves one request and returns the status and body.
func get(t testing.TB, h http.Handler, method, path string, mod ...func(*http.Request)) (int, http.Header, string) {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	for _, m := range mod {
		m(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Header(), w.Body.String()
}

func mustContain(t testing.TB, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}
