package periodic_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

// TestDefinitionDriftIsReported: during a rolling deploy instance "old"
// runs a job with a one-hour timeout and "new" with a one-minute timeout.
// Both report the drift, in an event and in Health, with both hashes and
// instances; once "old" runs the new definition too, Health reports none.
func TestDefinitionDriftIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nop := func(context.Context, periodic.Run) error { return nil }
	job := func(timeout time.Duration) periodic.Job {
		return periodic.Job{Name: "deployed", Schedule: periodic.Every(fast), Timeout: timeout, Run: nop}
	}
	type inst struct {
		s   *periodic.Scheduler
		evs *events
	}
	open := func(name string) inst {
		evs := newEvents()
		l := openLocker(t, e.dsn, name)
		return inst{e.scheduler(func(c *periodic.Config) { c.Locker, c.OnEvent, c.Instance = l, evs.hook, name }), evs}
	}
	old, cur := open("old"), open("new")
	if err := old.s.Add(job(time.Hour)); err != nil {
		t.Fatal(err)
	}
	old.evs.wait(t, "deployed", periodic.EventSucceeded, 10*time.Second)
	if err := cur.s.Add(job(time.Minute)); err != nil {
		t.Fatal(err)
	}
	driftOf := func(in inst) *periodic.DefinitionDriftError {
		ev := in.evs.wait(t, "deployed", periodic.EventDefinitionDrift, 10*time.Second)
		var d *periodic.DefinitionDriftError
		if !errors.As(ev.Err, &d) || !errors.Is(ev.Err, periodic.ErrDefinitionDrift) {
			t.Fatalf("drift event error %v", ev.Err)
		}
		return d
	}
	dNew, dOld := driftOf(cur), driftOf(old)
	if dNew.Instance != "new" || dNew.OtherInstance != "old" || dOld.Instance != "old" || dOld.OtherInstance != "new" ||
		dNew.Hash != dOld.OtherHash || dOld.Hash != dNew.OtherHash || dNew.Hash == dOld.Hash {
		t.Errorf("drift seen by new: %+v\nby old: %+v", dNew, dOld)
	}
	health := func(s *periodic.Scheduler) periodic.JobHealth {
		hs, err := s.Health(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs {
			if h.Job == "deployed" {
				return h
			}
		}
		t.Fatal("no health for the job")
		return periodic.JobHealth{}
	}
	for _, in := range []inst{old, cur} {
		h := health(in.s)
		if h.Drift == nil || h.Drift.Hash != h.DefinitionHash || h.Drift.OtherHash == h.DefinitionHash || h.Stale {
			t.Errorf("health: %+v, drift %+v", h, h.Drift)
		}
	}
	if code, _ := serve(cur.s.HealthHandler(), "/?job=deployed"); code != 200 {
		t.Errorf("drift made the health handler answer %d; a rolling deploy is not an outage", code)
	}
	// "old" is redeployed with the new definition: no drift anywhere.
	if err := old.s.Remove(context.Background(), "deployed"); err != nil {
		t.Fatal(err)
	}
	if err := old.s.Add(job(time.Minute)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the drift to clear", 10*time.Second, func() bool {
		return health(old.s).Drift == nil && health(cur.s).Drift == nil
	})
}
