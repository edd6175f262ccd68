package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton/periodic"
)

// jobs are the first seed's four background jobs.
type jobs struct {
	cfg    Config
	pool   *pgxpool.Pool
	client *http.Client
	log    *slog.Logger
}

func (js *jobs) all() []periodic.Job {
	c := js.cfg
	return []periodic.Job{
		// Transaction mode: each batch's hashes commit with the run.
		{Name: "integrity-hash-retry", Schedule: periodic.Every(c.HashRetryEvery), RunTx: js.hashRetry,
			Missed: periodic.MissedRunOnce, Timeout: c.HashRetryEvery * 4},
		{Name: "activation-drip", Schedule: periodic.Every(c.DripEvery), RunTx: js.drip,
			Missed: periodic.MissedRunOnce, Timeout: 10 * time.Minute},
		{Name: "db-retention", Schedule: periodic.Every(c.RetentionEvery), RunTx: js.retention,
			Missed: periodic.MissedRunOnce, Timeout: 30 * time.Minute},
		// Lease mode: a long cycle of external calls whose results commit
		// one by one on the pool; cancelled if the lease is lost.
		{Name: "test-scheduler", Schedule: periodic.Every(c.TestEvery), Run: js.testCycle,
			Missed: periodic.MissedSkip, Timeout: c.TestTimeout},
	}
}

// hashOf is an audit record's integrity hash.
func hashOf(secret []byte, id int64, txnID, payload string) string {
	m := hmac.New(sha256.New, secret)
	_, _ = fmt.Fprintf(m, "%d|%s|%s", id, txnID, payload)
	return hex.EncodeToString(m.Sum(nil))
}

// batchOpts tune hashBatch; tests use the knobs to show what SKIP LOCKED
// prevents.
type batchOpts struct {
	limit     int
	noLock    bool   // select without FOR UPDATE SKIP LOCKED (the bug)
	afterRead func() // called between reading the batch and updating it
	instance  string
	secret    []byte
}

// hashBatch hashes up to limit pending records in tx and returns how many.
// Rows are taken FOR UPDATE SKIP LOCKED: concurrent workers (another
// process, a manual backfill) get disjoint batches instead of hashing the
// same rows twice or queueing behind each other.
func hashBatch(ctx context.Context, tx pgx.Tx, o batchOpts) (int, error) {
	lock := " FOR UPDATE SKIP LOCKED"
	if o.noLock {
		lock = ""
	}
	rows, err := tx.Query(ctx, `SELECT id, txn_id, payload::text FROM audit_records
		WHERE hash_status = 'pending' ORDER BY id LIMIT $1`+lock, o.limit)
	if err != nil {
		return 0, err
	}
	var ids []int64
	var hashes []string
	for rows.Next() {
		var id int64
		var txn, payload string
		if err := rows.Scan(&id, &txn, &payload); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
		hashes = append(hashes, hashOf(o.secret, id, txn, payload))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if o.afterRead != nil {
		o.afterRead()
	}
	if len(ids) == 0 {
		return 0, nil
	}
	_, err = tx.Exec(ctx, `UPDATE audit_records a SET hash = u.hash, hash_status = 'complete',
		hash_attempts = a.hash_attempts + 1, hashed_at = now(), hashed_by = $3
		FROM unnest($1::bigint[], $2::text[]) AS u(id, hash) WHERE a.id = u.id`, ids, hashes, o.instance)
	return len(ids), err
}

// hashRetry drains pending records, a batch at a time, within one run.
func (js *jobs) hashRetry(ctx context.Context, tx pgx.Tx, run periodic.Run) error {
	total := 0
	for b := 0; b < js.cfg.HashMaxBatches; b++ {
		n, err := hashBatch(ctx, tx, batchOpts{limit: js.cfg.HashBatch, instance: run.Instance, secret: []byte(js.cfg.HMACSecret)})
		if err != nil {
			return fmt.Errorf("integrity-hash-retry: batch %d: %w", b, err)
		}
		total += n
		if n < js.cfg.HashBatch {
			break
		}
	}
	if total > 0 {
		js.log.Info("integrity-hash-batch-done", "records", total, "tick", run.Tick)
	}
	return nil
}

// drip sends the activation reminders that are due: N small updates.
func (js *jobs) drip(ctx context.Context, tx pgx.Tx, run periodic.Run) error {
	delay := js.cfg.DripDelay.Seconds()
	stages := []struct {
		stage    int
		after    float64
		template string
	}{{0, delay, "activation-reminder-1"}, {1, 3 * delay, "activation-reminder-2"}}
	// A stage is due after its delay since signup, and never less than the
	// base delay after the previous reminder.
	sent := 0
	for _, st := range stages {
		rows, err := tx.Query(ctx, `SELECT id FROM users WHERE activated_at IS NULL AND drip_stage = $1
			AND created_at < now() - make_interval(secs => $2)
			AND (last_drip_at IS NULL OR last_drip_at < now() - make_interval(secs => $3))
			ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED`, st.stage, st.after, delay)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		for _, id := range ids {
			if _, err := tx.Exec(ctx, `INSERT INTO email_outbox (user_id, template) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, st.template); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE users SET drip_stage = $2 + 1, last_drip_at = now() WHERE id = $1`, id, st.stage); err != nil {
				return err
			}
			sent++
		}
	}
	if sent > 0 {
		js.log.Info("activation-drip-done", "emails", sent, "tick", run.Tick)
	}
	return nil
}

// retention trims five tables in one transaction: all or nothing.
func (js *jobs) retention(ctx context.Context, tx pgx.Tx, run periodic.Run) error {
	age := js.cfg.RetentionAge.Seconds()
	deletes := []struct {
		sql  string
		args []any
	}{
		{`DELETE FROM rate_limit_counters WHERE window_start < now() - make_interval(secs => $1)`, []any{age}},
		{`DELETE FROM sessions WHERE expires_at < now()`, nil},
		{`DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)`, []any{age}},
		{`DELETE FROM email_outbox WHERE sent_at < now() - make_interval(secs => $1)`, []any{age}},
		{`DELETE FROM test_results WHERE created_at < now() - make_interval(secs => $1)`, []any{age}},
	}
	var counts []any
	for _, d := range deletes {
		tag, err := tx.Exec(ctx, d.sql, d.args...)
		if err != nil {
			return fmt.Errorf("db-retention: %w", err)
		}
		counts = append(counts, tag.RowsAffected())
	}
	js.log.Info("db-retention-done", "deleted", counts, "tick", run.Tick)
	return nil
}

// testCycle calls every enabled capability (up to 20) through the SSRF
// guard and records each result on its own: one failure does not undo the
// others. It stops when its context ends (lease lost, timeout, shutdown).
func (js *jobs) testCycle(ctx context.Context, run periodic.Run) error {
	rows, err := js.pool.Query(ctx, `SELECT name, url FROM capabilities WHERE enabled ORDER BY name LIMIT 20`)
	if err != nil {
		return err
	}
	type capability struct{ name, url string }
	caps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (capability, error) {
		var c capability
		return c, r.Scan(&c.name, &c.url)
	})
	if err != nil {
		return err
	}
	for _, c := range caps {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		res := js.call(ctx, c.url, run)
		var errText *string
		if res.err != nil {
			s := res.err.Error()
			errText = &s
		}
		if _, err := js.pool.Exec(ctx, `INSERT INTO test_results (capability, tick, token, instance, http_status, ok, error, latency_ms)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (capability, tick) DO NOTHING`,
			c.name, run.Tick, run.Token, run.Instance, res.status, res.ok, errText, res.latency.Milliseconds()); err != nil {
			return fmt.Errorf("test-scheduler: recording %s: %w", c.name, err)
		}
	}
	return nil
}

// callResult is one capability call's outcome.
type callResult struct {
	status  *int
	ok      bool
	err     error
	latency time.Duration
}

func (js *jobs) call(ctx context.Context, url string, run periodic.Run) callResult {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return callResult{err: err}
	}
	req.Header.Set("X-Seedjobs-Tick", run.Tick.UTC().Format(time.RFC3339Nano))
	req.Header.Set("X-Seedjobs-Token", strconv.FormatInt(run.Token, 10))
	resp, err := js.client.Do(req)
	if err != nil {
		return callResult{err: err, latency: time.Since(start)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	code := resp.StatusCode
	return callResult{status: &code, ok: code < 400, latency: time.Since(start)}
}
