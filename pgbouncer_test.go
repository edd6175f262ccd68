package pgbaton

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

// PgBouncer findings, each pinned by a test below:
//
//   - Transaction mode: every transaction-scoped helper passes the same
//     suite as direct connections, with pgx's default_query_exec_mode=exec
//     (or simple_protocol). With pgx's default statement cache it fails:
//     named prepared statements stay on a server connection another client
//     then gets (42P05, or 26000 when the statement is missing).
//   - Transaction mode: New refuses the pooler with ErrPoolerDetected
//     (BackendKeyData's pid is PgBouncer's, not the backend's).
//   - Session mode: New refuses it too unless Config.AllowPooler is set;
//     with it, leases work and a terminated backend is reported as a loss.

// bouncerTarget routes the transactions under test through b.
func bouncerTarget(b *pgtest.PgBouncer) txTarget {
	return txTarget{dsn: func(_, db string) string { return b.DSN(db) + " default_query_exec_mode=exec" }}
}

func TestPgBouncerTransactionModeTxHelpers(t *testing.T) {
	t.Parallel()
	b := pgtest.Shared().NewPgBouncer(t, pgtest.PoolTransaction)
	runTxSuite(t, bouncerTarget(b))
}

// TestPgBouncerStatementCacheNeedsExecMode is the control for the exec-mode
// requirement: with one server connection, a second client using pgx's
// default statement cache collides with the first client's prepared
// statement; in exec mode both succeed.
func TestPgBouncerStatementCacheNeedsExecMode(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	db, _ := pgtest.Shared().NewDB(t)
	b, err := pgtest.Shared().StartPgBouncer(ctx, pgtest.PgBouncerOptions{PoolMode: pgtest.PoolTransaction, PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	lockOnce := func(dsn string) error {
		c := adminConn(t, dsn)
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error { return TryLockTx(ctx, tx, KeyName("cache")) })
	}
	if err := lockOnce(b.DSN(db)); err != nil {
		t.Fatalf("first client, statement cache: %v", err)
	}
	err = lockOnce(b.DSN(db))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || (pgErr.Code != "42P05" && pgErr.Code != "26000") {
		t.Fatalf("second client with pgx's statement cache through transaction pooling: %v, want 42P05 or 26000", err)
	}
	for i := 0; i < 2; i++ {
		if err := lockOnce(b.DSN(db) + " default_query_exec_mode=exec"); err != nil {
			t.Fatalf("client %d in exec mode: %v", i, err)
		}
	}
}

func TestPgBouncerTransactionModeRefusesLocker(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	b := pgtest.Shared().NewPgBouncer(t, pgtest.PoolTransaction)
	for _, allow := range []bool{false, true} {
		cfg := Config{ConnString: b.DSN(db), Logger: quietLogger(), InstanceName: "bouncer", AllowPooler: allow}
		l, err := New(testCtx(t), cfg)
		if !allow {
			if !errors.Is(err, ErrPoolerDetected) || !strings.Contains(err.Error(), "ConnString") {
				t.Fatalf("New through transaction pooling: %v, want ErrPoolerDetected naming the fix", err)
			}
			continue
		}
		// AllowPooler is documented as session-mode only: nothing can tell
		// the modes apart, so it is the caller's promise.
		if err != nil {
			t.Fatalf("New with AllowPooler: %v", err)
		}
		_ = l.Close()
	}
}

func TestPgBouncerSessionModeOptIn(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	db, direct := pgtest.Shared().NewDB(t)
	b := pgtest.Shared().NewPgBouncer(t, pgtest.PoolSession)
	_, err := New(ctx, Config{ConnString: b.DSN(db), Logger: quietLogger(), InstanceName: "bouncer"})
	if !errors.Is(err, ErrPoolerDetected) {
		t.Fatalf("New through session pooling without AllowPooler: %v, want ErrPoolerDetected", err)
	}
	allow := func(c *Config) { c.AllowPooler = true; fastLoss(c) }
	l1 := newTestLocker(t, b.DSN(db), allow)
	l2 := newTestLocker(t, b.DSN(db), allow)
	k := KeyName("session-mode")
	ls, err := l1.TryAcquire(ctx, k)
	if err != nil {
		t.Fatalf("TryAcquire through session pooling: %v", err)
	}
	if _, err := l2.TryAcquire(ctx, k); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("second Locker: %v, want ErrNotAcquired", err)
	}
	_, pid := ls.Session()
	hs := holders(t, adminConn(t, direct), k)
	if len(hs) != 1 || hs[0].PID != int(pid) {
		t.Fatalf("pg_locks holders %+v, want the lease's backend pid %d (the server's, not PgBouncer's)", hs, pid)
	}
	if err := ls.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	ls2, err := l2.Acquire(ctx, k, Wait(5*time.Second))
	if err != nil {
		t.Fatalf("second Locker after release: %v", err)
	}
	// Loss is not silent behind a session pooler either.
	_, pid = ls2.Session()
	if err := pgtest.Shared().TerminateBackend(ctx, int(pid)); err != nil {
		t.Fatal(err)
	}
	_ = mustLose(t, ls2, 10*time.Second) // it has already checked the error is ErrLeaseLost
	if got := len(holders(t, adminConn(t, direct), k)); got != 0 {
		t.Fatalf("%d holders after the backend was terminated", got)
	}
}

// readmeDriver runs the README's PgBouncer program's openIncident 1,000
// times, 8 at a time, on the program's own newPool (or, for the control,
// on a default pgxpool), and prints how many transactions failed. It is
// added to the program as a second file; run it with
// README_DRIVER_TXS=1000.
const readmeDriver = `package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"
)

func init() {
	n, _ := strconv.Atoi(os.Getenv("README_DRIVER_TXS"))
	if n == 0 {
		return
	}
	ctx := context.Background()
	if err := run(ctx); err != nil { // the program itself: the table, one incident
		fmt.Println("program:", err)
		os.Exit(3)
	}
	dsn := os.Getenv("DATABASE_URL")
	var pool *pgxpool.Pool
	var err error
	if os.Getenv("README_DRIVER_CONTROL") == "1" {
		pool, err = pgxpool.New(ctx, dsn)
	} else {
		pool, err = newPool(ctx, dsn)
	}
	if err != nil {
		fmt.Println("pool:", err)
		os.Exit(3)
	}
	defer pool.Close()
	var failed, opened atomic.Int64
	var first atomic.Value
	ids := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				ok, err := openIncident(ctx, pool, fmt.Sprintf("driver-%d", i))
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err.Error())
				} else if ok {
					opened.Add(1)
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		ids <- i
	}
	close(ids)
	wg.Wait()
	fmt.Printf("transactions %d failed %d opened %d\n", n, failed.Load(), opened.Load())
	if e := first.Load(); e != nil {
		fmt.Printf("first error: %s\n", e)
	}
	pool.Close()
	os.Exit(0)
}
`

// TestREADMEPgBouncerProgram runs the README's PgBouncer program through a
// real PgBouncer in transaction mode: with the setting it documents
// (default_query_exec_mode=exec in newPool), 1,000 transactions and no
// failure; the control, a default pgxpool, fails with 42P05 or 26000 (pgx's
// statement cache through PgBouncer 1.18).
func TestREADMEPgBouncerProgram(t *testing.T) {
	t.Parallel()
	var code string
	for _, s := range readmeSnippets(t, "README.md") {
		if strings.Contains(s.Code, "func openIncident(") && strings.Contains(s.Code, "func newPool(") {
			code = s.Code
		}
	}
	if code == "" {
		t.Fatal("README.md has no PgBouncer program (a Go block with func newPool and func openIncident)")
	}
	bins := snippetModule(t, map[string]map[string]string{"pgbouncer": {"main.go": code, "driver.go": readmeDriver}})
	b := pgtest.Shared().NewPgBouncer(t, pgtest.PoolTransaction)
	counts := regexp.MustCompile(`transactions (\d+) failed (\d+) opened (\d+)`)
	for _, control := range []bool{false, true} {
		db, _ := pgtest.Shared().NewDB(t)
		env := []string{"DATABASE_URL=" + b.DSN(db), "README_DRIVER_TXS=1000"}
		if control {
			env = append(env, "README_DRIVER_CONTROL=1")
		}
		r := runProgram(t, bins["pgbouncer"], env, "", 3*time.Minute)
		t.Logf("control=%v: exit %d\n%s%s", control, r.Code, r.Stdout, r.Stderr)
		m := counts.FindStringSubmatch(r.Stdout)
		if r.Code != 0 || m == nil {
			t.Fatalf("control=%v: the driver did not finish (exit %d)", control, r.Code)
		}
		failed, _ := strconv.Atoi(m[2])
		opened, _ := strconv.Atoi(m[3])
		if !control && (failed != 0 || opened != 1000) {
			t.Errorf("with the README's setting: %s failed and %d opened of 1000 transactions through PgBouncer (%s), want 0 and 1000",
				m[2], opened, b.PoolMode())
		}
		if control && (failed == 0 || !strings.Contains(r.Stdout, "42P05") && !strings.Contains(r.Stdout, "26000")) {
			t.Errorf("control, a default pgxpool through transaction pooling: %d of 1000 failed, want failures with 42P05 or 26000 "+
				"(if this PgBouncer tracks prepared statements, >= 1.21 with max_prepared_statements > 0, the README's claim needs a new control)", failed)
		}
	}
}
