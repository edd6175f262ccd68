package prometheus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/pgtest"
)

// BenchmarkObserverOverhead: uncontended TryAcquire+Release on real
// PostgreSQL (unix socket, one goroutine) by two Lockers of the same
// database, one with Config.Observer = Metrics.Observe and one without,
// alternating in blocks of 100 operations inside one run so that load on
// the machine hits both alike. observed-vs-plain is the ratio of their
// operation rates (1 = free). BENCHMARKS.md quotes it.
func BenchmarkObserverOverhead(b *testing.B) {
	dsn := pgtest.Shared().NewDatabase(b)
	m, err := pgbatonprom.New(pgbatonprom.Options{})
	if err != nil {
		b.Fatal(err)
	}
	reg := prom.NewRegistry()
	reg.MustRegister(m)
	quiet := func(c *pgbaton.Config) { c.HeartbeatInterval = time.Minute; c.LeaseTimeout = 2 * time.Minute }
	lockers := [2]*pgbaton.Locker{
		openLocker(b, dsn, quiet),
		openLocker(b, dsn, quiet, func(c *pgbaton.Config) { c.Observer = m.Observe }),
	}
	defer m.WatchLocker(lockers[1])()
	ctx := context.Background()
	op := func(i, n int) (time.Duration, error) {
		k := pgbaton.KeyName(fmt.Sprintf("bench:%d", i))
		start := time.Now()
		for range n {
			ls, err := lockers[i].TryAcquire(ctx, k)
			if err != nil {
				return 0, err
			}
			if err := ls.Release(); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	for i := range lockers { // warm up: dial, prepare
		if _, err := op(i, 50); err != nil {
			b.Fatal(err)
		}
	}
	const block = 100
	var took [2]time.Duration
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(block, b.N-done)
		for j := range lockers {
			i := (round + j) % 2
			d, err := op(i, n)
			if err != nil {
				b.Fatal(err)
			}
			took[i] += d
		}
		done += n
	}
	b.StopTimer()
	rate := func(i int) float64 { return float64(b.N) / took[i].Seconds() }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate(0), "plain-ops/s")
	b.ReportMetric(rate(1), "observed-ops/s")
	b.ReportMetric(rate(1)/rate(0), "observed-vs-plain")
	b.ReportMetric(float64(took[1]-took[0])/float64(b.N)/1e3, "extra-us/op")
}

// BenchmarkObserve: the CPU cost of one acquire event and one release
// event in Metrics.Observe alone (a family already seen), in parallel.
func BenchmarkObserve(b *testing.B) {
	m, err := pgbatonprom.New(pgbatonprom.Options{})
	if err != nil {
		b.Fatal(err)
	}
	acq := pgbaton.Event{Kind: pgbaton.EventAcquire, Key: pgbaton.KeyName("orders:42"), Outcome: pgbaton.OutcomeAcquired, Wait: 150 * time.Microsecond}
	rel := pgbaton.Event{Kind: pgbaton.EventRelease, Key: acq.Key, Held: 3 * time.Millisecond}
	m.Observe(acq)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Observe(acq)
			m.Observe(rel)
		}
	})
}
