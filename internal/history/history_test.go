package history

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// at returns t0 plus ms milliseconds.
func at(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }

// lease makes a lease believed from grant to end (ms), asked for 1ms before.
func lease(id, proc, key string, token int64, grant, end float64, kind EndKind) Lease {
	return Lease{ID: id, Proc: proc, Key: key, Token: token, HasToken: token > 0,
		Before: at(grant - 1), Grant: at(grant), End: at(end), Kind: kind}
}

func lost(l Lease, signalled float64) Lease {
	l.Kind = Lost
	l.Signalled = at(signalled)
	return l
}

func expect(t *testing.T, r *Result, want map[string]int) {
	t.Helper()
	for _, c := range AllChecks {
		if got := r.Count(c); got != want[c] {
			t.Errorf("%s: %d violations, want %d; all: %v", c, got, want[c], r.Violations)
		}
	}
}

func TestGoodHistory(t *testing.T) {
	h := &History{
		Leases: []Lease{
			lease("a", "p1", "k", 1, 0, 10, Released),
			lease("b", "p2", "k", 2, 11, 20, Released),
			lease("c", "p1", "k", 4, 21, 30, Released),
			lease("d", "p2", "j", 3, 5, 25, Released), // another key, concurrently
		},
		Writes: []Write{
			{Lease: "a", Key: "k", Token: 1, Accepted: true, Seq: 1, At: at(5)},
			{Lease: "a", Key: "k", Token: 1, Accepted: true, Seq: 2, At: at(6)},
			{Lease: "b", Key: "k", Token: 2, Accepted: true, Seq: 3, At: at(15)},
			{Lease: "d", Key: "j", Token: 3, Accepted: true, Seq: 4, At: at(15)},
			{Lease: "c", Key: "k", Token: 4, Accepted: true, Seq: 5, At: at(25)},
		},
	}
	r := Check(h)
	if !r.OK() || r.Overlaps != 0 || r.Leases != 4 || r.Released != 4 || r.WritesAccepted != 5 {
		t.Fatalf("good history: %+v, violations %v", r, r.Violations)
	}
	if r.Summary() != "no violations" {
		t.Fatalf("summary %q", r.Summary())
	}
}

// Two holders of one key at once, both released cleanly and no fault: the
// pool bug's re-entrant grant.
func TestOverlapOfHealthyHolders(t *testing.T) {
	h := &History{Leases: []Lease{
		lease("a", "p1", "k", 1, 0, 10, Released),
		lease("b", "p1", "k", 2, 5, 15, Released),
	}}
	r := Check(h)
	expect(t, r, map[string]int{CheckOverlap: 1})
	if r.Overlaps != 1 || r.ExcusedOverlaps != 0 {
		t.Fatalf("overlaps %d excused %d", r.Overlaps, r.ExcusedOverlaps)
	}
	if !strings.Contains(r.Violations[0].Msg, "released cleanly") {
		t.Fatalf("message %q does not say why", r.Violations[0].Msg)
	}
}

// Shared holders may overlap; an exclusive one may not overlap them.
func TestSharedLeases(t *testing.T) {
	a := lease("a", "p1", "k", 1, 0, 10, Released)
	b := lease("b", "p2", "k", 2, 2, 12, Released)
	a.Shared, b.Shared = true, true
	r := Check(&History{Leases: []Lease{a, b}})
	expect(t, r, nil)
	c := lease("c", "p3", "k", 3, 11, 20, Released)
	r = Check(&History{Leases: []Lease{a, b, c}})
	expect(t, r, map[string]int{CheckOverlap: 1})
}

// A terminated backend: the next holder is granted before the old one is
// told. That overlap is excused (and is what fencing is for); the old
// holder's stale write is rejected.
func TestOverlapExcusedByFault(t *testing.T) {
	a := lost(lease("a", "p1", "k", 1, 0, 12, ""), 12)
	a.PID = 4242
	h := &History{
		Leases: []Lease{a, lease("b", "p2", "k", 2, 10.5, 30, Released)},
		Faults: []Fault{{Kind: "terminate", PID: 4242, TakesLocks: true, From: at(10), To: at(10.2)}},
		Writes: []Write{
			{Lease: "b", Key: "k", Token: 2, Accepted: true, Seq: 1, At: at(11)},
			{Lease: "a", Key: "k", Token: 1, Accepted: false, At: at(11.5)},
		},
	}
	r := Check(h)
	expect(t, r, nil)
	if r.Overlaps != 1 || r.ExcusedOverlaps != 1 || r.StaleRejected != 1 || r.StaleAccepted != 0 {
		t.Fatalf("%+v", r)
	}
	fs := r.Faults["terminate"]
	if fs == nil || fs.Count != 1 || fs.Leases != 1 || fs.Lost != 1 ||
		fs.Detection.Max() != 2*time.Millisecond || fs.Release.Max() != 500*time.Microsecond {
		t.Fatalf("fault figures %+v", fs)
	}
}

// The same fault, but the holder ignores Done and goes on for seconds.
func TestActedAfterLoss(t *testing.T) {
	a := lease("a", "p1", "k", 1, 0, 3000, Lost) // released at 3s, Release said lost
	a.PID = 4242
	a.Signalled = at(12)
	h := &History{
		Leases: []Lease{a, lease("b", "p2", "k", 2, 10.5, 5000, Released)},
		Faults: []Fault{{Kind: "terminate", PID: 4242, TakesLocks: true, From: at(10), To: at(10.2)}},
	}
	r := Check(h)
	expect(t, r, map[string]int{CheckActedAfterLoss: 1})

	// A grace of one step does not excuse seconds.
	expect(t, CheckWith(h, Options{Grace: 250 * time.Millisecond}), map[string]int{CheckActedAfterLoss: 1})

	// A holder told while its last step was in flight, which stopped
	// within the grace, is not acting after the loss.
	h.Leases[0].End = at(40)
	expect(t, Check(h), map[string]int{CheckActedAfterLoss: 1})
	r = CheckWith(h, Options{Grace: 250 * time.Millisecond})
	expect(t, r, nil)
	if r.ExcusedOverlaps != 1 {
		t.Fatalf("%+v", r)
	}

	// A holder whose process could not run after the signal looks late;
	// the time it was stalled does not count against it.
	h.Leases[0].End = at(1500)
	expect(t, CheckWith(h, Options{Grace: 250 * time.Millisecond}), map[string]int{CheckActedAfterLoss: 1})
	h.Faults = append(h.Faults, Fault{Kind: Stall, Proc: "p1", From: at(11), To: at(11), Until: at(1400)})
	expect(t, CheckWith(h, Options{Grace: 250 * time.Millisecond}), nil)
	// A stall of another process does not.
	h.Faults[len(h.Faults)-1].Proc = "p2"
	expect(t, CheckWith(h, Options{Grace: 250 * time.Millisecond}), map[string]int{CheckActedAfterLoss: 1})
}

// A lost holder with no fault to explain the overlap.
func TestOverlapWithoutFault(t *testing.T) {
	h := &History{Leases: []Lease{
		lost(lease("a", "p1", "k", 1, 0, 12, ""), 12),
		lease("b", "p2", "k", 2, 10.5, 30, Released),
	}, Faults: []Fault{{Kind: "terminate", PID: 1, TakesLocks: true, From: at(10), To: at(10.2)}}}
	expect(t, Check(h), map[string]int{CheckOverlap: 1})

	// Its own lease bound expiring excuses it.
	h.Leases[0].HeartbeatTimeout = true
	r := Check(h)
	expect(t, r, nil)
	if r.ExcusedOverlaps != 1 || r.HeartbeatLosses != 1 {
		t.Fatalf("%+v", r)
	}
}

// A frozen holder read its grant time only after waking, after a newer
// holder came and went: the token, not the late clock read, orders them.
func TestFrozenHolderOrderedByToken(t *testing.T) {
	a := lease("a", "p1", "k", 1, 9000, 9001, Lost) // woke at 9s; Grant read then
	a.Before = at(0)
	a.Signalled = at(9001)
	b := lease("b", "p2", "k", 2, 7000, 9500, Released)
	h := &History{
		Leases: []Lease{a, b},
		Faults: []Fault{{Kind: "freeze+cut", Proc: "p1", TakesLocks: true, From: at(1), To: at(2), Until: at(8999), DetectFrom: at(8999)}},
		Writes: []Write{
			{Lease: "b", Key: "k", Token: 2, Accepted: true, Seq: 1, At: at(7001)},
			{Lease: "a", Key: "k", Token: 1, Accepted: false, At: at(9000.5)},
		},
	}
	r := Check(h)
	expect(t, r, nil)
	if r.ExcusedOverlaps != 1 || r.StaleRejected != 1 {
		t.Fatalf("%+v", r)
	}
	// Detection is measured from the thaw (DetectFrom) for a lease
	// certainly held when the freeze began.
	c := lost(lease("c", "p1", "j", 3, 0.5, 9002, ""), 9002)
	r = Check(&History{Leases: []Lease{c}, Faults: h.Faults})
	if d := r.Faults["freeze+cut"].Detection.Max(); d != 3*time.Millisecond {
		t.Fatalf("detection after thaw %s, want 3ms", d)
	}
}

// An older token accepted after a newer one (a write without the fence).
func TestStaleWriteAccepted(t *testing.T) {
	h := &History{Writes: []Write{
		{Lease: "a", Key: "k", Token: 5, Accepted: true, Seq: 1},
		{Lease: "b", Key: "k", Token: 7, Accepted: true, Seq: 2},
		{Lease: "a", Key: "k", Token: 5, Accepted: true, Seq: 3},
		{Lease: "a", Key: "k", Token: 5, Accepted: false, Seq: 0},
		{Lease: "c", Key: "j", Token: 6, Accepted: true, Seq: 4}, // other key: fine
	}}
	r := Check(h)
	expect(t, r, map[string]int{CheckStaleAccepted: 1})
	if r.StaleAccepted != 1 || r.StaleRejected != 1 || r.WritesAccepted != 4 {
		t.Fatalf("%+v", r)
	}
}

// (c): a lease hit by a fault that takes locks, or whose unlock found the
// lock gone, must not end as cleanly released.
func TestUnreportedLoss(t *testing.T) {
	hit := lease("a", "p1", "k", 1, 0, 50, Released)
	h := &History{
		Leases: []Lease{hit},
		Faults: []Fault{{Kind: "restart", All: true, TakesLocks: true, From: at(10), To: at(20)}},
	}
	expect(t, Check(h), map[string]int{CheckUnreported: 1})

	// Pool exhaustion does not take locks: no violation.
	h.Faults[0] = Fault{Kind: "pool-exhaustion", Proc: "p1", From: at(10), To: at(20)}
	expect(t, Check(h), nil)

	gone := lease("b", "p1", "k", 2, 60, 70, Released)
	gone.UnlockFalse = true
	expect(t, Check(&History{Leases: []Lease{gone}}), map[string]int{CheckUnreported: 1})

	// A lease released before the fault is fine.
	early := lease("c", "p1", "k", 3, 0, 9, Released)
	expect(t, Check(&History{Leases: []Lease{early}, Faults: []Fault{{Kind: "restart", All: true, TakesLocks: true, From: at(10), To: at(20)}}}), nil)
}

func TestTokenOrder(t *testing.T) {
	h := &History{Leases: []Lease{
		lease("a", "p1", "k", 10, 0, 5, Released),
		lease("b", "p2", "k", 9, 10, 15, Released), // certainly later, smaller token
	}}
	expect(t, Check(h), map[string]int{CheckTokenOrder: 1})

	dup := &History{Leases: []Lease{
		lease("a", "p1", "k", 10, 0, 5, Released),
		lease("b", "p2", "j", 10, 0, 5, Released),
	}}
	expect(t, Check(dup), map[string]int{CheckTokenOrder: 1})

	// Uncertain order (the second asked before the first's grant was
	// read): no verdict.
	b := lease("b", "p2", "k", 9, 10, 15, Released)
	b.Before = at(-1)
	expect(t, Check(&History{Leases: []Lease{lease("a", "p1", "k", 10, 0, 5, Released), b}}), nil)
}

func TestRecorderAndReader(t *testing.T) {
	var buf bytes.Buffer
	rec := NewRecorder(&buf)
	l := lease("a", "p1", "k", 1, 0, 0, Open)
	l.End = time.Time{}
	rec.Lease(l)
	rec.Write(Write{Lease: "a", Key: "k", Token: 1, At: at(1)})
	l.End, l.Kind = at(5), Released
	rec.Lease(l)
	rec.Fault(Fault{Kind: "kill", Proc: "p2", TakesLocks: true, From: at(2), To: at(3)})
	rec.Call(Call{ID: "p1-c1", Proc: "p1", Op: "Acquire", Start: at(1)})
	rec.Call(Call{ID: "p1-c1", Proc: "p1", Op: "Acquire", Start: at(1), Done: true, Took: time.Millisecond})
	rec.Quiet(Quiet{At: at(4)})
	rec.Lease(lease("b", "p2", "k", 2, 6, 7, Open))
	if rec.Err() != nil {
		t.Fatal(rec.Err())
	}
	data := buf.Bytes()
	cut := data[:len(data)-10] // the last line cut short, as by SIGKILL
	rd := NewReader()
	if err := rd.Read(bytes.NewReader(cut), "w1"); err != nil {
		t.Fatal(err)
	}
	h := rd.History()
	if len(h.Leases) != 1 || h.Leases[0].Kind != Released || !h.Leases[0].End.Equal(at(5)) || len(h.Writes) != 1 || len(h.Faults) != 1 ||
		len(h.Calls) != 1 || !h.Calls[0].Done || len(h.Quiets) != 1 {
		t.Fatalf("read back %+v", h)
	}
	bad := append([]byte("{not json}\n"), data...)
	if err := NewReader().Read(bytes.NewReader(bad), "w2"); err == nil || !strings.Contains(err.Error(), "w2 line 1") {
		t.Fatalf("malformed line: %v", err)
	}
}

func TestDurations(t *testing.T) {
	d := Durations{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond}
	if d.Max() != 10*time.Millisecond || d.Quantile(0.5) != 3*time.Millisecond || (Durations{}).Max() != 0 {
		t.Fatalf("max %s p50 %s", d.Max(), d.Quantile(0.5))
	}
}

// (e): a call that took longer than its bound, not counting time its
// process could not run; a call that never returned; a call cut short by
// its process's death is not judged.
func TestCallBound(t *testing.T) {
	ok := Call{ID: "p1-c1", Proc: "p1", Op: "Acquire", Key: "k", Wait: 20 * time.Millisecond, Start: at(0),
		Took: 900 * time.Millisecond, Bound: time.Second, Done: true, Err: "lock busy"}
	slow := ok
	slow.ID, slow.Took = "p1-c2", 3*time.Second
	r := Check(&History{Calls: []Call{ok, slow}})
	expect(t, r, map[string]int{CheckCallBound: 1})
	if r.Calls != 2 || r.FailedCalls != 2 || !strings.Contains(r.Violations[0].Msg, "took 3s") {
		t.Fatalf("%+v %v", r, r.Violations)
	}

	// Its process was frozen for 2.5s of it: within the bound.
	frozen := &History{Calls: []Call{slow}, Faults: []Fault{{Kind: "freeze", Proc: "p1", Frozen: true, From: at(100), To: at(100), Until: at(2600)}}}
	expect(t, Check(frozen), nil)

	// Never returned, with the history going on for 5s after it.
	stuck := ok
	stuck.ID, stuck.Done, stuck.Took = "p1-c3", false, 0
	h := &History{Calls: []Call{stuck}, Leases: []Lease{lease("a", "p2", "k", 1, 10, 5000, Released)}}
	r = Check(h)
	expect(t, r, map[string]int{CheckCallBound: 1})
	if !strings.Contains(r.Violations[0].Msg, "never returned") {
		t.Fatalf("message %q", r.Violations[0].Msg)
	}
	h.Calls[0].Died = true
	expect(t, Check(h), nil)

	// The run's end, not only its last event, bounds a call still running.
	h = &History{Calls: []Call{stuck}}
	expect(t, Check(h), nil)
	h.End = at(3000)
	expect(t, Check(h), map[string]int{CheckCallBound: 1})
}

// (f): a failed call after which the key stayed locked by its process.
func TestErrorLeftHeld(t *testing.T) {
	c := Call{ID: "p1-c1", Proc: "p1", Op: "TryAcquire", Key: "k", Start: at(0), Took: time.Millisecond,
		Bound: time.Second, Done: true, Err: "canceling statement due to user request (SQLSTATE 57014)",
		LeftHeld: &Held{Key: "k", Proc: "p1", PID: 77, App: "pgbaton:p1~a:3", For: 8 * time.Second}}
	r := Check(&History{Calls: []Call{c}})
	expect(t, r, map[string]int{CheckErrorLeftHeld: 1})
	if !strings.Contains(r.Violations[0].Msg, "pid 77 (pgbaton:p1~a:3)") {
		t.Fatalf("message %q", r.Violations[0].Msg)
	}
	c.LeftHeld = nil
	expect(t, Check(&History{Calls: []Call{c}}), nil)
}

// (g): a lock held at a quiet point, blamed on the last failed call of the
// holding process on that key.
func TestLeakedLock(t *testing.T) {
	calls := []Call{
		{ID: "p1-c1", Proc: "p1", Op: "Acquire", Key: "k", Start: at(0), Took: time.Millisecond, Bound: time.Second, Done: true, Err: "lock busy"},
		{ID: "p1-c2", Proc: "p1", Op: "WithXactLock", Key: "k", Start: at(5), Took: time.Millisecond, Bound: time.Second, Done: true, Panicked: true},
		{ID: "p1-c3", Proc: "p1", Op: "Acquire", Key: "k", Start: at(200), Took: time.Millisecond, Bound: time.Second, Done: true, Err: "later"},
		{ID: "p2-c1", Proc: "p2", Op: "Acquire", Key: "k", Start: at(6), Took: time.Millisecond, Bound: time.Second, Done: true, Err: "other process"},
	}
	q := Quiet{At: at(100), Settle: time.Second, Held: []Held{{Key: "k", Proc: "p1", PID: 9, App: "pgbaton:p1~b:1", For: time.Second}}}
	r := Check(&History{Calls: calls, Quiets: []Quiet{q, {At: at(300)}}})
	expect(t, r, map[string]int{CheckLeakedLock: 1})
	if r.QuietPoints != 2 || r.Panics != 1 || !strings.Contains(r.Violations[0].Msg, "WithXactLock") {
		t.Fatalf("%+v %v", r, r.Violations)
	}
	expect(t, Check(&History{Calls: calls, Quiets: []Quiet{{At: at(100)}}}), nil)
}

// A panicked critical section is not an unreported loss when a fault hit
// it: the liveness checks judge what became of its lock.
func TestPanickedLeaseNotUnreported(t *testing.T) {
	l := lease("a", "p1", "k", 1, 0, 50, Released)
	l.Panicked = true
	h := &History{Leases: []Lease{l}, Faults: []Fault{{Kind: "restart", All: true, TakesLocks: true, From: at(10), To: at(20)}}}
	expect(t, Check(h), nil)
}

// Three shapes seen in a 35-minute run, each a measurement artifact that a
// checker must judge right without excusing real overlaps.
func TestLongRunArtifacts(t *testing.T) {
	// A panicked section (its lease released out of the holder's sight)
	// whose backend was terminated as it panicked: the next holder's grant
	// is excused by the fault, not called a clean-release overlap...
	pan := lease("a", "p1", "k", 0, 0, 10.9, Released)
	pan.Panicked, pan.PID = true, 7
	next := lease("b", "p2", "k", 0, 10.5, 20, Released)
	term := Fault{Kind: "terminate", PID: 7, TakesLocks: true, From: at(10), To: at(10.2)}
	expect(t, Check(&History{Leases: []Lease{pan, next}, Faults: []Fault{term}}), nil)
	// ...but without a fault it still is one.
	expect(t, Check(&History{Leases: []Lease{pan, next}}), map[string]int{CheckOverlap: 1})

	// A grant read only after the process thawed from a freeze that began
	// between the call and that reading: it was granted first, and lost.
	frozen := lost(lease("c", "p3", "k", 9, 6000, 6100, ""), 6100)
	frozen.Before = at(0)
	other := lease("d", "p4", "k", 0, 5990, 6090, Released) // no token: ordered by time
	freeze := Fault{Kind: "freeze", Proc: "p3", Frozen: true, TakesLocks: true, From: at(1), To: at(1.1), Until: at(5950)}
	expect(t, Check(&History{Leases: []Lease{frozen, other}, Faults: []Fault{freeze}}), nil)

	// A stop signal sent 2.4 ms before a release completed: it had not
	// taken effect, so no loss went unreported...
	rel := lease("e", "p5", "k2", 3, 0, 12.4, Released)
	stop := Fault{Kind: "freeze", Proc: "p5", Frozen: true, TakesLocks: true, From: at(10), To: at(10.01), Until: at(6000)}
	expect(t, Check(&History{Leases: []Lease{rel}, Faults: []Fault{stop}}), nil)
	// ...while a lease held well past it was hit.
	rel.End = at(100)
	expect(t, Check(&History{Leases: []Lease{rel}, Faults: []Fault{stop}}), map[string]int{CheckUnreported: 1})
}
