package periodic

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// store runs the scheduler's bookkeeping statements on its own small pool,
// separate from the application's: claims and run records never wait for a
// connection the job functions hold, so the acquire graph has no cycle
// (application pool -> bookkeeping pool, never back).
type store struct {
	pool     *pgxpool.Pool
	clock    *dbClock
	instance string
	timeout  time.Duration

	jobs, runs string // quoted table names
	fence      string // the call that draws a fencing token
	sqlFast    string
	sqlSweep   string
	// nowSQL is the database time every decision and record uses:
	// clock_timestamp(), or a replayed time line under test (see replay).
	nowSQL string
}

func newStore(pool *pgxpool.Pool, schema, instance string, clock *dbClock, timeout time.Duration, nowSQL string) *store {
	q := pgx.Identifier{schema}.Sanitize()
	if nowSQL == "" {
		nowSQL = "clock_timestamp()"
	}
	st := &store{pool: pool, clock: clock, instance: instance, timeout: timeout, nowSQL: nowSQL,
		jobs: q + ".periodic_jobs", runs: q + ".periodic_runs", fence: q + ".fence_next()"}
	// A running row is abandoned when its lock is gone: either it is the
	// key the claimer holds exclusively right now ($3), or pg_locks has no
	// holder of it.
	st.sqlSweep = `UPDATE ` + st.runs + ` r SET status = 'abandoned', finished_at = clock_timestamp(),
	error = 'the instance running it stopped before it finished (its lock was no longer held)'
WHERE r.job = $1 AND r.status = 'running' AND r.tick <> $2 AND (r.lock_key = $3 OR NOT EXISTS (
	SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
	AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
	AND l.classid = ((r.lock_key >> 32) & 4294967295)::oid AND l.objid = (r.lock_key & 4294967295)::oid))`
	// The common case in one round trip: the cursor is at the previous
	// tick, the tick has fired and is on time, in database time.
	st.sqlFast = `WITH j AS (
	UPDATE ` + st.jobs + ` SET last_tick = $2
	WHERE job = $1 AND last_tick = $5 AND $6::timestamptz <= clock_timestamp() AND clock_timestamp() <= $7::timestamptz
	RETURNING job
), sweep AS (` + st.sqlSweep + ` AND EXISTS (SELECT 1 FROM j) RETURNING r.tick, r.instance
), ins AS (
	INSERT INTO ` + st.runs + ` (job, tick, through_tick, status, kind, instance, started_at, token, lock_key)
	SELECT $1, $2, $2, 'running', 'scheduled', $4, clock_timestamp(), COALESCE($8::int8, ` + st.fence + `), $3 FROM j
	RETURNING started_at, token
)
SELECT (SELECT started_at FROM ins), (SELECT token FROM ins), (SELECT last_tick FROM ` + st.jobs + ` WHERE job = $1),
	clock_timestamp(), (SELECT array_agg(tick ORDER BY tick) FROM sweep), (SELECT array_agg(instance ORDER BY tick) FROM sweep)`
	st.sqlSweep = st.t(st.sqlSweep)
	st.sqlFast = st.t(st.sqlFast)
	return st
}

// t puts the store's database time into a statement.
func (st *store) t(sql string) string { return strings.ReplaceAll(sql, "clock_timestamp()", st.nowSQL) }

// defRow is a job's definition as the jobs row records it: the one last
// registered, and the latest different one another instance reported.
type defRow struct {
	hash, instance, text                *string
	driftHash, driftInstance, driftText *string
	driftAt                             *time.Time
}

func (d *defRow) dest() []any {
	return []any{&d.hash, &d.instance, &d.text, &d.driftHash, &d.driftInstance, &d.driftText, &d.driftAt}
}

const defCols = `definition_hash, definition_instance, definition, drift_hash, drift_instance, drift_definition, drift_at`

// peekState is what awaitTick reads before taking the lock.
type peekState struct {
	now  time.Time  // database time
	last *time.Time // the cursor (nil: no tick recorded yet)
	def  defRow
}

// peek reads database time, the job's cursor and its registered
// definition, in one round trip, without locking anything.
func (st *store) peek(ctx context.Context, j *jobState) (peekState, error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var p peekState
	sent := st.clock.local.Now()
	err := st.pool.QueryRow(ctx, st.t(`SELECT n.now, j.last_tick, `+prefixed("j.", defCols)+`
FROM (SELECT clock_timestamp() AS now) n LEFT JOIN `+st.jobs+` j ON j.job = $1`), j.Name).
		Scan(append([]any{&p.now, &p.last}, p.def.dest()...)...)
	if err != nil {
		return p, fmt.Errorf("periodic: reading the state of %s: %w", j.Name, err)
	}
	st.clock.observe(p.now, sent, st.clock.local.Now())
	return p, nil
}

func prefixed(prefix, cols string) string {
	parts := strings.Split(cols, ", ")
	for i := range parts {
		parts[i] = prefix + parts[i]
	}
	return strings.Join(parts, ", ")
}

// register records j's definition in the jobs row (creating the row if
// needed), as the instance that added the job last, and returns the row's
// definition as it was before: the RETURNING subqueries read the row as of
// before the statement. It clears the drift this instance reported before.
func (st *store) register(ctx context.Context, j *jobState) (defRow, error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var old []string
	for _, col := range strings.Split(defCols, ", ") {
		old = append(old, `(SELECT o.`+col+` FROM `+st.jobs+` o WHERE o.job = $1)`)
	}
	var d defRow
	clear := func(col string) string {
		return col + ` = CASE WHEN t.drift_instance = $5 THEN NULL ELSE t.` + col + ` END`
	}
	err := st.pool.QueryRow(ctx, st.t(`INSERT INTO `+st.jobs+` AS t (job, schedule, floor_tick, definition_hash, definition, definition_instance, definition_at)
VALUES ($1, $2, clock_timestamp(), $3, $4, $5, clock_timestamp())
ON CONFLICT (job) DO UPDATE SET schedule = EXCLUDED.schedule, definition_hash = EXCLUDED.definition_hash,
	definition = EXCLUDED.definition, definition_instance = EXCLUDED.definition_instance, definition_at = EXCLUDED.definition_at,
	`+clear("drift_hash")+`, `+clear("drift_definition")+`, `+clear("drift_at")+`, `+clear("drift_instance")+`
RETURNING `+strings.Join(old, ", ")), j.Name, j.scheduleText, j.defHash, j.defText, st.instance).Scan(d.dest()...)
	if err != nil {
		return d, fmt.Errorf("periodic: registering %s: %w", j.Name, err)
	}
	return d, nil
}

// reportDrift records in the jobs row that this instance runs definition
// hash (text) while the row registers another one, so that every instance's
// Health sees the drift.
func (st *store) reportDrift(ctx context.Context, job, hash, text string) error {
	ctx, cancel := st.op(ctx)
	defer cancel()
	_, err := st.pool.Exec(ctx, st.t(`UPDATE `+st.jobs+` SET drift_hash = $2, drift_definition = $3, drift_instance = $4, drift_at = clock_timestamp()
WHERE job = $1 AND definition_hash IS DISTINCT FROM $2`), job, hash, text, st.instance)
	if err != nil {
		return fmt.Errorf("periodic: recording the definition drift of %s: %w", job, err)
	}
	return nil
}

// op bounds one bookkeeping operation. It is detached from the caller's
// cancellation: a run's outcome is recorded even while shutting down.
func (st *store) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), st.timeout)
}

// abandoned is a running row found without its lock.
type abandoned struct {
	tick     time.Time
	instance string
}

// claim is the outcome of a claim.
type claim struct {
	plan
	started   time.Time
	token     int64
	last      *time.Time // the cursor as seen (fast path) or left (slow path)
	now       time.Time  // database time
	notDue    bool       // fast path: the tick has not fired yet in database time
	abandoned []abandoned
}

// claimFast tries the one-statement claim of tick, expecting the cursor at
// prev. ok is false if the cursor was elsewhere, the tick not due or late.
func (st *store) claimFast(ctx context.Context, j *jobState, tick, prev time.Time, lockKey int64, token *int64) (claim, bool, error) {
	c, ok, err := st.claimFastOnce(ctx, j, tick, prev, lockKey, token)
	if isFenceReset(err) && st.prepareFence(ctx) == nil {
		c, ok, err = st.claimFastOnce(ctx, j, tick, prev, lockKey, token)
	}
	return c, ok, err
}

func (st *store) claimFastOnce(ctx context.Context, j *jobState, tick, prev time.Time, lockKey int64, token *int64) (c claim, ok bool, err error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	fire := fireAt(j.Schedule, j.Name, tick)
	var started *time.Time
	var tok *int64
	var ticks []time.Time
	var insts []string
	sent := st.clock.local.Now()
	err = st.pool.QueryRow(ctx, st.sqlFast, j.Name, tick, lockKey, st.instance, prev, fire, fire.Add(j.StartDeadline), token).
		Scan(&started, &tok, &c.last, &c.now, &ticks, &insts)
	if err != nil {
		return c, false, fmt.Errorf("periodic: claiming %s@%s: %w", j.Name, fmtTick(tick), err)
	}
	st.clock.observe(c.now, sent, st.clock.local.Now())
	for i := range ticks {
		c.abandoned = append(c.abandoned, abandoned{ticks[i], insts[i]})
	}
	if started == nil {
		c.notDue = c.now.Before(fire)
		return c, false, nil
	}
	c.plan = plan{run: true, tick: tick, fire: fire, kind: KindScheduled, cursor: tick}
	c.started, c.token = *started, *tok
	return c, true, nil
}

// claimSlow decides under the job row's lock what the due ticks since the
// cursor become, records the missed ones, and claims the first runnable one.
func (st *store) claimSlow(ctx context.Context, j *jobState, lockKey int64, token *int64, runOnStart bool) (claim, error) {
	c, err := st.claimSlowOnce(ctx, j, lockKey, token, runOnStart)
	if isFenceReset(err) && st.prepareFence(ctx) == nil {
		c, err = st.claimSlowOnce(ctx, j, lockKey, token, runOnStart)
	}
	return c, err
}

func (st *store) claimSlowOnce(ctx context.Context, j *jobState, lockKey int64, token *int64, runOnStart bool) (claim, error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var c claim
	err := pgx.BeginFunc(ctx, st.pool, func(tx pgx.Tx) error {
		var floor time.Time
		sent := st.clock.local.Now()
		// A claim inserts the job's row if it is missing (registering this
		// instance's definition), and locks it.
		err := tx.QueryRow(ctx, st.t(`INSERT INTO `+st.jobs+` AS t (job, schedule, floor_tick, definition_hash, definition, definition_instance, definition_at)
VALUES ($1, $2, clock_timestamp(), $3, $4, $5, clock_timestamp())
ON CONFLICT (job) DO UPDATE SET job = t.job
RETURNING floor_tick, last_tick, clock_timestamp()`), j.Name, j.scheduleText, j.defHash, j.defText, st.instance).Scan(&floor, &c.last, &c.now)
		if err != nil {
			return err
		}
		st.clock.observe(c.now, sent, st.clock.local.Now())
		c.plan = makePlan(planInput{sched: j.Schedule, name: j.Name, missed: j.Missed, deadline: j.StartDeadline,
			floor: floor, last: c.last, now: c.now, runOnStart: runOnStart})
		if c.cursor.IsZero() {
			return nil
		}
		b := &pgx.Batch{}
		if !c.missed.empty() {
			b.Queue(`INSERT INTO `+st.runs+` (job, tick, through_tick, ticks, status, kind, instance) VALUES ($1, $2, $3, $4, 'missed', 'missed', $5)`,
				j.Name, c.missed.first, c.missed.last, c.missed.n, st.instance)
		}
		if c.run {
			b.Queue(st.sqlSweep+` RETURNING r.tick, r.instance`, j.Name, c.tick, lockKey).Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var a abandoned
					if err := rows.Scan(&a.tick, &a.instance); err != nil {
						return err
					}
					c.abandoned = append(c.abandoned, a)
				}
				return rows.Err()
			})
			b.Queue(`INSERT INTO `+st.runs+` (job, tick, through_tick, status, kind, instance, started_at, token, lock_key)
VALUES ($1, $2, $2, 'running', $3, $4, `+st.nowSQL+`, COALESCE($5::int8, `+st.fence+`), $6)
RETURNING started_at, token`, j.Name, c.tick, string(c.kind), st.instance, token, lockKey).QueryRow(func(r pgx.Row) error {
				return r.Scan(&c.started, &c.token)
			})
		}
		b.Queue(`UPDATE `+st.jobs+` SET last_tick = $2 WHERE job = $1`, j.Name, c.cursor)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		cur := c.cursor
		c.last = &cur
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("periodic: claiming a tick of %s: %w", j.Name, err)
	}
	return c, nil
}

// finish records a run's outcome. It matches the row by instance too, and
// overrides an "abandoned" mark that a claimer may have set while this run's
// lock was briefly gone (a lost lease, a transaction aborted by an error).
func (st *store) finish(ctx context.Context, q querier, j *jobState, tick time.Time, status, errText string) (time.Time, error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var now time.Time
	var e *string
	if errText != "" {
		e = &errText
	}
	sql := st.t(`UPDATE ` + st.runs + ` SET status = $4, finished_at = clock_timestamp(), error = $5
WHERE job = $1 AND tick = $2 AND instance = $3 RETURNING clock_timestamp()`)
	err := q.QueryRow(ctx, sql, j.Name, tick, st.instance, status, e).Scan(&now)
	if _, inTx := q.(pgx.Tx); !inTx && connLost(err) {
		// The update is idempotent: retry once on a fresh connection.
		err = q.QueryRow(ctx, sql, j.Name, tick, st.instance, status, e).Scan(&now)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return now, fmt.Errorf("periodic: recording %s@%s: the run's row is gone (pruned or deleted by hand)", j.Name, fmtTick(tick))
	}
	if err != nil {
		return now, fmt.Errorf("periodic: recording %s@%s as %s: %w", j.Name, fmtTick(tick), status, err)
	}
	return now, nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// recordOverlap records the ticks that fired while the run of tick went on
// as skipped, under the job row's lock, and returns them.
func (st *store) recordOverlap(ctx context.Context, j *jobState, tick time.Time) (r tickRange, err error) {
	for try := 0; try < 2; try++ {
		if r, err = st.recordOverlapOnce(ctx, j, tick); !connLost(err) {
			break
		}
	}
	return r, err
}

func (st *store) recordOverlapOnce(ctx context.Context, j *jobState, tick time.Time) (tickRange, error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var r tickRange
	err := pgx.BeginFunc(ctx, st.pool, func(tx pgx.Tx) error {
		var last *time.Time
		var now time.Time
		sent := st.clock.local.Now()
		if err := tx.QueryRow(ctx, st.t(`SELECT last_tick, clock_timestamp() FROM `+st.jobs+` WHERE job = $1 FOR UPDATE`), j.Name).Scan(&last, &now); err != nil {
			return err
		}
		st.clock.observe(now, sent, st.clock.local.Now())
		from := tick
		if last != nil && last.After(from) {
			from = *last
		}
		r = overlapSkips(j.Schedule, j.Name, from, now)
		if r.empty() {
			return nil
		}
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO `+st.runs+` (job, tick, through_tick, ticks, status, kind, instance, error) VALUES ($1, $2, $3, $4, 'skipped', 'overlap', $5, $6)`,
			j.Name, r.first, r.last, r.n, st.instance, "overlap: the run of "+fmtTick(tick)+" was still running")
		b.Queue(`UPDATE `+st.jobs+` SET last_tick = $2 WHERE job = $1`, j.Name, r.last)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return r, fmt.Errorf("periodic: recording ticks of %s skipped for overlap: %w", j.Name, err)
	}
	return r, nil
}

// now reads database time (and refreshes the clock offset).
func (st *store) now(ctx context.Context) (time.Time, error) {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var now time.Time
	sent := st.clock.local.Now()
	if err := st.pool.QueryRow(ctx, "SELECT "+st.nowSQL).Scan(&now); err != nil {
		return now, err
	}
	st.clock.observe(now, sent, st.clock.local.Now())
	return now, nil
}

// prune deletes run rows whose ticks are older than cutoff, in batches,
// keeping running rows and each job's latest success. It returns how many
// it deleted.
func (st *store) prune(ctx context.Context, cutoff time.Time, batch int) (int64, error) {
	var total int64
	for {
		octx, cancel := context.WithTimeout(ctx, st.timeout)
		tag, err := st.pool.Exec(octx, `DELETE FROM `+st.runs+` WHERE ctid IN (
	SELECT ctid FROM `+st.runs+` r WHERE r.tick < $1 AND r.through_tick < $1 AND r.status <> 'running'
	AND (r.status <> 'succeeded' OR EXISTS (SELECT 1 FROM `+st.runs+` n WHERE n.job = r.job AND n.status = 'succeeded' AND n.tick > r.tick))
	LIMIT $2)`, cutoff, batch)
		cancel()
		if err != nil {
			return total, fmt.Errorf("periodic: pruning runs before %s: %w", fmtTick(cutoff), err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}

// isFenceReset reports fence_next()'s refusal to draw from a counter that a
// crash or a promotion reset before anyone bumped the epoch
// (migrations/005_fast_tokens.sql).
func isFenceReset(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "PB001"
}

// prepareFence bumps the fencing epoch after a reset of the counter, durably,
// then marks the counter used, so that fence_next() draws again: what every
// lock session does at connect.
func (st *store) prepareFence(ctx context.Context) error {
	ctx, cancel := st.op(ctx)
	defer cancel()
	schema := strings.TrimSuffix(st.fence, ".fence_next()")
	if _, err := st.pool.Exec(ctx, "SELECT "+schema+".fence_prepare()"); err != nil {
		return err
	}
	_, err := st.pool.Exec(ctx, "SELECT nextval('"+strings.ReplaceAll(schema, "'", "''")+".fence_counter')")
	return err
}

// checkSchema returns ErrNotMigrated if the tables are missing.
func (st *store) checkSchema(ctx context.Context) error {
	ctx, cancel := st.op(ctx)
	defer cancel()
	var ok bool
	// definition_hash comes with migration 003.
	err := st.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regprocedure($3) IS NOT NULL
	AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'definition_hash' AND NOT attisdropped)`,
		st.jobs, st.runs, st.fence).Scan(&ok)
	if err != nil {
		return fmt.Errorf("periodic: checking the schema: %w", err)
	}
	if !ok {
		return ErrNotMigrated
	}
	return nil
}

// endBackend terminates backend pid if it still holds key: a transaction
// whose connection the driver closed (a query cancelled by its context)
// keeps running on the server, with its lock, until the cancel request
// lands. It returns once the lock is gone or the bound expires.
func (st *store) endBackend(ctx context.Context, pid uint32, key int64) error {
	ctx, cancel := st.op(ctx)
	defer cancel()
	const holds = `FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid = $1
	AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
	AND l.classid = (($2::int8 >> 32) & 4294967295)::oid AND l.objid = ($2::int8 & 4294967295)::oid`
	if _, err := st.pool.Exec(ctx, `SELECT pg_terminate_backend(l.pid) `+holds, int64(pid), key); err != nil {
		return fmt.Errorf("periodic: ending backend %d: %w", pid, err)
	}
	for {
		var held bool
		if err := st.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 `+holds+`)`, int64(pid), key).Scan(&held); err != nil {
			return fmt.Errorf("periodic: waiting for backend %d to end: %w", pid, err)
		}
		if !held {
			return nil
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("periodic: backend %d still holds its lock: %w", pid, ctx.Err())
		}
	}
}

// connLost reports whether err means the connection failed (rather than
// the statement): a network error or the server ending the session.
func connLost(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, pgx.ErrNoRows) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "57P") || strings.HasPrefix(pe.Code, "08")
	}
	return true
}

func fmtTick(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.999999Z") }
