package prometheus

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/inspect"
)

// ClusterOptions configures a [ClusterCollector]. The zero value uses the
// defaults written next to each field.
type ClusterOptions struct {
	// MinInterval is the least time between two snapshots: scrapes in
	// between are served the cached one, so the database sees at most one
	// snapshot per MinInterval however many scrapers there are. Default 15s.
	MinInterval time.Duration
	// Timeout bounds one snapshot. Default 5s.
	Timeout time.Duration
	// Inspect tunes the snapshot's classes (thresholds, schema).
	Inspect inspect.Options
	// MaxFamilies bounds the family label, as Options.MaxFamilies does.
	// Default 50.
	MaxFamilies int
	// Locker, if set, elects one exporter per cluster: the collector
	// exports only while it holds an exclusive lease on ElectionKey (tried
	// once per scrape when not held, kept while held), so that every
	// instance can register it and nothing is counted twice. Without it,
	// register the collector on one instance or a sidecar only.
	Locker *pgbaton.Locker
	// ElectionKey is the key of that lease. Default
	// KeyName("pgbaton.metrics.cluster").
	ElectionKey pgbaton.Key
	// now is the clock (tests).
	now func() time.Time
}

// ClusterCollector exports the database's view of every advisory lock, from
// package inspect's snapshots: how many keys are in each class (ok, waiting,
// idle-in-transaction, stale-holder, leaked), and per key family the leases
// held, the waiters and the oldest wait. It costs one snapshot (a handful of
// SELECTs) per MinInterval, cached between scrapes; a failed snapshot counts
// in pgbaton_cluster_scrape_errors_total and the last good one is served.
//
//	pgbaton_cluster_locks                  gauge {class}  keys per class
//	pgbaton_cluster_leases_held            gauge {family, mode}
//	pgbaton_cluster_lock_waiters           gauge {family}
//	pgbaton_cluster_oldest_wait_seconds    gauge {family} (PostgreSQL 14+)
//	pgbaton_cluster_snapshot_age_seconds   gauge          age of the data served
//	pgbaton_cluster_scrape_errors_total    counter
//	pgbaton_cluster_exporter               gauge          1 on the elected exporter
//
// Jobs' staleness is not here: pgbaton_periodic_last_success_timestamp_seconds
// of the instances, maxed over them, is the cluster's answer.
type ClusterCollector struct {
	q    inspect.Querier
	opts ClusterOptions

	mu       sync.Mutex
	snap     *inspect.Snapshot
	at       time.Time
	errors   float64
	lease    *pgbaton.Lease
	families map[string]bool

	descLocks, descHeld, descWaiters, descOldest, descAge, descErrors, descExporter *prom.Desc
}

// NewClusterCollector returns a collector reading snapshots through q (a
// *pgxpool.Pool, say; a SELECT-only role with pg_read_all_stats sees
// everything, see package inspect).
func NewClusterCollector(q inspect.Querier, opts ClusterOptions) (*ClusterCollector, error) {
	if q == nil {
		return nil, errors.Join(ErrInvalidOptions, errors.New("NewClusterCollector: nil Querier"))
	}
	if opts.MinInterval <= 0 {
		opts.MinInterval = 15 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.MaxFamilies <= 0 {
		opts.MaxFamilies = 50
	}
	if !opts.ElectionKey.Valid() {
		opts.ElectionKey = pgbaton.KeyName("pgbaton.metrics.cluster")
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	c := &ClusterCollector{q: q, opts: opts}
	c.descLocks = prom.NewDesc("pgbaton_cluster_locks", "Advisory-locked or awaited keys of the database, by class.", []string{"class"}, nil)
	c.descHeld = prom.NewDesc("pgbaton_cluster_leases_held", "Advisory locks granted in the database, by key family and mode.", []string{"family", "mode"}, nil)
	c.descWaiters = prom.NewDesc("pgbaton_cluster_lock_waiters", "Sessions waiting for an advisory lock, by key family.", []string{"family"}, nil)
	c.descOldest = prom.NewDesc("pgbaton_cluster_oldest_wait_seconds", "How long the oldest waiter of each key family has waited.", []string{"family"}, nil)
	c.descAge = prom.NewDesc("pgbaton_cluster_snapshot_age_seconds", "Age of the snapshot these figures come from.", nil, nil)
	c.descErrors = prom.NewDesc("pgbaton_cluster_scrape_errors_total", "Snapshots that failed.", nil, nil)
	c.descExporter = prom.NewDesc("pgbaton_cluster_exporter", "1 on the instance that exports the cluster's figures.", nil, nil)
	return c, nil
}

// Describe implements prometheus.Collector.
func (c *ClusterCollector) Describe(ch chan<- *prom.Desc) {
	for _, d := range []*prom.Desc{c.descLocks, c.descHeld, c.descWaiters, c.descOldest, c.descAge, c.descErrors, c.descExporter} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *ClusterCollector) Collect(ch chan<- prom.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exporter := c.elected()
	ch <- prom.MustNewConstMetric(c.descExporter, prom.GaugeValue, b2f(exporter))
	ch <- prom.MustNewConstMetric(c.descErrors, prom.CounterValue, c.errors)
	if !exporter {
		return
	}
	now := c.opts.now()
	if c.snap == nil || now.Sub(c.at) >= c.opts.MinInterval {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
		s, err := inspect.Take(ctx, c.q, c.opts.Inspect)
		cancel()
		if err != nil {
			c.errors++
		} else {
			c.snap, c.at = s, now
		}
	}
	if c.snap == nil {
		return
	}
	ch <- prom.MustNewConstMetric(c.descAge, prom.GaugeValue, now.Sub(c.at).Seconds())
	for _, class := range []inspect.Class{inspect.ClassOK, inspect.ClassWaiting, inspect.ClassIdleInTransaction, inspect.ClassStaleHolder, inspect.ClassLeaked} {
		ch <- prom.MustNewConstMetric(c.descLocks, prom.GaugeValue, float64(c.snap.Summary[class]), string(class))
	}
	type famStats struct {
		held    [2]float64 // exclusive, shared
		waiters float64
		oldest  float64
	}
	stats := map[string]*famStats{}
	if c.families == nil {
		c.families = map[string]bool{}
	}
	for i := range c.snap.Keys {
		k := &c.snap.Keys[i]
		f := c.family(k)
		st := stats[f]
		if st == nil {
			st = &famStats{}
			stats[f] = st
		}
		for _, h := range k.Holders {
			if h.Mode == "shared" {
				st.held[1]++
			} else {
				st.held[0]++
			}
		}
		for _, w := range k.Waiters {
			st.waiters++
			if w.WaitingFor != nil && float64(*w.WaitingFor) > st.oldest {
				st.oldest = float64(*w.WaitingFor)
			}
		}
	}
	// Families seen once stay exported (at zero), so rates and alerts see
	// a drop to zero rather than a vanishing series.
	for f := range c.families {
		if stats[f] == nil {
			stats[f] = &famStats{}
		}
	}
	for f, st := range stats {
		ch <- prom.MustNewConstMetric(c.descHeld, prom.GaugeValue, st.held[0], f, "exclusive")
		ch <- prom.MustNewConstMetric(c.descHeld, prom.GaugeValue, st.held[1], f, "shared")
		ch <- prom.MustNewConstMetric(c.descWaiters, prom.GaugeValue, st.waiters, f)
		ch <- prom.MustNewConstMetric(c.descOldest, prom.GaugeValue, st.oldest, f)
	}
}

// family is the bounded family label of a key of the snapshot.
func (c *ClusterCollector) family(k *inspect.KeyState) string {
	f := k.Form // "int8" or "pair" for a key with no known name
	if k.Name != "" {
		f = k.Name
		if i := strings.IndexByte(f, ':'); i >= 0 {
			f = f[:i]
		}
	}
	f = label(f)
	if !c.families[f] {
		if len(c.families) >= c.opts.MaxFamilies {
			return Other
		}
		c.families[f] = true
	}
	return f
}

// elected reports whether this collector exports: always without a Locker;
// with one, while it holds the election lease. c.mu is held.
func (c *ClusterCollector) elected() bool {
	if c.opts.Locker == nil {
		return true
	}
	if c.lease != nil && c.lease.Err() == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	ls, err := c.opts.Locker.TryAcquire(ctx, c.opts.ElectionKey)
	if err != nil {
		c.lease = nil
		return false
	}
	c.lease = ls
	return true
}

// Close releases the election lease, if held, so another instance exports
// from its next scrape.
func (c *ClusterCollector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lease == nil {
		return nil
	}
	err := c.lease.Release()
	c.lease = nil
	return err
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
