package prometheus

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
)

// ErrInvalidOptions is returned by [New] for options it cannot use; the
// message names the field and the fix.
var ErrInvalidOptions = errors.New("pgbaton/prometheus: invalid options")

// Defaults of [Options].
const (
	// DefaultMaxFamilies bounds the distinct values of the family label. A
	// family in use costs about 90 series (acquire histogram by outcome for
	// one mode, held histogram, loss causes), so the default bounds the lock
	// metrics at about 4,500 series.
	DefaultMaxFamilies = 50
	// DefaultMaxJobs bounds the distinct values of the job label; a job
	// costs about 55 series.
	DefaultMaxJobs = 100
	// MaxLabelLen bounds a family or job label value in bytes; longer values
	// are cut at a UTF-8 boundary.
	MaxLabelLen = 128
	// Other is the label value that stands for every family (or job) beyond
	// the bound.
	Other = "other"
)

// Default histogram buckets, in seconds.
var (
	// DefaultAcquireBuckets: an uncontended try takes one round trip
	// (about 0.1-0.3 ms on a unix socket, see BENCHMARKS.md); waits are
	// bounded by the caller's Wait.
	DefaultAcquireBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	// DefaultHeldBuckets: leases live from milliseconds (a guarded write)
	// to hours (a singleton worker).
	DefaultHeldBuckets = []float64{.01, .1, 1, 10, 60, 300, 1800, 3600, 21600}
	// DefaultRunBuckets: periodic run durations.
	DefaultRunBuckets = []float64{.01, .1, .5, 1, 5, 10, 30, 60, 300, 900, 3600}
	// DefaultLatenessBuckets: a run's start minus its tick's firing time;
	// milliseconds normally, up to the job's start deadline (one minute at
	// most by default) for a late start.
	DefaultLatenessBuckets = []float64{.005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
)

// Options configures [New]. The zero value takes the defaults written next
// to each field.
type Options struct {
	// MaxFamilies bounds the distinct family label values; the families
	// seen after that many are counted under [Other]. Default
	// [DefaultMaxFamilies]. Families listed in Families count toward it.
	MaxFamilies int
	// Families are registered at zero by New (both modes), so that their
	// series exist before the first event.
	Families []string
	// Family maps a key to its family label. Default [KeyFamily]. The result
	// is cut to [MaxLabelLen] bytes and made valid UTF-8. It runs on every
	// event, inside the Locker's call: keep it cheap and bounded.
	Family func(pgbaton.Key) string

	// MaxJobs bounds the distinct job label values; later jobs are counted
	// under [Other]. Default [DefaultMaxJobs].
	MaxJobs int
	// Jobs are registered at zero by New. [Metrics.WatchScheduler] registers
	// a scheduler's jobs at every scrape.
	Jobs []string

	// Histogram buckets in seconds, strictly increasing. Defaults
	// DefaultAcquireBuckets, DefaultHeldBuckets, DefaultRunBuckets,
	// DefaultLatenessBuckets.
	AcquireBuckets, HeldBuckets, RunBuckets, LatenessBuckets []float64

	// ConstLabels are added to every metric, for example to tell apart two
	// Lockers of one process registered through two Metrics.
	ConstLabels prom.Labels
}

// Metrics turns pgbaton's events into Prometheus metrics. It is a
// [prom.Collector]: register it once with a registry. Make one per process
// with [New]; it is safe for concurrent use.
type Metrics struct {
	opts Options

	acquire   *prom.HistogramVec // family, mode, outcome
	held      *prom.HistogramVec // family, mode
	lost      *prom.CounterVec   // family, cause
	heldNow   *prom.Desc
	connsNow  *prom.Desc
	runs      *prom.CounterVec   // job, status
	runDur    *prom.HistogramVec // job, status
	lateness  *prom.HistogramVec // job
	lastOK    *prom.GaugeVec     // job
	notRun    *prom.CounterVec   // job, reason
	elsewhere *prom.CounterVec   // job, reason
	errs      *prom.CounterVec   // job

	families bounded[lockFamily]
	jobs     bounded[jobMetrics]

	mu         sync.Mutex
	lockers    map[*watched]struct{}
	schedulers map[*watched]struct{}
}

// Metric names; the units are in the names (Prometheus naming guide).
const (
	NameAcquireDuration   = "pgbaton_lease_acquire_duration_seconds"
	NameHeldDuration      = "pgbaton_lease_held_duration_seconds"
	NameLost              = "pgbaton_lease_lost_total"
	NameLeasesHeld        = "pgbaton_leases_held"
	NameLockConnections   = "pgbaton_lock_connections"
	NameRuns              = "pgbaton_periodic_runs_total"
	NameRunDuration       = "pgbaton_periodic_run_duration_seconds"
	NameStartLateness     = "pgbaton_periodic_start_lateness_seconds"
	NameLastSuccess       = "pgbaton_periodic_last_success_timestamp_seconds"
	NameTicksNotRun       = "pgbaton_periodic_ticks_not_run_total"
	NameTicksElsewhere    = "pgbaton_periodic_ticks_elsewhere_total"
	NamePeriodicErrors    = "pgbaton_periodic_errors_total"
	acquireHelp           = "Time from an acquisition's call (TryAcquire, Acquire, WithLock, WithXactLock) to its outcome."
	heldHelp              = "How long leases lived, observed when released or lost."
	lostHelp              = "Leases lost, by the kind of cause (pgbaton.LossCause)."
	leasesHeldHelp        = "Distinct keys held now by the watched Lockers (Locker.Stats().Held), read at scrape."
	lockConnectionsHelp   = "Open lock connections of the watched Lockers (Locker.Stats().Conns), read at scrape."
	runsHelp              = "Periodic runs that ended on this instance, by status (succeeded, failed) or found abandoned (abandoned)."
	runDurationHelp       = "Duration of periodic runs that ended on this instance, from start to the recorded finish."
	startLatenessHelp     = "How late periodic runs started on this instance: start time minus the tick's firing time."
	lastSuccessHelp       = "Unix time of the latest successful run on this instance (0: none since the process started); take the max across instances."
	ticksNotRunHelp       = "Ticks recorded as not run: skipped (a run was still going on) or missed (not started within the deadline)."
	ticksElsewhereHelp    = "Ticks this instance left to another: lock_busy (the job's lock was held) or tick_already_claimed."
	periodicErrorsHelp    = "Scheduler database operations that failed; the job goes on at its next tick."
	labelFamily, labelJob = "family", "job"
)

// New validates opts and builds the metrics, with the series of
// opts.Families and opts.Jobs registered at zero. Register the result with
// a registry ([Metrics.Register]), put [Metrics.Observe] in
// pgbaton.Config.Observer and [Metrics.ObservePeriodic] in
// periodic.Config.OnEvent. Errors match [ErrInvalidOptions].
func New(opts Options) (*Metrics, error) {
	if opts.MaxFamilies == 0 {
		opts.MaxFamilies = DefaultMaxFamilies
	}
	if opts.MaxJobs == 0 {
		opts.MaxJobs = DefaultMaxJobs
	}
	if opts.MaxFamilies < 0 || opts.MaxJobs < 0 {
		return nil, fmt.Errorf("%w: MaxFamilies %d, MaxJobs %d; use a positive bound or 0 for the default", ErrInvalidOptions, opts.MaxFamilies, opts.MaxJobs)
	}
	if opts.Family == nil {
		opts.Family = KeyFamily
	}
	for _, b := range []struct {
		name string
		v    *[]float64
		def  []float64
	}{
		{"AcquireBuckets", &opts.AcquireBuckets, DefaultAcquireBuckets},
		{"HeldBuckets", &opts.HeldBuckets, DefaultHeldBuckets},
		{"RunBuckets", &opts.RunBuckets, DefaultRunBuckets},
		{"LatenessBuckets", &opts.LatenessBuckets, DefaultLatenessBuckets},
	} {
		if len(*b.v) == 0 {
			*b.v = b.def
			continue
		}
		if !sort.SliceIsSorted(*b.v, func(i, j int) bool { return (*b.v)[i] < (*b.v)[j] }) || hasDup(*b.v) {
			return nil, fmt.Errorf("%w: %s %v; bucket bounds must be strictly increasing", ErrInvalidOptions, b.name, *b.v)
		}
	}
	for name, v := range opts.ConstLabels {
		if !utf8.ValidString(v) || !validLabelName(name) {
			return nil, fmt.Errorf("%w: ConstLabels %q=%q; names are [a-zA-Z_][a-zA-Z0-9_]*, values valid UTF-8", ErrInvalidOptions, name, v)
		}
		switch name {
		case labelFamily, labelJob, "mode", "outcome", "cause", "status", "reason":
			return nil, fmt.Errorf("%w: ConstLabels %q is a label of the metrics themselves; pick another name", ErrInvalidOptions, name)
		}
	}
	cl := opts.ConstLabels
	hist := func(name, help string, buckets []float64, labels ...string) *prom.HistogramVec {
		return prom.NewHistogramVec(prom.HistogramOpts{Name: name, Help: help, Buckets: buckets, ConstLabels: cl}, labels)
	}
	counter := func(name, help string, labels ...string) *prom.CounterVec {
		return prom.NewCounterVec(prom.CounterOpts{Name: name, Help: help, ConstLabels: cl}, labels)
	}
	m := &Metrics{
		opts:       opts,
		acquire:    hist(NameAcquireDuration, acquireHelp, opts.AcquireBuckets, labelFamily, "mode", "outcome"),
		held:       hist(NameHeldDuration, heldHelp, opts.HeldBuckets, labelFamily, "mode"),
		lost:       counter(NameLost, lostHelp, labelFamily, "cause"),
		heldNow:    prom.NewDesc(NameLeasesHeld, leasesHeldHelp, nil, cl),
		connsNow:   prom.NewDesc(NameLockConnections, lockConnectionsHelp, nil, cl),
		runs:       counter(NameRuns, runsHelp, labelJob, "status"),
		runDur:     hist(NameRunDuration, runDurationHelp, opts.RunBuckets, labelJob, "status"),
		lateness:   hist(NameStartLateness, startLatenessHelp, opts.LatenessBuckets, labelJob),
		lastOK:     prom.NewGaugeVec(prom.GaugeOpts{Name: NameLastSuccess, Help: lastSuccessHelp, ConstLabels: cl}, []string{labelJob}),
		notRun:     counter(NameTicksNotRun, ticksNotRunHelp, labelJob, "reason"),
		elsewhere:  counter(NameTicksElsewhere, ticksElsewhereHelp, labelJob, "reason"),
		errs:       counter(NamePeriodicErrors, periodicErrorsHelp, labelJob),
		lockers:    map[*watched]struct{}{},
		schedulers: map[*watched]struct{}{},
	}
	m.families = bounded[lockFamily]{max: opts.MaxFamilies, make: m.newFamily}
	m.jobs = bounded[jobMetrics]{max: opts.MaxJobs, make: m.newJob}
	for _, f := range opts.Families {
		fam := m.families.get(f)
		fam.mode(0)
		fam.mode(1)
	}
	for _, j := range opts.Jobs {
		m.jobs.get(j)
	}
	return m, nil
}

func hasDup(v []float64) bool {
	for i := 1; i < len(v); i++ {
		if v[i] == v[i-1] {
			return true
		}
	}
	return false
}

func validLabelName(s string) bool {
	if s == "" || strings.HasPrefix(s, "__") {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && r >= '0' && r <= '9':
		default:
			return false
		}
	}
	return true
}

// Register registers m with reg (prometheus.DefaultRegisterer, or a
// registry of your own). It fails if m, or metrics of the same names, are
// registered there already.
func (m *Metrics) Register(reg prom.Registerer) error { return reg.Register(m) }

// Describe implements [prom.Collector].
func (m *Metrics) Describe(ch chan<- *prom.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
	ch <- m.heldNow
	ch <- m.connsNow
}

// Collect implements [prom.Collector]. It reads the watched Lockers' Stats
// (no database round trip) and registers the watched schedulers' jobs at
// zero.
func (m *Metrics) Collect(ch chan<- prom.Metric) {
	m.mu.Lock()
	lockers := make([]*watched, 0, len(m.lockers))
	for w := range m.lockers {
		lockers = append(lockers, w)
	}
	var jobs []string
	for w := range m.schedulers {
		jobs = append(jobs, w.jobs()...)
	}
	m.mu.Unlock()
	for _, j := range jobs {
		m.jobs.get(j)
	}
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
	if len(lockers) > 0 {
		var held, conns int
		for _, w := range lockers {
			h, c := w.stats()
			held += h
			conns += c
		}
		ch <- prom.MustNewConstMetric(m.heldNow, prom.GaugeValue, float64(held))
		ch <- prom.MustNewConstMetric(m.connsNow, prom.GaugeValue, float64(conns))
	}
}

func (m *Metrics) collectors() []prom.Collector {
	return []prom.Collector{m.acquire, m.held, m.lost, m.runs, m.runDur, m.lateness, m.lastOK, m.notRun, m.elsewhere, m.errs}
}

// watched is a Locker or a Scheduler read at scrape.
type watched struct {
	stats func() (held, conns int)
	jobs  func() []string
}

func (m *Metrics) watch(set map[*watched]struct{}, w *watched) (unwatch func()) {
	m.mu.Lock()
	set[w] = struct{}{}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(set, w)
		m.mu.Unlock()
	}
}

// label makes s a bounded, valid label value; an empty value (a key named
// ":x") would read as no label at all, so it becomes "none".
func label(s string) string {
	if s == "" {
		return "none"
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) > MaxLabelLen {
		cut := MaxLabelLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// bounded maps label values to their metrics, creating at most max of
// them; later values share the metrics of [Other]. The fast path is one
// atomic load and a map lookup, without allocation. Values beyond the bound
// are remembered too (pointing to Other), up to overflowFactor*max of them,
// so that a steady set of extra families stays on the fast path; past that
// they take a mutex each time, and memory stays bounded whatever callers
// send.
type bounded[T any] struct {
	max   int
	make  func(label string) *T
	known atomic.Pointer[map[string]*T] // copied on write
	mu    sync.Mutex
	n     int // distinct values with series of their own
	other *T
}

const overflowFactor = 4

func (b *bounded[T]) get(value string) *T {
	if m := b.known.Load(); m != nil {
		if t, ok := (*m)[value]; ok {
			return t
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.known.Load()
	size := 0
	if old != nil {
		if t, ok := (*old)[value]; ok {
			return t
		}
		size = len(*old)
	}
	var t *T
	if b.n < b.max {
		t = b.make(label(value))
		b.n++
	} else {
		if b.other == nil {
			b.other = b.make(Other)
		}
		t = b.other
		if size >= (overflowFactor+1)*b.max {
			return t
		}
	}
	next := make(map[string]*T, size+1)
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	next[value] = t
	b.known.Store(&next)
	return t
}
