package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/inspect"
	"github.com/pgbaton/pgbaton/pgtest"
)

// The page shows the fixture's lock by name with its holder, waiter and
// class, both instances, the jobs with their next tick and health, and the
// runs (success, failure with its error, the missed range).
func TestPageShowsLocksInstancesAndJobs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	d := newDashboard(t, Config{DB: newPool(t, f.dsn)})
	code, h, body := get(t, d, http.MethodGet, "/")
	if code != http.StatusOK {
		t.Fatalf("GET /: %d\n%s", code, body)
	}
	if ct := h.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	mustContain(t, body,
		`<span class="name">orders.sync</span>`, ">holds<", ">waits #1<", `badge waiting`, "pgbaton:api-1", "pgbaton:api-2",
		`<th scope="row">api-1</th>`, `<th scope="row">api-2</th>`,
		`<th scope="row">reports.daily</th>`, `<th scope="row">billing.close</th>`, "every 24h0m0s", `badge succeeded`, `badge failed`,
		"upstream answered 502", `badge missed`, "4 ticks, through", `<caption>`, `scope="col"`, "static/refresh.js")
	// The view's JSON has the same facts.
	code, _, body = get(t, d, http.MethodGet, "/api/view")
	if code != http.StatusOK {
		t.Fatalf("GET /api/view: %d %s", code, body)
	}
	var v View
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Locks.Keys) != 1 || v.Locks.Keys[0].Name != lockName || len(v.Locks.Keys[0].Holders) != 1 || len(v.Locks.Keys[0].Waiters) != 1 {
		t.Fatalf("locks: %+v", v.Locks.Keys)
	}
	byName := map[string]Instance{}
	for _, in := range v.Instances {
		byName[in.Name] = in
	}
	if byName["api-1"].Holding != 1 || byName["api-2"].Waiting != 1 || byName["api-1"].LockConns < 1 {
		t.Errorf("instances: %+v", v.Instances)
	}
	jobs := map[string]Job{}
	for _, j := range v.Jobs {
		jobs[j.Name] = j
	}
	ok, failing := jobs[jobOK], jobs[jobFailing]
	if ok.NextTick == nil || !ok.NextTick.After(v.TakenAt) || ok.Health != "ok" || ok.LastSuccess == nil {
		t.Errorf("%s: %+v", jobOK, ok)
	}
	if len(ok.Runs) != 2 || ok.Runs[0].Status != "succeeded" || ok.Runs[0].Token == nil || ok.Runs[0].Duration == nil || ok.Runs[0].Lateness == nil ||
		ok.Runs[1].Status != "missed" || ok.Runs[1].Ticks != 4 {
		t.Errorf("%s runs: %+v", jobOK, ok.Runs)
	}
	if len(failing.Runs) != 1 || failing.Runs[0].Status != "failed" || failing.Runs[0].Error != "upstream answered 502" {
		t.Errorf("%s runs: %+v", jobFailing, failing.Runs)
	}
	// inspect.Take's (six here: version, locks, activity, and the names
	// from the registry, the jobs and the running runs), the instances and
	// the jobs statements.
	if v.Statements < 5 || v.Statements > 8 {
		t.Errorf("a refresh sent %d statements, want 5-8", v.Statements)
	}
	t.Logf("one refresh: %d statements", v.Statements)
}

// Every route answers GET and HEAD only: every other method is 405 with
// Allow, before anything is read.
func TestReadOnlyRoutes(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	d := newDashboard(t, Config{DB: newPool(t, pgtest.Shared().TCPDSN(db))})
	for _, path := range []string{"/", "/api/view", "/static/style.css", "/static/refresh.js", "/nope"} {
		want := http.StatusOK
		if path == "/nope" {
			want = http.StatusNotFound
		}
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			if code, _, body := get(t, d, m, path); code != want {
				t.Errorf("%s %s: %d, want %d: %s", m, path, code, want, body)
			}
		}
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "TRACE", "CONNECT"} {
			code, h, _ := get(t, d, m, path)
			if code != http.StatusMethodNotAllowed || h.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d (Allow %q), want 405 with Allow: GET, HEAD", m, path, code, h.Get("Allow"))
			}
		}
	}
	if n := d.Refreshes(); n != 1 {
		t.Errorf("%d refreshes, want 1 (the rejected methods must read nothing)", n)
	}
}

// With Auth configured, every route needs the token or the basic
// credentials.
func TestAuthRequired(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	d := newDashboard(t, Config{DB: newPool(t, pgtest.Shared().TCPDSN(db)),
		Auth: Auth{BearerToken: "s3cret-token", BasicUser: "ops", BasicPassword: "hunter22"}})
	bearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	basic := func(u, p string) func(*http.Request) { return func(r *http.Request) { r.SetBasicAuth(u, p) } }
	for _, path := range []string{"/", "/api/view", "/static/style.css"} {
		for name, c := range map[string]struct {
			mod  func(*http.Request)
			want int
		}{
			"none":         {func(*http.Request) {}, http.StatusUnauthorized},
			"wrong token":  {bearer("s3cret-tokeN"), http.StatusUnauthorized},
			"token":        {bearer("s3cret-token"), http.StatusOK},
			"wrong basic":  {basic("ops", "hunter2"), http.StatusUnauthorized},
			"basic":        {basic("ops", "hunter22"), http.StatusOK},
			"post + token": {bearer("s3cret-token"), http.StatusMethodNotAllowed},
		} {
			m := http.MethodGet
			if strings.HasPrefix(name, "post") {
				m = http.MethodPost
			}
			code, h, _ := get(t, d, m, path, c.mod)
			if code != c.want {
				t.Errorf("%s %s with %s: %d, want %d", m, path, name, code, c.want)
			}
			if code == http.StatusUnauthorized && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("401 without a Basic challenge: %q", h.Get("WWW-Authenticate"))
			}
		}
	}
	// Without auth, a POST to the unauthenticated handler is 405 too (no
	// route writes).
	if _, err := New(Config{DB: d.cfg.DB, Auth: Auth{BasicUser: "ops"}}); !errors.Is(err, ErrConfig) {
		t.Errorf("basic user without password: %v, want ErrConfig", err)
	}
}

func TestCheckListen(t *testing.T) {
	t.Parallel()
	tok := Auth{BearerToken: "x"}
	for _, c := range []struct {
		addr   string
		remote bool
		auth   Auth
		want   error
	}{
		{"127.0.0.1:8080", false, Auth{}, nil},
		{"[::1]:8080", false, Auth{}, nil},
		{"localhost:0", false, Auth{}, nil},
		{"127.0.0.2:8080", false, Auth{}, nil},
		{"0.0.0.0:8080", false, Auth{}, ErrInsecureListen},
		{":8080", false, tok, ErrInsecureListen},
		{":8080", true, Auth{}, ErrInsecureListen},
		{"10.1.2.3:8080", true, Auth{}, ErrInsecureListen},
		{"10.1.2.3:8080", false, tok, ErrInsecureListen},
		{"10.1.2.3:8080", true, tok, nil},
		{"0.0.0.0:8080", true, Auth{BasicUser: "a", BasicPassword: "b"}, nil},
		{"8080", false, Auth{}, ErrConfig},
	} {
		err := CheckListen(c.addr, c.remote, c.auth)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("CheckListen(%q, %v, auth %v): %v, want %v", c.addr, c.remote, c.auth.Enabled(), err, c.want)
		}
	}
}

// countingDB counts the statements the database receives.
type countingDB struct {
	q inspect.Querier
	n atomic.Int64
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n.Add(1)
	return c.q.Query(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n.Add(1)
	return c.q.QueryRow(ctx, sql, args...)
}

// One shared view: 50 concurrent viewers cause one refresh per interval,
// and the database receives one refresh's statements.
func TestSharedViewOneRefreshPerInterval(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	db := &countingDB{q: newPool(t, f.dsn)}
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	d := newDashboard(t, Config{DB: db, Interval: 5 * time.Second, now: clock})
	burst := func() {
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := "/"
				if i%2 == 1 {
					path = "/api/view"
				}
				if code, _, body := get(t, d, http.MethodGet, path); code != http.StatusOK || !strings.Contains(body, lockName) {
					t.Errorf("GET %s: %d", path, code)
				}
			}()
		}
		wg.Wait()
	}
	burst()
	perRefresh := db.n.Load()
	if d.Refreshes() != 1 || perRefresh < 5 {
		t.Fatalf("after 50 concurrent viewers: %d refreshes, %d statements; want 1 refresh", d.Refreshes(), perRefresh)
	}
	// Within the interval: nothing new is read.
	mu.Lock()
	now = now.Add(4 * time.Second)
	mu.Unlock()
	burst()
	if d.Refreshes() != 1 || db.n.Load() != perRefresh {
		t.Fatalf("within the interval: %d refreshes, %d statements", d.Refreshes(), db.n.Load())
	}
	// Past it: exactly one more refresh for the next 50.
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	burst()
	if d.Refreshes() != 2 || db.n.Load() != 2*perRefresh {
		t.Fatalf("next interval: %d refreshes, %d statements (one refresh is %d)", d.Refreshes(), db.n.Load(), perRefresh)
	}
}

// A role with SELECT on pgbaton's tables and nothing else (its sessions
// read-only by default) sees the whole page; a role without even that sees
// the locks and instances, and a note naming the GRANT.
func TestSelectOnlyRole(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testCtx(t)
	ro := "dash_ro_" + f.db
	none := "dash_none_" + f.db
	for _, stmt := range []string{
		fmt.Sprintf(`CREATE ROLE %s LOGIN`, ro),
		fmt.Sprintf(`ALTER ROLE %s SET default_transaction_read_only = on`, ro),
		fmt.Sprintf(`GRANT USAGE ON SCHEMA pgbaton TO %s`, ro),
		fmt.Sprintf(`GRANT SELECT ON pgbaton.key_names, pgbaton.periodic_jobs, pgbaton.periodic_runs TO %s`, ro),
		fmt.Sprintf(`CREATE ROLE %s LOGIN`, none),
	} {
		if _, err := f.admin.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = pgtest.Shared().Exec(ctx, "postgres", fmt.Sprintf(`DROP OWNED BY %s, %s`, ro, none))
		_, _ = f.admin.Exec(ctx, fmt.Sprintf(`DROP OWNED BY %s, %s`, ro, none))
		_, _ = f.admin.Exec(ctx, fmt.Sprintf(`DROP ROLE IF EXISTS %s, %s`, ro, none))
	})
	var writable bool
	pool := newPool(t, f.dsn+" user="+ro)
	if err := pool.QueryRow(ctx, `SELECT has_table_privilege('pgbaton.periodic_runs', 'INSERT') OR has_table_privilege('pgbaton.key_names', 'UPDATE')`).Scan(&writable); err != nil || writable {
		t.Fatalf("the role can write: %v %v", writable, err)
	}
	d := newDashboard(t, Config{DB: pool})
	code, _, body := get(t, d, http.MethodGet, "/")
	if code != http.StatusOK {
		t.Fatalf("GET / as %s: %d\n%s", ro, code, body)
	}
	mustContain(t, body, `<span class="name">orders.sync</span>`, `<th scope="row">api-1</th>`, `<th scope="row">reports.daily</th>`, "upstream answered 502")
	if strings.Contains(body, "note:") {
		t.Errorf("notes for a role with the grants:\n%s", body)
	}

	d = newDashboard(t, Config{DB: newPool(t, f.dsn+" user="+none)})
	code, _, body = get(t, d, http.MethodGet, "/")
	if code != http.StatusOK {
		t.Fatalf("GET / as %s: %d\n%s", none, code, body)
	}
	mustContain(t, body, `<th scope="row">api-1</th>`, "waits #1", "GRANT USAGE ON SCHEMA")
}

// A refresh that fails answers 503 with the error, shows the last good
// view, and is not retried before the interval.
func TestRefreshFailure(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	pool := newPool(t, pgtest.Shared().TCPDSN(db))
	cdb := &countingDB{q: pool}
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	d := newDashboard(t, Config{DB: cdb, now: clock})
	if code, _, body := get(t, d, http.MethodGet, "/"); code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	pool.Close()
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	code, _, body := get(t, d, http.MethodGet, "/")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("GET / with the pool closed: %d", code)
	}
	mustContain(t, body, "Refresh failed", "showing the view from 1m00s ago", "No advisory lock is held")
	_, err := d.View(context.Background())
	if !errors.Is(err, ErrRefresh) && !errors.Is(err, inspect.ErrSnapshot) {
		t.Errorf("View: %v, want ErrRefresh or inspect.ErrSnapshot", err)
	}
	if d.Refreshes() != 2 {
		t.Errorf("%d refreshes, want 2 (a failure is not retried within the interval)", d.Refreshes())
	}
}

func TestNewConfig(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{}); !errors.Is(err, ErrConfig) {
		t.Errorf("no DB: %v", err)
	}
	if _, err := New(Config{DB: &countingDB{}, Interval: 100 * time.Millisecond}); !errors.Is(err, ErrConfig) {
		t.Errorf("interval below the minimum: %v", err)
	}
}
