package web

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// BenchmarkDashboardLoad measures the database load of the dashboard at 1
// and 50 viewers: each viewer is an open tab that fetches the page once per
// interval (1s) at its own phase, as the refresh script does. One iteration
// is one interval of wall time, so run it with -benchtime=Nx.
//
// Reported per interval: refreshes of the shared view, statements counted
// by a wrapper around the pool, and statements the database executed for
// the dashboard's role (pg_stat_statements calls, on a cluster of its own
// started with the extension preloaded).
func BenchmarkDashboardLoad(b *testing.B) {
	ctx := testCtx(b)
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{
		"shared_preload_libraries": "pg_stat_statements",
		"pg_stat_statements.track": "all",
		"pg_stat_statements.max":   "10000",
		"compute_query_id":         "on",
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	for _, viewers := range []int{1, 50} {
		b.Run(fmt.Sprintf("viewers=%d", viewers), func(b *testing.B) {
			f := newFixtureOn(b, c)
			role := fmt.Sprintf("dash_bench_%d", viewers)
			for _, stmt := range []string{
				`CREATE EXTENSION IF NOT EXISTS pg_stat_statements`,
				fmt.Sprintf(`DROP ROLE IF EXISTS %s`, role),
				fmt.Sprintf(`CREATE ROLE %s LOGIN IN ROLE pg_read_all_stats`, role),
				fmt.Sprintf(`GRANT USAGE ON SCHEMA pgbaton TO %s`, role),
				fmt.Sprintf(`GRANT SELECT ON ALL TABLES IN SCHEMA pgbaton TO %s`, role),
			} {
				if _, err := f.admin.Exec(ctx, stmt); err != nil {
					b.Fatal(err)
				}
			}
			calls := func() int64 {
				var n int64
				if err := f.admin.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
					WHERE r.rolname = $1 AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`, role).Scan(&n); err != nil {
					b.Fatal(err)
				}
				return n
			}
			pool := newPool(b, f.dsn+" user="+role)
			db := &countingDB{q: pool}
			d := newDashboard(b, Config{DB: db, Interval: time.Second})
			srv := httptest.NewServer(d)
			defer srv.Close()
			// Warm up: connect the pool and let the first refresh happen.
			if code, _, _ := get(b, d, http.MethodGet, "/"); code != http.StatusOK {
				b.Fatalf("GET /: %d", code)
			}
			time.Sleep(time.Second)
			refreshes0, stmts0, calls0 := d.Refreshes(), db.n.Load(), calls()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range viewers {
				wg.Add(1)
				phase := time.Duration(rand.Int64N(int64(time.Second)))
				go func() {
					defer wg.Done()
					for i := range b.N {
						time.Sleep(time.Until(start.Add(time.Duration(i)*time.Second + phase)))
						resp, err := srv.Client().Get(srv.URL + "/")
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			intervals := float64(b.N)
			b.ReportMetric(float64(d.Refreshes()-refreshes0)/intervals, "refreshes/interval")
			b.ReportMetric(float64(db.n.Load()-stmts0)/intervals, "stmts/interval")
			b.ReportMetric(float64(calls()-calls0)/intervals, "db-stmts/interval")
			b.ReportMetric(float64(viewers*b.N)/intervals, "page-gets/interval")
		})
	}
}
