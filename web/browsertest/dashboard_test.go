package browsertest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/pgtest"
	"github.com/pgbaton/pgbaton/web"
)

const (
	lockName   = "orders.sync"
	jobOK      = "reports.daily"
	jobFailing = "billing.close"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// chromium is the browser binary: $PGBATON_CHROMIUM, else Debian's.
func chromium(t *testing.T) string {
	p := os.Getenv("PGBATON_CHROMIUM")
	if p == "" {
		p = "/usr/bin/chromium"
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no browser at %s (%v): install Debian's chromium package (scripts/test.sh does), or set PGBATON_CHROMIUM", p, err)
	}
	return p
}

// TestDashboardInBrowser serves the dashboard of a database where instance
// api-1 holds "orders.sync", api-2 waits for it, and periodic has history,
// opens it in headless Chromium, and checks what a person sees: the lock by
// name with its holder, waiter and class, both instances, the jobs and
// their runs. Then it hides the tab (no request may follow), shows it again
// (one follows at once), and releases the lock: the page shows the new
// holder without a reload.
func TestDashboardInBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFixture(ctx, t)

	pool, err := pgxpool.New(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dash, err := web.New(web.Config{DB: pool, Interval: time.Second, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	var pageGets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			pageGets.Add(1)
		}
		dash.ServeHTTP(w, r)
	}))
	defer srv.Close()

	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()

	if err := chromedp.Do(bctx, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#locks"))); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return s
	}
	locks := text("#locks")
	for _, want := range []string{lockName, "holds", "waits #1", "waiting", "pgbaton:api-1", "pgbaton:api-2", "exclusive"} {
		if !strings.Contains(locks, want) {
			t.Errorf("the locks table lacks %q:\n%s", want, locks)
		}
	}
	if inst := text("#instances"); !strings.Contains(inst, "api-1") || !strings.Contains(inst, "api-2") {
		t.Errorf("the instances table lacks api-1 or api-2:\n%s", inst)
	}
	jobs := text("#jobs")
	for _, want := range []string{jobOK, jobFailing, "every 24h0m0s", "ok"} {
		if !strings.Contains(jobs, want) {
			t.Errorf("the jobs table lacks %q:\n%s", want, jobs)
		}
	}
	runs := text("#runs")
	for _, want := range []string{"succeeded", "failed", "upstream answered 502", "missed", "4 ticks, through"} {
		if !strings.Contains(runs, want) {
			t.Errorf("the runs table lacks %q:\n%s", want, runs)
		}
	}
	// Captions and header cells are there for screen readers.
	n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll('table > caption').length + document.querySelectorAll('th[scope]').length`))
	if err != nil || n < 4+20 {
		t.Errorf("captions and scoped header cells: %d (%v)", n, err)
	}

	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.png")
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		path = filepath.Join("..", "..", "docs", "dashboard.png")
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))

	// A hidden tab asks for nothing.
	if err := chromedp.Do(bctx, chromedp.Evaluate[chromedp.Void](`window.__loaded = true;
		Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
		document.dispatchEvent(new Event('visibilitychange'))`)); err != nil {
		t.Fatal(err)
	}
	before := pageGets.Load()
	time.Sleep(3500 * time.Millisecond) // three and a half refresh intervals
	if got := pageGets.Load(); got != before {
		t.Errorf("a hidden tab fetched the page %d times in 3.5 intervals; want none", got-before)
	}
	// Visible again: it refreshes at once (bounded by the poll's timeout).
	if err := chromedp.Do(bctx, chromedp.Evaluate[chromedp.Void](`
		Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});
		document.dispatchEvent(new Event('visibilitychange'))`)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for pageGets.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("a tab made visible again did not refresh")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The holder lets go: the waiter takes the lock, and the open page shows
	// it without a reload.
	if err := f.lease.Release(); err != nil {
		t.Fatal(err)
	}
	<-f.waiterHolds
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`window.__loaded === true &&
		!document.querySelector('#locks').innerText.includes('waits #1') &&
		document.querySelector('#locks tbody').innerText.includes('pgbaton:api-2')`,
		chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("the page did not show the new holder: %v\n%s", err, text("#locks"))
	}
	f.releaseWaiter()
}

type fixture struct {
	dsn           string
	lease         *pgbaton.Lease
	waiterHolds   chan struct{}
	releaseWaiter func()
}

// newFixture makes a database where api-1 holds lockName (recorded in the
// name registry), api-2 waits for it, and periodic has history: a success,
// a failure with its error, and a missed range.
func newFixture(ctx context.Context, t *testing.T) *fixture {
	t.Helper()
	c := pgtest.Shared()
	db, _ := c.NewDB(t)
	f := &fixture{dsn: c.TCPDSN(db), waiterHolds: make(chan struct{})}
	admin, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	newLocker := func(instance string) *pgbaton.Locker {
		l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: f.dsn, InstanceName: instance, MaxConns: 4, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	l1 := newLocker("api-1")
	if err := l1.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	l2 := newLocker("api-2")
	key := pgbaton.KeyName(lockName)
	f.lease, err = l1.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		l, err := l2.Acquire(ctx, key, pgbaton.Wait(2*time.Minute))
		if err != nil {
			done <- err
			return
		}
		close(f.waiterHolds)
		<-release
		done <- l.Release()
	}()
	var once bool
	f.releaseWaiter = func() {
		if !once {
			once = true
			close(release)
		}
	}
	t.Cleanup(func() {
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("waiter: %v", err)
		}
	})
	t.Cleanup(f.releaseWaiter)
	t.Cleanup(func() { _ = f.lease.Release() })
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
	ended := map[string]bool{}
	for len(ended) < 2 {
		select {
		case e := <-events:
			if (e.Kind == periodic.EventSucceeded || e.Kind == periodic.EventFailed) && e.Job != periodic.PruneJob {
				ended[e.Job] = true
			}
		case <-ctx.Done():
			t.Fatalf("the jobs did not run: %v", ended)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
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

// waitFor polls until cond holds, bounded.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
