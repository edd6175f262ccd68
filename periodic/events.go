package periodic

import (
	"context"
	"time"
)

// EventKind names what happened.
type EventKind string

const (
	// EventBusy: this instance found the job's lock held when a tick came
	// due (another instance is running the tick, or a run overlaps).
	EventBusy EventKind = "lock_busy"
	// EventClaimedElsewhere: this instance took the lock, but the tick had
	// already been claimed by another instance.
	EventClaimedElsewhere EventKind = "tick_already_claimed"
	// EventStarted: a run started here. Lateness is its start minus its
	// firing time.
	EventStarted EventKind = "run_started"
	// EventSucceeded: a run ended without error.
	EventSucceeded EventKind = "run_succeeded"
	// EventFailed: a run returned an error, panicked, timed out, lost its
	// lease, or could not commit.
	EventFailed EventKind = "run_failed"
	// EventSkipped: Ticks ticks came due while a run went on and were
	// recorded as skipped (OverlapForbid).
	EventSkipped EventKind = "ticks_skipped"
	// EventMissed: Ticks ticks were not started within their deadline and
	// were recorded as missed.
	EventMissed EventKind = "ticks_missed"
	// EventAbandoned: a running run whose instance stopped before it
	// finished was found (Instance is the one that stopped) and recorded as
	// abandoned.
	EventAbandoned EventKind = "run_abandoned"
	// EventError: a database operation of the scheduler failed; the job
	// goes on at its next tick.
	EventError EventKind = "error"
)

// Event is what Config.OnEvent receives: enough for a metrics adapter to
// count claims, runs, durations, lateness, skips and misses per job.
type Event struct {
	Kind     EventKind
	Job      string
	Tick     time.Time     // the run's tick, or the first tick of a range
	Through  time.Time     // the last tick of a skipped or missed range
	Ticks    int64         // number of ticks (ranges); 1 otherwise
	RunKind  RunKind       // started runs
	Instance string        // this instance, or the one that abandoned a run
	Duration time.Duration // finished runs
	Lateness time.Duration // started runs
	Err      error
}

// emit logs ev and passes it to the hook.
func (s *Scheduler) emit(ev Event) {
	if ev.Instance == "" {
		ev.Instance = s.cfg.Instance
	}
	if ev.Ticks == 0 {
		ev.Ticks = 1
	}
	log := s.cfg.Logger
	ctx := context.Background()
	base := []any{"job", ev.Job, "tick", fmtTick(ev.Tick), "instance", ev.Instance}
	switch ev.Kind {
	case EventBusy:
		log.Log(ctx, s.cfg.BusyLogLevel, "periodic: lock busy", base...)
	case EventClaimedElsewhere:
		log.Log(ctx, s.cfg.BusyLogLevel, "periodic: tick already claimed", base...)
	case EventStarted:
		log.Info("periodic: run started", append(base, "kind", string(ev.RunKind), "late", ev.Lateness)...)
	case EventSucceeded:
		log.Info("periodic: run finished", append(base, "duration", ev.Duration)...)
	case EventFailed:
		log.Error("periodic: run failed", append(base, "duration", ev.Duration, "err", ev.Err)...)
	case EventSkipped:
		log.Warn("periodic: ticks skipped", append(base, "through", fmtTick(ev.Through), "ticks", ev.Ticks, "reason", "overlap")...)
	case EventMissed:
		log.Warn("periodic: ticks missed", append(base, "through", fmtTick(ev.Through), "ticks", ev.Ticks)...)
	case EventAbandoned:
		log.Warn("periodic: run abandoned", base...)
	case EventError:
		log.Error("periodic: scheduler error", append(base, "err", ev.Err)...)
	}
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(ev)
	}
}
