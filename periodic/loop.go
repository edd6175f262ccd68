package periodic

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// step is what a job's loop does next.
type step struct {
	target  time.Time     // tick to claim by the fast path; zero: slow path
	wait    time.Duration // local sleep before the attempt (a backoff)
	startup bool          // first claim since the job was added here
	busy    int           // times the lock was found busy for target
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
	registered := false
	for {
		if !sleep(j.stopCtx, next.wait) {
			return
		}
		var n step
		var err error
		if !registered {
			// The job's definition, recorded as the latest registration
			// (whatever the lock says), so drift between instances shows.
			var d defRow
			if d, err = s.st.register(j.stopCtx, j); err == nil {
				registered = true
				s.checkDrift(j, d)
			}
		}
		if err == nil && !next.target.IsZero() {
			n, err = s.awaitTick(j, next)
		}
		if err == nil && n == (step{}) {
			n, err = s.attempt(j, next)
		}
		if err != nil {
			if j.stopCtx.Err() != nil {
				return
			}
			if errors.Is(err, ErrScheduleBroken) {
				// The schedule cannot say when the next tick is: report it and
				// stop scheduling the job here; Health reports it until the job
				// is removed or the scheduler closed.
				j.setScheduleErr(err)
				s.emitScheduleError(j, err)
				<-j.stopCtx.Done()
				return
			}
			s.emit(Event{Kind: EventError, Job: j.Name, Tick: next.target, Err: err})
			iv := s.realDuration(interval(j.Schedule, s.clock.now()))
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second, max(iv, 10*time.Millisecond))
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

// awaitTick waits until at.target has fired by the database's clock,
// before any lock is taken: an instance whose local estimate of database
// time runs ahead must not hold the job's lock while the tick is not due
// (the others, finding it busy, would give the tick up). It sleeps on the
// local estimate, at most one interval (at most a minute) at a time, then
// asks the database for its time and the job's cursor, and sleeps the
// exact remainder if the tick has not fired yet: measured from the
// database's answer, the remainder does not depend on the local clock,
// which may have jumped or drifted since the last round trip.
//
// It returns the zero step when the caller should go on and claim the
// tick, or the next step: the tick is recorded already (the cursor is at or
// past it: covered by another instance), or the job is stopping.
func (s *Scheduler) awaitTick(j *jobState, at step) (step, error) {
	fire := fireAt(j.Schedule, j.Name, at.target)
	most := min(max(interval(j.Schedule, at.target), 10*time.Millisecond), time.Minute)
	wait := min(s.clock.until(fire), most)
	for {
		if !sleep(j.stopCtx, s.realDuration(wait)) {
			return step{wait: time.Hour}, nil // stopping; the loop sees it
		}
		p, err := s.st.peek(j.stopCtx, j)
		if err != nil {
			return step{}, err
		}
		s.checkDrift(j, p.def)
		if p.last != nil && !p.last.Before(at.target) {
			s.emit(Event{Kind: EventClaimedElsewhere, Job: j.Name, Tick: at.target})
			return s.nextAfter(j, *p.last)
		}
		if !p.now.Before(fire) {
			return step{}, nil
		}
		wait = fire.Sub(p.now)
		if wait < most {
			wait += time.Millisecond
		} else {
			wait = most
		}
	}
}

// nextAfter is the step that claims the first tick after the tick just
// dealt with, or, if that one's start deadline has passed already (this
// instance fell behind: a long run, a stall), the latest tick that can
// still start on time, or the one after it. Ticks it passes over are
// recorded by the claim of the tick it targets (missed, per the policy).
func (s *Scheduler) nextAfter(j *jobState, after time.Time) (step, error) {
	t, err := s.nextTick(j, after)
	if err != nil {
		return step{}, err
	}
	now := s.clock.now()
	if now.After(fireAt(j.Schedule, j.Name, t).Add(j.StartDeadline)) {
		l := latestDue(j.Schedule, j.Name, now)
		switch {
		case !l.IsZero() && l.After(t) && !now.After(fireAt(j.Schedule, j.Name, l).Add(j.StartDeadline)):
			t = l
		case !l.IsZero() && l.After(t):
			if t, err = s.nextTick(j, l); err != nil {
				return step{}, err
			}
		}
	}
	return step{target: t}, nil
}

// firstOpen is the step after a slow-path attempt: the tick after the
// cursor or the latest due tick, whichever is later.
func (s *Scheduler) firstOpen(j *jobState, cursor *time.Time, now time.Time) (step, error) {
	after := latestDue(j.Schedule, j.Name, now)
	if cursor != nil && cursor.After(after) {
		after = *cursor
	}
	if after.IsZero() {
		after = now
	}
	return s.nextAfter(j, after)
}

// tickNexter is the bounded form of Schedule.Next that schedules may
// implement: the first tick strictly after t, or an error (no next tick,
// or none within the schedule's own horizon).
type tickNexter interface {
	NextTick(after time.Time) (time.Time, error)
}

// nextTickHorizon bounds how far ahead a next tick may be: a later one is
// taken for a broken computation.
const nextTickHorizon = 10 * 366 * 24 * time.Hour

// ErrScheduleBroken: a job's schedule could not give its next tick: it
// reported none, returned one not after its argument or beyond ten years,
// panicked, or did not return within Config.ScheduleTimeout. The job is
// not scheduled on this instance any more (an [EventScheduleError] and
// [JobHealth.ScheduleError] say why); fix the schedule and add the job
// again.
var ErrScheduleBroken = errors.New("periodic: the job's schedule gives no next tick")

// EventScheduleError: the job's schedule could not give its next tick (Err
// matches [ErrScheduleBroken] and says why); the job stopped being
// scheduled on this instance.
const EventScheduleError EventKind = "schedule_error"

// boundedNext returns the first tick of sched strictly after after, using
// its NextTick method when it has one, and checks that the result
// advances and lies within the horizon. Schedules other than the package's
// own are also bounded in time (see guardedSchedule).
func boundedNext(sched Schedule, after time.Time) (time.Time, error) {
	if g, ok := sched.(*guardedSchedule); ok {
		if err := g.broken(); err != nil {
			return time.Time{}, err
		}
	}
	var t time.Time
	if nt, ok := sched.(tickNexter); ok {
		var err error
		if t, err = nt.NextTick(after); err != nil {
			if errors.Is(err, ErrScheduleBroken) {
				return t, err
			}
			return t, fmt.Errorf("%w: %s after %s: %w", ErrScheduleBroken, sched, fmtTick(after), err)
		}
	} else {
		t = sched.Next(after)
	}
	if g, ok := sched.(*guardedSchedule); ok {
		if err := g.broken(); err != nil {
			return time.Time{}, err
		}
	}
	switch {
	case t.IsZero():
		return t, fmt.Errorf("%w: %s has no tick after %s", ErrScheduleBroken, sched, fmtTick(after))
	case !t.After(after):
		return t, fmt.Errorf("%w: %s: Next(%s) returned %s, which is not after it", ErrScheduleBroken, sched, fmtTick(after), fmtTick(t))
	case t.Sub(after) > nextTickHorizon:
		return t, fmt.Errorf("%w: %s: Next(%s) returned %s, more than ten years later", ErrScheduleBroken, sched, fmtTick(after), fmtTick(t))
	}
	return t, nil
}

// nextTick is boundedNext for the job's schedule.
func (s *Scheduler) nextTick(j *jobState, after time.Time) (time.Time, error) {
	return boundedNext(j.Schedule, after)
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

// busyStep decides what to do after finding the lock busy for at.target.
// Busy does not mean covered: the holder may be an instance that is about
// to find the tick not due, or a run of an earlier tick. Only a recorded
// claim (the cursor at or past the tick, read by awaitTick) covers it, so
// the tick is re-checked, with a doubling pause from 5 ms, until its start
// deadline passes; then it is given up ("lock busy"), and the claim of a
// later tick records what it became.
func (s *Scheduler) busyStep(j *jobState, at step) (step, error) {
	deadline := fireAt(j.Schedule, j.Name, at.target).Add(j.StartDeadline)
	now := s.clock.now()
	pause := min(5*time.Millisecond<<min(at.busy, 12), max(s.realDuration(j.StartDeadline/4), 5*time.Millisecond))
	if now.Add(s.virtualDuration(pause)).After(deadline) {
		s.emit(Event{Kind: EventBusy, Job: j.Name, Tick: at.target})
		return s.nextAfter(j, at.target)
	}
	return step{target: at.target, wait: pause, busy: at.busy + 1}, nil
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
		if !at.target.IsZero() {
			return s.busyStep(j, at)
		}
		// Slow path (start, or after an error): whoever holds the lock is
		// claiming or running; aim at the latest due tick if it can still
		// start on time, else the next one, and re-check it.
		now := s.clock.now()
		s.emit(Event{Kind: EventBusy, Job: j.Name, Tick: latestDue(j.Schedule, j.Name, now)})
		return s.firstOpen(j, nil, s.clock.now().Add(-j.StartDeadline))
	}
	select {
	case <-j.stopCtx.Done(): // stopping: claim nothing more
		s.release(h)
		return step{wait: time.Hour}, nil
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
			// The database's clock went back between awaitTick and the claim
			// (awaitTick saw the tick due): try the same tick again.
			s.release(h)
			return step{target: at.target}, nil
		case c.last != nil && !c.last.Before(at.target):
			s.release(h)
			s.emit(Event{Kind: EventClaimedElsewhere, Job: j.Name, Tick: at.target})
			return s.nextAfter(j, at.target)
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
		return s.firstOpen(j, c.last, c.now)
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
	return s.nextAfter(j, c.tick)
}

// ownSchedule reports whether sched is one of this package's schedules,
// whose computations are bounded by construction.
func ownSchedule(sched Schedule) bool {
	switch sched.(type) {
	case EverySchedule, CronSchedule:
		return true
	}
	return false
}

// guardedSchedule calls a schedule of the caller's own under a bound: each
// call runs in a goroutine and is given up after the timeout, or when the
// job stops. A call that times out, panics, or returns a tick that does
// not advance (Next not after its argument, Prev not before it) marks the
// schedule broken: from then on every call returns the zero Time (no
// tick) at once, and boundedNext reports the reason. A given-up call's
// goroutine ends when the schedule's method returns.
type guardedSchedule struct {
	inner   Schedule
	timeout time.Duration
	stop    <-chan struct{}
	text    string
	jitter  time.Duration
	err     atomic.Pointer[error]
}

// guard wraps sched, reading its String, JitterMax and Err once, under
// the bound.
func guard(sched Schedule, timeout time.Duration, stop <-chan struct{}) (*guardedSchedule, error) {
	g := &guardedSchedule{inner: sched, timeout: timeout, stop: stop}
	type info struct {
		text   string
		jitter time.Duration
		err    error
	}
	r, err := bounded(g, "String", func() info {
		var in info
		in.text = sched.String()
		if j, ok := sched.(Jittered); ok {
			in.jitter = j.JitterMax()
		}
		in.err = scheduleErr(sched)
		return in
	})
	if err != nil {
		return nil, err
	}
	g.text, g.jitter = r.text, r.jitter
	return g, r.err
}

// bounded runs f under g's bound.
func bounded[T any](g *guardedSchedule, what string, f func() T) (T, error) {
	var zero T
	type result struct {
		v     T
		panic any
	}
	ch := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- result{panic: p}
			}
		}()
		ch <- result{v: f()}
	}()
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.panic != nil {
			return zero, g.fail(fmt.Errorf("%w: %T.%s panicked: %v", ErrScheduleBroken, g.inner, what, r.panic))
		}
		return r.v, nil
	case <-t.C:
		return zero, g.fail(fmt.Errorf("%w: %T.%s did not return within %s (Config.ScheduleTimeout)", ErrScheduleBroken, g.inner, what, g.timeout))
	case <-g.stop:
		return zero, fmt.Errorf("periodic: job stopped during %T.%s", g.inner, what)
	}
}

// fail records err as why the schedule is broken (the first one recorded
// wins) and returns the recorded one. Next and Prev drop that result: they
// answer the zero time, and broken reports the error to the loop.
func (g *guardedSchedule) fail(err error) error {
	g.err.CompareAndSwap(nil, &err)
	return *g.err.Load()
}

// broken returns why the schedule is broken, or nil.
func (g *guardedSchedule) broken() error {
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Next implements [Schedule].
func (g *guardedSchedule) Next(t time.Time) time.Time {
	if g.broken() != nil {
		return time.Time{}
	}
	n, err := bounded(g, "Next", func() time.Time { return g.inner.Next(t) })
	if err == nil && !n.IsZero() && !n.After(t) {
		_ = g.fail(fmt.Errorf("%w: %s: Next(%s) returned %s, which is not after it", ErrScheduleBroken, g.text, fmtTick(t), fmtTick(n)))
		return time.Time{}
	}
	return n
}

// Prev implements [Schedule].
func (g *guardedSchedule) Prev(t time.Time) time.Time {
	if g.broken() != nil {
		return time.Time{}
	}
	p, err := bounded(g, "Prev", func() time.Time { return g.inner.Prev(t) })
	if err == nil && !p.IsZero() && !p.Before(t) {
		_ = g.fail(fmt.Errorf("%w: %s: Prev(%s) returned %s, which is not before it", ErrScheduleBroken, g.text, fmtTick(t), fmtTick(p)))
		return time.Time{}
	}
	return p
}

// NextTick is Next with its error, for boundedNext.
func (g *guardedSchedule) NextTick(t time.Time) (time.Time, error) {
	if nt, ok := g.inner.(tickNexter); ok && g.broken() == nil {
		type r struct {
			t   time.Time
			err error
		}
		v, err := bounded(g, "NextTick", func() r { t, err := nt.NextTick(t); return r{t, err} })
		if err != nil {
			return time.Time{}, err
		}
		return v.t, v.err
	}
	n := g.Next(t)
	if err := g.broken(); err != nil {
		return n, err
	}
	return n, nil
}

// String implements [Schedule] (read once, when the job was added).
func (g *guardedSchedule) String() string { return g.text }

// JitterMax implements [Jittered] (read once, when the job was added).
func (g *guardedSchedule) JitterMax() time.Duration { return g.jitter }
