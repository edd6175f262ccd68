package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

const cronStatusSynopsis = "[--dsn DSN] [--runs N] [--job NAME] [--json]"

const cronStatusDescription = `Shows the jobs of pgbaton cron as the database records them, from any
machine: each job's schedule, next tick, latest tick and its status, last
success, health, and whether replicas run different definitions of it
(drift). --runs N adds each job's N latest history rows (from
pgbaton.periodic_runs). Only jobs registered by pgbaton cron are shown.

A job is "stale" when no run succeeded for 3 of its intervals (counted from
its registration if it never succeeded), as the daemons' health endpoints
judge it. Next ticks are computed from the schedule recorded by the replica
that registered the job last, at the database's clock.

The database: --dsn, else DATABASE_URL, else the standard PG* variables.

Exit status: 0 when every job is healthy, 1 when a job is stale or the
database cannot be read, 2 for a bad command line.`

// cronStatusJob is one job in pgbaton cron status (--json: one object per
// job in "jobs").
type cronStatusJob struct {
	Job            string          `json:"job"`
	Schedule       string          `json:"schedule"`
	TZ             string          `json:"tz,omitempty"`
	DefinitionHash string          `json:"definition_hash,omitempty"`
	RegisteredBy   string          `json:"registered_by,omitempty"`
	NextTick       time.Time       `json:"next_tick,omitzero"`
	LastTick       time.Time       `json:"last_tick,omitzero"`
	LastStatus     string          `json:"last_status,omitempty"`
	LastInstance   string          `json:"last_instance,omitempty"`
	LastError      string          `json:"last_error,omitempty"`
	LastSuccess    time.Time       `json:"last_success,omitzero"`
	Running        bool            `json:"running"`
	Health         string          `json:"health"` // ok, stale, never (no tick yet)
	Reason         string          `json:"reason,omitempty"`
	Drift          string          `json:"drift,omitempty"`
	Runs           []cronStatusRun `json:"runs,omitempty"`
}

type cronStatusRun struct {
	Tick     time.Time  `json:"tick"`
	Through  time.Time  `json:"through_tick"`
	Ticks    int64      `json:"ticks"`
	Status   string     `json:"status"`
	Kind     string     `json:"kind"`
	Instance string     `json:"instance"`
	Started  *time.Time `json:"started_at,omitempty"`
	Finished *time.Time `json:"finished_at,omitempty"`
	Error    string     `json:"error,omitempty"`
	Token    *int64     `json:"token,omitempty"`
}

type cronStatusReport struct {
	Now  time.Time       `json:"now"`
	Jobs []cronStatusJob `json:"jobs"`
}

// cronStaleAfter is the number of intervals without success after which a
// job is stale (periodic's default StaleAfter, which pgbaton cron uses).
const cronStaleAfter = 3

// cronDriftFresh is how long a drift report counts (periodic refreshes it
// every minute while the drift lasts and trusts it for three).
const cronDriftFresh = 3 * time.Minute

func runCronStatus(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "cron status", cronStatusSynopsis, cronStatusDescription)
	conn := addConnFlags(fs)
	schema := fs.String("schema", pgbaton.DefaultSchema, "pgbaton's schema")
	runs := fs.Int("runs", 0, "also show each job's N latest history rows")
	job := fs.String("job", "", "show this job only")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *runs < 0 || *runs > 1000:
		return usagef("--runs %d: use 0 to 1000", *runs)
	case !schemaIdent(*schema):
		return usagef("--schema %q: use a plain lower-case identifier", *schema)
	}
	c, err := conn.connect(ctx, "cron-status")
	if err != nil {
		return err
	}
	defer func() { _ = c.Close(context.Background()) }()
	qctx, cancel := context.WithTimeout(ctx, conn.timeout)
	defer cancel()
	rep, err := cronStatus(qctx, c, *schema, *job, *runs)
	if err != nil {
		return redactErr(err, string(conn.connString()), "")
	}
	if *asJSON {
		enc := json.NewEncoder(out.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printCronStatus(out.Stdout, rep)
	}
	for _, j := range rep.Jobs {
		if j.Health == "stale" {
			return &exitError{code: exitFailure}
		}
	}
	return nil
}

// cronStatus reads the report from the database.
func cronStatus(ctx context.Context, c *pgx.Conn, schema, only string, nruns int) (*cronStatusReport, error) {
	jobsT, runsT := pgx.Identifier{schema, "periodic_jobs"}.Sanitize(), pgx.Identifier{schema, "periodic_runs"}.Sanitize()
	rows, err := c.Query(ctx, `SELECT j.job, j.schedule, j.floor_tick, j.definition_hash, j.definition_instance,
	j.drift_hash, j.drift_instance, j.drift_at,
	(SELECT max(r.finished_at) FROM `+runsT+` r WHERE r.job = j.job AND r.status = 'succeeded'),
	lr.through_tick, lr.status, lr.instance, lr.error,
	EXISTS (SELECT 1 FROM `+runsT+` r WHERE r.job = j.job AND r.status = 'running'),
	clock_timestamp()
FROM `+jobsT+` j
LEFT JOIN LATERAL (SELECT r.through_tick, r.status, r.instance, r.error FROM `+runsT+` r
	WHERE r.job = j.job ORDER BY r.tick DESC LIMIT 1) lr ON true
WHERE j.schedule LIKE 'crontab %' AND ($1 = '' OR j.job = $1)
ORDER BY j.job`, only)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w (is the schema migrated? pgbaton migrate status)", jobsT, err)
	}
	rep := &cronStatusReport{Jobs: []cronStatusJob{}}
	for rows.Next() {
		var j cronStatusJob
		var text string
		var floor time.Time
		var defHash, defInst, driftHash, driftInst, lastStatus, lastInst, lastErr *string
		var driftAt, success, lastTick *time.Time
		if err := rows.Scan(&j.Job, &text, &floor, &defHash, &defInst, &driftHash, &driftInst, &driftAt,
			&success, &lastTick, &lastStatus, &lastInst, &lastErr, &j.Running, &rep.Now); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading %s: %w", jobsT, err)
		}
		str := func(p *string) string {
			if p == nil {
				return ""
			}
			return *p
		}
		j.DefinitionHash, j.RegisteredBy = str(defHash), str(defInst)
		j.LastStatus, j.LastInstance, j.LastError = str(lastStatus), str(lastInst), str(lastErr)
		if lastTick != nil {
			j.LastTick = *lastTick
		}
		if success != nil {
			j.LastSuccess = *success
		}
		if driftHash != nil && driftAt != nil && str(driftHash) != str(defHash) && rep.Now.Sub(*driftAt) <= cronDriftFresh {
			j.Drift = fmt.Sprintf("%s runs definition %s, %s registered %s", str(driftInst), str(driftHash), str(defInst), str(defHash))
		}
		spec, tz, _, ok := parseTabScheduleText(text)
		j.Schedule, j.TZ = spec, tz
		if !ok {
			j.Schedule = text
		}
		judgeCronJob(&j, spec, tz, ok, floor, rep.Now)
		rep.Jobs = append(rep.Jobs, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", jobsT, err)
	}
	if nruns > 0 && len(rep.Jobs) > 0 {
		names := make([]string, len(rep.Jobs))
		idx := map[string]int{}
		for i, j := range rep.Jobs {
			names[i], idx[j.Job] = j.Job, i
		}
		rows, err := c.Query(ctx, `SELECT job, tick, through_tick, ticks, status, kind, instance, started_at, finished_at, error, token
FROM (SELECT r.*, row_number() OVER (PARTITION BY job ORDER BY tick DESC) AS n FROM `+runsT+` r WHERE job = ANY($1)) x
WHERE n <= $2 ORDER BY job, tick DESC`, names, nruns)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", runsT, err)
		}
		for rows.Next() {
			var name string
			var r cronStatusRun
			var errText *string
			if err := rows.Scan(&name, &r.Tick, &r.Through, &r.Ticks, &r.Status, &r.Kind, &r.Instance, &r.Started, &r.Finished, &errText, &r.Token); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reading %s: %w", runsT, err)
			}
			if errText != nil {
				r.Error = *errText
			}
			rep.Jobs[idx[name]].Runs = append(rep.Jobs[idx[name]].Runs, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("reading %s: %w", runsT, err)
		}
	}
	if rep.Now.IsZero() {
		if err := c.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&rep.Now); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// judgeCronJob fills the next tick and the health verdict.
func judgeCronJob(j *cronStatusJob, spec, tz string, ok bool, floor, now time.Time) {
	j.Health = "ok"
	if !ok {
		j.Health, j.Reason = "unknown", "schedule not readable"
		return
	}
	sched, err := cronInnerSchedule(spec, tz)
	if err != nil {
		j.Health, j.Reason = "unknown", err.Error()
		return
	}
	ticks, err := nextTicks(sched, now, 2)
	if err != nil || len(ticks) < 2 {
		j.Reason = "no next tick"
		return
	}
	j.NextTick = ticks[0]
	staleAfter := cronStaleAfter * ticks[1].Sub(ticks[0])
	ref, what := floor, "registered"
	if !j.LastSuccess.IsZero() {
		ref, what = j.LastSuccess, "last success"
	}
	if age := now.Sub(ref); age > staleAfter {
		j.Health = "stale"
		j.Reason = fmt.Sprintf("no successful run for %s (%s %s ago; stale after %d intervals = %s)",
			age.Round(time.Second), what, age.Round(time.Second), cronStaleAfter, staleAfter)
	}
}

func fmtStatusTime(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	s := t.UTC().Format("2006-01-02 15:04:05Z")
	d := t.Sub(now).Round(time.Second)
	switch {
	case d > 0:
		return s + " (in " + d.String() + ")"
	case d < 0:
		return s + " (" + (-d).String() + " ago)"
	}
	return s
}

func printCronStatus(w io.Writer, rep *cronStatusReport) {
	if len(rep.Jobs) == 0 {
		printf(w, "no pgbaton cron jobs in this database (start pgbaton cron --crontab FILE)\n")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "JOB\tSCHEDULE\tNEXT TICK\tLAST TICK\tSTATUS\tBY\tLAST SUCCESS\tHEALTH\n")
	for _, j := range rep.Jobs {
		sched := j.Schedule
		if j.TZ != "" {
			sched += " " + j.TZ
		}
		status := j.LastStatus
		if status == "" {
			status = "-"
		}
		by := j.LastInstance
		if by == "" {
			by = "-"
		}
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Job, sched, fmtStatusTime(j.NextTick, rep.Now),
			fmtStatusTime(j.LastTick, rep.Now), status, by, fmtStatusTime(j.LastSuccess, rep.Now), j.Health)
	}
	_ = tw.Flush()
	for _, j := range rep.Jobs {
		var notes []string
		if j.Reason != "" {
			notes = append(notes, j.Reason)
		}
		if j.LastError != "" {
			notes = append(notes, "last error: "+j.LastError)
		}
		if j.Drift != "" {
			notes = append(notes, "DRIFT: "+j.Drift+" (replicas run different crontabs)")
		}
		if j.Running {
			notes = append(notes, "a run is in progress")
		}
		if len(notes) > 0 {
			printf(w, "\n%s: %s", j.Job, strings.Join(notes, "; "))
		}
	}
	if hasNotes(rep) {
		printf(w, "\n")
	}
	for _, j := range rep.Jobs {
		if len(j.Runs) == 0 {
			continue
		}
		printf(w, "\n%s, latest runs:\n", j.Job)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		printf(tw, "  TICK\tSTATUS\tKIND\tINSTANCE\tDURATION\tRUN\tERROR\n")
		for _, r := range j.Runs {
			tick := r.Tick.UTC().Format("2006-01-02 15:04:05Z")
			if r.Ticks > 1 {
				tick += fmt.Sprintf(" .. %s (%d ticks)", r.Through.UTC().Format("15:04:05Z"), r.Ticks)
			}
			dur := "-"
			if r.Started != nil && r.Finished != nil {
				dur = r.Finished.Sub(*r.Started).Round(time.Millisecond).String()
			}
			tok := "-"
			if r.Token != nil {
				tok = fmt.Sprint(*r.Token)
			}
			printf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", tick, r.Status, r.Kind, r.Instance, dur, tok, r.Error)
		}
		_ = tw.Flush()
	}
}

func hasNotes(rep *cronStatusReport) bool {
	for _, j := range rep.Jobs {
		if j.Reason != "" || j.LastError != "" || j.Drift != "" || j.Running {
			return true
		}
	}
	return false
}
