package pgtest_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

func startBouncer(t *testing.T, opts pgtest.PgBouncerOptions) *pgtest.PgBouncer {
	t.Helper()
	b, err := pgtest.Shared().StartPgBouncer(testCtx(t, time.Minute), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b
}

// backendPID returns (protocol pid, server pid): they differ behind a pooler.
func backendPID(t *testing.T, ctx context.Context, c *pgx.Conn) (uint32, uint32) {
	t.Helper()
	var pid uint32
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return c.PgConn().PID(), pid
}

// TestPgBouncerTransactionMode shows the two properties the library relies
// on: a pooler is detectable (the protocol's pid is not the backend's), and
// in transaction mode session state left by one client is seen by another.
func TestPgBouncerTransactionMode(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	name, _ := pgtest.Shared().NewDB(t)
	b := startBouncer(t, pgtest.PgBouncerOptions{PoolMode: pgtest.PoolTransaction, PoolSize: 1})
	if b.PoolMode() != pgtest.PoolTransaction || b.PID() <= 0 {
		t.Fatalf("mode %q pid %d", b.PoolMode(), b.PID())
	}
	dsn := b.DSN(name) + " default_query_exec_mode=exec"
	a := connect(t, ctx, dsn)
	c := connect(t, ctx, dsn)
	if proto, server := backendPID(t, ctx, a); proto == server {
		t.Fatalf("behind pgbouncer the protocol pid %d equals the backend pid", proto)
	}
	if _, err := a.Exec(ctx, "SET application_name = 'left-behind'"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := c.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "left-behind" {
		t.Fatalf("second client sees application_name %q; in transaction mode with one server connection it inherits the first client's session state", got)
	}
}

// TestPgBouncerSessionMode: one server connection per client, for the
// client's whole life.
func TestPgBouncerSessionMode(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	name, _ := pgtest.Shared().NewDB(t)
	b := startBouncer(t, pgtest.PgBouncerOptions{PoolMode: pgtest.PoolSession, PoolSize: 4})
	a := connect(t, ctx, b.DSN(name))
	c := connect(t, ctx, b.DSN(name))
	_, first := backendPID(t, ctx, a)
	if _, err := a.Exec(ctx, "SET application_name = 'mine'"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if _, again := backendPID(t, ctx, a); again != first {
			t.Fatalf("session mode moved the client from backend %d to %d", first, again)
		}
	}
	var got string
	if err := c.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got == "mine" {
		t.Fatal("another client saw this client's session state in session mode")
	}
}

func TestPgBouncerCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	b, err := pgtest.Shared().StartPgBouncer(testCtx(t, time.Minute), pgtest.PgBouncerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pid, dir := b.PID(), b.Dir()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if alive(pid) {
		t.Fatalf("pgbouncer %d alive after Close", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s exists after Close", dir)
	}
}

func TestPgBouncerBadOptions(t *testing.T) {
	t.Parallel()
	_, err := pgtest.Shared().StartPgBouncer(testCtx(t, time.Minute), pgtest.PgBouncerOptions{PoolMode: "statement"})
	if err == nil || !strings.Contains(err.Error(), "PoolTransaction") {
		t.Fatalf("statement mode: %v", err)
	}
}

// TestPgBouncerNoOrphanAfterSIGKILL re-executes the test binary, which
// starts a pgbouncer and SIGKILLs itself; neither the pgbouncer process nor
// its directory may survive it.
func TestPgBouncerNoOrphanAfterSIGKILL(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 90*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestPgBouncerHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=pgbouncer")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err == nil {
		t.Fatalf("helper exited 0; output:\n%s\n%s", out, stderr.Bytes())
	}
	pid, dir := 0, ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == helperLine && f[1] == "pgbouncer" {
			pid, _ = strconv.Atoi(strings.TrimPrefix(f[2], "pid="))
			dir = strings.TrimPrefix(f[3], "dir=")
		}
	}
	if pid <= 0 || dir == "" {
		t.Fatalf("helper did not report its pgbouncer (%v); output:\n%s\nstderr:\n%s", err, out, stderr.Bytes())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, statErr := os.Stat(dir)
		if !alive(pid) && os.IsNotExist(statErr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after the helper died: pgbouncer %d alive=%v, %s exists=%v", pid, alive(pid), dir, statErr == nil)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPgBouncerHelperProcess is the child's side of
// TestPgBouncerNoOrphanAfterSIGKILL; it does nothing in a normal run.
func TestPgBouncerHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "pgbouncer" {
		t.Skip("helper for TestPgBouncerNoOrphanAfterSIGKILL")
	}
	b, err := pgtest.Shared().StartPgBouncer(testCtx(t, time.Minute), pgtest.PgBouncerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s pgbouncer pid=%d dir=%s\n", helperLine, b.PID(), b.Dir())
	if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL to self: %v", err)
	}
	t.Fatal("helper survived")
}
