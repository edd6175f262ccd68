package periodic

import (
	"testing"
	"time"
)

func TestMakePlan(t *testing.T) {
	t.Parallel()
	sec := time.Second
	s := Every(sec)
	t0 := time.Date(2026, 4, 17, 18, 0, 0, 0, time.UTC) // a tick
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ptr := func(x time.Time) *time.Time { return &x }
	in := func(last *time.Time, now time.Time, m MissedPolicy) planInput {
		return planInput{sched: s, name: "j", missed: m, deadline: 250 * time.Millisecond, floor: at(-time.Hour), last: last, now: now}
	}
	for _, c := range []struct {
		name string
		in   planInput
		want plan
	}{
		{"on time, cursor at the previous tick", in(ptr(at(-sec)), at(10*time.Millisecond), MissedSkip),
			plan{run: true, tick: t0, fire: t0, kind: KindScheduled, cursor: t0}},
		{"already claimed", in(ptr(t0), at(10*time.Millisecond), MissedSkip), plan{}},
		{"not fired yet", in(ptr(at(-sec)), at(-time.Millisecond), MissedSkip), plan{}},
		{"late under skip: recorded missed, nothing runs", in(ptr(at(-sec)), at(500*time.Millisecond), MissedSkip),
			plan{missed: tickRange{t0, t0, 1}, cursor: t0}},
		{"late under run-once: runs late", in(ptr(at(-sec)), at(500*time.Millisecond), MissedRunOnce),
			plan{run: true, tick: t0, fire: t0, kind: KindLate, cursor: t0}},
		{"outage under skip, latest still on time", in(ptr(at(-10*sec)), at(100*time.Millisecond), MissedSkip),
			plan{missed: tickRange{at(-9 * sec), at(-sec), 9}, run: true, tick: t0, fire: t0, kind: KindScheduled, cursor: t0}},
		{"outage under skip, all late", in(ptr(at(-10*sec)), at(600*time.Millisecond), MissedSkip),
			plan{missed: tickRange{at(-9 * sec), t0, 10}, cursor: t0}},
		{"outage under run-once", in(ptr(at(-10*sec)), at(600*time.Millisecond), MissedRunOnce),
			plan{missed: tickRange{at(-9 * sec), at(-sec), 9}, run: true, tick: t0, fire: t0, kind: KindLate, cursor: t0}},
		{"outage under backfill: window's ticks run oldest first", in(ptr(at(-10*sec)), at(600*time.Millisecond), MissedBackfill(3*sec)),
			plan{missed: tickRange{at(-9 * sec), at(-3 * sec), 7}, run: true, tick: at(-2 * sec), fire: at(-2 * sec), kind: KindBackfill, cursor: at(-2 * sec), more: true}},
		{"backfill in progress, last one on time", in(ptr(at(-sec)), at(100*time.Millisecond), MissedBackfill(3*sec)),
			plan{run: true, tick: t0, fire: t0, kind: KindScheduled, cursor: t0}},
	} {
		if got := makePlan(c.in); got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}

	// A new job: no cursor, registered half an interval ago.
	fresh := planInput{sched: s, name: "j", missed: MissedSkip, deadline: 250 * time.Millisecond, floor: at(500 * time.Millisecond), now: at(900 * time.Millisecond)}
	if got := makePlan(fresh); got != (plan{}) {
		t.Errorf("new job without RunOnStart: %+v, want nothing until its first tick", got)
	}
	fresh.runOnStart = true
	if got, want := makePlan(fresh), (plan{run: true, tick: t0, fire: t0, kind: KindStart, cursor: t0}); got != want {
		t.Errorf("new job with RunOnStart:\n got %+v\nwant %+v", got, want)
	}
	fresh.last = ptr(t0)
	if got := makePlan(fresh); got != (plan{}) {
		t.Errorf("RunOnStart of a claimed tick: %+v, want nothing", got)
	}

	// Jitter: a tick is not due before its firing time.
	js := Every(sec).Jitter(500 * time.Millisecond)
	fire := fireAt(js, "j", t0)
	p := planInput{sched: js, name: "j", missed: MissedSkip, deadline: 250 * time.Millisecond, floor: at(-time.Hour), last: ptr(at(-sec))}
	p.now = fire.Add(-time.Microsecond)
	if got := makePlan(p); got.run {
		t.Errorf("ran a tick %s before its firing time %s", t0, fire)
	}
	p.now = fire
	if got := makePlan(p); !got.run || !got.tick.Equal(t0) {
		t.Errorf("tick not run at its firing time: %+v", got)
	}
}

func TestOverlapSkips(t *testing.T) {
	t.Parallel()
	s := Every(time.Second)
	t0 := time.Date(2026, 4, 17, 18, 0, 0, 0, time.UTC)
	if r := overlapSkips(s, "j", t0, t0.Add(900*time.Millisecond)); !r.empty() {
		t.Errorf("a run shorter than the interval skipped %+v", r)
	}
	r := overlapSkips(s, "j", t0, t0.Add(2500*time.Millisecond))
	if want := (tickRange{t0.Add(time.Second), t0.Add(2 * time.Second), 2}); r != want {
		t.Errorf("2.5s run: skipped %+v, want %+v", r, want)
	}
}

func TestLatestAtOrBefore(t *testing.T) {
	t.Parallel()
	c := MustCron("0 * * * *")
	h := time.Date(2026, 1, 1, 5, 0, 0, 0, time.UTC)
	if got := latestAtOrBefore(c, h); !got.Equal(h) {
		t.Errorf("on a tick: %s", got)
	}
	if got := latestAtOrBefore(c, h.Add(-time.Nanosecond)); !got.Equal(h.Add(-time.Hour)) {
		t.Errorf("just before a tick: %s", got)
	}
	e := Every(time.Minute)
	if got := latestAtOrBefore(e, h); !got.Equal(h) {
		t.Errorf("every: on a tick: %s", got)
	}
	if n, ok := countTicks(c, h, h.Add(10*time.Hour), 100); !ok || n != 10 {
		t.Errorf("countTicks cron = %d %v", n, ok)
	}
	if n, ok := countTicks(e, h, h.Add(10*time.Hour), 100); !ok || n != 600 {
		t.Errorf("countTicks every = %d %v", n, ok)
	}
}
