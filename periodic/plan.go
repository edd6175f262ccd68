package periodic

import "time"

// tickRange is a run of consecutive ticks recorded as one row.
type tickRange struct {
	first, last time.Time
	n           int64
}

func (r tickRange) empty() bool { return r.n == 0 }

// plan is what a claim under the job's row lock decides, from the cursor
// and the database time alone.
type plan struct {
	missed tickRange // ticks to record as missed
	run    bool
	tick   time.Time // the tick to run
	fire   time.Time
	kind   RunKind
	cursor time.Time // new last_tick; zero if unchanged
	more   bool      // due ticks remain after tick
}

// planInput is the state a plan is made from.
type planInput struct {
	sched      Schedule
	name       string
	missed     MissedPolicy
	deadline   time.Duration
	floor      time.Time  // the job's registration
	last       *time.Time // the cursor, nil before the first tick
	now        time.Time  // database time
	runOnStart bool       // the first claim since this scheduler took the job, with RunOnStart
}

// fireAt is when tick t fires: the tick plus its jitter.
func fireAt(s Schedule, name string, t time.Time) time.Time {
	return t.Add(jitterFor(s, name, t))
}

// latestDue returns the last tick that has fired by now (zero if none).
func latestDue(s Schedule, name string, now time.Time) time.Time {
	l := latestAtOrBefore(s, now)
	if !l.IsZero() && fireAt(s, name, l).After(now) {
		l = s.Prev(l)
	}
	return l
}

// makePlan decides what to do with the ticks that have come due since the
// cursor. The ticks that may run form a suffix of the due ticks (on time,
// inside the backfill window, the latest one): the first of them runs, the
// ones before it are recorded as missed, and more says whether others follow.
func makePlan(in planInput) plan {
	s := in.sched
	after := in.floor
	if in.last != nil {
		after = *in.last
	}
	l := latestDue(s, in.name, in.now)
	if l.IsZero() {
		return plan{}
	}
	start := in.runOnStart && (in.last == nil || l.After(*in.last))
	if !l.After(after) {
		if !start {
			return plan{} // nothing due that is not recorded already
		}
		// RunOnStart of a tick from before the job's registration.
		return plan{run: true, tick: l, fire: fireAt(s, in.name, l), kind: KindStart, cursor: l}
	}
	runnable := func(t time.Time) (RunKind, bool) {
		fire := fireAt(s, in.name, t)
		if !in.now.After(fire.Add(in.deadline)) {
			return KindScheduled, true
		}
		switch {
		case start && t.Equal(l):
			return KindStart, true
		case in.missed.kind == missedRunOnce && t.Equal(l):
			return KindLate, true
		case in.missed.kind == missedBackfill && !t.Before(in.now.Add(-in.missed.window)):
			return KindBackfill, true
		}
		return "", false
	}
	// Lower bound of the runnable suffix: nothing earlier can be on time or
	// inside the window.
	lb := in.now.Add(-in.deadline)
	if j, ok := s.(Jittered); ok {
		lb = lb.Add(-j.JitterMax())
	}
	if in.missed.kind == missedBackfill {
		if w := in.now.Add(-in.missed.window); w.Before(lb) {
			lb = w
		}
	}
	if (start || in.missed.kind == missedRunOnce) && lb.After(l) {
		lb = l // the latest tick may run late
	}
	from := after
	if lb.After(after) {
		if p := s.Prev(lb); p.After(after) {
			from = p
		}
	}
	var p plan
	for t := s.Next(from); !t.IsZero() && !t.After(l); t = s.Next(t) {
		if kind, ok := runnable(t); ok {
			p = plan{run: true, tick: t, fire: fireAt(s, in.name, t), kind: kind, cursor: t, more: t.Before(l)}
			break
		}
	}
	end := l // last tick to record as missed
	if p.run {
		end = s.Prev(p.tick)
	} else {
		p.cursor = l
	}
	if end.After(after) {
		n, _ := countTicks(s, after, end, 1<<40)
		p.missed = tickRange{first: s.Next(after), last: end, n: n}
	}
	return p
}

// overlapSkips returns the ticks after the cursor that have fired by now:
// under OverlapForbid they came due while the run that just ended went on.
func overlapSkips(s Schedule, name string, last time.Time, now time.Time) tickRange {
	l := latestDue(s, name, now)
	if l.IsZero() || !l.After(last) {
		return tickRange{}
	}
	n, _ := countTicks(s, last, l, 1<<40)
	return tickRange{first: s.Next(last), last: l, n: n}
}
