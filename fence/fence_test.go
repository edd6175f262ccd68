package fence_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/internal/testmain"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/fence"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m))
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctxFor(t), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// jobsDB makes a database with a guarded table jobs(id, state, fence_token)
// holding row 1, and a log of every applied write in commit order.
func jobsDB(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	dsn := pgtest.Shared().NewDatabase(t)
	c := connect(t, dsn)
	ddl, err := fence.Table{Name: "jobs"}.AddColumnSQL()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctxFor(t), `
		CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL DEFAULT '');
		`+ddl+`;
		INSERT INTO jobs (id) VALUES (1);
		CREATE TABLE applied (seq bigserial PRIMARY KEY, token bigint NOT NULL);
		CREATE FUNCTION log_applied() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN INSERT INTO applied (token) VALUES (NEW.fence_token); RETURN NEW; END$$;
		CREATE TRIGGER jobs_applied AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION log_applied();`); err != nil {
		t.Fatal(err)
	}
	return dsn, c
}

func rowState(t *testing.T, c *pgx.Conn) (state string, tok int64) {
	t.Helper()
	if err := c.QueryRow(ctxFor(t), "SELECT state, fence_token FROM jobs WHERE id = 1").Scan(&state, &tok); err != nil {
		t.Fatal(err)
	}
	return state, tok
}

func TestTokenText(t *testing.T) {
	t.Parallel()
	tok := fence.Token(9007199254740993) // 2^53+1: not representable as a float64
	if tok.String() != "9007199254740993" {
		t.Fatalf("String = %q", tok.String())
	}
	b, err := json.Marshal(struct{ T fence.Token }{tok})
	if err != nil || string(b) != `{"T":"9007199254740993"}` {
		t.Fatalf("JSON = %s, %v; want the token as a string so it is not rounded", b, err)
	}
	var back struct{ T fence.Token }
	if err := json.Unmarshal(b, &back); err != nil || back.T != tok {
		t.Fatalf("JSON round trip = %v, %v", back.T, err)
	}
	if got, err := fence.Parse(" 42 "); err != nil || got != 42 {
		t.Fatalf("Parse(42) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "-3", "x1", "99999999999999999999"} {
		if _, err := fence.Parse(bad); !errors.Is(err, fence.ErrInvalidToken) {
			t.Errorf("Parse(%q) error = %v, want ErrInvalidToken", bad, err)
		}
	}
	var sb strings.Builder
	slog.New(slog.NewJSONHandler(&sb, nil)).Info("write", "token", tok)
	if !strings.Contains(sb.String(), `"token":9007199254740993`) {
		t.Fatalf("slog output %s does not carry the token as an integer", sb.String())
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	if err := fence.Check(5, 5); err != nil {
		t.Fatalf("equal token rejected: %v", err)
	}
	if err := fence.Check(5, 6); err != nil {
		t.Fatalf("newer token rejected: %v", err)
	}
	err := fence.Check(5, 4)
	var st *fence.StaleTokenError
	if !errors.Is(err, fence.ErrStaleToken) || !errors.As(err, &st) || st.Current != 5 || st.Token != 4 {
		t.Fatalf("Check(5, 4) = %v, want a StaleTokenError with Current 5", err)
	}
}

func TestTableNames(t *testing.T) {
	t.Parallel()
	for _, tb := range []fence.Table{{Name: ""}, {Name: "a.b.c"}, {Name: "Jobs"}, {Name: "jobs; DROP TABLE x"}, {Name: "jobs", TokenColumn: "tok en"}} {
		if _, err := tb.UpdateSQL("state = $3"); err == nil || !strings.Contains(err.Error(), "fence:") {
			t.Errorf("%+v: error = %v, want a fence error naming the fix", tb, err)
		}
	}
	q, err := fence.Table{Name: "app.jobs", KeyColumn: "job_id", Strict: true}.UpdateSQL("state = $3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"app"."jobs"`, `"job_id" = $2`, `"fence_token" < $1`} {
		if !strings.Contains(q, want) {
			t.Errorf("UpdateSQL = %s; missing %s", q, want)
		}
	}
	if _, err := (fence.Table{Name: "jobs"}).UpdateSQL(" "); err == nil {
		t.Error("empty SET list accepted")
	}
}

// TestUpdateRejectsStale: newer and equal tokens write, an older one is
// rejected with the current token and leaves the row alone; a missing row
// is ErrNoRow; Strict refuses an equal token.
func TestUpdateRejectsStale(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	_, c := jobsDB(t)
	jobs := fence.Table{Name: "jobs"}
	if err := jobs.Update(ctx, c, 5, 1, "state = $3", "by-5"); err != nil {
		t.Fatalf("token 5: %v", err)
	}
	if err := jobs.Update(ctx, c, 5, 1, "state = $3", "by-5-again"); err != nil {
		t.Fatalf("token 5 again (same lease): %v", err)
	}
	err := jobs.Update(ctx, c, 3, 1, "state = $3", "by-3")
	var st *fence.StaleTokenError
	if !errors.Is(err, fence.ErrStaleToken) || !errors.As(err, &st) || st.Current != 5 || st.Token != 3 {
		t.Fatalf("token 3 after 5: err = %v, want StaleTokenError{Current: 5}", err)
	}
	if s, tok := rowState(t, c); s != "by-5-again" || tok != 5 {
		t.Fatalf("after the stale write the row is %q/%d, want by-5-again/5", s, tok)
	}
	if err := jobs.Update(ctx, c, 7, 1, "state = $3", "by-7"); err != nil {
		t.Fatalf("token 7: %v", err)
	}
	if err := jobs.Update(ctx, c, 8, 2, "state = $3", "x"); !errors.Is(err, fence.ErrNoRow) || errors.Is(err, fence.ErrStaleToken) {
		t.Fatalf("missing row: err = %v, want ErrNoRow", err)
	}
	strict := fence.Table{Name: "jobs", Strict: true}
	if err := strict.Update(ctx, c, 7, 1, "state = $3", "again"); !errors.As(err, &st) || st.Current != 7 {
		t.Fatalf("strict, equal token: err = %v, want StaleTokenError{Current: 7}", err)
	}
	// Inside a transaction too (pgx.Tx is a Querier).
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := jobs.Update(ctx, tx, 6, 1, "state = $3", "tx-6"); !errors.Is(err, fence.ErrStaleToken) {
		t.Fatalf("token 6 in a tx after 7: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestUpdateDB: the same guard through database/sql.
func TestUpdateDB(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	dsn, c := jobsDB(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = stdlib.GetDefaultDriver()
	jobs := fence.Table{Name: "jobs"}
	if err := jobs.UpdateDB(ctx, db, 10, 1, "state = $3", "sql-10"); err != nil {
		t.Fatalf("token 10: %v", err)
	}
	var st *fence.StaleTokenError
	if err := jobs.UpdateDB(ctx, db, 9, 1, "state = $3", "sql-9"); !errors.As(err, &st) || st.Current != 10 {
		t.Fatalf("token 9 after 10: %v", err)
	}
	if err := jobs.UpdateDB(ctx, db, 11, 99, "state = $3", "x"); !errors.Is(err, fence.ErrNoRow) {
		t.Fatalf("missing row: %v", err)
	}
	if s, tok := rowState(t, c); s != "sql-10" || tok != 10 {
		t.Fatalf("row is %q/%d, want sql-10/10", s, tok)
	}
}

// TestConcurrentWritesNeverRegress: writers racing with shuffled tokens on
// one row: the applied writes, in commit order, never go back to an older
// token, and the row ends with the largest. The control shows the same race
// without the guard applying an older token after a newer one.
func TestConcurrentWritesNeverRegress(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	dsn, c := jobsDB(t)
	const writers, each = 4, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wc, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer wc.Close(context.Background())
			for i := range each {
				// Interleaved, non-monotonic per writer: 4w+i*...
				tok := fence.Token((i*7919+w*104729)%1000 + 1)
				err := fence.Table{Name: "jobs"}.Update(ctx, wc, tok, 1, "state = $3", fmt.Sprint(w))
				if err != nil && !errors.Is(err, fence.ErrStaleToken) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	regressions, applied := countRegressions(t, c)
	if applied == 0 || regressions != 0 {
		t.Fatalf("guarded: %d applied writes, %d went back to an older token", applied, regressions)
	}
	var final, max int64
	if err := c.QueryRow(ctx, "SELECT (SELECT fence_token FROM jobs WHERE id = 1), (SELECT max(token) FROM applied)").Scan(&final, &max); err != nil || final != max {
		t.Fatalf("final token %d, largest applied %d (%v)", final, max, err)
	}

	// Control: the same kind of write without the guard.
	if _, err := c.Exec(ctx, "TRUNCATE applied"); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []int64{2000, 1500} {
		if _, err := c.Exec(ctx, "UPDATE jobs SET state = 'unguarded', fence_token = $1 WHERE id = 1", tok); err != nil {
			t.Fatal(err)
		}
	}
	if regressions, _ := countRegressions(t, c); regressions == 0 {
		t.Fatal("control: an unguarded older write was not seen applied after a newer one")
	}
}

func countRegressions(t *testing.T, c *pgx.Conn) (regressions, applied int) {
	t.Helper()
	rows, err := c.Query(ctxFor(t), "SELECT token FROM applied ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	toks, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	var max int64
	for _, tok := range toks {
		if tok < max {
			regressions++
		}
		max = maxI(max, tok)
	}
	return regressions, len(toks)
}

func maxI(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// TestLeasesAndFence: with pgbaton leases, the superseded holder's write is
// rejected after the next holder wrote; without the schema a lease has no
// token and FromLease says how to get one.
func TestLeasesAndFence(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	dsn, c := jobsDB(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	newLocker := func() *pgbaton.Locker {
		l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, Logger: quiet, InstanceName: "fence-test"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	key := pgbaton.KeyName("jobs/1")

	bare := newLocker()
	ls, err := bare.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fence.FromLease(ls); !errors.Is(err, fence.ErrNoToken) || !strings.Contains(err.Error(), "Migrate") {
		t.Fatalf("FromLease without the schema: %v, want ErrNoToken naming Migrate", err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	if err := pgbaton.Migrate(ctx, c, ""); err != nil {
		t.Fatal(err)
	}

	l := newLocker()
	first, err := l.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	old, err := fence.FromLease(first)
	if err != nil {
		t.Fatal(err)
	}
	jobs := fence.Table{Name: "jobs"}
	if err := jobs.Update(ctx, c, old, 1, "state = $3", "first"); err != nil {
		t.Fatal(err)
	}
	// The first holder is superseded (here it simply releases; a frozen
	// or partitioned holder looks the same to the resource).
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	second, err := l.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Release()
	newer, err := fence.FromLease(second)
	if err != nil || newer <= old {
		t.Fatalf("second token %v (%v) not larger than %v", newer, err, old)
	}
	if err := jobs.Update(ctx, c, newer, 1, "state = $3", "second"); err != nil {
		t.Fatal(err)
	}
	err = jobs.Update(ctx, c, old, 1, "state = $3", "stale")
	var st *fence.StaleTokenError
	if !errors.As(err, &st) || st.Current != newer {
		t.Fatalf("stale holder's write: %v, want StaleTokenError{Current: %v}", err, newer)
	}
	if s, _ := rowState(t, c); s != "second" {
		t.Fatalf("row state %q, want second", s)
	}
}
