package periodic

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrDefinitionDrift matches every [*DefinitionDriftError].
var ErrDefinitionDrift = errors.New("periodic: instances run different definitions of a job")

// EventDefinitionDrift: this instance's definition of the job (schedule,
// policies, timeout, mode) differs from the one another instance
// registered, as during a rolling deploy that changes it. Err is a
// [*DefinitionDriftError] with both hashes, definitions and instances. It
// is emitted when the drift is first seen, and again when the other side
// changes.
const EventDefinitionDrift EventKind = "definition_drift"

// DefinitionDriftError describes two instances running different
// definitions of one job. Ticks are claimed once whatever the definitions,
// but which ticks exist and what their policies are depends on the
// instance that claims them, until every instance runs the same one.
type DefinitionDriftError struct {
	Job string
	// This instance's definition.
	Instance, Hash, Definition string
	// The other one: the definition registered in the jobs row (by the
	// instance that added the job last), or the one another instance
	// reported running.
	OtherInstance, OtherHash, OtherDefinition string
}

func (e *DefinitionDriftError) Error() string {
	return fmt.Sprintf("periodic: job %q: instance %s runs definition %s (%s) but instance %s runs %s (%s); finish the rollout, or give every instance the same definition",
		e.Job, e.Instance, e.Hash, e.Definition, e.OtherInstance, e.OtherHash, e.OtherDefinition)
}

// Is makes errors.Is(err, ErrDefinitionDrift) true.
func (e *DefinitionDriftError) Is(target error) bool { return target == ErrDefinitionDrift }

// driftRefresh is how often an instance whose definition differs from the
// registered one re-writes its report in the jobs row (database time), and
// driftFresh how long Health trusts such a report.
const (
	driftRefresh = time.Minute
	driftFresh   = 3 * driftRefresh
)

// drift compares j's definition with the jobs row's: the registered one
// first, then the latest different one another instance reported (if
// recent, by database time now). nil: no drift.
func (s *Scheduler) drift(j *jobState, d defRow, now time.Time) *DefinitionDriftError {
	e := &DefinitionDriftError{Job: j.Name, Instance: s.cfg.Instance, Hash: j.defHash, Definition: j.defText}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	switch {
	case d.hash != nil && *d.hash != j.defHash:
		e.OtherInstance, e.OtherHash, e.OtherDefinition = str(d.instance), *d.hash, str(d.text)
	case d.driftHash != nil && *d.driftHash != j.defHash && d.driftAt != nil && now.Sub(*d.driftAt) <= driftFresh+s.stretch(j, now):
		e.OtherInstance, e.OtherHash, e.OtherDefinition = str(d.driftInstance), *d.driftHash, str(d.driftText)
	default:
		return nil
	}
	return e
}

// stretch is the job's interval, or zero if unknown: drift reports are
// refreshed at ticks, so a job with long intervals refreshes them slower.
func (s *Scheduler) stretch(j *jobState, now time.Time) time.Duration {
	if j.scheduleError() != nil {
		return 0
	}
	return 2 * interval(j.Schedule, now)
}

// checkDrift compares the definition read from the jobs row with j's,
// emits an event when the drift appears or changes, and, while this
// instance's definition differs from the registered one, reports it in the
// row so that every instance's Health shows it.
func (s *Scheduler) checkDrift(j *jobState, d defRow) {
	now := s.clock.now()
	if d.hash == nil { // the job is not registered yet
		return
	}
	var key string
	e := s.drift(j, d, now)
	if e != nil {
		key = e.OtherHash + "@" + e.OtherInstance
	}
	j.mu.Lock()
	changed := key != j.drift
	j.drift = key
	write := e != nil && *d.hash != j.defHash && (changed || now.Sub(j.driftSent) >= driftRefresh)
	if write {
		j.driftSent = now
	}
	j.mu.Unlock()
	if changed && e != nil {
		s.cfg.Logger.Warn("periodic: definition drift", "job", j.Name, "instance", s.cfg.Instance, "hash", e.Hash,
			"other_instance", e.OtherInstance, "other_hash", e.OtherHash, "definition", e.Definition, "other_definition", e.OtherDefinition)
		s.emit(Event{Kind: EventDefinitionDrift, Job: j.Name, Err: e})
	}
	if write {
		if err := s.st.reportDrift(context.Background(), j.Name, j.defHash, j.defText); err != nil {
			s.emit(Event{Kind: EventError, Job: j.Name, Err: err})
		}
	}
}

// emitScheduleError logs and emits a broken schedule.
func (s *Scheduler) emitScheduleError(j *jobState, err error) {
	s.cfg.Logger.Error("periodic: schedule error; the job is no longer scheduled on this instance", "job", j.Name, "instance", s.cfg.Instance, "err", err)
	s.emit(Event{Kind: EventScheduleError, Job: j.Name, Err: err})
}
