package chaos

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/internal/testmain"

	"github.com/pgbaton/pgbaton/internal/history"
	"github.com/pgbaton/pgbaton/pgtest"
)

// DurationEnv sets the length of TestChaos (a Go duration); default
// defaultDuration, for CI. scripts/chaos.sh runs the long suite with it.
const DurationEnv = "CHAOS_DURATION"

// ReportEnv names a file to which TestChaos writes its results table.
const ReportEnv = "CHAOS_REPORT"

// DirEnv names a directory in which TestChaos keeps the workers' history
// files (by default they go with the test's temporary directory).
const DirEnv = "CHAOS_DIR"

const defaultDuration = 90 * time.Second

// NoPanicsEnv, when set, keeps the critical sections of TestChaos from
// panicking: a leak after each panic can take every key out of the run,
// which hides the other findings while that leak is not fixed.
const NoPanicsEnv = "CHAOS_NO_PANICS"

func TestMain(m *testing.M) {
	if os.Getenv(WorkerEnv) != "" {
		os.Exit(WorkerMain()) // a re-executed worker: no cluster of its own
	}
	os.Exit(testmain.Run(m))
}

func run(t *testing.T, o Options) *Report {
	t.Helper()
	c := pgtest.Shared()
	name, _ := c.NewDB(t)
	o.Cluster, o.DB, o.Exe, o.Dir = c, name, os.Args[0], t.TempDir()
	if d := os.Getenv(DirEnv); d != "" && t.Name() == "TestChaos" {
		o.Dir = d // kept for reading after the run
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if o.Logf == nil && testing.Verbose() {
		o.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+5*time.Minute)
	defer cancel()
	r, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r.Table())
	for _, n := range r.Notes {
		t.Logf("note: %s", n)
	}
	if testing.Verbose() {
		for _, x := range r.Result.ExcusedSamples {
			t.Logf("excused: %s", x)
		}
	}
	return r
}

// TestChaos is the fault-injection suite: 6 workers contend for 4 keys with
// fenced writes while every kind of fault is injected. No healthy overlap,
// no accepted stale write, no unreported loss, tokens in grant order; every
// call within its bound, no failed call leaving its key locked, and nothing
// locked at the quiet points. It is the test the Locker must pass: its
// verdicts name the leaking calls (error-left-held, with the holding pid and
// application_name), the leaks at quiet points (leaked-lock) and the late
// calls (call-bound). CHAOS_NO_PANICS=1 runs it without panicking sections.
func TestChaos(t *testing.T) {
	d := defaultDuration
	if v := os.Getenv(DurationEnv); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v (use a Go duration such as 90s or 30m)", DurationEnv, v, err)
		}
	}
	o := Options{Duration: d}
	if os.Getenv(NoPanicsEnv) != "" {
		o.PanicOneIn = -1
	}
	r := run(t, o)
	if p := os.Getenv(ReportEnv); p != "" {
		if err := os.WriteFile(p, []byte(r.Table()), 0o644); err != nil {
			t.Error(err)
		}
	}
	res := r.Result
	if !res.OK() {
		t.Errorf("violations: %s\n%s", res.Summary(), r.Violations(20))
	}
	if res.StaleAccepted != 0 {
		t.Errorf("%d stale writes accepted", res.StaleAccepted)
	}
	if res.Leases < 100 || res.WritesAccepted == 0 {
		t.Errorf("only %d acquisitions and %d accepted writes: the workers did not work", res.Leases, res.WritesAccepted)
	}
	for _, k := range AllFaults {
		if slices.Contains(r.Unsupported, k) {
			t.Logf("fault %s not supported here", k)
			continue
		}
		if fs := res.Faults[k]; fs == nil || fs.Count == 0 {
			t.Errorf("fault %s never injected", k)
		}
	}
	if res.Lost == 0 {
		t.Error("no loss reported: the faults did not reach the holders")
	}
	if res.QuietPoints < 2 {
		t.Errorf("%d quiet points, want at least 2 (one in the run, one at its end)", res.QuietPoints)
	}
	if res.Panics == 0 && o.PanicOneIn >= 0 {
		t.Error("no critical section panicked")
	}
}

// TestBrokenPoolLock: the first seed's bug, session locks taken and
// released through a plain pool. The checker must catch it.
func TestBrokenPoolLock(t *testing.T) {
	r := run(t, Options{Duration: 8 * time.Second, Mode: ModePoolLock, Faults: []string{}})
	res := r.Result
	if res.Count(history.CheckOverlap) == 0 && res.Count(history.CheckUnreported) == 0 {
		t.Fatalf("the checker did not catch locks taken through a pool:\n%s", r.Table())
	}
	t.Logf("caught: %s", res.Summary())
}

// TestBrokenIgnoreDone: holders that never look at Done keep working after
// their lock session is terminated. The checker must catch them; the fence
// must still reject every stale write.
func TestBrokenIgnoreDone(t *testing.T) {
	r := run(t, Options{Duration: 10 * time.Second, Mode: ModeIgnoreDone, Keys: 2,
		Faults: []string{FaultTerminate}, Gap: 300 * time.Millisecond})
	res := r.Result
	if res.Count(history.CheckActedAfterLoss) == 0 {
		t.Fatalf("the checker did not catch holders ignoring Done:\n%s", r.Table())
	}
	if res.StaleAccepted != 0 || res.StaleRejected == 0 {
		t.Fatalf("fenced: %d stale writes accepted, %d rejected; want 0 and > 0", res.StaleAccepted, res.StaleRejected)
	}
	t.Logf("caught: %s; fence rejected %d stale writes", res.Summary(), res.StaleRejected)
}

// TestUnfencedControl: the same broken holders writing without the fence:
// their stale writes are accepted, and check (b) reports them. This is what
// the fence prevents in the two tests above.
func TestUnfencedControl(t *testing.T) {
	r := run(t, Options{Duration: 10 * time.Second, Mode: ModeIgnoreDone, Keys: 2, Unfenced: true,
		Faults: []string{FaultTerminate}, Gap: 300 * time.Millisecond})
	if r.Result.StaleAccepted == 0 || r.Result.Count(history.CheckStaleAccepted) == 0 {
		t.Fatalf("control: no stale write accepted without the fence:\n%s", r.Table())
	}
}

// TestBrokenForgetOnError: a lock taken on a pinned session whose statement
// fails after the grant, and which the code then forgets while the session
// stays open and keeps serving (what a Locker does when it forgets a key
// after a server error on a connection it keeps). The checker must report
// the failed calls that left their key locked and the locks held at the
// end-of-run quiet point.
func TestBrokenForgetOnError(t *testing.T) {
	r := run(t, Options{Duration: 8 * time.Second, Workers: 3, Mode: ModeForgetOnError, Faults: []string{}})
	res := r.Result
	if res.Count(history.CheckErrorLeftHeld) == 0 || res.Count(history.CheckLeakedLock) == 0 {
		t.Fatalf("the checker did not catch locks left held after errors:\n%s\n%s", r.Table(), r.Violations(10))
	}
	t.Logf("caught: %s\n%s", res.Summary(), r.Violations(4))
}

// TestBrokenPanicLeak: a transaction-scoped lock whose section panics and
// whose transaction nothing ends. The checker must report the panicked
// calls that left their key locked.
func TestBrokenPanicLeak(t *testing.T) {
	r := run(t, Options{Duration: 8 * time.Second, Workers: 3, Mode: ModePanicLeak, Faults: []string{}})
	res := r.Result
	if res.Count(history.CheckErrorLeftHeld) == 0 || res.Panics == 0 {
		t.Fatalf("the checker did not catch a panic leaving its lock held:\n%s\n%s", r.Table(), r.Violations(10))
	}
	t.Logf("caught: %s\n%s", res.Summary(), r.Violations(4))
}

// TestBrokenUnboundedWait: waits that ignore the caller's bound behind
// holders that keep the key for 8s. The checker must report the calls that
// outlived their bound.
func TestBrokenUnboundedWait(t *testing.T) {
	r := run(t, Options{Duration: 6 * time.Second, Workers: 2, Keys: 2, Mode: ModeUnboundedWait, Faults: []string{}})
	res := r.Result
	if res.Count(history.CheckCallBound) == 0 {
		t.Fatalf("the checker did not catch waits past their bound:\n%s\n%s", r.Table(), r.Violations(10))
	}
	t.Logf("caught: %s\n%s", res.Summary(), r.Violations(4))
}

// TestStuckWorkerDumped: a worker stuck in a call does not stop; the
// harness sends it SIGQUIT, so that the Go runtime prints every goroutine,
// kills it after a grace period, and reports the tail of its stderr; the
// checker reports the call that never returned (its bound is 7s).
func TestStuckWorkerDumped(t *testing.T) {
	r := run(t, Options{Duration: 8 * time.Second, Workers: 1, Goroutines: 1, Mode: modeStuck, Faults: []string{},
		PauseTimeout: 2 * time.Second, StopTimeout: 2 * time.Second})
	dumped := false
	for _, n := range r.Notes {
		if strings.Contains(n, "SIGQUIT") && strings.Contains(n, "stuckForever") && strings.Contains(n, "goroutine ") {
			dumped = true
		}
	}
	if !dumped {
		t.Fatalf("no goroutine dump of the stuck worker in the notes: %q", r.Notes)
	}
	if r.Result.Count(history.CheckCallBound) == 0 {
		t.Fatalf("the call that never returned was not reported:\n%s", r.Violations(5))
	}
}
