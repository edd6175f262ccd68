package conformance_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/internal/testmain"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/internal/conformance"
	"github.com/pgbaton/pgbaton/pgbatontest"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m))
}

// TestFake runs the suite against the in-memory fake.
func TestFake(t *testing.T) {
	t.Parallel()
	conformance.Run(t, func(t *testing.T, top conformance.Topology) conformance.Env {
		return &fakeEnv{db: pgbatontest.NewDB(), top: top}
	})
}

// TestReal runs the same suite against pgbaton.Locker on PostgreSQL.
func TestReal(t *testing.T) {
	t.Parallel()
	conformance.Run(t, func(t *testing.T, top conformance.Topology) conformance.Env {
		db, dsn := pgtest.Shared().NewDB(t)
		return &realEnv{db: db, dsn: dsn, top: top}
	})
}

type fakeEnv struct {
	db  *pgbatontest.DB
	top conformance.Topology
	one *pgbatontest.Locker // the Locker of OneLocker and OneConn (the fake has no connections)
}

func (e *fakeEnv) NewLocker(t *testing.T) pgbaton.Interface {
	if e.one != nil {
		return e.one
	}
	l := e.db.NewLocker(pgbatontest.Options{Name: t.Name()})
	t.Cleanup(func() { _ = l.Close() })
	if e.top != conformance.Processes {
		e.one = l
	}
	return l
}

func (e *fakeEnv) LoseKey(t *testing.T, k pgbaton.Key) {
	if n := e.db.LoseKey(k, nil); n == 0 {
		t.Fatalf("no lease on %q to lose", k)
	}
}

func (e *fakeEnv) Waiting(t *testing.T, k pgbaton.Key) int { return e.db.Waiters(k) }

type realEnv struct {
	db, dsn string
	n       int
	top     conformance.Topology
	one     *pgbaton.Locker // the Locker of OneLocker and OneConn
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *realEnv) NewLocker(t *testing.T) pgbaton.Interface {
	if e.one != nil {
		return e.one
	}
	e.n++
	maxConns := 3
	if e.top == conformance.OneConn {
		maxConns = 1
	}
	l, err := pgbaton.New(ctxFor(t), pgbaton.Config{
		ConnString:   e.dsn,
		InstanceName: fmt.Sprintf("conf-%d", e.n),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxConns:     maxConns,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	if e.top != conformance.Processes {
		e.one = l
	}
	return l
}

// keyWhere selects pg_locks rows of key $1 (int8 form) and space $2.
const keyWhere = `locktype = 'advisory' AND objsubid = $2
	AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
	AND ((classid::bigint << 32) | objid::bigint) = $1`

func keyArgs(k pgbaton.Key) (int64, int) {
	if _, _, pair := k.Pair(); pair {
		return k.ID(), 2
	}
	return k.ID(), 1
}

func (e *realEnv) query(t *testing.T, q string, k pgbaton.Key, dst ...any) {
	t.Helper()
	c, err := pgx.Connect(ctxFor(t), e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	id, sub := keyArgs(k)
	rows, err := c.Query(ctxFor(t), q, id, sub)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(dst...); err != nil {
			t.Fatal(err)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// LoseKey terminates the backends holding k: how a real lease is lost.
func (e *realEnv) LoseKey(t *testing.T, k pgbaton.Key) {
	var pids []int
	var pid int
	c, err := pgx.Connect(ctxFor(t), e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	id, sub := keyArgs(k)
	rows, err := c.Query(ctxFor(t), "SELECT pid FROM pg_locks WHERE granted AND "+keyWhere, id, sub)
	if err != nil {
		t.Fatal(err)
	}
	pids, err = pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil || len(pids) == 0 {
		t.Fatalf("no holder of %q to terminate (%v)", k, err)
	}
	for _, pid = range pids {
		if err := pgtest.Shared().TerminateBackend(ctxFor(t), pid); err != nil {
			t.Fatal(err)
		}
	}
}

// Waiting counts the server's queue. Within one Locker, a request that
// conflicts with the Locker's own lease waits in-process, invisible here.
func (e *realEnv) Waiting(t *testing.T, k pgbaton.Key) int {
	if e.top != conformance.Processes {
		return -1
	}
	var n int
	e.query(t, "SELECT count(*) FROM pg_locks WHERE NOT granted AND "+keyWhere, k, &n)
	return n
}
