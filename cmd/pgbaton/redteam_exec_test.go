//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func advisoryHeld(t *testing.T, admin *pgx.Conn) int {
	t.Helper()
	var n int
	if err := admin.QueryRow(t.Context(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// readMark waits for "<tag> <pid>" in the marks file.
func readMark(t *testing.T, marks, tag string) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(marks)
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, tag+" "); ok {
				pid, _ := strconv.Atoi(strings.TrimSpace(rest))
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q mark in %s", tag, marks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// "If pgbaton itself dies, COMMAND is killed (parent-death signal)": only
// COMMAND's own process is. A COMMAND that is a shell running a step (the
// common `pgbaton exec key -- sh -c 'step1 && step2'`) leaves the running
// step behind: it goes on without the lock, which the server freed when
// pgbaton's connection closed.
func TestRedteamExecGrandchildOutlivesSIGKILL(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, false)
	marks := filepath.Join(t.TempDir(), "marks")
	script := fmt.Sprintf(`echo "pid $$" >> %[1]s; sleep 60 & echo "gc $!" >> %[1]s; wait`, marks)
	cmd := execCmd(t, nil, "-dsn", dsn, "redteam-gc", "--", "sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child, gc := readMark(t, marks, "pid"), readMark(t, marks, "gc")
	t.Cleanup(func() { _ = syscall.Kill(gc, syscall.SIGKILL) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = cmd.Process.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for childAlive(child) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for advisoryHeld(t, admin) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the grandchild got every chance to be killed
	if childAlive(gc) {
		t.Fatalf("after pgbaton was SIGKILLed: COMMAND %d alive %v, its child %d still running, advisory locks held %d",
			child, childAlive(child), gc, advisoryHeld(t, admin))
	}
}

// A COMMAND that starts a daemon and exits: pgbaton exits with its status
// and frees the lock, and the daemon (in COMMAND's process group) runs on
// without it. This is flock(1)'s behaviour too; the help does not say so.
func TestRedteamExecDaemonOutlivesLock(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, false)
	marks := filepath.Join(t.TempDir(), "marks")
	script := fmt.Sprintf(`sleep 60 >/dev/null 2>&1 & echo "daemon $!" >> %[1]s; exit 3`, marks)
	code, _, stderr := runExecProc(t, nil, "-dsn", dsn, "redteam-daemon", "--", "sh", "-c", script)
	d := readMark(t, marks, "daemon")
	t.Cleanup(func() { _ = syscall.Kill(d, syscall.SIGKILL) })
	if code != 3 {
		t.Fatalf("exit status %d, want COMMAND's 3; stderr:\n%s", code, stderr)
	}
	if n := advisoryHeld(t, admin); n != 0 {
		t.Fatalf("%d advisory locks held after pgbaton exited", n)
	}
	t.Logf("daemon %d alive after pgbaton exited and freed the lock: %v", d, childAlive(d))
}
