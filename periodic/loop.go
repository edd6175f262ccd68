package periodic

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// step is what a job's loop does next.
type step struct {
	target  time.Time     // tick to claim by the fast path; zero: slow path
	at      time.Time     // database time to wake up at; zero: see wait
	wait    time.Duration // local sleep when at is zero
	startup bool          // first claim since the job was added here
}

// loop schedules one job on this instance until it is stopped. Under
// OverlapForbid it runs the job inline, so a job never overlaps itself on
// one instance without a round trip; under OverlapAllow each run gets a
// goroutine.
func (s *Scheduler) loop(j *jobState) {
	defer s.loops.Done()
	defer func() {
		j.runs.Wait()
		close(j.done)
	}()
	next := step{startup: true}
	var backoff time.Duration
	for {
		wait := next.wait
		if !next.at.IsZero() {
			wait = s.clock.until(next.at)
		}
		if !sleep(j.stopCtx, wait) {
			return
		}
		n, err := s.attempt(j, next)
		if err != nil {
			if j.stopCtx.Err() != nil {
				return
			}
			s.emit(Event{Kind: EventError, Job: j.Name, Tick: next.target, Err: err})
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second, max(interval(j.Schedule, s.clock.now()), 100*time.Millisecond))
			n = step{wait: backoff, startup: next.startup}
		} else {
			backoff = 0
		}
		next = n
	}
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// nextTick is the step that waits for the first tick that has not fired
// yet (in estimated database time).
func (s *Scheduler) nextTick(j *jobState) step {
	now := s.clock.now()
	var t time.Time
	if l := latestDue(j.Schedule, j.Name, now); l.IsZero() {
		t = j.Schedule.Next(now)
	} else {
		t = j.Schedule.Next(l)
	}
	if t.IsZero() {
		return step{wait: 24 * time.Hour} // the schedule has ended
	}
	return step{target: t, at: fireAt(j.Schedule, j.Name, t)}
}

// held is a lock taken for one attempt: a lease (lease mode) or the
// transaction holding the xact lock (transaction mode).
type held struct {
	job   string
	key   pgbaton.Key
	lease *pgbaton.Lease
	tx    pgx.Tx
	pid   uint32 // the transaction's backend
}

// release gives the lock back without running anything.
func (s *Scheduler) release(h held) {
	if h.lease != nil {
		if err := h.lease.Release(); err != nil {
			s.cfg.Logger.Warn("periodic: releasing an unused lease", "key", h.key.String(), "err", err)
		}
	}
	if h.tx != nil {
		ctx, cancel := s.st.op(context.Background())
		defer cancel()
		if err := h.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			// The connection is gone on our side (a query cancelled by its
			// context closes it), but its backend may still be running the
			// transaction, lock held, until the cancel request lands.
			if err := s.st.endBackend(ctx, h.pid, h.key.ID()); err != nil {
				s.emit(Event{Kind: EventError, Job: h.job, Err: err})
			}
		}
	}
}

// lock takes the job's lock (or the tick's, under OverlapAllow) without
// waiting. busy is true if someone holds it.
func (s *Scheduler) lock(j *jobState, key pgbaton.Key) (h held, busy bool, err error) {
	h.job, h.key = j.Name, key
	ctx, cancel := s.st.op(j.stopCtx)
	defer cancel()
	if j.txMode() {
		tx, err := s.app.BeginTx(ctx, pgx.TxOptions{})
		if err != nil {
			return h, false, err
		}
		if err := pgbaton.TryLockTx(ctx, tx, key); err != nil {
			_ = tx.Rollback(ctx)
			return h, errors.Is(err, pgbaton.ErrNotAcquired), ignoreBusy(err)
		}
		h.tx, h.pid = tx, tx.Conn().PgConn().PID()
		return h, false, nil
	}
	lease, err := s.locker.TryAcquire(ctx, key)
	if err != nil {
		return h, errors.Is(err, pgbaton.ErrNotAcquired), ignoreBusy(err)
	}
	h.lease = lease
	return h, false, nil
}

func ignoreBusy(err error) error {
	if errors.Is(err, pgbaton.ErrNotAcquired) {
		return nil
	}
	return err
}

// attempt takes the lock, claims a tick and runs it. Taking the lock
// before claiming means a running row always has its lock held, so a
// claimer that finds a running row without its lock knows it is abandoned.
func (s *Scheduler) attempt(j *jobState, at step) (step, error) {
	key := j.key
	if j.Overlap == OverlapAllow {
		t := at.target
		if t.IsZero() {
			t = latestDue(j.Schedule, j.Name, s.clock.now())
		}
		key = j.tickKey(t)
	}
	h, busy, err := s.lock(j, key)
	if err != nil {
		return step{}, err
	}
	if busy {
		tick := at.target
		if tick.IsZero() {
			tick = latestDue(j.Schedule, j.Name, s.clock.now())
		}
		s.emit(Event{Kind: EventBusy, Job: j.Name, Tick: tick})
		return s.nextTick(j), nil
	}
	select {
	case <-j.stopCtx.Done(): // stopping: claim nothing more
		s.release(h)
		return step{}, nil
	default:
	}
	var token *int64
	if h.lease != nil {
		if t, ok := h.lease.Token(); ok {
			token = &t
		}
	}
	var c claim
	if !at.target.IsZero() && !at.startup {
		var ok bool
		c, ok, err = s.st.claimFast(j.stopCtx, j, at.target, j.Schedule.Prev(at.target), key.ID(), token)
		switch {
		case err != nil:
			s.release(h)
			return step{}, err
		case ok:
		case c.notDue:
			// Woken early: the local clock's estimate of database time was
			// ahead (a jump, a drift). The claim has just re-measured the
			// offset, so the next tick is computed afresh.
			s.release(h)
			return s.nextTick(j), nil
		case c.last != nil && !c.last.Before(at.target):
			s.release(h)
			s.emit(Event{Kind: EventClaimedElsewhere, Job: j.Name, Tick: at.target})
			return s.nextTick(j), nil
		}
		if !ok {
			c, err = s.st.claimSlow(j.stopCtx, j, key.ID(), token, false)
		}
	} else {
		c, err = s.st.claimSlow(j.stopCtx, j, key.ID(), token, at.startup && j.RunOnStart)
	}
	if err != nil {
		s.release(h)
		return step{}, err
	}
	for _, a := range c.abandoned {
		s.emit(Event{Kind: EventAbandoned, Job: j.Name, Tick: a.tick, Instance: a.instance})
	}
	if !c.missed.empty() {
		s.emit(Event{Kind: EventMissed, Job: j.Name, Tick: c.missed.first, Through: c.missed.last, Ticks: c.missed.n})
	}
	if !c.run {
		s.release(h)
		if !at.startup && c.missed.empty() && !at.target.IsZero() {
			s.emit(Event{Kind: EventClaimedElsewhere, Job: j.Name, Tick: at.target})
		}
		return s.nextTick(j), nil
	}
	if j.Overlap == OverlapAllow {
		j.runs.Add(1)
		go func() {
			defer j.runs.Done()
			s.execute(j, c, h)
		}()
	} else {
		s.execute(j, c, h)
	}
	if c.more {
		return step{}, nil
	}
	return s.nextTick(j), nil
}
