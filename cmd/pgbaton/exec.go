//go:build unix

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgbaton/pgbaton"
)

func init() {
	register(&command{
		Name:    "exec",
		Summary: "run a command while holding a cluster-wide lock (flock for a cluster)",
		Run:     runExec,
	})
}

// Exit statuses of pgbaton exec, after coreutils timeout(1): the command's
// own status passes through; these are pgbaton's.
const (
	// exitBusy: the lock was held elsewhere (or the --wait expired); the
	// command did not run. EX_TEMPFAIL from sysexits.h; --busy-exit
	// overrides it, as flock -E does.
	exitBusy = 75
	// exitLost: the lock was lost while the command ran; the command was
	// sent SIGTERM, then SIGKILL after --kill-after.
	exitLost = 124
	// exitExecFailed: pgbaton itself failed (a bad command line, no
	// database); the command did not run.
	exitExecFailed = 125
	// exitCannotExec: the command was found but could not be run.
	exitCannotExec = 126
	// exitNotFound: the command was not found.
	exitNotFound = 127
)

const execSynopsis = "[flags] KEY -- COMMAND [ARGS...]"

const execDescription = `Runs COMMAND while this process holds the advisory lock named KEY on the
database, so that at most one COMMAND per KEY runs across every machine: flock(1)
for a cluster. The lock lives on a dedicated connection that is heartbeated while
COMMAND runs; it is released when COMMAND exits.

COMMAND runs without a shell, in a process group of its own, with PGBATON_KEY,
PGBATON_KEY_ID, PGBATON_INSTANCE and, when the database has pgbaton's schema
(pgbaton migrate), PGBATON_FENCING_TOKEN in its environment. SIGINT, SIGTERM and
SIGHUP are forwarded to its group. If the lock is lost while it runs (the
connection's backend terminated, the network cut), the group gets SIGTERM at
once and SIGKILL after -kill-after, which must stay below the margin between
this process noticing the loss and the server freeing the lock (about 1 s with
the defaults; PGBATON_LEASE_TIMEOUT_MS and PGBATON_HEARTBEAT_INTERVAL_MS widen
it). What COMMAND could still do within that margin is what fencing tokens are
for. If pgbaton itself dies, COMMAND's process group is killed (a parent-death
signal and a watchdog). pgbaton never exits before COMMAND is reaped.

The database: -dsn, else DATABASE_URL, else the standard PG* variables.

Exit status: COMMAND's own; 75 when the lock is busy (-busy-exit); 124 when the
lock was lost while COMMAND ran; 125 when pgbaton failed; 126 when COMMAND
cannot be executed; 127 when it is not found; 128+N when COMMAND was killed by
signal N.`

type execFlags struct {
	dsn       string
	wait      time.Duration
	shared    bool
	busyExit  int
	killAfter time.Duration
	json      bool
	instance  string
}

func runExec(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "exec", execSynopsis, execDescription)
	var f execFlags
	fs.StringVar(&f.dsn, "dsn", "", "PostgreSQL connection string (default: DATABASE_URL, then PG* variables)")
	fs.DurationVar(&f.wait, "wait", 0, "wait up to this long for a busy lock (default: try once)")
	fs.BoolVar(&f.shared, "shared", false, "take the lock in shared mode (conflicts only with exclusive holders)")
	fs.IntVar(&f.busyExit, "busy-exit", exitBusy, "exit status when the lock is busy")
	fs.DurationVar(&f.killAfter, "kill-after", 0, "after a loss, SIGKILL this long after SIGTERM (default: half the safety margin)")
	fs.BoolVar(&f.json, "json", false, "write events as JSON lines on stderr")
	fs.StringVar(&f.instance, "instance", "", "instance name shown in pg_stat_activity (default: host name and pid)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &exitCodeError{code: exitExecFailed, err: usageMsg(err.Error())}
	}
	rest := fs.Args()
	if len(rest) < 3 || rest[1] != "--" {
		return &exitCodeError{code: exitExecFailed, err: usageMsg("want KEY -- COMMAND [ARGS...], e.g. pgbaton exec nightly-report -- ./report.sh")}
	}
	keyName, argv := rest[0], rest[2:]
	switch {
	case f.wait < 0:
		return &exitCodeError{code: exitExecFailed, err: usageMsg("-wait %s is negative; use 0 to try once", f.wait)}
	case f.busyExit < 0 || f.busyExit > 255:
		return &exitCodeError{code: exitExecFailed, err: usageMsg("-busy-exit %d is not an exit status (0-255)", f.busyExit)}
	case f.killAfter < 0:
		return &exitCodeError{code: exitExecFailed, err: usageMsg("-kill-after %s is negative", f.killAfter)}
	}
	key := pgbaton.KeyName(keyName)
	if !key.Valid() {
		return &exitCodeError{code: exitExecFailed, err: usageMsg("KEY %q is not a usable lock name", keyName)}
	}

	ev := newExecEvents(out.Stderr, f.json)
	// Find the command before taking the lock: a typo costs nothing.
	path, err := exec.LookPath(argv[0])
	if err != nil {
		code := exitNotFound
		if errors.Is(err, os.ErrPermission) || (!errors.Is(err, exec.ErrNotFound) && !errors.Is(err, os.ErrNotExist)) {
			code = exitCannotExec
		}
		ev.error("command", fmt.Errorf("%s: %w", argv[0], err))
		return &exitCodeError{code: code}
	}

	cfg, err := execConfig(f)
	if err != nil {
		ev.error("config", err)
		return &exitCodeError{code: exitExecFailed}
	}
	// The library's own log lines go to stderr in the same form, warnings
	// and up only: exec reports busy, acquired and lost itself.
	cfg.Logger = ev.libraryLogger()
	// Signals that arrive while the lock is being taken end the attempt;
	// once the command runs, they are forwarded to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-actx.Done():
		}
	}()

	l, err := pgbaton.New(actx, cfg)
	if err != nil {
		if actx.Err() != nil {
			return &exitCodeError{code: exitInterrupted}
		}
		ev.error("connect", err)
		return &exitCodeError{code: exitExecFailed}
	}
	// The lease's outcome is reported before Close runs; Close only ends the
	// connections, and has nothing to add to the exit status.
	defer func() { _ = l.Close() }()
	rc := l.Config() // with the defaults filled in
	margin := rc.ServerReleaseTimeout() - rc.LeaseTimeout - rc.HeartbeatInterval
	if f.killAfter == 0 {
		f.killAfter = margin / 2
	}
	if f.killAfter >= margin {
		return &exitCodeError{code: exitExecFailed, err: usageMsg(
			"-kill-after %s must be below the safety margin %s (the server frees the lock %s after it stops hearing from this process; the loss is noticed within LeaseTimeout %s + HeartbeatInterval %s): lower -kill-after, or lower PGBATON_LEASE_TIMEOUT_MS",
			f.killAfter, margin, rc.ServerReleaseTimeout(), rc.LeaseTimeout, rc.HeartbeatInterval)}
	}
	var opts []pgbaton.Option
	if f.shared {
		opts = append(opts, pgbaton.Shared)
	}
	start := time.Now()
	var lease *pgbaton.Lease
	if f.wait > 0 {
		lease, err = l.Acquire(actx, key, append(opts, pgbaton.Wait(f.wait))...)
	} else {
		lease, err = l.TryAcquire(actx, key, opts...)
	}
	switch {
	case errors.Is(err, pgbaton.ErrNotAcquired):
		ev.busy(keyName, key, time.Since(start))
		return &exitCodeError{code: f.busyExit}
	case err != nil && actx.Err() != nil:
		return &exitCodeError{code: exitInterrupted}
	case err != nil:
		ev.error("acquire", err)
		return &exitCodeError{code: exitExecFailed}
	}
	cancel() // the signal goroutine: signals now go to the command
	token, hasToken := lease.Token()
	ev.acquired(keyName, key, token, hasToken, time.Since(start))

	env := append(os.Environ(),
		"PGBATON_KEY="+keyName,
		"PGBATON_KEY_ID="+strconv.FormatInt(key.ID(), 10),
		"PGBATON_INSTANCE="+l.Config().InstanceName)
	if hasToken {
		env = append(env, "PGBATON_FENCING_TOKEN="+strconv.FormatInt(token, 10))
	}
	res := superviseChild(path, argv, env, lease, sigs, f.killAfter, ev)
	rerr := lease.Release()
	switch {
	case res.startErr != nil:
		ev.error("start", res.startErr)
		if errors.Is(res.startErr, os.ErrPermission) {
			return &exitCodeError{code: exitCannotExec}
		}
		return &exitCodeError{code: exitCannotExec}
	case res.lost != nil:
		ev.lost(keyName, res.lost, res.code)
		return &exitCodeError{code: exitLost}
	case rerr != nil:
		// The command ended, then the release found the lock gone: the
		// command may have run without it at the end.
		ev.lost(keyName, rerr, res.code)
		return &exitCodeError{code: exitLost}
	}
	ev.exited(keyName, res.code, res.signal)
	if res.code != 0 {
		return &exitCodeError{code: res.code}
	}
	return nil
}

// execConfig builds the Locker's configuration: -dsn, DATABASE_URL or the PG*
// variables, plus the PGBATON_* variables ConfigFromEnv reads.
func execConfig(f execFlags) (pgbaton.Config, error) {
	return pgbaton.ConfigFromEnv(func(k string) string {
		switch {
		case k == pgbaton.EnvDatabaseURL && f.dsn != "":
			return f.dsn
		case k == pgbaton.EnvInstanceName && f.instance != "":
			return f.instance
		}
		return os.Getenv(k)
	})
}

type childResult struct {
	code     int
	signal   syscall.Signal // when killed by a signal
	lost     error          // the lease's loss, if it ended the command
	startErr error
}

// superviseChild runs the command in a process group of its own, forwards
// signals to the group, and on lease loss sends SIGTERM, then SIGKILL after
// killAfter. It returns only after the command was reaped.
func superviseChild(path string, argv, env []string, lease *pgbaton.Lease, sigs <-chan os.Signal, killAfter time.Duration, ev *execEvents) childResult {
	// No context: the lease and the signals end the command, through its
	// whole group, SIGTERM then SIGKILL after killAfter (below); a context
	// would SIGKILL the leader alone, at once.
	cmd := exec.Command(path, argv[1:]...) //nolint:noctx // see above
	cmd.Args = argv
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	done := make(chan error, 1)
	started := make(chan error, 1)
	// The parent-death signal is tied to the thread that forked the child:
	// that thread stays locked to this goroutine until the child is reaped.
	go func() {
		lockThreadForChild()
		defer unlockThreadForChild()
		setChildAttrs(cmd)
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return childResult{startErr: err}
	}
	pgid := cmd.Process.Pid
	// If pgbaton dies, the command's whole group dies with it, not only the
	// command (the parent-death signal's reach).
	if stop, err := groupWatchdog(pgid, true); err == nil {
		defer stop()
	} else {
		ev.error("watchdog", err)
	}
	var res childResult
	var kill <-chan time.Time
	lostC := lease.Done()
	for {
		select {
		case s := <-sigs:
			_ = syscall.Kill(-pgid, s.(syscall.Signal))
		case <-lostC:
			lostC = nil
			if err := lease.Err(); err != nil && !errors.Is(err, pgbaton.ErrReleased) {
				res.lost = err
				ev.stopping(lease.Key().String(), err, killAfter)
				_ = syscall.Kill(-pgid, syscall.SIGTERM)
				kill = time.After(killAfter)
			}
		case <-kill:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		case err := <-done:
			// The group may outlive its leader; after a loss, nothing of
			// it may keep running.
			if res.lost != nil {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
			}
			res.code = 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					res.signal = ws.Signal()
					res.code = 128 + int(ws.Signal())
				} else {
					res.code = ee.ExitCode()
				}
			} else if err != nil {
				res.code = exitCannotExec
			}
			return res
		}
	}
}

func usageMsg(format string, args ...any) error {
	return fmt.Errorf("exec: "+format+"\nrun 'pgbaton help exec' for usage", args...)
}

// execEvents reports what exec does on stderr: one JSON object per line with
// -json, short sentences otherwise (and nothing on success).
type execEvents struct {
	w    io.Writer
	json *slog.Logger
}

func newExecEvents(w io.Writer, asJSON bool) *execEvents {
	ev := &execEvents{w: w}
	if asJSON {
		ev.json = slog.New(slog.NewJSONHandler(w, nil))
	}
	return ev
}

func (ev *execEvents) libraryLogger() *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelWarn}
	if ev.json != nil {
		return slog.New(slog.NewJSONHandler(ev.w, opts))
	}
	return slog.New(slog.NewTextHandler(ev.w, opts))
}

func (ev *execEvents) emit(level slog.Level, event string, text string, attrs ...any) {
	if ev.json != nil {
		ev.json.Log(context.Background(), level, event, attrs...)
		return
	}
	if text != "" {
		printf(ev.w, "pgbaton exec: %s\n", text)
	}
}

func (ev *execEvents) error(stage string, err error) {
	ev.emit(slog.LevelError, "error", stage+": "+err.Error(), "stage", stage, "err", err.Error())
}

func (ev *execEvents) busy(name string, k pgbaton.Key, waited time.Duration) {
	ev.emit(slog.LevelInfo, "lock-busy", fmt.Sprintf("lock %q is busy (held elsewhere); not running the command", name),
		"key", name, "key_id", k.ID(), "waited_ms", waited.Milliseconds())
}

func (ev *execEvents) acquired(name string, k pgbaton.Key, token int64, hasToken bool, waited time.Duration) {
	attrs := []any{"key", name, "key_id", k.ID(), "waited_ms", waited.Milliseconds()}
	if hasToken {
		attrs = append(attrs, "fencing_token", token)
	}
	ev.emit(slog.LevelInfo, "acquired", "", attrs...)
}

func (ev *execEvents) stopping(name string, cause error, killAfter time.Duration) {
	ev.emit(slog.LevelError, "lock-lost", fmt.Sprintf("lock %q lost (%v); sending SIGTERM, SIGKILL in %s", name, cause, killAfter),
		"key", name, "err", cause.Error(), "kill_after_ms", killAfter.Milliseconds())
}

func (ev *execEvents) lost(name string, cause error, code int) {
	ev.emit(slog.LevelError, "exit", fmt.Sprintf("the command ran without the lock at the end; exit %d (its own status was %d)", exitLost, code),
		"key", name, "exit", exitLost, "command_exit", code, "err", cause.Error())
}

func (ev *execEvents) exited(name string, code int, sig syscall.Signal) {
	attrs := []any{"key", name, "exit", code}
	if sig != 0 {
		attrs = append(attrs, "signal", strings.ToUpper(sig.String()))
	}
	ev.emit(slog.LevelInfo, "exit", "", attrs...)
}
