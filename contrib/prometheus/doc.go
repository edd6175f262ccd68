// Package prometheus exports pgbaton's lock and periodic-job events as
// Prometheus metrics (github.com/prometheus/client_golang). It is a module
// of its own, github.com/pgbaton/pgbaton/contrib/prometheus, so that
// programs that do not use it do not build client_golang.
//
// Its name clashes with client_golang's package; import it under another:
//
//	import pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
//
//	m, err := pgbatonprom.New(pgbatonprom.Options{})
//	prometheus.MustRegister(m)          // or m.Register(reg)
//	cfg.Observer = m.Observe            // pgbaton.Config
//	locker, err := pgbaton.New(ctx, cfg)
//	defer m.WatchLocker(locker)()       // leases held, lock connections
//	pcfg.OnEvent = m.ObservePeriodic    // periodic.Config
//	s, err := periodic.New(ctx, pcfg)
//	defer m.WatchScheduler(s)()         // every job's series from the start
//
// Observe and ObservePeriodic run synchronously inside pgbaton's calls; they
// never block and, once a family or job has been seen, do not allocate. To
// keep an observer of your own, call both from one func.
//
// # Metrics
//
// Names and units follow the Prometheus naming guide; histograms have
// explicit buckets (Options, defaults in DefaultAcquireBuckets and next to
// it).
//
//	pgbaton_lease_acquire_duration_seconds   histogram {family, mode, outcome}
//	    outcome: acquired, busy (a try found the lock held), timeout (a bounded
//	    wait expired), error; the time from the call to its outcome
//	pgbaton_lease_held_duration_seconds      histogram {family, mode}
//	    lease lifetimes, observed at release or loss
//	pgbaton_lease_lost_total                 counter   {family, cause}
//	    cause: pgbaton.LossCause (terminated, heartbeat_timeout, unlock_false,
//	    locker_closed, state_unknown, connection, other)
//	pgbaton_leases_held                      gauge     Stats().Held of the watched Lockers
//	pgbaton_lock_connections                 gauge     Stats().Conns of the watched Lockers
//	pgbaton_periodic_runs_total              counter   {job, status}
//	    status: succeeded, failed (runs that ended here), abandoned (runs of
//	    a stopped instance that this one found)
//	pgbaton_periodic_run_duration_seconds    histogram {job, status}
//	pgbaton_periodic_start_lateness_seconds  histogram {job}
//	pgbaton_periodic_last_success_timestamp_seconds gauge {job}
//	    0 until a run succeeds on this instance: alert on the max over
//	    instances, e.g. time() - max by (job) (...) > 3 * interval
//	pgbaton_periodic_ticks_not_run_total     counter   {job, reason}
//	    reason: skipped (overlap), missed (not started within the deadline)
//	pgbaton_periodic_ticks_elsewhere_total   counter   {job, reason}
//	    reason: lock_busy, tick_already_claimed (another instance had it)
//	pgbaton_periodic_errors_total            counter   {job}
//
// # Bounded labels
//
// No label carries a raw key name, an error text or an instance name.
//
//   - family is [KeyFamily] of the key (or Options.Family): a name up to its
//     first ':', "int8" or "pair" for raw keys; at most MaxLabelLen bytes of
//     valid UTF-8. At most Options.MaxFamilies values (default 50); later
//     families count under "other". Name keys "<family>:<id>" to get one
//     family per kind of lock. The leases of periodic's lease-mode jobs
//     (keys "periodic:<job>") count under "periodic"; its transaction-mode
//     locks do not go through the Locker and are not lock events.
//   - job is the job's name, at most Options.MaxJobs values (default 100).
//   - mode, outcome, cause, status and reason take the values listed above.
//
// Series are registered at zero: every outcome of a family's mode and every
// loss cause of a family as soon as the family is first seen (or at New for
// Options.Families); every status and reason of a job when it is first seen,
// at New for Options.Jobs, or at the first scrape after WatchScheduler. So
// rate() and increase() of a label value that has not happened yet are 0,
// not absent.
//
// # Counted where
//
// Every metric counts what this process saw. Cluster-wide figures are sums
// (or maxima) over instances in PromQL. The gauges read Locker.Stats at
// scrape, without a database round trip.
//
// # The cluster's view
//
// [ClusterCollector] exports the database's view of every advisory lock
// (keys per class, per family the leases held, the waiters and the oldest
// wait) from package inspect's snapshots, cached for
// ClusterOptions.MinInterval so the database sees one snapshot per interval
// however many scrapers. With ClusterOptions.Locker every instance can
// register it: the one holding the election lease exports, the others
// export only pgbaton_cluster_exporter 0, so nothing is counted twice.
//
// # OpenTelemetry
//
// No adapter of its own, because none is needed: the OpenTelemetry
// project's bridge, go.opentelemetry.io/contrib/bridges/prometheus, turns a
// Prometheus registry into a metric producer of the OpenTelemetry SDK, so an
// OTLP pipeline gets these metrics (same names, labels as attributes, the
// explicit buckets):
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(m)
//	reader := sdkmetric.NewPeriodicReader(otlpExporter,
//		sdkmetric.WithProducer(otelprom.NewMetricProducer(otelprom.WithGatherer(reg))))
//
// and an OpenTelemetry Collector's Prometheus receiver scrapes the promhttp
// handler unchanged. A native adapter would be a second module duplicating
// the label bounds, on the otel metric API, which alone requires
// go.opentelemetry.io/otel, otel/trace, otel/log, go-logr and auto/sdk
// (v1.47.0), with the SDK on top for its tests. If one is ever wanted, the
// hooks are plain funcs: one histogram Record per EventAcquire with
// attributes family=[KeyFamily](e.Key), mode=e.Mode.String(),
// outcome=string(e.Outcome); one counter Add per EventLoss with
// cause=pgbaton.LossCause(e.Err); the same bounded family map as here.
package prometheus
