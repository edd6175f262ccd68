package pgbaton

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

type nameRow struct {
	Form, Name, Instance string
	ID                   int64
}

func readNames(t testing.TB, c *pgx.Conn) []nameRow {
	t.Helper()
	rows, err := c.Query(testCtx(t), "SELECT form, name, instance, key_id FROM pgbaton.key_names ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (nameRow, error) {
		var n nameRow
		err := r.Scan(&n.Form, &n.Name, &n.Instance, &n.ID)
		return n, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// A Locker records the names it locks (leases, WithXactLock) and those of
// the process's transaction helpers, in one write, off the lock path; Close
// writes what is still pending.
func TestNamesRecorded(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	if err := Migrate(ctx, admin, ""); err != nil {
		t.Fatal(err)
	}
	l := newTestLocker(t, dsn, func(c *Config) { c.InstanceName = "names-1" })
	ls, err := l.TryAcquire(ctx, KeyName("names.lease"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.WithXactLock(ctx, KeyName("names.xact"), func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	pair := KeyPair(-3, 9).Named("names.pair")
	ls, err = l.TryAcquire(ctx, pair)
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	raw, err := l.TryAcquire(ctx, KeyInt64(77)) // no name: nothing to record
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.Release()
	txName := fmt.Sprintf("names.tx:%s", t.Name())
	if err := pgx.BeginFunc(ctx, admin, func(tx pgx.Tx) error { return TryLockTx(ctx, tx, KeyName(txName)) }); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	got := map[string]nameRow{}
	for _, r := range readNames(t, admin) {
		got[r.Name] = r
	}
	for name, want := range map[string]nameRow{
		"names.lease": {Form: "int8", ID: KeyName("names.lease").ID(), Instance: "names-1"},
		"names.xact":  {Form: "int8", ID: KeyName("names.xact").ID(), Instance: "names-1"},
		"names.pair":  {Form: "pair", ID: pair.ID(), Instance: "names-1"},
	} {
		g, ok := got[name]
		if !ok || g.Form != want.Form || g.ID != want.ID || g.Instance != want.Instance {
			t.Errorf("%s: row %+v (present %v), want %+v", name, g, ok, want)
		}
	}
	// The transaction helpers' names go to whichever Locker writes first:
	// parallel tests share the process, so only its presence somewhere is
	// certain; here it is this database unless another Locker took it.
	if _, ok := got[txName]; !ok {
		t.Logf("%s was written by another test's Locker", txName)
	}
	if len(got) > 4 {
		names := make([]string, 0, len(got))
		for n := range got {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Logf("names: %v", names)
	}
}

// The periodic writer runs while the Locker is open, within
// NameFlushInterval of a first use.
func TestNamesWrittenWhileOpen(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	admin := adminConn(t, dsn)
	ctx := testCtx(t)
	if err := Migrate(ctx, admin, ""); err != nil {
		t.Fatal(err)
	}
	l := newTestLocker(t, dsn)
	ls, err := l.TryAcquire(ctx, KeyName("names.open"))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Release()
	waitFor(t, 20*time.Second, "the name to be written", func() bool {
		for _, r := range readNames(t, admin) {
			if r.Name == "names.open" {
				return true
			}
		}
		return false
	})
}

// Without the table (no Migrate), the registry costs nothing visible: locks
// work and Close returns at once.
func TestNamesWithoutMigration(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	l := newTestLocker(t, dsn)
	ctx := testCtx(t)
	ls, err := l.TryAcquire(ctx, KeyName("names.nomigrate"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %s", d)
	}
}

// Each name is queued at most once per epoch; memory is bounded.
func TestNameSetBounds(t *testing.T) {
	t.Parallel()
	var s nameSet
	k := KeyName("a")
	if !s.note(k) || s.note(k) || s.note(KeyInt64(1)) {
		t.Fatal("a name must be queued exactly once per epoch, a raw key never")
	}
	if got := s.take(); len(got) != 1 || got[0] != k {
		t.Fatalf("take: %v", got)
	}
	if s.note(k) {
		t.Fatal("queued again within the epoch")
	}
	s.epoch.Add(1)
	if !s.note(k) {
		t.Fatal("not queued again in a new epoch")
	}
	s.take()
	for i := range maxPendingNames + 10 {
		s.note(KeyName(fmt.Sprint("n", i)))
	}
	if p := len(s.take()); p != maxPendingNames || s.dropped != 10 {
		t.Fatalf("pending %d dropped %d, want %d and 10", p, s.dropped, maxPendingNames)
	}
	s.forget([]Key{k})
	if !s.note(k) {
		t.Fatal("a forgotten name is not queued again")
	}
}

// TryAcquire+Release with a named key costs the same two round trips with
// the registry on.
func TestNamesNoExtraRoundTrip(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	var o benchIO
	l := benchLocker(t, dsn, &o, func(c *Config) {
		c.HeartbeatInterval = time.Minute
		c.LeaseTimeout = 2 * time.Minute
		c.XactIdleTimeout = 5 * time.Minute
		c.KeepaliveIdle = 3 * time.Minute
		c.TCPUserTimeout = 4 * time.Minute
	})
	ctx := context.Background()
	op := func(i int) {
		ls, err := l.TryAcquire(ctx, KeyName(fmt.Sprint("rt:", i%7)))
		if err != nil {
			t.Fatal(err)
		}
		if err := ls.Release(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		op(i)
	}
	before := o.writes.Load()
	const n = 50
	for i := range n {
		op(i)
	}
	if got := o.writes.Load() - before; got != 2*n {
		t.Errorf("%d round trips for %d named try+release, want %d", got, n, 2*n)
	}
}

// BenchmarkNameRegistry: TryAcquire+Release on one Locker with the registry
// off, on with a known name, and on with a new name every operation, in
// alternating blocks of one run.
func BenchmarkNameRegistry(b *testing.B) {
	dsn := pgtest.Shared().NewDatabase(b)
	ctx := context.Background()
	if err := Migrate(ctx, adminConn(b, dsn), ""); err != nil {
		b.Fatal(err)
	}
	l := newTestLocker(b, dsn)
	modes := []string{"off", "same-name", "new-name"}
	seq := 0
	op := func(mode string) error {
		namesDisabled.Store(mode == "off")
		k := KeyName("bench.registry")
		if mode == "new-name" {
			seq++
			k = KeyName(fmt.Sprint("bench.registry:", seq))
		}
		ls, err := l.TryAcquire(ctx, k)
		if err != nil {
			return err
		}
		return ls.Release()
	}
	defer namesDisabled.Store(false)
	for _, m := range modes {
		for range 200 {
			if err := op(m); err != nil {
				b.Fatal(err)
			}
		}
	}
	const block = 200
	took := make([]time.Duration, len(modes))
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(block, b.N-done)
		for j := range modes {
			m := (round + j) % len(modes)
			start := time.Now()
			for range n {
				if err := op(modes[m]); err != nil {
					b.Fatal(err)
				}
			}
			took[m] += time.Since(start)
		}
		done += n
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	for i, m := range modes {
		b.ReportMetric(float64(b.N)/took[i].Seconds(), m+"-ops/s")
	}
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "same-vs-off")
	b.ReportMetric(took[0].Seconds()/took[2].Seconds(), "new-vs-off")
}

// BenchmarkNoteName is the registry's whole cost on the lock path for a name
// already noted in this epoch.
func BenchmarkNoteName(b *testing.B) {
	var s nameSet
	k := KeyName("bench.note")
	s.note(k)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.note(k)
		}
	})
}
