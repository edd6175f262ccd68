package inspect_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/inspect"
)

func take(t testing.TB, q inspect.Querier, o inspect.Options) *inspect.Snapshot {
	t.Helper()
	s, err := inspect.Take(testCtx(t), q, o)
	if err != nil {
		t.Fatalf("Take: %v", err)
	}
	if s.Version != inspect.Version {
		t.Fatalf("version %d", s.Version)
	}
	return s
}

func findKey(t testing.TB, s *inspect.Snapshot, form string, id int64) *inspect.KeyState {
	t.Helper()
	for i := range s.Keys {
		if s.Keys[i].Form == form && s.Keys[i].ID == id {
			return &s.Keys[i]
		}
	}
	t.Fatalf("key %s:%d not in snapshot: %+v", form, id, s.Keys)
	return nil
}

// The two key spaces, read back from pg_locks: objsubid 1 is one int8 key
// (classid high, objid low), 2 is the (int4, int4) pair. Checked against keys
// whose halves have the sign bit set, where a wrong cast would show.
func TestKeyForms(t *testing.T) {
	t.Parallel()
	_, dsn, admin := newDB(t)
	c := connect(t, dsn, "forms")
	ctx := testCtx(t)
	const big = int64(-0x0123456789abcdef)
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1::int8), pg_advisory_lock(-7::int4, -2000000000::int4), pg_advisory_lock(7::int8)`, big); err != nil {
		t.Fatal(err)
	}
	var sub1, sub2 int
	if err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE objsubid = 1), count(*) FILTER (WHERE objsubid = 2) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&sub1, &sub2); err != nil {
		t.Fatal(err)
	}
	if sub1 != 2 || sub2 != 1 {
		t.Fatalf("objsubid 1: %d rows, 2: %d rows; want 2 and 1", sub1, sub2)
	}
	s := take(t, admin, inspect.Options{})
	if len(s.Keys) != 3 {
		t.Fatalf("%d keys, want 3: %+v", len(s.Keys), s.Keys)
	}
	k := findKey(t, s, inspect.FormInt8, big)
	if k.Key != pgbaton.KeyInt64(big).String() || k.Pair != nil {
		t.Errorf("int8 key read as %q %v", k.Key, k.Pair)
	}
	pk := pgbaton.KeyPair(-7, -2000000000)
	p := findKey(t, s, inspect.FormPair, pk.ID())
	if p.Pair == nil || p.Pair[0] != -7 || p.Pair[1] != -2000000000 || p.Key != "pair:-7,-2000000000" {
		t.Errorf("pair key read as %q %v", p.Key, p.Pair)
	}
	findKey(t, s, inspect.FormInt8, 7)
	// A pair and an int8 key with the same bits are different locks.
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1::int8)`, pk.ID()); err != nil {
		t.Fatal(err)
	}
	s = take(t, admin, inspect.Options{})
	findKey(t, s, inspect.FormInt8, pk.ID())
	findKey(t, s, inspect.FormPair, pk.ID())
	for _, k := range s.Keys {
		if h := k.Holders[0]; h.PID != int(c.PgConn().PID()) || h.Mode != "exclusive" || h.Scope != inspect.ScopeSession {
			t.Errorf("%s: holder %+v", k.Key, h)
		}
	}
}

// The first incident: a session lock taken through a pgxpool and "released"
// through the pool on another connection. The lock stays on an idle pooled
// backend; the snapshot shows it leaked, by name, with the pid and the
// statement that would free it.
func TestIncidentLeakedThroughPool(t *testing.T) {
	t.Parallel()
	_, dsn, admin := newDB(t)
	ctx := testCtx(t)
	pool, err := pgxpool.New(ctx, dsn+" application_name=billing-api pool_max_conns=2")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	name := "incident.dedupe-open-for-system:42"
	key := pgbaton.KeyName(name)
	a, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "SELECT pg_advisory_lock($1)", key.ID()); err != nil {
		t.Fatal(err)
	}
	var unlocked bool
	if err := b.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", key.ID()).Scan(&unlocked); err != nil {
		t.Fatal(err)
	}
	if unlocked {
		t.Fatal("unlock on another backend returned true")
	}
	leakPID := int(a.Conn().PgConn().PID())
	a.Release()
	b.Release()

	// Not yet leaked under the default threshold (5m): idle for a moment only.
	s := take(t, admin, inspect.Options{Names: []string{name}})
	k := findKey(t, s, inspect.FormInt8, key.ID())
	if k.Class != inspect.ClassOK {
		t.Fatalf("class %s before the threshold, want ok: %+v", k.Class, k.Holders)
	}
	s = take(t, admin, inspect.Options{Names: []string{name}, StuckAfter: time.Nanosecond})
	k = findKey(t, s, inspect.FormInt8, key.ID())
	if k.Name != name || k.NameSource != inspect.SourceFlag {
		t.Errorf("name %q from %q, want %q from flag", k.Name, k.NameSource, name)
	}
	if k.Class != inspect.ClassLeaked || len(k.Holders) != 1 {
		t.Fatalf("class %s, holders %+v; want leaked", k.Class, k.Holders)
	}
	h := k.Holders[0]
	if h.PID != leakPID || h.State != "idle" || h.Scope != inspect.ScopeSession || h.ApplicationName != "billing-api" ||
		!strings.HasPrefix(h.ClientAddr, "127.0.0.1:") || h.HeldSince != nil || h.Instance != "" {
		t.Errorf("holder %+v", h)
	}
	if want := "SELECT pg_terminate_backend(" + strconv.Itoa(leakPID) + ");"; h.Terminate != want {
		t.Errorf("terminate %q, want %q", h.Terminate, want)
	}
	lv, fs := s.Check()
	if lv != inspect.CheckCritical || len(fs) != 1 || fs[0].Terminate != h.Terminate {
		t.Errorf("check %d %+v", lv, fs)
	}
	// Nothing was terminated: the lock is still there.
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", leakPID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("lock rows of the leaking pid: %d, %v", n, err)
	}
}

// The second incident: locks and the work they guard share one small pool.
// Every pool connection holds an xact lock and sits idle in its transaction
// waiting for a work connection the pool no longer has; one more request
// waits in the server for a held key.
func TestIncidentIdleInTransactionPool(t *testing.T) {
	t.Parallel()
	_, dsn, admin := newDB(t)
	ctx := testCtx(t)
	pool, err := pgxpool.New(ctx, dsn+" application_name=audit-worker pool_max_conns=3")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	keyA, keyB := pgbaton.KeyName("audit.integrity:1"), pgbaton.KeyName("audit.integrity:2")
	var txs []pgx.Tx
	for _, k := range []pgbaton.Key{keyA, keyB} {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(context.Background()) }()
		if err := pgbaton.LockTx(ctx, tx, k); err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	// The third pool connection queues for key A in the server.
	waitCtx, cancelWait := context.WithCancel(ctx)
	var wg sync.WaitGroup
	third, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancelWait(); wg.Wait(); third.Release() }()
	thirdPID := third.Conn().PgConn().PID()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = pgx.BeginFunc(waitCtx, third.Conn(), func(tx pgx.Tx) error { return pgbaton.LockTx(waitCtx, tx, keyA) })
	}()
	waitFor(t, "the third connection to queue", func() bool { return waiting(t, admin, thirdPID) })
	// The holders now want a work connection: the pool has none.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := pool.Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pool.Acquire with every connection busy: %v", err)
	}
	cancel()

	s := take(t, admin, inspect.Options{Names: []string{keyA.Name(), keyB.Name()}, IdleInTransactionAfter: time.Nanosecond})
	a, b := findKey(t, s, inspect.FormInt8, keyA.ID()), findKey(t, s, inspect.FormInt8, keyB.ID())
	for _, k := range []*inspect.KeyState{a, b} {
		if k.Class != inspect.ClassIdleInTransaction || len(k.Holders) != 1 {
			t.Fatalf("%s: class %s holders %+v", k.Label(), k.Class, k.Holders)
		}
		if h := k.Holders[0]; h.State != "idle in transaction" || h.Scope != inspect.ScopeUnknown || h.XactStart == nil || h.HeldSince != nil {
			t.Errorf("%s: holder %+v", k.Label(), h)
		}
	}
	if a.Name != keyA.Name() || len(a.Waiters) != 1 {
		t.Fatalf("key A %q waiters %+v", a.Name, a.Waiters)
	}
	w := a.Waiters[0]
	if w.PID != int(thirdPID) || w.State != "active" || len(w.BlockedBy) != 1 || w.BlockedBy[0] != a.Holders[0].PID || w.WaitStart == nil || w.Class != inspect.ClassWaiting {
		t.Errorf("waiter %+v", w)
	}
	if len(s.Hints) != 1 || !strings.Contains(s.Hints[0], `2 lock holders idle in transaction from application "audit-worker"`) {
		t.Errorf("hints %q", s.Hints)
	}
	if lv, _ := s.Check(); lv != inspect.CheckWarning {
		t.Errorf("check level %d, want warning", lv)
	}
	_ = txs
}

// pgbaton's own holders: a heartbeating lease is ok, WithXactLock's lock is
// transaction-scoped, and a lock connection that went silent (what the
// server sees of a frozen process) is a stale holder.
func TestPgbatonHolders(t *testing.T) {
	t.Parallel()
	_, dsn, admin := newDB(t)
	ctx := testCtx(t)
	l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: "api-1", Logger: quiet(), MaxConns: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lease, err := l.TryAcquire(ctx, pgbaton.KeyName("orders.sync"))
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	inXact, release := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- l.WithXactLock(ctx, pgbaton.KeyName("orders.compact"), func(context.Context) error {
			close(inXact)
			<-release
			return nil
		})
	}()
	<-inXact
	frozen := connect(t, dsn, "pgbaton:api-2:1")
	if _, err := frozen.Exec(ctx, "SELECT pg_advisory_lock($1)", pgbaton.KeyName("orders.frozen").ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the frozen connection to be silent for 50ms", func() bool {
		var ok bool
		_ = admin.QueryRow(ctx, "SELECT clock_timestamp() - state_change > interval '50ms' FROM pg_stat_activity WHERE pid = $1", int(frozen.PgConn().PID())).Scan(&ok)
		return ok
	})
	s := take(t, admin, inspect.Options{Names: []string{"orders.sync", "orders.compact", "orders.frozen"}, StaleAfter: 50 * time.Millisecond})
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	byName := map[string]inspect.KeyState{}
	for _, k := range s.Keys {
		byName[k.Name] = k
	}
	ok := byName["orders.sync"]
	if len(ok.Holders) != 1 || ok.Holders[0].Instance != "api-1" || ok.Holders[0].PgbatonConn != inspect.ConnLock || ok.Holders[0].Scope != inspect.ScopeSession {
		t.Errorf("lease holder %+v", ok.Holders)
	}
	// A healthy lease heartbeats every second; with a 50ms threshold it may
	// be seen between two heartbeats, so only its facts are checked here.
	x := byName["orders.compact"]
	if len(x.Holders) != 1 || x.Holders[0].Scope != inspect.ScopeTransaction || x.Holders[0].State != "idle in transaction" {
		t.Errorf("WithXactLock holder %+v", x.Holders)
	}
	st := byName["orders.frozen"]
	if st.Class != inspect.ClassStaleHolder || st.Holders[0].Instance != "api-2" || st.Holders[0].Terminate != "" {
		t.Errorf("frozen holder: class %s %+v", st.Class, st.Holders)
	}
	// With the default threshold (5 heartbeats) the healthy lease is ok.
	s = take(t, admin, inspect.Options{Names: []string{"orders.sync"}})
	for _, k := range s.Keys {
		if k.Name == "orders.sync" && k.Class != inspect.ClassOK {
			t.Errorf("healthy lease: class %s %+v", k.Class, k.Holders)
		}
	}
}

// Waiters in queue order, each blocked by the holder; --check grades long
// and stuck waits.
func TestWaitersQueueOrder(t *testing.T) {
	t.Parallel()
	_, dsn, admin := newDB(t)
	ctx := testCtx(t)
	holder := connect(t, dsn, "holder")
	key := int64(4242)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var pids []uint32
	for i, mode := range []string{"pg_advisory_lock_shared", "pg_advisory_lock"} {
		w := connect(t, dsn, "waiter")
		pids = append(pids, w.PgConn().PID())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := w.Exec(ctx, "SELECT "+mode+"($1)", key); err == nil {
				_, _ = w.Exec(ctx, "SELECT pg_advisory_unlock_all()")
			}
		}()
		waitFor(t, "waiter to queue", func() bool { return waiting(t, admin, pids[i]) })
	}
	s := take(t, admin, inspect.Options{})
	k := findKey(t, s, inspect.FormInt8, key)
	if k.Class != inspect.ClassWaiting || len(k.Waiters) != 2 {
		t.Fatalf("class %s waiters %+v", k.Class, k.Waiters)
	}
	for i, w := range k.Waiters {
		if w.PID != int(pids[i]) || w.WaitStart == nil {
			t.Errorf("waiter %d: %+v, want pid %d", i, w, pids[i])
		}
	}
	if k.Waiters[0].Mode != "shared" || k.Waiters[1].Mode != "exclusive" {
		t.Errorf("modes %s %s", k.Waiters[0].Mode, k.Waiters[1].Mode)
	}
	if b := k.Waiters[1].BlockedBy; len(b) < 1 || b[0] != int(holder.PgConn().PID()) {
		t.Errorf("second waiter blocked by %v", b)
	}
	if lv, _ := s.Check(); lv != inspect.CheckOK {
		t.Errorf("fresh waits: check %d", lv)
	}
	if lv, _ := take(t, admin, inspect.Options{LongWaitAfter: time.Nanosecond}).Check(); lv != inspect.CheckWarning {
		t.Errorf("long waits: check %d", lv)
	}
	if lv, fs := take(t, admin, inspect.Options{LongWaitAfter: time.Nanosecond, StuckAfter: time.Nanosecond}).Check(); lv != inspect.CheckCritical || !strings.Contains(fs[len(fs)-1].Message, "stuck: waiting") {
		t.Errorf("stuck waits: check %d %+v", lv, fs)
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock_all()"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// Names come from the registry and from periodic's tables; a running
// periodic run gives its holder a held-since, the only holder time the
// snapshot reports.
func TestNamesFromRegistryAndPeriodic(t *testing.T) {
	t.Parallel()
	_, dsn, admin := newDB(t)
	ctx := testCtx(t)
	if err := pgbaton.Migrate(ctx, admin, ""); err != nil {
		t.Fatal(err)
	}
	if err := pgbaton.WriteNames(ctx, admin, "", "api-9", "orders.registry"); err != nil {
		t.Fatal(err)
	}
	started := time.Now().Add(-time.Minute).UTC().Truncate(time.Microsecond)
	if _, err := admin.Exec(ctx, `INSERT INTO pgbaton.periodic_jobs (job, schedule) VALUES ('nightly', 'every 1h')`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `INSERT INTO pgbaton.periodic_runs (job, tick, through_tick, status, kind, instance, started_at, lock_key)
		VALUES ('nightly', now(), now(), 'running', 'scheduled', 'w-1', $1, $2)`, started, pgbaton.KeyName("periodic:nightly").ID()); err != nil {
		t.Fatal(err)
	}
	reg := connect(t, dsn, "legacy-app")
	job := connect(t, dsn, "pgbaton:w-1:1")
	if _, err := reg.Exec(ctx, "SELECT pg_advisory_lock($1)", pgbaton.KeyName("orders.registry").ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := job.Exec(ctx, "SELECT pg_advisory_lock($1)", pgbaton.KeyName("periodic:nightly").ID()); err != nil {
		t.Fatal(err)
	}
	s := take(t, admin, inspect.Options{})
	r := findKey(t, s, inspect.FormInt8, pgbaton.KeyName("orders.registry").ID())
	if r.Name != "orders.registry" || r.NameSource != inspect.SourceRegistry || r.Holders[0].HeldSince != nil {
		t.Errorf("registry key %+v", r)
	}
	p := findKey(t, s, inspect.FormInt8, pgbaton.KeyName("periodic:nightly").ID())
	if p.Name != "periodic:nightly" || p.NameSource != inspect.SourcePeriodic {
		t.Errorf("periodic key %q from %q", p.Name, p.NameSource)
	}
	h := p.Holders[0]
	if h.HeldSince == nil || !h.HeldSince.Equal(started) || h.HeldSinceSource != inspect.HeldSincePeriodicRun || h.HeldFor == nil || h.HeldFor.Duration() < time.Minute {
		t.Errorf("periodic holder held since %v (%q) for %v, want %v", h.HeldSince, h.HeldSinceSource, h.HeldFor, started)
	}
	if len(s.Notes) != 0 {
		t.Errorf("notes %q", s.Notes)
	}
}

// A role that may not use pgbaton's schema still gets every lock; only the
// names are missing.
func TestSchemaWithoutUsage(t *testing.T) {
	t.Parallel()
	name, dsn, admin := newDB(t)
	ctx := testCtx(t)
	if err := pgbaton.Migrate(ctx, admin, ""); err != nil {
		t.Fatal(err)
	}
	role := "nousage_" + strings.ReplaceAll(name, "-", "_")
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = connect(t, dsn, "cleanup").Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(42)"); err != nil {
		t.Fatal(err)
	}
	c := connect(t, dsn+" user="+role, "no-usage")
	s, err := inspect.Take(ctx, c, inspect.Options{})
	if err != nil {
		t.Fatalf("Take as a role without USAGE on the schema: %v", err)
	}
	if len(s.Keys) != 1 {
		t.Fatalf("keys = %+v, want the one lock", s.Keys)
	}
}
