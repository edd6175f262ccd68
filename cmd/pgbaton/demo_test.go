//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

// safeBuffer is a bytes.Buffer for one writer goroutine and readers.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func demoOpts(t *testing.T, args ...string) demoOptions {
	t.Helper()
	o, err := parseDemoFlags(&output{Stdout: io.Discard, Stderr: io.Discard}, args)
	if err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	return o
}

// assertWidth checks that no line of the demo's output is wider than a
// standard terminal.
func assertWidth(t *testing.T, text string) {
	t.Helper()
	for i, line := range strings.Split(text, "\n") {
		if n := utf8.RuneCountInString(line); n > demoWidth {
			t.Errorf("output line %d is %d runes wide, want <= %d:\n%s", i+1, n, demoWidth, line)
		}
	}
}

// TestDemo runs the whole demo in-process on its own throwaway server: it
// must show handoffs, every fault's loss signal and failover, no overlap,
// and leave no process or directory behind. It runs with the fewest
// workers accepted, 2: the killed worker must be replaced for the later
// faults to have anyone to hand the lock to.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out := &safeBuffer{}
	res, err := runDemo(ctx, out, demoOpts(t, "-workers", "2", "-duration", "1500ms", "-hold", "100ms"))
	text := out.String()
	t.Logf("demo output:\n%s", text)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	assertWidth(t, text)
	s := res.Stats

	if len(s.Handoffs) < 3 || strings.Count(text, "handoff ") < 3 {
		t.Errorf("%d handoffs recorded, want at least 3 in 1.5s of contention", len(s.Handoffs))
	}
	if s.Overlaps != 0 || strings.Contains(text, "OVERLAP") {
		t.Errorf("%d overlapping grants: two workers held the lock at once", s.Overlaps)
	}
	if len(s.Faults) != 3 {
		t.Fatalf("%d faults recorded, want kill, terminate and blackhole", len(s.Faults))
	}
	for _, f := range s.Faults {
		if _, ok := f.Failover(); !ok || f.Next == "" {
			t.Errorf("fault %s: no grant followed it", f.Kind)
		}
		if !strings.Contains(text, fmt.Sprintf("fault %d of 3", f.N)) {
			t.Errorf("fault %s: no heading in the output", f.Kind)
		}
	}
	kill, term, hole := s.Faults[0], s.Faults[1], s.Faults[2]
	if kill.Kind != "kill" || term.Kind != "terminate" || hole.Kind != "blackhole" {
		t.Fatalf("faults in order %s, %s, %s", kill.Kind, term.Kind, hole.Kind)
	}
	if kill.Next == kill.Victim {
		t.Errorf("kill: the killed worker %s was granted the lock next", kill.Victim)
	}
	if !strings.Contains(text, kill.Victim+" was killed; starting w3 in its place") {
		t.Errorf("kill: %s was not replaced by a new worker w3", kill.Victim)
	}
	if n := strings.Count(text, "first holder"); n != 1 {
		t.Errorf("%d grants labelled \"first holder\", want 1", n)
	}
	if !regexp.MustCompile(`(?m)^ +\+[0-9.]+s  ` + kill.Victim + ` +exited +signal: killed$`).MatchString(text) {
		t.Errorf("kill: no line shows %s's process killed", kill.Victim)
	}
	if _, ok := term.Detection(); !ok || !strings.Contains(term.Reason, "57P01") {
		t.Errorf("terminate: holder %s reported no loss with SQLSTATE 57P01 (reason %q)", term.Victim, term.Reason)
	}
	if _, ok := hole.Detection(); !ok || !strings.Contains(hole.Reason, "heartbeat") {
		t.Errorf("blackhole: holder %s reported no heartbeat loss (reason %q)", hole.Victim, hole.Reason)
	}
	// The guarantee under a partition: the holder learns of the loss before
	// the server can free the lock, so before anyone else is granted it.
	if hole.DetectT == 0 || hole.FreedT == 0 || hole.DetectT >= hole.FreedT || hole.GrantT < hole.FreedT {
		t.Errorf("blackhole: holder saw the loss at %d, server freed the lock at %d, next grant at %d: want loss < freed <= grant",
			hole.DetectT, hole.FreedT, hole.GrantT)
	}
	for _, want := range []string{"Summary", "No two workers held the lock at the same time", "knew it had lost the lock", "cleaned up:"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// A lease granted after a wait longer than LeaseTimeout (the waiters
	// behind the black hole wait 2s with a 1s bound) must not start lost.
	if s.Spurious > 0 {
		t.Errorf("%d leases were lost although no fault touched their holder", s.Spurious)
	}

	assertNothingLeft(t, res.ClusterDir, append([]int{res.PostmasterPID}, res.WorkerPIDs...))
}

// TestDemoAgainstDSN runs the demo on an existing database (-dsn): every
// worker still connects through a local proxy, so the black hole works, and
// afterwards no session and no advisory lock of the demo remains there.
func TestDemoAgainstDSN(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := pgtest.Shared()
	db, _ := c.NewDB(t)
	out := &safeBuffer{}
	res, err := runDemo(ctx, out, demoOpts(t, "-dsn", c.TCPDSN(db), "-allow-faults-on-dsn",
		"-workers", "2", "-duration", "500ms", "-faults", "terminate,blackhole"))
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	assertWidth(t, out.String())
	if !strings.Contains(out.String(), "using YOUR DATABASE (-dsn), not a throwaway one:\n  host 127.0.0.1 port ") {
		t.Errorf("the demo does not say which database it uses")
	}
	if res.ClusterDir != "" {
		t.Errorf("with -dsn the demo started a server in %s", res.ClusterDir)
	}
	if len(res.Stats.Handoffs) == 0 {
		t.Errorf("no handoff recorded")
	}
	if len(res.Stats.Faults) != 2 {
		t.Fatalf("%d faults recorded, want 2", len(res.Stats.Faults))
	}
	for _, f := range res.Stats.Faults {
		if _, ok := f.Detection(); !ok {
			t.Errorf("%s: the holder reported no loss", f.Kind)
		}
		if _, ok := f.Failover(); !ok {
			t.Errorf("%s: no grant followed", f.Kind)
		}
	}
	if strings.Contains(out.String(), "throwaway server created") {
		t.Errorf("output mentions a throwaway server")
	}
	assertNothingLeft(t, "", res.WorkerPIDs)

	// The workers closed their Lockers, so the server ends their sessions;
	// wait for that (external state), then check no advisory lock is left.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := c.BackendPIDs(ctx, db, "pgbaton:demo-%")
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo sessions still open 10s after the demo: backends %v", pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := pgconn.Connect(ctx, c.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	res2 := conn.ExecParams(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", nil, nil, nil, nil).Read()
	if res2.Err != nil {
		t.Fatal(res2.Err)
	}
	if n := string(res2.Rows[0][0]); n != "0" {
		t.Errorf("%s advisory locks left in the database after the demo", n)
	}
}

// TestDemoInterrupt runs the demo as a process of its own, sends it SIGINT in
// the middle of the contention phase and checks that it exits with status
// 130 leaving no worker, no postmaster and no temp dir behind.
func TestDemoInterrupt(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "demo", "-workers", "3", "-duration", "60s")
	// The Quick start has users export DATABASE_URL; the demo must not touch
	// that database (here an unreachable one) unless -dsn names it.
	cmd.Env = append(os.Environ(), "DATABASE_URL=postgres://user:s3cret@192.0.2.1:5432/production")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr safeBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	var all []string
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	handoffs, signalled := 0, false
read:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				break read
			}
			all = append(all, line)
			if strings.Contains(line, "handoff ") {
				handoffs++
			}
			if handoffs == 3 && !signalled {
				if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
				signalled = true
			}
		case <-timeout.C:
			_ = cmd.Process.Kill()
			t.Fatalf("demo still running after 60s; output so far:\n%s", strings.Join(all, "\n"))
		}
	}
	err = <-exited
	text := strings.Join(all, "\n")
	t.Logf("demo output:\n%s\nstderr:\n%s", text, stderr.String())
	if !signalled {
		t.Fatalf("demo ended before 3 handoffs: %v", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitInterrupted {
		t.Errorf("demo exit: %v, want status %d", err, exitInterrupted)
	}
	if !strings.Contains(text, "stopped early; cleaned up:\n  3 worker processes killed\n  3 proxies closed\n  throwaway server stopped") {
		t.Errorf("output does not report the clean-up")
	}
	if strings.Contains(text, "192.0.2.1") || strings.Contains(text, "YOUR DATABASE") {
		t.Errorf("the demo used $DATABASE_URL")
	}
	assertWidth(t, text)
	if !strings.Contains(stderr.String(), "interrupted") {
		t.Errorf("stderr does not say the demo was interrupted: %q", stderr.String())
	}

	m := regexp.MustCompile(`postmaster pid (\d+)\n +in (\S+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no server line in the output")
	}
	m[1], m[2] = m[2], m[1]
	pm, _ := strconv.Atoi(m[2])
	pids := []int{pm}
	for _, w := range regexp.MustCompile(`process (\d+) has its Locker open`).FindAllStringSubmatch(text, -1) {
		pid, _ := strconv.Atoi(w[1])
		pids = append(pids, pid)
	}
	if len(pids) != 4 {
		t.Fatalf("found %d worker pids in the output, want 3", len(pids)-1)
	}
	assertNothingLeft(t, m[1], pids)
}

// assertNothingLeft checks that dir does not exist and that none of pids is
// a live process (a zombie holds nothing).
func assertNothingLeft(t *testing.T, dir string, pids []int) {
	t.Helper()
	if dir != "" {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after the demo (stat: %v)", dir, err)
		}
	}
	for _, pid := range pids {
		if pid > 0 && alive(pid) {
			t.Errorf("process %d still runs after the demo", pid)
		}
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func TestDemoFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-workers", "1"}, "use 2 to 16"},
		{[]string{"-duration", "-1s"}, "negative"},
		{[]string{"-faults", "kill,flood"}, `unknown fault "flood"; choose from kill, terminate, blackhole`},
		{[]string{"-dsn", "host=/var/run/postgresql dbname=x"}, "give a TCP host"},
		{[]string{"-dsn", "postgres://%zz"}, "-dsn:"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-dsn", "postgres://u@localhost/db", "-faults", "kill"}, "unless you add -allow-faults-on-dsn"},
		{[]string{"-allow-faults-on-dsn"}, "-allow-faults-on-dsn is for -dsn"},
	} {
		_, err := parseDemoFlags(&output{Stdout: io.Discard, Stderr: io.Discard}, tc.args)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("demo %q: %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
	if _, err := parseDemoFlags(&output{Stdout: io.Discard, Stderr: io.Discard}, []string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("demo -h: %v, want flag.ErrHelp", err)
	}
	o := demoOpts(t, "-dsn", "", "-faults", "none")
	if len(o.Faults) != 0 || o.Workers != 4 {
		t.Errorf("defaults with -faults none: %+v", o)
	}
	o = demoOpts(t, "-dsn", "postgres://u@localhost/db")
	if len(o.Faults) != 0 || !o.FaultsRefused {
		t.Errorf("-dsn without -allow-faults-on-dsn: faults %v, want none (refused)", o.Faults)
	}
	o = demoOpts(t, "-dsn", "postgres://u@localhost/db", "-allow-faults-on-dsn")
	if len(o.Faults) != 3 || o.FaultsRefused {
		t.Errorf("-dsn with -allow-faults-on-dsn: faults %v, want all three", o.Faults)
	}
}

// TestDemoRefusesFaultsOnDSN: on a database it did not create (-dsn), the
// demo runs the contention part only, says why and how to allow faults,
// names the database without its password, and succeeds.
func TestDemoRefusesFaultsOnDSN(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := pgtest.Shared()
	db, _ := c.NewDB(t)
	out := &safeBuffer{}
	dsn := c.TCPDSN(db) + " password=s3cret" // trust authentication ignores it
	res, err := runDemo(ctx, out, demoOpts(t, "-dsn", dsn, "-workers", "2", "-duration", "300ms"))
	text := out.String()
	t.Logf("demo output:\n%s", text)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if len(res.Stats.Faults) != 0 || strings.Contains(text, "fault 1 of") {
		t.Errorf("%d faults injected into a database the demo did not create", len(res.Stats.Faults))
	}
	for _, want := range []string{
		"using YOUR DATABASE (-dsn), not a throwaway one:",
		"user postgres (password redacted),\n  database " + db + "\n",
		"No faults: the demo kills, terminates and black-holes only in a",
		"add -allow-faults-on-dsn",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "s3cret") {
		t.Errorf("the output shows the password")
	}
	if res.Stats.Grants == 0 {
		t.Errorf("no contention ran")
	}
	assertWidth(t, text)
	assertNothingLeft(t, "", res.WorkerPIDs)
}

// TestDemoExitsNonZeroOnUnexplainedLoss: a lease lost without a fault from
// the demo (here an outsider terminates the holder's backend) is what the
// demo exists to expose, so it must fail the run, not just print it.
func TestDemoExitsNonZeroOnUnexplainedLoss(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	db, _ := c.NewDB(t)
	// -hold 1m: the first holder keeps the lock for the whole run.
	cmd := exec.Command(os.Args[0], "demo", "-dsn", c.TCPDSN(db), "-workers", "2", "-duration", "3s", "-hold", "1m")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr safeBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var all []string
	granted := regexp.MustCompile(`granted .*\[pid (\d+)\]`)
	sc := bufio.NewScanner(stdout)
	terminated := false
	for sc.Scan() {
		all = append(all, sc.Text())
		if m := granted.FindStringSubmatch(sc.Text()); m != nil && !terminated {
			pid, _ := strconv.Atoi(m[1])
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := c.TerminateBackend(ctx, pid)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			terminated = true
		}
	}
	err = cmd.Wait()
	text := strings.Join(all, "\n")
	t.Logf("demo output:\n%s\nstderr:\n%s", text, stderr.String())
	if !terminated {
		t.Fatalf("no grant seen: %v", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
		t.Errorf("demo exit: %v, want status %d", err, exitFailure)
	}
	if !strings.Contains(text, "no fault was injected into") || !strings.Contains(stderr.String(), "1 leases lost although no fault") {
		t.Errorf("the loss is not reported as unexplained (stderr %q)", stderr.String())
	}
}

// TestDemoWithoutServerBinaries: without PostgreSQL installed, the demo
// fails before starting anything, saying how to install it or use -dsn.
func TestDemoWithoutServerBinaries(t *testing.T) {
	t.Parallel()
	out := &safeBuffer{}
	res, err := runDemo(context.Background(), out, demoOpts(t, "-dsn", "", "-pg-bin", t.TempDir()))
	if !errors.Is(err, pgtest.ErrBinariesNotFound) {
		t.Fatalf("demo: %v, want ErrBinariesNotFound", err)
	}
	for _, want := range []string{"apt-get install postgresql-15", "-dsn"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name the fix %q: %v", want, err)
		}
	}
	if len(res.WorkerPIDs) != 0 || res.ClusterDir != "" {
		t.Errorf("started something: %+v", res)
	}
}
