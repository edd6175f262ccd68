package prometheus_test

import (
	"context"
	"fmt"
	"sort"
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
	lockers := [2]*pgbaton.Locker{
		openLocker(b, dsn),
		openLocker(b, dsn, func(c *pgbaton.Config) { c.Observer = m.Observe }),
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
	const block = 20
	var took [2]time.Duration
	var ratios []float64 // per round: plain time / observed time
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(block, b.N-done)
		var d [2]time.Duration
		for j := range lockers {
			i := (round + j) % 2
			var err error
			if d[i], err = op(i, n); err != nil {
				b.Fatal(err)
			}
			took[i] += d[i]
		}
		ratios = append(ratios, d[0].Seconds()/d[1].Seconds())
		done += n
	}
	b.StopTimer()
	sort.Float64s(ratios)
	rate := func(i int) float64 { return float64(b.N) / took[i].Seconds() }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate(0), "plain-ops/s")
	b.ReportMetric(rate(1), "observed-ops/s")
	// The median of the rounds' ratios resists a burst of load on the
	// machine better than the ratio of the totals.
	b.ReportMetric(ratios[len(ratios)/2], "observed-vs-plain")
	b.ReportMetric(rate(1)/rate(0), "observed-vs-plain-total")
}

// BenchmarkObserve: the CPU cost of one acquire event and one release
// event in Metrics.Observe alone (a family already seen), what the
// observer adds to a TryAcquire+Release; serial, then from every core.
func BenchmarkObserve(b *testing.B) {
	m, err := pgbatonprom.New(pgbatonprom.Options{})
	if err != nil {
		b.Fatal(err)
	}
	acq := pgbaton.Event{Kind: pgbaton.EventAcquire, Key: pgbaton.KeyName("orders:42"), Outcome: pgbaton.OutcomeAcquired, Wait: 150 * time.Microsecond}
	rel := pgbaton.Event{Kind: pgbaton.EventRelease, Key: acq.Key, Held: 3 * time.Millisecond}
	m.Observe(acq)
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Observe(acq)
			m.Observe(rel)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Observe(acq)
				m.Observe(rel)
			}
		})
	})
}
