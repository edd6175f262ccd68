package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/internal/testmain"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/examples/internal/childproc"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) {
	if args, ok := childproc.Args(); ok {
		os.Exit(cli(args))
	}
	os.Exit(testmain.Run(m))
}

// runWhileInProgress starts a run in one process, waits until it is
// recorded, triggers 3 times from a second process, then lets the first run
// end. It returns the second process's output and the number of runs.
func runWhileInProgress(t *testing.T, extra ...string) (out string, runs int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, dsn := pgtest.Shared().NewDB(t)
	if err := pgtest.Shared().Exec(ctx, db, Schema); err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	count := func() int {
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM automation_runs`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	release := filepath.Join(t.TempDir(), "release")
	first := childproc.Start(t, ctx, "first", dsn, append([]string{"-hold-until", release}, extra...)...)
	for count() == 0 { // external state: poll, bounded by ctx
		select {
		case <-first.Done():
			t.Fatalf("first process exited before its run started: %s", first.Wait(t))
		case <-ctx.Done():
			t.Fatal("the first run did not start")
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The second process's own runs, if it gets any, end at once.
	if err := os.WriteFile(release+".second", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	second := childproc.Start(t, ctx, "second", dsn, append([]string{"-triggers", "3", "-hold-until", release + ".second"}, extra...)...)
	out = second.Wait(t)
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if firstOut := first.Wait(t); !strings.Contains(firstOut, "ran=1 skipped=0") {
		t.Fatalf("first process: %s", firstOut)
	}
	return out, count()
}

// TestTriggerWhileRunningIsSkipped: three triggers during a run in another
// process are skipped with a "lock busy" log each and counted; none is
// queued, so there is exactly one run in the end.
func TestTriggerWhileRunningIsSkipped(t *testing.T) {
	t.Parallel()
	out, runs := runWhileInProgress(t)
	if n := strings.Count(out, `msg="lock busy"`); n != 3 {
		t.Fatalf("%d \"lock busy\" logs, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "ran=0 skipped=3") {
		t.Fatalf("second process did not count 3 skips:\n%s", out)
	}
	if runs != 1 {
		t.Fatalf("%d runs recorded, want 1: a skipped trigger must not run later", runs)
	}
}

// TestControlWithoutLockRunsConcurrently proves the test above can fail:
// without the lock the three triggers run while the first run is in progress.
func TestControlWithoutLockRunsConcurrently(t *testing.T) {
	t.Parallel()
	out, runs := runWhileInProgress(t, "-nolock")
	if runs != 4 || strings.Contains(out, "lock busy") || !strings.Contains(out, "ran=3 skipped=0") {
		t.Fatalf("without the lock: %d runs, output:\n%s", runs, out)
	}
}
