//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/inspect"
	"github.com/pgbaton/pgbaton/pgtest"
)

func cliCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// leakThroughPool reproduces the first incident: a session lock taken on one
// pooled connection, the unlock sent on another. It returns the leaking pid.
func leakThroughPool(t *testing.T, dsn, name string) int {
	t.Helper()
	ctx := cliCtx(t)
	pool, err := pgxpool.New(ctx, dsn+" application_name=billing-api pool_max_conns=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	a, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	defer b.Release()
	if _, err := a.Exec(ctx, "SELECT pg_advisory_lock($1)", pgbaton.KeyName(name).ID()); err != nil {
		t.Fatal(err)
	}
	var ok bool
	if err := b.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", pgbaton.KeyName(name).ID()).Scan(&ok); err != nil || ok {
		t.Fatalf("unlock elsewhere: %v %v", ok, err)
	}
	return int(a.Conn().PgConn().PID())
}

func TestLocksLeakedIncident(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	dsn := pgtest.Shared().TCPDSN(db)
	name := "incident.dedupe-open-for-system:42"
	pid := leakThroughPool(t, dsn, name)

	code, out, errOut := runCLI(t, "locks", "--dsn", dsn, "--name", name, "--stuck-after", "1ns")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{name, "leaked", strconv.Itoa(pid), "billing-api", "idle", "session", "unknown",
		"SELECT pg_terminate_backend(" + strconv.Itoa(pid) + ");"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// --check: critical; JSON carries the same facts.
	code, out, _ = runCLI(t, "locks", "--dsn", dsn, "--name", name, "--stuck-after", "1ns", "--check", "--json")
	if code != 2 {
		t.Errorf("--check on a leaked lock: exit %d, want 2", code)
	}
	var s inspect.Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if s.Version != inspect.Version || len(s.Keys) != 1 || s.Keys[0].Name != name || s.Keys[0].Class != inspect.ClassLeaked || s.Keys[0].Holders[0].PID != pid {
		t.Errorf("json snapshot %+v", s)
	}
	// Under the default threshold the same lock is not yet leaked.
	if code, out, _ := runCLI(t, "locks", "--dsn", dsn, "--check"); code != 0 {
		t.Errorf("--check under the threshold: exit %d\n%s", code, out)
	}
	// The lock is still held: pgbaton never terminates anything.
	if code, out, _ := runCLI(t, "locks", "--dsn", dsn, "--key", name); code != 0 || !strings.Contains(out, strconv.Itoa(pid)) {
		t.Errorf("after --check the holder is gone or the command failed: %d\n%s", code, out)
	}
}

func TestLocksCheckExitCodes(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	dsn := pgtest.Shared().TCPDSN(db)
	ctx := cliCtx(t)
	if code, out, errOut := runCLI(t, "locks", "--dsn", dsn, "--check"); code != 0 || !strings.Contains(out, "0 keys") {
		t.Errorf("no locks: exit %d %s %s", code, out, errOut)
	}
	c, err := pgx.Connect(ctx, dsn+" application_name=worker")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if err := pgbaton.LockTx(ctx, tx, pgbaton.KeyName("jobs.nightly")); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, "locks", "--dsn", dsn, "--check", "--idle-tx-after", "1ns", "--name", "jobs.nightly")
	if code != 1 || !strings.Contains(out, "WARNING jobs.nightly") {
		t.Errorf("idle-in-transaction holder: exit %d, want 1\n%s", code, out)
	}
	// A check that cannot run is unknown (3), a bad line too; without
	// --check a bad line is a usage error (2).
	if code, _, errOut := runCLI(t, "locks", "--dsn", "host=127.0.0.1 port=1 user=u password=hunter2-secret connect_timeout=2", "--check"); code != 3 || strings.Contains(errOut, "hunter2-secret") {
		t.Errorf("unreachable server: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := runCLI(t, "locks", "--check", "--bogus"); code != 3 {
		t.Errorf("bad flag with --check: exit %d, want 3", code)
	}
	if code, _, _ := runCLI(t, "locks", "--bogus"); code != exitUsage {
		t.Errorf("bad flag: exit %d, want %d", code, exitUsage)
	}
}

// --watch --json prints one snapshot per line until interrupted.
func TestLocksWatchNDJSON(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	dsn := pgtest.Shared().TCPDSN(db)
	ctx, cancel := context.WithCancel(cliCtx(t))
	defer cancel()
	w := &ndjsonLines{lines: make(chan string, 16)}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"locks", "--dsn", dsn, "--json", "--watch", "10ms"}, &output{Stdout: w, Stderr: &bytes.Buffer{}})
	}()
	for i := 0; i < 3; i++ {
		select {
		case l := <-w.lines:
			var s inspect.Snapshot
			if err := json.Unmarshal([]byte(l), &s); err != nil || s.Version != inspect.Version {
				t.Fatalf("line %d: %v %q", i, err, l)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no snapshot line")
		}
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("interrupted --watch: exit %d", code)
	}
}

type ndjsonLines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func (w *ndjsonLines) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		l, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(l)
			return len(p), nil
		}
		select {
		case w.lines <- strings.TrimSuffix(l, "\n"):
		default:
		}
	}
}
