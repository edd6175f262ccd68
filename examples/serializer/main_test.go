package main

import (
	"context"
	"fmt"
	"os"
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

type interval struct {
	system     string
	start, end time.Time
}

// runEvaluations runs 3 processes × 3 concurrent evaluations of systems A
// and B and returns the recorded intervals.
func runEvaluations(t *testing.T, extra ...string) []interval {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, dsn := pgtest.Shared().NewDB(t)
	if err := pgtest.Shared().Exec(ctx, db, Schema); err != nil {
		t.Fatal(err)
	}
	var ps []*childproc.Proc
	for i := 0; i < 3; i++ {
		args := append([]string{"-systems", "A,B", "-per-system", "3", "-work", "40ms"}, extra...)
		ps = append(ps, childproc.Start(t, ctx, fmt.Sprintf("process %d", i), dsn, args...))
	}
	for _, p := range ps {
		p.Wait(t)
	}
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, `SELECT system_id, started_at, ended_at FROM evaluations ORDER BY system_id, started_at`)
	if err != nil {
		t.Fatal(err)
	}
	ivs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (interval, error) {
		var iv interval
		err := r.Scan(&iv.system, &iv.start, &iv.end)
		return iv, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ivs) != 18 {
		t.Fatalf("%d evaluations recorded, want 3 processes × 2 systems × 3", len(ivs))
	}
	return ivs
}

// overlapsWithin reports whether two intervals of one system overlap.
func overlapsWithin(ivs []interval, system string) bool {
	var prev *interval
	for i := range ivs {
		iv := &ivs[i]
		if iv.system != system {
			continue
		}
		if prev != nil && iv.start.Before(prev.end) {
			return true
		}
		prev = iv
	}
	return false
}

// overlapsAcross reports whether some evaluation of A ran while one of B did.
func overlapsAcross(ivs []interval) bool {
	for _, a := range ivs {
		for _, b := range ivs {
			if a.system == "A" && b.system == "B" && a.start.Before(b.end) && b.start.Before(a.end) {
				return true
			}
		}
	}
	return false
}

// TestOneSystemSeriallyDifferentSystemsInParallel: across processes, the
// evaluations of one system never overlap, and those of A and B do.
func TestOneSystemSeriallyDifferentSystemsInParallel(t *testing.T) {
	t.Parallel()
	ivs := runEvaluations(t)
	for _, sys := range []string{"A", "B"} {
		if overlapsWithin(ivs, sys) {
			t.Fatalf("evaluations of %s overlapped: %+v", sys, ivs)
		}
	}
	if !overlapsAcross(ivs) {
		t.Fatalf("no evaluation of A ran while one of B did: different systems were serialized too: %+v", ivs)
	}
}

// TestControlWithoutLockOverlaps proves the serialization check can fail.
func TestControlWithoutLockOverlaps(t *testing.T) {
	t.Parallel()
	ivs := runEvaluations(t, "-nolock")
	if !overlapsWithin(ivs, "A") {
		t.Fatal("without the lock the evaluations of A did not overlap: the test above proves nothing")
	}
}
