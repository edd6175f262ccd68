package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/inspect"
	"github.com/pgbaton/pgbaton/periodic"
)

// ViewVersion is the version of [View]'s JSON form (GET api/view). It
// changes when a field is removed or its meaning changes; new fields keep it.
const ViewVersion = 1

// View is one refresh of the dashboard: what every viewer is shown until the
// next refresh. Its JSON form is served at api/view.
type View struct {
	Version int `json:"version"`
	// TakenAt is the database's time of the refresh.
	TakenAt time.Time `json:"taken_at"`
	// Database is current_database().
	Database string `json:"database"`
	// Locks is the inspect snapshot: every advisory lock by name, with its
	// holders, waiters and class.
	Locks *inspect.Snapshot `json:"locks"`
	// Instances are the pgbaton processes connected right now, from
	// pg_stat_activity (application_name "pgbaton:<instance>:<conn>").
	Instances []Instance `json:"instances"`
	// Jobs are periodic's jobs, with their recent runs.
	Jobs []Job `json:"jobs"`
	// Notes say what could not be read (a missing table or privilege).
	Notes []string `json:"notes,omitempty"`
	// Statements is how many SQL statements the refresh sent.
	Statements int `json:"statements"`
}

// Instance is one pgbaton instance (Config.InstanceName) with its live
// connections.
type Instance struct {
	Name string `json:"name"`
	// LockConns counts its lock connections ("pgbaton:<instance>:<n>").
	LockConns int `json:"lock_conns"`
	// Other counts its other connections by role (periodic, names, migrate).
	Other map[string]int `json:"other,omitempty"`
	// Holding and Waiting count the keys it holds and waits for in the
	// same refresh's lock snapshot.
	Holding int `json:"holding"`
	Waiting int `json:"waiting"`
	// Clients are the distinct client addresses ("local" for a unix socket,
	// "" when this role may not see them).
	Clients []string `json:"clients"`
	// Since is the oldest backend_start of its connections (nil when hidden).
	Since *time.Time `json:"since,omitempty"`
	// PIDs are its backends.
	PIDs []int `json:"pids"`
}

// Job is one periodic job as the database records it.
type Job struct {
	Name     string `json:"name"`
	Schedule string `json:"schedule"`
	// NextTick is the first tick after the refresh (nil when the schedule
	// text could not be read back, or the scheduler's Health said
	// otherwise).
	NextTick *time.Time `json:"next_tick,omitempty"`
	LastTick *time.Time `json:"last_tick,omitempty"`
	// LastStatus is the status of the latest recorded tick's row.
	LastStatus  string     `json:"last_status,omitempty"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	Running     bool       `json:"running"`
	// Health is "ok", "stale", "unknown" (schedule unreadable) or "error"
	// (the scheduler reports a broken schedule); HealthWhy says why.
	Health    string `json:"health"`
	HealthWhy string `json:"health_why,omitempty"`
	// HealthSource is "scheduler" when Config.Health answered for the job,
	// else "database" (judged here with Config.StaleAfter intervals).
	HealthSource string `json:"health_source"`
	// DefinitionHash and DefinitionInstance are the definition registered
	// last; Drift describes a different one another instance runs.
	DefinitionHash     string `json:"definition_hash,omitempty"`
	DefinitionInstance string `json:"definition_instance,omitempty"`
	Drift              string `json:"drift,omitempty"`
	// Runs are the latest runs, newest first, skipped and missed ranges
	// included.
	Runs []Run `json:"runs"`
}

// Run is one row of periodic_runs: a run, or a range of skipped or missed
// ticks.
type Run struct {
	Tick        time.Time  `json:"tick"`
	ThroughTick time.Time  `json:"through_tick"`
	Ticks       int64      `json:"ticks"`
	Status      string     `json:"status"`
	Kind        string     `json:"kind"`
	Instance    string     `json:"instance"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	// Duration is finished_at - started_at; Lateness is started_at - tick
	// (configured jitter included).
	Duration *inspect.Seconds `json:"duration_s,omitempty"`
	Lateness *inspect.Seconds `json:"lateness_s,omitempty"`
	Token    *int64           `json:"token,omitempty"`
	Error    string           `json:"error,omitempty"`
}

// counter counts the statements sent through it.
type counter struct {
	q inspect.Querier
	n int
}

func (c *counter) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n++
	return c.q.Query(ctx, sql, args...)
}

func (c *counter) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n++
	return c.q.QueryRow(ctx, sql, args...)
}

// The instances statement: the clock, the database, whether the role may
// use pgbaton's schema and whether periodic's tables exist, and every
// pgbaton connection to this database, in one round trip. The schema is
// looked up in pg_namespace first: to_regclass on a schema the role may not
// use raises an error instead of answering NULL.
const instancesQuery = `WITH s AS (SELECT has_schema_privilege(oid, 'USAGE') AS usable FROM pg_namespace WHERE nspname = $1)
SELECT statement_timestamp(), current_database(), coalesce((SELECT usable FROM s), false),
	CASE WHEN (SELECT usable FROM s) THEN to_regclass($2)::text END, CASE WHEN (SELECT usable FROM s) THEN to_regclass($3)::text END,
	coalesce((SELECT json_agg(json_build_object('pid', a.pid, 'app', a.application_name, 'client',
		CASE WHEN a.client_addr IS NOT NULL THEN host(a.client_addr) WHEN a.backend_type = 'client backend' AND a.state IS NOT NULL THEN 'local' END,
		'start', a.backend_start) ORDER BY a.pid)
	FROM pg_stat_activity a WHERE a.datname = current_database() AND a.application_name LIKE 'pgbaton:%'), '[]'::json)`

// The jobs statement: every job with its latest success, whether it runs,
// and its latest runs (rows of periodic_runs, newest tick first) as JSON.
const jobsQuery = `SELECT j.job, j.schedule, j.floor_tick, j.last_tick, j.definition_hash, j.definition_instance,
	j.drift_hash, j.drift_instance, j.drift_at,
	(SELECT max(r.finished_at) FROM %[2]s r WHERE r.job = j.job AND r.status = 'succeeded'),
	EXISTS (SELECT 1 FROM %[2]s r WHERE r.job = j.job AND r.status = 'running'),
	coalesce((SELECT json_agg(json_build_object('tick', r.tick, 'through_tick', r.through_tick, 'ticks', r.ticks,
		'status', r.status, 'kind', r.kind, 'instance', r.instance, 'started_at', r.started_at, 'finished_at', r.finished_at,
		'duration_s', extract(epoch FROM r.duration), 'lateness_s', extract(epoch FROM r.started_at - r.tick),
		'token', r.token, 'error', coalesce(r.error, '')) ORDER BY r.tick DESC)
		FROM (SELECT * FROM %[2]s r WHERE r.job = j.job ORDER BY r.tick DESC LIMIT $1) r), '[]'::json)
FROM %[1]s j ORDER BY j.job`

type connRow struct {
	PID    int        `json:"pid"`
	App    string     `json:"app"`
	Client *string    `json:"client"`
	Start  *time.Time `json:"start"`
}

// unreadableSchema stands in for pgbaton's schema in inspect.Take when the
// role may not use it: a schema that does not exist only costs the names,
// while one the role may not use fails the snapshot.
const unreadableSchema = "pgbaton_schema_not_usable_by_this_role"

// load reads one View: the instances statement, inspect.Take (three to five
// statements), and, when periodic's tables exist, the jobs statement.
func (d *Dashboard) load(ctx context.Context) (*View, error) {
	q := &counter{q: d.cfg.DB}
	v := &View{Version: ViewVersion, Instances: []Instance{}, Jobs: []Job{}}
	sch := d.schema()
	var usable bool
	var jobsT, runsT *string
	var conns []connRow
	var raw []byte
	if err := q.QueryRow(ctx, instancesQuery, sch, sch+".periodic_jobs", sch+".periodic_runs").
		Scan(&v.TakenAt, &v.Database, &usable, &jobsT, &runsT, &raw); err != nil {
		return nil, fmt.Errorf("%w: reading pg_stat_activity: %w", ErrRefresh, err)
	}
	if err := json.Unmarshal(raw, &conns); err != nil {
		return nil, fmt.Errorf("%w: reading pg_stat_activity: %w", ErrRefresh, err)
	}
	v.TakenAt = v.TakenAt.UTC()
	opts := d.cfg.Inspect
	if !usable {
		opts.Schema = unreadableSchema
		v.Notes = append(v.Notes, fmt.Sprintf("schema %s does not exist or this role may not use it: no key names and no periodic jobs (pgbaton migrate up creates it; GRANT USAGE ON SCHEMA %s and SELECT ON its tables to this role)", sch, sch))
	}
	snap, err := inspect.Take(ctx, q, opts)
	if err != nil {
		return nil, err
	}
	v.Locks = snap
	v.Instances = instances(conns, snap)
	switch {
	case jobsT != nil && runsT != nil:
		if err := d.loadJobs(ctx, q, v); err != nil {
			return nil, err
		}
	case usable:
		v.Notes = append(v.Notes, fmt.Sprintf("no %s.periodic_jobs table: no periodic jobs to show (pgbaton migrate up creates it)", sch))
	}
	v.Statements = q.n
	return v, nil
}

func (d *Dashboard) schema() string {
	if d.cfg.Inspect.Schema != "" {
		return d.cfg.Inspect.Schema
	}
	return "pgbaton"
}

// instances groups pgbaton's connections by instance.
func instances(conns []connRow, snap *inspect.Snapshot) []Instance {
	by := map[string]*Instance{}
	var order []string
	pidInst := map[int]string{}
	for _, c := range conns {
		rest, _ := strings.CutPrefix(c.App, "pgbaton:")
		name, role := rest, ""
		if i := strings.LastIndexByte(rest, ':'); i >= 0 {
			name, role = rest[:i], rest[i+1:]
		}
		in := by[name]
		if in == nil {
			in = &Instance{Name: name, Other: map[string]int{}}
			by[name] = in
			order = append(order, name)
		}
		if role != "" && strings.Trim(role, "0123456789") == "" {
			in.LockConns++
		} else {
			in.Other[role]++
		}
		in.PIDs = append(in.PIDs, c.PID)
		pidInst[c.PID] = name
		if c.Client != nil && !contains(in.Clients, *c.Client) {
			in.Clients = append(in.Clients, *c.Client)
		}
		if c.Start != nil && (in.Since == nil || c.Start.Before(*in.Since)) {
			t := c.Start.UTC()
			in.Since = &t
		}
	}
	for _, k := range snap.Keys {
		seen := map[string]bool{}
		for _, h := range k.Holders {
			if n, ok := pidInst[h.PID]; ok && !seen[n] {
				seen[n] = true
				by[n].Holding++
			}
		}
		seenW := map[string]bool{}
		for _, w := range k.Waiters {
			if n, ok := pidInst[w.PID]; ok && !seenW[n] {
				seenW[n] = true
				by[n].Waiting++
			}
		}
	}
	sort.Strings(order)
	out := make([]Instance, 0, len(order))
	for _, n := range order {
		in := by[n]
		if in.Clients == nil {
			in.Clients = []string{}
		}
		out = append(out, *in)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// loadJobs reads periodic's jobs and their latest runs, and judges their
// health. A role without SELECT on the tables gets a note, not an error.
func (d *Dashboard) loadJobs(ctx context.Context, q *counter, v *View) error {
	sch := pgx.Identifier{d.schema()}.Sanitize()
	rows, err := q.Query(ctx, fmt.Sprintf(jobsQuery, sch+".periodic_jobs", sch+".periodic_runs"), d.cfg.RunsPerJob)
	if err == nil {
		defer rows.Close()
		for rows.Next() {
			var j Job
			var floor time.Time
			var defHash, defInst, driftHash, driftInst *string
			var driftAt *time.Time
			var raw []byte
			if err = rows.Scan(&j.Name, &j.Schedule, &floor, &j.LastTick, &defHash, &defInst, &driftHash, &driftInst, &driftAt,
				&j.LastSuccess, &j.Running, &raw); err != nil {
				break
			}
			if err = json.Unmarshal(raw, &j.Runs); err != nil {
				break
			}
			if len(j.Runs) > 0 {
				j.LastStatus = j.Runs[0].Status
			}
			if defHash != nil {
				j.DefinitionHash = *defHash
			}
			if defInst != nil {
				j.DefinitionInstance = *defInst
			}
			if driftHash != nil && driftInst != nil {
				j.Drift = fmt.Sprintf("instance %s runs definition %s", *driftInst, *driftHash)
				if driftAt != nil {
					j.Drift += " (reported " + driftAt.UTC().Format(time.RFC3339) + ")"
				}
			}
			d.judge(&j, floor, v.TakenAt)
			v.Jobs = append(v.Jobs, j)
		}
		if err == nil {
			err = rows.Err()
		}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" {
		v.Notes = append(v.Notes, fmt.Sprintf("cannot read periodic's tables (%s): GRANT USAGE ON SCHEMA %s and SELECT ON %s.periodic_jobs, %s.periodic_runs to this role",
			pe.Message, sch, sch, sch))
		v.Jobs = []Job{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: reading periodic jobs: %w", ErrRefresh, err)
	}
	if d.cfg.Health != nil {
		hs, err := d.cfg.Health(ctx)
		if err != nil {
			v.Notes = append(v.Notes, "the scheduler's health could not be read: "+err.Error())
		}
		by := map[string]periodic.JobHealth{}
		for _, h := range hs {
			by[h.Job] = h
		}
		for i := range v.Jobs {
			h, ok := by[v.Jobs[i].Name]
			if !ok {
				continue
			}
			j := &v.Jobs[i]
			j.HealthSource = "scheduler"
			switch {
			case h.ScheduleError != "":
				j.Health, j.HealthWhy = "error", h.ScheduleError
			case h.Stale:
				j.Health, j.HealthWhy = "stale", h.Reason
			default:
				j.Health, j.HealthWhy = "ok", ""
			}
			if !h.NextTick.IsZero() {
				t := h.NextTick.UTC()
				j.NextTick = &t
			}
		}
	}
	return nil
}

// judge fills NextTick and Health from the schedule text and the history,
// as periodic's Health does, with Config.StaleAfter intervals for every job
// (a job's own Job.StaleAfter is not in the database).
func (d *Dashboard) judge(j *Job, floor, now time.Time) {
	j.HealthSource = "database"
	if j.Runs == nil {
		j.Runs = []Run{}
	}
	s, err := parseSchedule(j.Schedule)
	if err != nil {
		j.Health, j.HealthWhy = "unknown", err.Error()
		return
	}
	if n := s.Next(now); !n.IsZero() {
		n = n.UTC()
		j.NextTick = &n
	}
	staleAfter := time.Duration(d.cfg.StaleAfter) * intervalAt(s, now)
	ref, what := floor, "registered"
	if j.LastSuccess != nil {
		ref, what = *j.LastSuccess, "last success"
	}
	j.Health = "ok"
	if age := now.Sub(ref); staleAfter > 0 && age > staleAfter {
		j.Health = "stale"
		j.HealthWhy = fmt.Sprintf("no successful run for %s (%s at %s; stale after %d intervals = %s)",
			age.Round(time.Second), what, ref.UTC().Format(time.RFC3339), d.cfg.StaleAfter, staleAfter)
	}
}
