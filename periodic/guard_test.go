package periodic_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

// hostile is a Schedule of the caller's own that delegates to Every until
// it turns bad after `good` calls of Next: it then blocks until release is
// closed, or returns its argument (a tick that does not advance).
type hostile struct {
	every   periodic.EverySchedule
	good    int64
	calls   *atomic.Int64
	block   bool
	release chan struct{}
}

func (h hostile) bad() bool { return h.calls.Add(1) > h.good }

func (h hostile) Next(t time.Time) time.Time {
	if h.bad() {
		if h.block {
			<-h.release
		}
		return t
	}
	return h.every.Next(t)
}
func (h hostile) Prev(t time.Time) time.Time { return h.every.Prev(t) }
func (h hostile) String() string             { return "hostile" }

func newHostile(t *testing.T, good int64, block bool) hostile {
	h := hostile{every: periodic.Every(fast), good: good, calls: new(atomic.Int64), block: block, release: make(chan struct{})}
	t.Cleanup(func() { close(h.release) }) // ends the given-up calls' goroutines
	return h
}

// within fails the test if f does not return within d.
func within(t *testing.T, what string, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
	}
}

// TestBrokenScheduleNeverHangs: a schedule whose Next never returns, or
// returns a tick that does not advance, is reported (an error from Add, or
// an event and Health once the job runs) and never blocks Add, Health,
// Close or the job's loop; other jobs go on.
func TestBrokenScheduleNeverHangs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := newEvents()
	s := e.scheduler(func(c *periodic.Config) { c.OnEvent, c.ScheduleTimeout = evs.hook, 200*time.Millisecond })
	nop := func(context.Context, periodic.Run) error { return nil }

	// Broken from the start: Add says so, within the bound.
	for _, block := range []bool{true, false} {
		var err error
		within(t, "Add", 5*time.Second, func() {
			err = s.Add(periodic.Job{Name: "broken-at-add", Schedule: newHostile(t, 0, block), Run: nop})
		})
		if !errors.Is(err, periodic.ErrInvalidJob) || !errors.Is(err, periodic.ErrScheduleBroken) {
			t.Errorf("block=%t: Add: %v; want ErrInvalidJob and ErrScheduleBroken", block, err)
		}
	}

	// Broken after a few ticks: the loop reports it and stops scheduling
	// the job; Health reports it; Close returns.
	if err := s.Add(periodic.Job{Name: "blocks", Schedule: newHostile(t, 12, true), Run: nop}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(periodic.Job{Name: "stalls", Schedule: newHostile(t, 12, false), Run: nop}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(periodic.Job{Name: "healthy", Schedule: periodic.Every(fast), Run: nop}); err != nil {
		t.Fatal(err)
	}
	for _, job := range []string{"blocks", "stalls"} {
		ev := evs.wait(t, job, periodic.EventScheduleError, 20*time.Second)
		if !errors.Is(ev.Err, periodic.ErrScheduleBroken) {
			t.Errorf("%s: event error %v", job, ev.Err)
		}
	}
	if ev := evs.matching("blocks", periodic.EventScheduleError); !strings.Contains(ev[0].Err.Error(), "did not return within") {
		t.Errorf("blocks: %v; want a timeout", ev[0].Err)
	}
	if ev := evs.matching("stalls", periodic.EventScheduleError); !strings.Contains(ev[0].Err.Error(), "not after") {
		t.Errorf("stalls: %v; want a non-advancing tick", ev[0].Err)
	}
	n := evs.count("healthy", periodic.EventSucceeded)
	waitFor(t, "another run of the healthy job", 10*time.Second, func() bool { return evs.count("healthy", periodic.EventSucceeded) > n })
	var hs []periodic.JobHealth
	var err error
	within(t, "Health", 5*time.Second, func() { hs, err = s.Health(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		switch h.Job {
		case "blocks", "stalls":
			if h.ScheduleError == "" {
				t.Errorf("%s: Health has no schedule error: %+v", h.Job, h)
			}
		case "healthy":
			if h.ScheduleError != "" || h.Stale {
				t.Errorf("healthy: %+v", h)
			}
		}
	}
	if code, body := serve(s.HealthHandler(), "/?job=blocks"); code != 503 || !strings.Contains(body, "schedule_error") {
		t.Errorf("handler: %d %s", code, body)
	}
	within(t, "Close", 10*time.Second, func() { err = s.Close() })
	if err != nil {
		t.Error(err)
	}
}
