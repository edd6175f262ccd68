package main

import (
	"context"
	"fmt"
	"os"
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

// runProcesses starts procs processes of calls concurrent calls each for one
// system and returns how many open incidents the system ends up with, and
// how many calls reported creating one.
func runProcesses(t *testing.T, procs, calls int, extra ...string) (open, created int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dsn := pgtest.Shared().NewDatabase(t)
	if err := pgtest.Shared().Exec(ctx, dbName(t, dsn), Schema); err != nil {
		t.Fatal(err)
	}
	var ps []*childproc.Proc
	for i := 0; i < procs; i++ {
		args := append([]string{"-system", "S-42", "-calls", fmt.Sprint(calls)}, extra...)
		ps = append(ps, childproc.Start(t, ctx, fmt.Sprintf("process %d", i), dsn, args...))
	}
	for _, p := range ps {
		created += strings.Count(p.Wait(t), "created ")
	}
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.QueryRow(ctx, `SELECT count(*) FROM incidents WHERE system_id = 'S-42' AND status = 'open'`).Scan(&open); err != nil {
		t.Fatal(err)
	}
	return open, created
}

func dbName(t *testing.T, dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// TestOneIncidentAcrossProcesses: 3 processes × 8 concurrent calls open
// exactly one incident.
func TestOneIncidentAcrossProcesses(t *testing.T) {
	t.Parallel()
	open, created := runProcesses(t, 3, 8)
	if open != 1 || created != 1 {
		t.Fatalf("%d open incidents, %d calls created one; want exactly 1", open, created)
	}
}

// TestControlWithoutLockDuplicates proves the test above can fail: the same
// calls without the lock open several incidents.
func TestControlWithoutLockDuplicates(t *testing.T) {
	t.Parallel()
	open, created := runProcesses(t, 3, 8, "-nolock")
	if open < 2 || created != open {
		t.Fatalf("without the lock: %d open incidents (%d created); the race did not show, so the test above proves nothing", open, created)
	}
	t.Logf("without the lock: %d incidents for one system", open)
}
