package prometheus

import (
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton/periodic"
)

// Run statuses, tick reasons: every one registered at zero with its job.
const (
	statusSucceeded = "succeeded"
	statusFailed    = "failed"
	statusAbandoned = "abandoned"
)

// jobMetrics holds the resolved series of one job label.
type jobMetrics struct {
	succeeded, failed, abandoned prom.Counter
	durOK, durFailed             prom.Observer
	lateness                     prom.Observer
	lastOK                       prom.Gauge
	skipped, missed              prom.Counter
	busy, claimed                prom.Counter
	errs                         prom.Counter
}

func (m *Metrics) newJob(job string) *jobMetrics {
	return &jobMetrics{
		succeeded: m.runs.WithLabelValues(job, statusSucceeded),
		failed:    m.runs.WithLabelValues(job, statusFailed),
		abandoned: m.runs.WithLabelValues(job, statusAbandoned),
		durOK:     m.runDur.WithLabelValues(job, statusSucceeded),
		durFailed: m.runDur.WithLabelValues(job, statusFailed),
		lateness:  m.lateness.WithLabelValues(job),
		lastOK:    m.lastOK.WithLabelValues(job),
		skipped:   m.notRun.WithLabelValues(job, "skipped"),
		missed:    m.notRun.WithLabelValues(job, "missed"),
		busy:      m.elsewhere.WithLabelValues(job, string(periodic.EventBusy)),
		claimed:   m.elsewhere.WithLabelValues(job, string(periodic.EventClaimedElsewhere)),
		errs:      m.errs.WithLabelValues(job),
	}
}

// ObservePeriodic records one scheduler event. Put it in
// periodic.Config.OnEvent:
//
//	cfg.OnEvent = m.ObservePeriodic
//
// Runs are counted where they ended (succeeded, failed) or were found
// abandoned; skipped and missed ranges count their ticks. The last success
// time is this process's clock when the event arrives.
func (m *Metrics) ObservePeriodic(e periodic.Event) {
	j := m.jobs.get(e.Job)
	switch e.Kind {
	case periodic.EventStarted:
		j.lateness.Observe(e.Lateness.Seconds())
	case periodic.EventSucceeded:
		j.succeeded.Inc()
		j.durOK.Observe(e.Duration.Seconds())
		j.lastOK.Set(float64(time.Now().UnixNano()) / 1e9)
	case periodic.EventFailed:
		j.failed.Inc()
		j.durFailed.Observe(e.Duration.Seconds())
	case periodic.EventAbandoned:
		j.abandoned.Inc()
	case periodic.EventSkipped:
		j.skipped.Add(float64(max(e.Ticks, 1)))
	case periodic.EventMissed:
		j.missed.Add(float64(max(e.Ticks, 1)))
	case periodic.EventBusy:
		j.busy.Inc()
	case periodic.EventClaimedElsewhere:
		j.claimed.Inc()
	case periodic.EventError:
		j.errs.Inc()
	}
}

// WatchScheduler registers the series of every job s schedules (its
// [periodic.Scheduler.Jobs], the prune job included) at zero at each
// scrape, so that a job that never ran here still has its series. It costs
// no database round trip. Call the returned func to stop.
func (m *Metrics) WatchScheduler(s *periodic.Scheduler) (unwatch func()) {
	return m.watch(m.schedulers, &watched{jobs: s.Jobs})
}
