package periodic_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
)

// Scheduler instances as separate processes: the test binary re-executed
// with childEnv set to a JSON childSpec. A child runs its jobs until
// SIGTERM (graceful Close, exit 0) or until it is killed.

const childEnv = "PERIODIC_TEST_CHILD"

type childSpec struct {
	DSN      string
	Instance string
	Skew     time.Duration // added to the child's clock
	Drift    float64       // the child's clock runs this much fast (0.01 = 1%)
	Interval time.Duration
	Jobs     []string
}

// The cluster test's jobs. Each records what its function did in
// executions, so the test can check effects, not just the runs table.
const executionsDDL = `CREATE TABLE executions (
	job text NOT NULL, tick timestamptz NOT NULL, instance text NOT NULL, token bigint NOT NULL,
	started timestamptz NOT NULL DEFAULT clock_timestamp(), finished timestamptz)`

func childJobs(spec childSpec, pool *pgxpool.Pool) map[string]periodic.Job {
	every := periodic.Every(spec.Interval)
	record := func(ctx context.Context, r periodic.Run) error {
		_, err := pool.Exec(ctx, `INSERT INTO executions (job, tick, instance, token) VALUES ($1, $2, $3, $4)`, r.Job, r.Tick, r.Instance, r.Token)
		return err
	}
	done := func(ctx context.Context, r periodic.Run) error {
		_, err := pool.Exec(ctx, `UPDATE executions SET finished = clock_timestamp() WHERE job = $1 AND tick = $2 AND instance = $3`, r.Job, r.Tick, r.Instance)
		return err
	}
	pause := func(ctx context.Context, d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return map[string]periodic.Job{
		// Transaction mode: the execution row commits with the run.
		"tx-skip": {Name: "tx-skip", Schedule: every, Missed: periodic.MissedSkip, StartDeadline: spec.Interval / 4,
			RunTx: func(ctx context.Context, tx pgx.Tx, r periodic.Run) error {
				_, err := tx.Exec(ctx, `INSERT INTO executions (job, tick, instance, token, finished) VALUES ($1, $2, $3, $4, clock_timestamp())`,
					r.Job, r.Tick, r.Instance, r.Token)
				return err
			}},
		// Lease mode with jitter, runs of 0-300ms.
		"lease-once": {Name: "lease-once", Schedule: every.Jitter(spec.Interval / 4), Missed: periodic.MissedRunOnce, StartDeadline: spec.Interval / 4,
			Run: func(ctx context.Context, r periodic.Run) error {
				if err := record(ctx, r); err != nil {
					return err
				}
				if err := pause(ctx, time.Duration(rand.IntN(300))*time.Millisecond); err != nil {
					return err
				}
				return done(ctx, r)
			}},
		// Lease mode, backfilling up to 3 intervals after an outage.
		"lease-backfill": {Name: "lease-backfill", Schedule: every, Missed: periodic.MissedBackfill(3 * spec.Interval), StartDeadline: spec.Interval / 4,
			Run: func(ctx context.Context, r periodic.Run) error {
				if err := record(ctx, r); err != nil {
					return err
				}
				return done(ctx, r)
			}},
		// Runs last 2.5 intervals: the ticks in between are skipped.
		"slow-forbid": {Name: "slow-forbid", Schedule: every, Missed: periodic.MissedSkip,
			Run: func(ctx context.Context, r periodic.Run) error {
				if err := record(ctx, r); err != nil {
					return err
				}
				if err := pause(ctx, spec.Interval*5/2); err != nil {
					return err
				}
				return done(ctx, r)
			}},
	}
}

func childMain() int {
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "child: bad spec:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("child", spec.Instance)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	locker, err := pgbaton.New(ctx, pgbaton.Config{ConnString: spec.DSN, InstanceName: spec.Instance, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer locker.Close()
	pool, err := pgxpool.New(ctx, spec.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer pool.Close()
	start := time.Now()
	clock := periodic.ClockFunc(func() time.Time {
		d := time.Since(start)
		return start.Add(spec.Skew + d + time.Duration(float64(d)*spec.Drift))
	})
	s, err := periodic.New(ctx, periodic.Config{Locker: locker, Pool: pool, Logger: log, Clock: clock,
		BusyLogLevel: slog.LevelDebug, Retention: -1, ShutdownGrace: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	jobs := childJobs(spec, pool)
	for _, name := range spec.Jobs {
		if err := s.Add(jobs[name]); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
	}
	fmt.Println("ready")
	<-term
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "child: close:", err)
		return 1
	}
	return 0
}

// child is a running scheduler process.
type child struct {
	spec   childSpec
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// startChild starts a child and waits until it has added its jobs.
func startChild(t *testing.T, spec childSpec) *child {
	t.Helper()
	b, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	logf, err := os.OpenFile(filepath.Join(t.TempDir(), spec.Instance+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{spec: spec, cmd: cmd, exited: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if sc.Text() == "ready" && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
		c.err = cmd.Wait()
		logf.Close()
		close(c.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.exited
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				lines := strings.Split(string(b), "\n")
				t.Logf("last lines of %s:\n%s", spec.Instance, strings.Join(lines[max(0, len(lines)-30):], "\n"))
			}
		}
	})
	select {
	case ok := <-ready:
		if !ok {
			<-c.exited
			t.Fatalf("child %s exited before it was ready: %v (log %s)", spec.Instance, c.err, logf.Name())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("child %s not ready after 30s", spec.Instance)
	}
	return c
}

// kill SIGKILLs the child and waits for it to exit.
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// stop SIGTERMs the child (graceful Close) and returns its exit error.
func (c *child) stop(timeout time.Duration) error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return c.err
	case <-time.After(timeout):
		c.kill()
		return errors.New("did not exit after SIGTERM within " + timeout.String())
	}
}
