//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

// execCmd starts "pgbaton exec" as a process of its own (the test binary
// re-executes itself as the CLI, see TestMain) with a bounded life.
func execCmd(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"exec"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// runExecProc runs pgbaton exec to completion (bounded) and returns its exit
// status, stdout and stderr.
func runExecProc(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := execCmd(t, env, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		// A non-zero exit is an *exec.ExitError, and the callers check the
		// status; anything else (the process could not be waited for) is a
		// failure of the test itself.
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("waiting for pgbaton exec: %v", err)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		werr := <-done
		t.Fatalf("pgbaton exec did not end within 60s (after SIGQUIT: %v); stderr:\n%s", werr, e.String())
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

func execDB(t *testing.T, migrate bool) (dsn string, admin *pgx.Conn) {
	t.Helper()
	dsn = pgtest.Shared().NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	if migrate {
		if err := pgbaton.Migrate(ctx, admin, ""); err != nil {
			t.Fatal(err)
		}
	}
	return dsn, admin
}

func TestExecChildEnvironment(t *testing.T) {
	t.Parallel()
	dsn, _ := execDB(t, true)
	code, out, errOut := runExecProc(t, nil, "-dsn", dsn, "-instance", "envtest", "report:nightly", "--",
		"sh", "-c", `echo "$PGBATON_KEY|$PGBATON_KEY_ID|$PGBATON_FENCING_TOKEN|$PGBATON_INSTANCE"`)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	f := strings.Split(strings.TrimSpace(out), "|")
	if len(f) != 4 {
		t.Fatalf("child printed %q", out)
	}
	if f[0] != "report:nightly" || f[1] != strconv.FormatInt(pgbaton.KeyName("report:nightly").ID(), 10) || f[3] != "envtest" {
		t.Fatalf("child environment %q", out)
	}
	if tok, err := strconv.ParseInt(f[2], 10, 64); err != nil || tok <= 0 {
		t.Fatalf("PGBATON_FENCING_TOKEN = %q, want a positive token", f[2])
	}
	// Without the schema there is no token, and the variable is absent.
	dsn2, _ := execDB(t, false)
	code, out, errOut = runExecProc(t, nil, "-dsn", dsn2, "k", "--", "sh", "-c", `echo "${PGBATON_FENCING_TOKEN-unset}"`)
	if code != 0 || strings.TrimSpace(out) != "unset" {
		t.Fatalf("without schema: exit %d, out %q\n%s", code, out, errOut)
	}
}

// The exit statuses, table-tested with real processes.
func TestExecExitCodes(t *testing.T) {
	t.Parallel()
	dsn, _ := execDB(t, false)
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec.sh")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A holder for the busy cases.
	ctx := context.Background()
	l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: "holder"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	held, err := l.TryAcquire(ctx, pgbaton.KeyName("busy-key"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = held.Release() }) // after the parallel subtests
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"success", []string{"k", "--", "true"}, 0},
		{"child status passes through", []string{"k", "--", "sh", "-c", "exit 42"}, 42},
		{"child killed by a signal", []string{"k", "--", "sh", "-c", "kill -KILL $$"}, 128 + 9},
		{"busy", []string{"busy-key", "--", "true"}, exitBusy},
		{"busy with -busy-exit", []string{"-busy-exit", "3", "busy-key", "--", "true"}, 3},
		{"busy after -wait", []string{"-wait", "200ms", "busy-key", "--", "true"}, exitBusy},
		{"not found", []string{"k", "--", "no-such-command-pgbaton"}, exitNotFound},
		{"cannot execute", []string{"k", "--", noexec}, exitCannotExec},
		{"no command", []string{"k", "--"}, exitExecFailed},
		{"no separator", []string{"k", "true"}, exitExecFailed},
		{"bad flag", []string{"-nope", "k", "--", "true"}, exitExecFailed},
		{"kill-after beyond the margin", []string{"-kill-after", "5s", "k", "--", "true"}, exitExecFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, _, errOut := runExecProc(t, nil, append([]string{"-dsn", dsn}, tc.args...)...)
			if code != tc.want {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.want, errOut)
			}
		})
	}
	// No database at all: pgbaton's own failure.
	code, _, errOut := runExecProc(t, nil, "-dsn", "postgres://nobody@127.0.0.1:1/x?connect_timeout=2", "k", "--", "true")
	if code != exitExecFailed {
		t.Fatalf("no database: exit %d\n%s", code, errOut)
	}
}

// startHolding starts pgbaton exec with a child that records its pid and
// traps SIGTERM, and waits until the child runs.
func startHolding(t *testing.T, dsn, key string, env []string, extra ...string) (cmd *exec.Cmd, childPID int, marks string, stderr *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	marks = filepath.Join(dir, "marks")
	script := fmt.Sprintf(`echo "pid $$" >> %[1]s; trap 'echo "term" >> %[1]s; exit 7' TERM; while :; do sleep 0.05; done`, marks)
	args := append([]string{"-dsn", dsn, "-json"}, extra...)
	args = append(args, key, "--", "sh", "-c", script)
	cmd = execCmd(t, env, args...)
	stderr = &bytes.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(marks)
		if s := string(b); strings.HasPrefix(s, "pid ") {
			childPID, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(strings.TrimPrefix(s, "pid "), "\n", 2)[0]))
			return cmd, childPID, marks, stderr
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child did not start; stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitExit(t *testing.T, cmd *exec.Cmd, within time.Duration, stderr *bytes.Buffer) int {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(within):
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		<-done
		t.Fatalf("pgbaton exec did not exit within %s; stderr:\n%s", within, stderr.String())
		return -1
	}
}

// childAlive reports whether pid runs (a zombie awaiting its reaper does not).
func childAlive(pid int) bool { return alive(pid) }

// jsonEvents parses the -json lines of stderr (the child shares stderr, so
// lines that do not start with '{' are the child's).
func jsonEvents(t *testing.T, stderr string) []map[string]any {
	t.Helper()
	var evs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "{") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("stderr line is not JSON: %q", sc.Text())
		}
		evs = append(evs, m)
	}
	return evs
}

// The lock connection's backend is terminated: the child gets SIGTERM at
// once and pgbaton exits with the lost status.
func TestExecLossTerminatesChild(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, false)
	cmd, child, marks, stderr := startHolding(t, dsn, "lossy", nil, "-instance", "lossy")
	start := time.Now()
	if _, err := admin.Exec(context.Background(),
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pgbaton:lossy:%'`); err != nil {
		t.Fatal(err)
	}
	code := waitExit(t, cmd, 10*time.Second, stderr)
	took := time.Since(start)
	if code != exitLost {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitLost, stderr.String())
	}
	b, _ := os.ReadFile(marks)
	if !strings.Contains(string(b), "term") {
		t.Fatalf("the child never saw SIGTERM; marks %q", b)
	}
	if childAlive(child) {
		t.Fatalf("child %d still alive after pgbaton exited", child)
	}
	var sawLost bool
	for _, ev := range jsonEvents(t, stderr.String()) {
		if ev["msg"] == "lock-lost" {
			sawLost = true
		}
	}
	if !sawLost {
		t.Fatalf("no lock-lost event; stderr:\n%s", stderr.String())
	}
	t.Logf("terminate -> pgbaton exited (child stopped) in %s", took.Round(time.Millisecond))
}

// A child that ignores SIGTERM is SIGKILLed after -kill-after.
func TestExecLossKillsStubbornChild(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, false)
	dir := t.TempDir()
	marks := filepath.Join(dir, "marks")
	cmd := execCmd(t, nil, "-dsn", dsn, "-instance", "stubborn", "-kill-after", "300ms", "stubborn", "--",
		"sh", "-c", fmt.Sprintf(`echo "pid $$" >> %s; trap '' TERM; while :; do sleep 0.05; done`, marks))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	waitForFile(t, marks)
	if _, err := admin.Exec(context.Background(),
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pgbaton:stubborn:%'`); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, cmd, 10*time.Second, &stderr); code != exitLost {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitLost, stderr.String())
	}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, _ := os.ReadFile(path); len(b) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never written", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A real network cut of the lock connection: the child is stopped within
// the lease bound, before the server frees the lock.
func TestExecLossOnNetworkCut(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, _ := cl.NewDB(t)
	dsn := cl.TCPDSN(name)
	admin, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	env := []string{"PGBATON_LEASE_TIMEOUT_MS=800", "PGBATON_HEARTBEAT_INTERVAL_MS=200"}
	cmd, child, _, stderr := startHolding(t, dsn, "cut", env, "-instance", "cut")
	var port int
	if err := admin.QueryRow(context.Background(),
		`SELECT client_port FROM pg_stat_activity WHERE application_name LIKE 'pgbaton:cut:%' LIMIT 1`).Scan(&port); err != nil {
		t.Fatal(err)
	}
	cut, err := pgtest.CutPort(context.Background(), port)
	if errors.Is(err, pgtest.ErrNetCutUnsupported) && os.Getenv("CI") == "" {
		t.Skipf("no packet filter here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Heal()
	start := time.Now()
	code := waitExit(t, cmd, 15*time.Second, stderr)
	took := time.Since(start)
	if code != exitLost {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitLost, stderr.String())
	}
	if childAlive(child) {
		t.Fatalf("child %d alive after the loss", child)
	}
	// Lease bound 0.8 s + heartbeat 0.2 s + kill-after (half the margin of
	// 6 - 1 s): the child is stopped well before the server's 6 s release.
	if took > 5*time.Second {
		t.Fatalf("child stopped %s after the cut; the server may free the lock at 6s", took)
	}
	t.Logf("network cut -> child stopped and pgbaton exited in %s", took.Round(time.Millisecond))
}

// pgbaton SIGKILLed: no orphan is left running the command.
func TestExecNoOrphanWhenKilled(t *testing.T) {
	t.Parallel()
	dsn, _ := execDB(t, false)
	cmd, child, _, _ := startHolding(t, dsn, "orphan", nil)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = cmd.Process.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for childAlive(child) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d outlived pgbaton's SIGKILL", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SIGTERM to pgbaton goes to the command; pgbaton exits with its status once
// it is reaped, and the lock is free.
func TestExecForwardsSignals(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, false)
	cmd, child, marks, stderr := startHolding(t, dsn, "signals", nil)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, cmd, 10*time.Second, stderr); code != 7 {
		t.Fatalf("exit %d, want the child's 7; stderr:\n%s", code, stderr.String())
	}
	if b, _ := os.ReadFile(marks); !strings.Contains(string(b), "term") {
		t.Fatalf("child did not get SIGTERM: %q", b)
	}
	if childAlive(child) {
		t.Fatal("child alive")
	}
	var n int
	if err := admin.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("advisory locks left: %d (%v)", n, err)
	}
}

// Two execs on one key: the second is busy while the first runs.
func TestExecMutualExclusion(t *testing.T) {
	t.Parallel()
	dsn, _ := execDB(t, false)
	cmd, _, _, stderr := startHolding(t, dsn, "one-at-a-time", nil)
	code, _, errOut := runExecProc(t, nil, "-dsn", dsn, "-json", "one-at-a-time", "--", "true")
	if code != exitBusy {
		t.Fatalf("second exec: exit %d, want busy; stderr:\n%s", code, errOut)
	}
	evs := jsonEvents(t, errOut)
	if len(evs) == 0 || evs[len(evs)-1]["msg"] != "lock-busy" {
		t.Fatalf("want a lock-busy event, got %v", evs)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	waitExit(t, cmd, 10*time.Second, stderr)
}

// With no -dsn and no DATABASE_URL, the standard PG* variables name the
// database, as psql's do.
func TestExecPGVariables(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	name, _ := cl.NewDB(t)
	env := []string{"DATABASE_URL=", "PGHOST=" + cl.Host(), "PGPORT=" + strconv.Itoa(cl.Port()), "PGDATABASE=" + name, "PGUSER=postgres"}
	code, out, errOut := runExecProc(t, env, "k", "--", "sh", "-c", "echo ran")
	if code != 0 || strings.TrimSpace(out) != "ran" {
		t.Fatalf("exit %d, out %q\n%s", code, out, errOut)
	}
}
