package periodic

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Job is a named function run on a schedule, once per tick across every
// instance that schedules a job of the same name against the same database.
// Instances must agree on the schedule and policies of a name (they are
// what decides which ticks exist); the runs table says which instance ran
// each tick.
type Job struct {
	// Name identifies the job across the cluster: ticks are claimed per
	// (name, tick). 1-200 bytes of printable UTF-8; names starting with
	// "pgbaton." are reserved.
	Name string
	// Schedule says when ticks fall: [Every] or [Cron].
	Schedule Schedule

	// Run is the job function in lease mode: it runs while this instance
	// holds a session lease on the job's key (on the Locker's dedicated lock
	// connections) and does its work on connections of its own choosing,
	// each commit independent. ctx is cancelled if the lease is lost (cause
	// a *pgbaton.LeaseLostError), on Timeout (ErrRunTimeout), and on
	// shutdown or removal after the grace period (ErrShutdown, ErrRemoved).
	// Use it for long runs with external calls.
	//
	// Exactly one of Run and RunTx must be set.
	Run func(ctx context.Context, run Run) error
	// RunTx is the job function in transaction mode: it runs inside a
	// transaction on the application's pool (Config.Pool) that holds the
	// job's transaction-scoped advisory lock. The transaction commits if
	// RunTx returns nil, together with the run's "succeeded" record, and
	// rolls back otherwise. Use it for short jobs whose work is database
	// writes: no write can commit without the lock.
	//
	// Sharp edge: PostgreSQL releases a transaction's advisory locks at the
	// first failed statement, so return as soon as a statement fails.
	RunTx func(ctx context.Context, tx pgx.Tx, run Run) error

	// Overlap says what happens when a tick comes due while a run of the
	// job is still going on anywhere in the cluster. Default OverlapForbid.
	Overlap Overlap
	// Missed says what happens to ticks that nobody started within
	// StartDeadline of their time (all instances down, or busy). Default
	// MissedRunOnce.
	Missed MissedPolicy
	// StartDeadline is how late after its firing time a tick may still
	// start as an ordinary run; later, the Missed policy decides. Default:
	// the schedule's interval, at most one minute.
	StartDeadline time.Duration
	// Timeout bounds each run: its context is cancelled with ErrRunTimeout.
	// A function that ignores its context keeps running (and under
	// OverlapForbid keeps the job's lock). Default one hour; negative means
	// no timeout.
	Timeout time.Duration
	// RunOnStart runs the latest tick at or before the moment this
	// scheduler starts scheduling the job, if no instance has claimed it,
	// instead of waiting for the next tick. It is claimed like any tick, so
	// instances starting together run it once.
	RunOnStart bool
	// StaleAfter is the number of intervals without a successful run,
	// anywhere in the cluster, after which Health reports the job stale.
	// Default Config.StaleAfter.
	StaleAfter int
}

// Overlap is a job's policy for ticks that come due while a run is still
// going on.
type Overlap uint8

const (
	// OverlapForbid (the default) lets one run of a job exist at a time,
	// cluster-wide: ticks that come due during a run are recorded as
	// skipped with the reason, like Kubernetes' concurrencyPolicy: Forbid.
	OverlapForbid Overlap = iota
	// OverlapAllow runs every tick, even while earlier runs go on. Each run
	// holds a lock of its own tick.
	OverlapAllow
)

func (o Overlap) String() string {
	if o == OverlapAllow {
		return "allow"
	}
	return "forbid"
}

// MissedPolicy is a job's policy for ticks that nobody started within their
// start deadline (Quartz' misfire instruction, Kubernetes'
// startingDeadlineSeconds). Every missed tick is recorded in the runs table
// either way, consecutive ones as one row with a count.
type MissedPolicy struct {
	kind   missedKind
	window time.Duration
}

type missedKind uint8

const (
	missedRunOnce missedKind = iota
	missedSkip
	missedBackfill
)

var (
	// MissedRunOnce (the default) runs the latest missed tick once, late,
	// and records the earlier ones as missed. If the current tick is still
	// on time it is that run.
	MissedRunOnce = MissedPolicy{kind: missedRunOnce}
	// MissedSkip records every missed tick as missed and waits for the next
	// one.
	MissedSkip = MissedPolicy{kind: missedSkip}
)

// MissedBackfill runs every missed tick not older than window, one after
// the other, oldest first, and records older ones as missed.
func MissedBackfill(window time.Duration) MissedPolicy {
	return MissedPolicy{kind: missedBackfill, window: window}
}

func (m MissedPolicy) String() string {
	switch m.kind {
	case missedSkip:
		return "skip"
	case missedBackfill:
		return fmt.Sprintf("backfill %s", m.window)
	}
	return "run-once"
}

// RunKind says why a run happened.
type RunKind string

const (
	// KindScheduled: the tick ran within its start deadline.
	KindScheduled RunKind = "scheduled"
	// KindLate: MissedRunOnce ran the tick after its deadline.
	KindLate RunKind = "late"
	// KindBackfill: MissedBackfill ran the tick after its deadline.
	KindBackfill RunKind = "backfill"
	// KindStart: RunOnStart ran the tick.
	KindStart RunKind = "start"
)

// Run describes one run to its job function.
type Run struct {
	Job  string
	Tick time.Time // the scheduled tick
	Kind RunKind
	// Instance is this scheduler's Config.Instance.
	Instance string
	// Started is when the run was claimed, in database time.
	Started time.Time
	// Token is a fencing token: it strictly increases across the runs of a
	// job (across all jobs, in fact), so a resource can refuse writes from
	// an older run that outlived its lock.
	Token int64
}

// Defaults.
const (
	DefaultTimeout          = time.Hour
	MaxStartDeadlineDefault = time.Minute
	MaxJobNameLen           = 200
	reservedPrefix          = "pgbaton."
)

// validateJob checks a job and fills its defaults.
func validateJob(j Job, builtin bool) (Job, error) {
	bad := func(field, format string, args ...any) (Job, error) {
		return j, &JobError{Job: j.Name, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case j.Name == "":
		return bad("Name", "empty; give the job a stable name: ticks are claimed per name")
	case len(j.Name) > MaxJobNameLen:
		return bad("Name", "%d bytes; the limit is %d", len(j.Name), MaxJobNameLen)
	case !utf8.ValidString(j.Name):
		return bad("Name", "not valid UTF-8")
	case strings.IndexFunc(j.Name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return bad("Name", "contains a non-printable character")
	case !builtin && strings.HasPrefix(j.Name, reservedPrefix):
		return bad("Name", "the prefix %q is reserved for the scheduler's own jobs", reservedPrefix)
	}
	if err := scheduleErr(j.Schedule); err != nil {
		return j, &JobError{Job: j.Name, Field: "Schedule", Msg: err.Error(), Err: err}
	}
	if _, err := boundedNext(j.Schedule, time.Now()); err != nil {
		return j, &JobError{Job: j.Name, Field: "Schedule", Msg: err.Error() + "; fix the schedule: every instance computes ticks from it", Err: err}
	}
	switch {
	case j.Run == nil && j.RunTx == nil:
		return bad("Run", "set Run (lease mode: long runs, work on your own connections) or RunTx (transaction mode: the work commits with the run)")
	case j.Run != nil && j.RunTx != nil:
		return bad("Run", "both Run and RunTx are set; choose one mode")
	case j.Overlap > OverlapAllow:
		return bad("Overlap", "unknown policy %d; use OverlapForbid or OverlapAllow", j.Overlap)
	case j.Missed.kind > missedBackfill:
		return bad("Missed", "unknown policy; use MissedRunOnce, MissedSkip or MissedBackfill(window)")
	case j.Missed.kind == missedBackfill && j.Missed.window <= 0:
		return bad("Missed", "MissedBackfill(%s): the window must be positive", j.Missed.window)
	case j.StartDeadline < 0:
		return bad("StartDeadline", "negative (%s); use a positive duration or 0 for the default", j.StartDeadline)
	case j.StaleAfter < 0:
		return bad("StaleAfter", "negative (%d); use a positive number of intervals or 0 for the default", j.StaleAfter)
	}
	if j.StartDeadline == 0 {
		j.StartDeadline = min(max(interval(j.Schedule, time.Now()), MinInterval), MaxStartDeadlineDefault)
	}
	if j.Timeout == 0 {
		j.Timeout = DefaultTimeout
	}
	return j, nil
}

func (j *Job) txMode() bool { return j.RunTx != nil }

// definition describes what instances must agree on for a job: the
// schedule (with its zone and jitter), the policies, the timeout and the
// mode. Its hash is recorded in the jobs row at registration; an instance
// whose hash differs reports drift (a rolling deploy, or a misconfigured
// replica).
func (j *Job) definition(schedule string) string {
	mode := "lease"
	if j.txMode() {
		mode = "transaction"
	}
	return fmt.Sprintf("schedule=%s; mode=%s; overlap=%s; missed=%s; start_deadline=%s; timeout=%s; run_on_start=%t",
		schedule, mode, j.Overlap, j.Missed, j.StartDeadline, j.Timeout, j.RunOnStart)
}

// definitionHash is the first 16 hex digits of the SHA-256 of a definition.
func definitionHash(def string) string {
	sum := sha256.Sum256([]byte(def))
	return hex.EncodeToString(sum[:8])
}
