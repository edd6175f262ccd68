package periodic

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// JobHealth is one job's state, cluster-wide, as the database records it.
type JobHealth struct {
	Job      string `json:"job"`
	Schedule string `json:"schedule"`
	// Stale is true when no run succeeded, anywhere in the cluster, for
	// StaleAfter intervals (counted from the job's registration if it never
	// succeeded).
	Stale      bool          `json:"stale"`
	Reason     string        `json:"reason,omitempty"`
	StaleAfter time.Duration `json:"stale_after_ns"`
	// LastSuccess is when the latest successful run finished (zero: never
	// in the kept history).
	LastSuccess time.Time `json:"last_success,omitzero"`
	// The latest recorded tick: its status (running, succeeded, failed,
	// abandoned, skipped, missed), instance and error.
	LastTick     time.Time `json:"last_tick,omitzero"`
	LastStatus   string    `json:"last_status,omitempty"`
	LastInstance string    `json:"last_instance,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	// Running is true while a run is recorded as running somewhere.
	Running bool `json:"running"`
	// NextTick is the first tick after now.
	NextTick time.Time `json:"next_tick,omitzero"`
	// Now is the database time the report was made at.
	Now time.Time `json:"now"`
	// DefinitionHash identifies this instance's definition of the job
	// (schedule, policies, timeout, mode).
	DefinitionHash string `json:"definition_hash"`
	// Drift is set while another instance runs a different definition
	// (registered in the jobs row, or reported by that instance within the
	// last few minutes): a rolling deploy in progress, or a misconfigured
	// replica. It does not make the job unhealthy.
	Drift *DefinitionDriftError `json:"drift,omitempty"`
	// ScheduleError is set when the job's schedule could not give a next
	// tick (see [ErrScheduleBroken]): the job is no longer scheduled on
	// this instance, and the handler answers 503.
	ScheduleError string `json:"schedule_error,omitempty"`
}

// Health reports every job this scheduler runs (the prune job included),
// from the database: the runs of every instance count. It costs one query.
func (s *Scheduler) Health(ctx context.Context) ([]JobHealth, error) {
	s.mu.Lock()
	jobs := make(map[string]*jobState, len(s.jobs))
	names := make([]string, 0, len(s.jobs))
	for n, j := range s.jobs {
		jobs[n] = j
		names = append(names, n)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, s.st.t(`SELECT j.job, j.floor_tick, `+prefixed("j.", defCols)+`,
	(SELECT max(r.finished_at) FROM `+s.st.runs+` r WHERE r.job = j.job AND r.status = 'succeeded'),
	lr.tick, lr.status, lr.instance, lr.error,
	EXISTS (SELECT 1 FROM `+s.st.runs+` r WHERE r.job = j.job AND r.status = 'running'),
	clock_timestamp()
FROM `+s.st.jobs+` j
LEFT JOIN LATERAL (SELECT r.through_tick AS tick, r.status, r.instance, r.error FROM `+s.st.runs+` r
	WHERE r.job = j.job ORDER BY r.tick DESC LIMIT 1) lr ON true
WHERE j.job = ANY($1) ORDER BY j.job`), names)
	if err != nil {
		return nil, fmt.Errorf("periodic: health: %w", err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	var out []JobHealth
	var now time.Time
	for rows.Next() {
		var h JobHealth
		var floor time.Time
		var success, lastTick *time.Time
		var status, inst, errText *string
		var def defRow
		dest := append(append([]any{&h.Job, &floor}, def.dest()...), &success, &lastTick, &status, &inst, &errText, &h.Running, &now)
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("periodic: health: %w", err)
		}
		seen[h.Job] = true
		h.Now = now
		if success != nil {
			h.LastSuccess = *success
		}
		if lastTick != nil {
			h.LastTick, h.LastStatus, h.LastInstance = *lastTick, *status, *inst
			if errText != nil {
				h.LastError = *errText
			}
		}
		s.judge(jobs[h.Job], &h, floor)
		if d := s.drift(jobs[h.Job], def, now); d != nil {
			h.Drift = d
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("periodic: health: %w", err)
	}
	for _, n := range names {
		if !seen[n] { // added, but its first claim has not registered it yet
			h := JobHealth{Job: n, Now: now}
			s.judge(jobs[n], &h, time.Time{})
			out = append(out, h)
		}
	}
	return out, nil
}

// judge fills the schedule fields and the staleness verdict.
func (s *Scheduler) judge(j *jobState, h *JobHealth, floor time.Time) {
	now := h.Now
	if now.IsZero() {
		now = s.clock.now()
		h.Now = now
	}
	h.Schedule = j.scheduleText
	h.DefinitionHash = j.defHash
	if err := j.scheduleError(); err != nil {
		h.ScheduleError = err.Error()
		return
	}
	h.NextTick = j.Schedule.Next(now)
	h.StaleAfter = time.Duration(j.StaleAfter) * interval(j.Schedule, now)
	if floor.IsZero() {
		return
	}
	ref, what := floor, "registered"
	if !h.LastSuccess.IsZero() {
		ref, what = h.LastSuccess, "last success"
	}
	if age := now.Sub(ref); h.StaleAfter > 0 && age > h.StaleAfter {
		h.Stale = true
		h.Reason = fmt.Sprintf("no successful run for %s (%s at %s; stale after %d intervals = %s)",
			age.Round(time.Millisecond), what, fmtTick(ref), j.StaleAfter, h.StaleAfter)
	}
}

// HealthReport is the body of the health handler.
type HealthReport struct {
	Status string      `json:"status"` // "ok", "stale" or "error"
	Error  string      `json:"error,omitempty"`
	Jobs   []JobHealth `json:"jobs"`
}

// HealthHandler returns an http.Handler for health checks: 200 with a JSON
// [HealthReport] when no job is stale, 503 when one is or the database
// cannot be read. "?job=name" restricts the verdict to one job (404 if this
// scheduler does not run it).
func (s *Scheduler) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep := HealthReport{Status: "ok"}
		code := http.StatusOK
		hs, err := s.Health(r.Context())
		if err != nil {
			rep.Status, rep.Error, code = "error", err.Error(), http.StatusServiceUnavailable
		}
		want := r.URL.Query().Get("job")
		for _, h := range hs {
			if want != "" && h.Job != want {
				continue
			}
			rep.Jobs = append(rep.Jobs, h)
			if h.Stale && code == http.StatusOK {
				rep.Status, code = "stale", http.StatusServiceUnavailable
			}
			if h.ScheduleError != "" && rep.Status != "error" {
				rep.Status, rep.Error, code = "error", h.ScheduleError, http.StatusServiceUnavailable
			}
		}
		if want != "" && err == nil && len(rep.Jobs) == 0 {
			rep.Status, rep.Error, code = "error", fmt.Sprintf("no job %q on this instance", want), http.StatusNotFound
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(rep)
	})
}

// pruneJob is the scheduler's own retention job.
func (s *Scheduler) pruneJob() Job {
	return Job{
		Name:     PruneJob,
		Schedule: Every(s.cfg.PruneInterval),
		Missed:   MissedRunOnce,
		Timeout:  s.cfg.PruneInterval,
		Run: func(ctx context.Context, run Run) error {
			n, err := s.st.prune(ctx, run.Started.Add(-s.cfg.Retention), 1000)
			if n > 0 {
				s.cfg.Logger.Info("periodic: pruned run history", "rows", n, "retention", s.cfg.Retention)
			}
			return err
		},
	}
}
