package periodic

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// fnState tracks who owns a running function's cleanup: the scheduler
// while it waits, or the function's goroutine once the scheduler gave up.
type fnState struct {
	mu        sync.Mutex
	returned  bool
	abandoned bool
}

// execute runs a claimed tick and records its outcome. It holds h until the
// outcome is recorded (and, in transaction mode, committed with it).
func (s *Scheduler) execute(j *jobState, c claim, h held) {
	run := Run{Job: j.Name, Tick: c.tick, Kind: c.kind, Instance: s.cfg.Instance, Started: c.started, Token: c.token}
	s.emit(Event{Kind: EventStarted, Job: j.Name, Tick: c.tick, RunKind: c.kind, Lateness: c.started.Sub(c.fire)})

	ctx, cancel := context.WithCancelCause(j.runCtx)
	defer cancel(nil)
	if h.lease != nil {
		stop := context.AfterFunc(h.lease.Context(), func() { cancel(context.Cause(h.lease.Context())) })
		defer stop()
	}
	if j.Timeout > 0 {
		var cancelT context.CancelFunc
		ctx, cancelT = context.WithTimeoutCause(ctx, j.Timeout, ErrRunTimeout)
		defer cancelT()
	}

	done := make(chan error, 1)
	var st fnState
	go func() {
		// Deferred, so that a function that calls runtime.Goexit (as
		// t.FailNow does) is still reported, and its run recorded and its
		// lock released, instead of looking stuck.
		err := ErrRunExited
		defer func() {
			st.mu.Lock()
			if st.abandoned {
				st.mu.Unlock()
				// The scheduler gave up on this run and recorded it; the
				// transaction is ours to end now that nothing uses it.
				s.release(held{job: h.job, key: h.key, tx: h.tx, pid: h.pid})
				return
			}
			st.returned = true
			st.mu.Unlock()
			done <- err
		}()
		err = call(ctx, j, h.tx, run)
	}()

	var fnErr error
	stuck := false
	select {
	case fnErr = <-done:
	case <-j.runCtx.Done():
		t := time.NewTimer(s.cfg.CancelWait)
		select {
		case fnErr = <-done:
		case <-t.C:
			st.mu.Lock()
			if st.returned {
				st.mu.Unlock()
				fnErr = <-done
			} else {
				st.abandoned = true
				st.mu.Unlock()
				stuck = true
			}
		}
		t.Stop()
	}

	runErr := fnErr
	if fnErr != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); !errors.Is(fnErr, cause) {
			runErr = fmt.Errorf("%w (context: %w)", fnErr, cause)
		}
	}
	if stuck {
		runErr = fmt.Errorf("%w within %s (context: %w)", ErrStuck, s.cfg.CancelWait, context.Cause(ctx))
		j.addStuck(j.Name + "@" + fmtTick(c.tick))
	}
	if h.lease != nil {
		if lerr := h.lease.Err(); lerr != nil && !errors.Is(lerr, pgbaton.ErrReleased) && !errors.Is(runErr, pgbaton.ErrLeaseLost) {
			runErr = errors.Join(runErr, lerr)
		}
	}
	// Ticks that fired during the run are skipped for overlap. During a
	// catch-up (more due ticks were waiting when it started) the next claim
	// decides instead, by the missed-run policy.
	overdue := j.Overlap == OverlapForbid && !c.more && !s.clock.now().Before(fireAt(j.Schedule, j.Name, j.Schedule.Next(c.tick)))

	var finished time.Time
	var recErr error
	if h.tx != nil && !stuck {
		if overdue {
			s.recordOverlap(j, c.tick)
		}
		if runErr == nil {
			finished, recErr = s.st.finish(ctx, h.tx, j, c.tick, "succeeded", "")
			if recErr == nil {
				octx, cancelOp := s.st.op(ctx)
				recErr = h.tx.Commit(octx)
				cancelOp()
			}
			if recErr != nil {
				runErr = fmt.Errorf("periodic: committing the run's transaction: %w", recErr)
				finished, recErr = s.st.finish(ctx, s.pool, j, c.tick, "failed", runErr.Error())
			}
		} else {
			// Recorded before the rollback, while the lock is (normally)
			// still held.
			finished, recErr = s.st.finish(ctx, s.pool, j, c.tick, "failed", runErr.Error())
		}
		s.release(held{job: h.job, key: h.key, tx: h.tx, pid: h.pid}) // no-op after a commit
	} else {
		status, text := "succeeded", ""
		if runErr != nil {
			status, text = "failed", runErr.Error()
		}
		finished, recErr = s.st.finish(ctx, s.pool, j, c.tick, status, text)
		if overdue {
			s.recordOverlap(j, c.tick)
		}
		if h.lease != nil {
			if err := h.lease.Release(); err != nil && runErr == nil {
				// Lost between the record and the release: the record says
				// succeeded, but the run may not have been exclusive.
				s.cfg.Logger.Warn("periodic: lease lost at the end of a run", "job", j.Name, "tick", fmtTick(c.tick), "err", err)
			}
		}
	}
	if recErr != nil {
		s.emit(Event{Kind: EventError, Job: j.Name, Tick: c.tick, Err: recErr})
	}
	var dur time.Duration
	if !finished.IsZero() {
		dur = finished.Sub(c.started)
	}
	if runErr != nil {
		s.emit(Event{Kind: EventFailed, Job: j.Name, Tick: c.tick, Duration: dur, Err: runErr})
	} else {
		s.emit(Event{Kind: EventSucceeded, Job: j.Name, Tick: c.tick, Duration: dur})
	}
}

// recordOverlap records the ticks skipped during the run of tick.
func (s *Scheduler) recordOverlap(j *jobState, tick time.Time) {
	r, err := s.st.recordOverlap(context.Background(), j, tick)
	if err != nil {
		s.emit(Event{Kind: EventError, Job: j.Name, Tick: tick, Err: err})
		return
	}
	if !r.empty() {
		s.emit(Event{Kind: EventSkipped, Job: j.Name, Tick: r.first, Through: r.last, Ticks: r.n})
	}
}

// call runs the job function, turning a panic into a *PanicError.
func call(ctx context.Context, j *jobState, tx pgx.Tx, run Run) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	if tx != nil {
		return j.RunTx(ctx, tx, run)
	}
	return j.Run(ctx, run)
}
