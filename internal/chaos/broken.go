package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/fence"
	"github.com/pgbaton/pgbaton/internal/history"
)

func (w *worker) loop(ctx context.Context, g int) {
	var raw *rawConn
	defer func() {
		if raw != nil {
			raw.close()
		}
	}()
	for w.waitResumed(ctx) {
		switch {
		case w.cfg.Mode == ModePoolLock:
			w.poolLockOnce(ctx, w.randKey())
		case w.cfg.Mode == modeStuck:
			w.stuckForever(w.randKey())
		case rawMode(w.cfg.Mode):
			if raw == nil || raw.c.IsClosed() {
				if raw != nil {
					raw.close()
				}
				var err error
				if raw, err = w.dialRaw(ctx, g); err != nil {
					raw = nil
					w.sleep(ctx, jitter(100*time.Millisecond))
					continue
				}
			}
			w.rawOnce(ctx, raw)
		default:
			w.lockerOnce(ctx, g)
		}
	}
}

// stuckForever is a call that never returns and ignores every context.
func (w *worker) stuckForever(key string) {
	w.callStart("Acquire", key, time.Second, defaultBounds.acquire(time.Second))
	select {} // deliberately never returns
}

// write makes one fenced write to the key's row (or an unguarded one in the
// unfenced control). Accepted writes are logged by the resource itself;
// rejected ones are recorded here.
func (w *worker) write(l history.Lease, key string, tok int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if w.cfg.Unfenced {
		_, err = w.app.Exec(ctx, "UPDATE chaos_resource SET value = value + 1, writer = $3, fence_token = $1 WHERE key = $2", tok, key, l.ID)
	} else {
		err = resource.Update(ctx, w.app, fence.Token(tok), key, "value = value + 1, writer = $3", l.ID)
	}
	if errors.Is(err, fence.ErrStaleToken) {
		w.rec.Write(history.Write{Lease: l.ID, Proc: l.Proc, Key: key, Token: tok, Accepted: false, At: w.estimate()})
	}
}

// poolLockOnce is the first seed's bug: a session lock taken through a
// pool, work done, and the unlock sent through the pool too, where it may
// land on another connection.
func (w *worker) poolLockOnce(ctx context.Context, key string) {
	id := pgbaton.KeyName(key).ID()
	before, ok0 := w.now(ctx)
	var ok bool
	var tok *int64
	err := w.app.QueryRow(ctx, "SELECT l, CASE WHEN l THEN nextval('pgbaton.fence_token') END FROM pg_try_advisory_lock($1) AS l", id).Scan(&ok, &tok)
	if err != nil || !ok || tok == nil {
		w.sleep(ctx, jitter(w.cfg.Backoff))
		return
	}
	grant, ok1 := w.now(ctx)
	l := history.Lease{
		ID: fmt.Sprintf("%s-%d", w.cfg.Proc, w.seq.Add(1)), Proc: w.cfg.Proc, Key: key,
		Token: *tok, HasToken: true, Before: before, Grant: grant, Kind: history.Open, Estimated: !ok0 || !ok1,
	}
	w.rec.Lease(l)
	for range 1 + rand.N(3) {
		w.sleep(ctx, jitter(w.cfg.Pace))
		w.write(l, key, *tok)
	}
	end, ok2 := w.now(ctx)
	var unlocked bool
	if err := w.app.QueryRow(context.Background(), "SELECT pg_advisory_unlock($1)", id).Scan(&unlocked); err != nil {
		unlocked = false
	}
	// The broken code believes it released; the server's answer is kept
	// as evidence.
	l.End, l.Kind, l.UnlockFalse = end, history.Released, !unlocked
	l.Estimated = l.Estimated || !ok2
	w.rec.Lease(l)
}

// rawConn is a pinned lock session of a raw (deliberately broken) mode,
// named like a Locker's ("pgbaton:<proc>~x<g>:1") so that the nemesis and
// the checks treat it as one.
type rawConn struct {
	c   *pgx.Conn
	pid int
}

func (r *rawConn) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = r.c.Close(ctx) // the session's locks go with it; nothing to report
}

func (w *worker) dialRaw(ctx context.Context, g int) (*rawConn, error) {
	cfg, err := pgx.ParseConfig(w.cfg.LockDSN)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = fmt.Sprintf("pgbaton:%s~x%d:1", w.cfg.Proc, g)
	cfg.RuntimeParams["lock_timeout"] = "0"
	cfg.RuntimeParams["statement_timeout"] = "0"
	cfg.ConnectTimeout = workerConnectTimeout
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &rawConn{c: c, pid: int(c.PgConn().PID())}, nil
}

// rawOnce is one iteration of a raw mode. Each mode is correct except for
// its one deliberate bug, so that the checker's verdict names that bug.
func (w *worker) rawOnce(ctx context.Context, r *rawConn) {
	key := w.randKey()
	id := pgbaton.KeyName(key).ID()
	b := defaultBounds
	w.begin(key)
	before, ok0 := w.now(ctx)
	var (
		tok  int64
		err  error
		c    *callRec
		xact bool
	)
	switch w.cfg.Mode {
	case ModeForgetOnError:
		// A short wait, as Acquire(Wait(1-20ms)) does it; one statement in
		// eight fails right after the grant (a volatile division by zero
		// evaluated after the lock, as a lock_timeout or a cancel landing
		// at the grant would).
		wait := time.Duration(1+rand.N(20)) * time.Millisecond
		c = w.callStart("Acquire", key, wait, b.acquire(wait))
		qctx, cancel := context.WithTimeout(ctx, b.acquire(wait))
		var x *int32
		err = r.c.QueryRow(qctx, `SELECT set_config('lock_timeout', $1::text, true), pg_advisory_lock($2::int8),
			nextval('pgbaton.fence_token'), CASE WHEN $3::bool THEN 1 / floor(random())::int4 END`,
			pgMillis(wait), id, rand.N(8) == 0).Scan(nil, nil, &tok, &x)
		cancel()
	case ModePanicLeak:
		xact = true
		wait := time.Second
		c = w.callStart("WithXactLock", key, wait, b.with(wait))
		qctx, cancel := context.WithTimeout(ctx, b.acquire(wait))
		if _, err = r.c.Exec(qctx, "BEGIN"); err == nil {
			err = r.c.QueryRow(qctx, `SELECT set_config('lock_timeout', $1::text, true), pg_advisory_xact_lock($2::int8),
				nextval('pgbaton.fence_token')`, pgMillis(wait), id).Scan(nil, nil, &tok)
			if err != nil {
				_, _ = r.c.Exec(context.Background(), "ROLLBACK") // the lock statement's error is the one to report
			}
		}
		cancel()
	case ModeUnboundedWait:
		// The caller asks for 20ms; the broken code waits for as long as
		// the holder holds (no lock_timeout, no context).
		wait := 20 * time.Millisecond
		c = w.callStart("Acquire", key, wait, b.acquire(wait))
		err = r.c.QueryRow(context.Background(), "SELECT pg_advisory_lock($1::int8), nextval('pgbaton.fence_token')", id).Scan(nil, &tok)
	}
	if err != nil {
		// The broken part of ModeForgetOnError: the key is forgotten and
		// the connection goes on serving.
		call := w.callEnd(c, err, false, 0)
		w.end(key)
		w.checkLeft(ctx, call, key)
		w.sleep(ctx, jitter(w.cfg.Backoff))
		return
	}
	if !xact {
		w.callEnd(c, nil, false, 0)
	}
	grant, ok1 := w.now(ctx)
	l := history.Lease{ID: fmt.Sprintf("%s-%d", w.cfg.Proc, w.seq.Add(1)), Proc: w.cfg.Proc, Key: key, Token: tok, HasToken: true,
		PID: r.pid, Before: before, Grant: grant, Kind: history.Open, Estimated: !ok0 || !ok1}
	w.rec.Lease(l)
	t0 := time.Now()
	writes := 1 + rand.N(3)
	long := w.cfg.Mode == ModeUnboundedWait && rand.N(3) == 0
	for range writes {
		w.sleep(ctx, jitter(w.cfg.Pace))
		w.write(l, key, tok)
	}
	if long {
		time.Sleep(8 * time.Second) // the long holder the unbounded waiters queue behind (their bound: 7.02s)
	}
	end, ok2 := w.now(ctx)
	l.End = end
	l.Estimated = l.Estimated || !ok1 || !ok2
	if xact && rand.N(4) == 0 {
		// The broken part of ModePanicLeak: the section panics, the worker
		// recovers, and nothing ends the transaction.
		l.Kind, l.Panicked = history.Released, true
		w.rec.Lease(l)
		call := w.callEnd(c, nil, true, time.Since(t0))
		w.end(key)
		w.checkLeft(ctx, call, key)
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), b.release)
	defer cancel()
	var held bool
	var rc *callRec
	if xact {
		_, err = r.c.Exec(rctx, "COMMIT")
		held = err == nil
		w.callEnd(c, err, false, time.Since(t0))
	} else {
		rc = w.callStart("Release", key, 0, b.release)
		err = r.c.QueryRow(rctx, "SELECT pg_advisory_unlock($1::int8)", id).Scan(&held)
		w.callEnd(rc, err, false, 0)
	}
	l.Kind = history.Released
	if err != nil || !held {
		l.Kind, l.Signalled, l.UnlockFalse = history.Lost, l.End, err == nil
	}
	w.rec.Lease(l)
	w.end(key)
}

// pgMillis renders d for lock_timeout, at least 1ms.
func pgMillis(d time.Duration) string {
	return fmt.Sprintf("%dms", max(d.Milliseconds(), 1))
}
