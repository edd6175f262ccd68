package prometheus_test

import (
	"context"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/pgtest"
)

// BenchmarkObserverOverhead: uncontended TryAcquire+Release on real
// PostgreSQL (unix socket, one goroutine), with Metrics.Observe as the
// Locker's observer and without it, alternating in rounds of 20 operations
// inside one run so that load on the machine hits both alike. Both sides use
// the same Locker and lock connection (a second Locker's backend differs by
// up to 2x on a loaded machine, which hides a 3% effect): its Observer is a
// func that calls m.Observe or not by a flag, so "without" still pays one
// indirect call and an atomic load (about 1 ns). observed-vs-plain is the
// median over rounds of (time without / time with): 1 = free. The control
// sub-benchmark leaves the flag off on both sides: its ratio is the noise
// floor. BENCHMARKS.md quotes both.
func BenchmarkObserverOverhead(b *testing.B) {
	dsn := pgtest.Shared().NewDatabase(b)
	m, err := pgbatonprom.New(pgbatonprom.Options{})
	if err != nil {
		b.Fatal(err)
	}
	prom.NewRegistry().MustRegister(m)
	var on atomic.Bool
	l := openLocker(b, dsn, func(c *pgbaton.Config) {
		c.Observer = func(e pgbaton.Event) {
			if on.Load() {
				m.Observe(e)
			}
		}
	})
	defer m.WatchLocker(l)()
	b.Run("observer", func(b *testing.B) { benchObserverOverhead(b, l, &on, true) })
	b.Run("control", func(b *testing.B) { benchObserverOverhead(b, l, &on, false) })
}

func benchObserverOverhead(b *testing.B, l *pgbaton.Locker, on *atomic.Bool, observe bool) {
	ctx := context.Background()
	k := pgbaton.KeyName("bench:1")
	op := func(n int) (time.Duration, error) {
		start := time.Now()
		for range n {
			ls, err := l.TryAcquire(ctx, k)
			if err != nil {
				return 0, err
			}
			if err := ls.Release(); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	on.Store(observe)
	if _, err := op(50); err != nil { // warm up: dial, prepare, first family
		b.Fatal(err)
	}
	const block = 20
	var took [2]time.Duration // [0] without, [1] with
	var ratios []float64      // per round: time without / time with
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(block, b.N-done)
		var d [2]time.Duration
		for j := range 2 {
			i := (round + j) % 2
			on.Store(observe && i == 1)
			var err error
			if d[i], err = op(n); err != nil {
				b.Fatal(err)
			}
			took[i] += d[i]
		}
		ratios = append(ratios, d[0].Seconds()/d[1].Seconds())
		done += n
	}
	b.StopTimer()
	on.Store(false)
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
