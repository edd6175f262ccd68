//go:build unix

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
)

func init() {
	register(&command{
		Name:    "cron",
		Summary: "run a crontab on every replica, each tick once across the cluster; 'cron status' shows its jobs",
		Run:     runCron,
	})
}

// Exit statuses of pgbaton cron.
const (
	// cronExitCrontab: the crontab is missing or invalid; nothing ran.
	cronExitCrontab = 1
	// cronExitUsage: a bad command line.
	cronExitUsage = 2
	// cronExitStart: the daemon could not start (no database, schema not
	// migrated, health address in use); nothing ran.
	cronExitStart = 3
	// cronExitStuck: shutdown could not record every outcome: a job's
	// process did not end after SIGKILL (uninterruptible sleep).
	cronExitStuck = 4
)

const cronSynopsis = "--crontab FILE [flags]   |   cron --crontab FILE --check   |   cron status [flags]"

const cronDescription = `Runs the jobs of a crontab on every replica of a service (a container's
command, or a sidecar), so that each tick runs once across all of them: the
replicas claim ticks in the database (package periodic: claims, history in
pgbaton.periodic_runs, health). Each replica runs the same file; the database,
not the replica count, decides how often a job runs.

The crontab is cron's user-crontab format, unchanged:

  # minute hour day-of-month month day-of-week command
  CRON_TZ=Europe/Paris
  PATH=/usr/local/bin:/usr/bin:/bin
  #pgbaton: name=backup timeout=30m group=db
  30 3 * * * backup.sh --full
  @hourly    vacuum-sessions
  #pgbaton: overlap=allow missed=skip
  @every 30s poll-queue

Commands run as $SHELL -c COMMAND (/bin/sh unless the crontab sets SHELL), as
cron runs them; % ends the command and starts its standard input (\% is a
literal %). Environment lines apply to the jobs after them; CRON_TZ sets the
zone of the calendar schedules after it (default UTC, never the machine's).
@every DURATION (whole seconds, at least 1s) is an extension for sub-minute
jobs; @reboot is refused. MAILTO is ignored.

Options go in a comment right above a job ("#pgbaton: key=value ..."; cron
ignores it):
  name=NAME          the job's identity across the cluster (default: cron- and
                     a hash of its schedule and command, so editing either
                     makes it a new job)
  timeout=DURATION   SIGTERM the run after this long, SIGKILL after
                     --kill-after (default 1h; none for no timeout)
  overlap=forbid     ticks that fall during a run are recorded as skipped (the
                     default); overlap=allow runs them
  missed=run-once    after an outage, run the latest missed tick once (the
                     default); missed=skip, or missed=backfill:6h
  deadline=DURATION  how late a tick may still start (default the interval,
                     at most 1m)
  group=NAME         jobs of one group never run together anywhere: a tick
                     that finds its group busy is recorded as failed, "lock
                     group NAME is busy"

Each run's process gets PGBATON_JOB, PGBATON_TICK, PGBATON_RUN_KIND,
PGBATON_INSTANCE and PGBATON_FENCING_TOKEN, runs in a process group of its
own, and is killed if pgbaton dies (Linux). Its stdout and stderr are logged
line by line ("cron: output", with job, run = the fencing token, tick,
stream). When its shell exits, what is left of its process group is killed:
no part of a run outlives its lock. If a run's lock is lost, its group gets
SIGTERM, then SIGKILL after --kill-after.

SIGHUP, or a change of the file (checked every --poll), reloads the crontab:
jobs added start, jobs removed or changed stop after their current run
(SIGTERM after --grace), unchanged jobs and their runs go on. An invalid file
is reported and the previous crontab stays in force.

Replicas whose crontabs differ report it: a job of one name defined
differently (schedule, options, command, environment, shell) logs a
"periodic: definition drift" warning, and so does the job "crontab:NAME"
(--name, default "default"), a no-op every minute whose definition hashes the
whole file, so that a job present in one replica's file and not another's is
seen too. pgbaton cron status shows the drift (within a minute for the
crontab as a whole). Fleets that share a database with different crontabs
need different --name values.

SIGTERM or SIGINT shut down: stop claiming ticks, SIGTERM every running job,
SIGKILL what is left after --grace, record every outcome, release every lock.
As PID 1 (a container's init) pgbaton reaps orphaned processes; elsewhere on
Linux it is a child subreaper, so what a job leaves behind is reaped too.

--check validates the file, prints each job with its next ticks, and exits
(no database needed). 'pgbaton cron status' reads the jobs, their next ticks,
latest runs and health from the database, on any machine.

--health-listen ADDR serves the jobs' health: 200 when every job is healthy,
503 when one is stale (no success for 3 intervals) or the database cannot be
read; ?job=NAME for one job.

The database: --dsn, else DATABASE_URL, else the standard PG* variables. The
schema must be migrated (pgbaton migrate up).

Logs: JSON lines on stderr (--log-format text for key=value lines), from
pgbaton (msg "cron: ...") and from package periodic (msg "periodic: ...").

Exit status: 0 after a shutdown that recorded every outcome (or a valid
--check); 1 when the crontab is missing or invalid; 2 for a bad command
line; 3 when the daemon could not start (database unreachable, schema not
migrated, health address unusable); 4 when a job's process survived SIGKILL
at shutdown.`

type cronFlags struct {
	crontab      string
	check        bool
	next         int
	dsn          string
	instance     string
	schema       string
	grace        time.Duration
	killAfter    time.Duration
	healthListen string
	poll         time.Duration
	logFormat    string
	logLevel     string
	name         string
}

func runCron(ctx context.Context, out *output, args []string) error {
	if len(args) > 0 && args[0] == "status" {
		return runCronStatus(ctx, out, args[1:])
	}
	fs := newFlagSet(out, "cron", cronSynopsis, cronDescription)
	var f cronFlags
	fs.StringVar(&f.crontab, "crontab", "", "the crontab file (required)")
	fs.BoolVar(&f.check, "check", false, "validate the crontab, print each job's next ticks, and exit")
	fs.IntVar(&f.next, "next", 3, "with --check: how many next ticks to print per job")
	fs.StringVar(&f.dsn, "dsn", "", "PostgreSQL connection string (default: DATABASE_URL, then PG* variables)")
	fs.StringVar(&f.instance, "instance", "", "this replica's name in the run history and logs (default: $PGBATON_INSTANCE, else host name and pid)")
	fs.StringVar(&f.schema, "schema", pgbaton.DefaultSchema, "pgbaton's schema")
	fs.DurationVar(&f.grace, "grace", 10*time.Second, "at shutdown (and for jobs a reload removes), SIGKILL running jobs this long after SIGTERM")
	fs.DurationVar(&f.killAfter, "kill-after", 0, "after a lost lock or a timeout, SIGKILL this long after SIGTERM (default: half the lock's safety margin)")
	fs.StringVar(&f.healthListen, "health-listen", "", "serve health on this address, e.g. 127.0.0.1:8081 (200 healthy, 503 not)")
	fs.DurationVar(&f.poll, "poll", time.Second, "how often to check the crontab for changes (0: only on SIGHUP)")
	fs.StringVar(&f.logFormat, "log-format", "json", "json or text")
	fs.StringVar(&f.name, "name", "default", "the crontab's name: replicas running crontabs of one name must run the same file (a difference is reported as drift); give fleets that share a database different names")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (debug shows every replica's 'tick already claimed')")
	if err := parseFlags(fs, args); err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			return usagef("%s", strings.TrimPrefix(err.Error(), "cron: "))
		}
		return err
	}
	switch {
	case f.crontab == "":
		return usagef("--crontab FILE is required, e.g. pgbaton cron --crontab /etc/pgbaton/crontab")
	case f.next < 1 || f.next > 1000:
		return usagef("--next %d: use 1 to 1000", f.next)
	case f.grace < 0, f.killAfter < 0, f.poll < 0:
		return usagef("--grace, --kill-after and --poll must not be negative")
	case validName("--name", f.name) != nil:
		return usagef("%v", validName("--name", f.name))
	case f.logFormat != "json" && f.logFormat != "text":
		return usagef("--log-format %q: use json or text", f.logFormat)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return usagef("--log-level %q: use debug, info, warn or error", f.logLevel)
	}
	data, err := os.ReadFile(f.crontab)
	if err != nil {
		return &exitCodeError{code: cronExitCrontab, err: fmt.Errorf("reading the crontab: %w", err)}
	}
	tab, err := parseCrontab(f.crontab, data)
	if err != nil {
		return &exitCodeError{code: cronExitCrontab, err: fmt.Errorf("invalid crontab, nothing runs:\n%w", err)}
	}
	if f.check {
		for _, w := range tab.Warnings {
			printf(out.Stderr, "pgbaton cron: warning: %s\n", w)
		}
		return printCronCheck(out.Stdout, f.crontab, tab, time.Now(), f.next)
	}
	return runCronDaemon(ctx, out, f, tab, level)
}

// printCronCheck prints each job, its options and its next ticks.
func printCronCheck(w io.Writer, path string, tab *cronTab, now time.Time, n int) error {
	printf(w, "%s: %d jobs, valid (file hash %s)\n", path, len(tab.Jobs), tab.Hash)
	for _, j := range tab.Jobs {
		printf(w, "\njob %s (line %d)\n", j.Name, j.Line)
		sched := j.Spec
		if j.TZ != "" {
			sched += "   (CRON_TZ=" + j.TZ + ")"
		} else if !strings.HasPrefix(j.Spec, "@every") {
			sched += "   (UTC)"
		}
		printf(w, "  schedule  %s\n", sched)
		printf(w, "  command   %s -c %s\n", j.Shell, strconv.Quote(j.Command))
		if j.Stdin != "" {
			printf(w, "  stdin     %s\n", strconv.Quote(j.Stdin))
		}
		printf(w, "  options   %s\n", j.optionsText())
		ticks, err := nextTicks(j.Schedule, now, n)
		var parts []string
		for _, t := range ticks {
			s := t.UTC().Format("2006-01-02 15:04:05Z")
			if j.TZ != "" {
				if loc, lerr := time.LoadLocation(j.TZ); lerr == nil {
					s += " (" + t.In(loc).Format("15:04 MST") + ")"
				}
			}
			parts = append(parts, s)
		}
		if err != nil {
			parts = append(parts, "no further tick: "+err.Error())
		}
		printf(w, "  next      %s\n", strings.Join(parts, ", "))
	}
	return nil
}

// Errors recorded as a run's outcome (in pgbaton.periodic_runs.error).
var (
	// errCronCommand: the command exited non-zero or was killed.
	errCronCommand = errors.New("the command failed")
	// errCronGroupBusy: another job of the lock group was running.
	errCronGroupBusy = errors.New("lock group busy")
	// errCronStart: the shell could not be started.
	errCronStart = errors.New("the command could not be started")
)

// cronDaemon runs a crontab's jobs with a periodic.Scheduler.
type cronDaemon struct {
	log       *slog.Logger
	path      string
	locker    *pgbaton.Locker
	sched     *periodic.Scheduler
	reaper    *cronReaper
	grace     time.Duration
	killAfter time.Duration
	instance  string
	name      string // --name: the crontab's name across the replicas
	// fingerprint is the crontab's fingerprint job (see crontabFingerprint);
	// only the reloader changes it after start.
	fingerprint cronJob

	mu      sync.Mutex
	jobs    map[string]cronJob // the jobs added to the scheduler, by name
	running map[int]*cronRunning
	closing bool

	reloadC    chan string
	reloadStop context.CancelFunc
	reloadDone chan struct{}
}

// cronRunning is a job process in progress.
type cronRunning struct {
	job      string
	termSent bool // SIGTERMed at shutdown
}

func newCronLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func runCronDaemon(ctx context.Context, out *output, f cronFlags, tab *cronTab, level slog.Level) error {
	cfg, err := execConfig(execFlags{dsn: f.dsn, instance: f.instance})
	if err != nil {
		return &exitCodeError{code: cronExitStart, err: fmt.Errorf("database settings: %w", err)}
	}
	cfg.Schema = f.schema
	base := newCronLogger(out.Stderr, f.logFormat, level)
	// The Locker's own lines ("lock busy" at every tick on every replica
	// but one) are noise here: warnings and up, unless --log-level debug.
	cfg.Logger = newCronLogger(out.Stderr, f.logFormat, max(level, slog.LevelWarn))
	if level <= slog.LevelDebug {
		cfg.Logger = base
	}
	log := base
	for _, w := range tab.Warnings {
		log.Warn("cron: " + w)
	}
	// Signals from here on are the daemon's: a second SIGTERM must not kill
	// it while it records outcomes.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	l, err := pgbaton.New(startCtx, cfg)
	if err != nil {
		log.Error("cron: cannot start: connecting", "err", redactDSN(err.Error()))
		return &exitCodeError{code: cronExitStart}
	}
	rc := l.Config()
	log = base.With("instance", rc.InstanceName) // periodic's events name it themselves
	margin := rc.ServerReleaseTimeout() - rc.LeaseTimeout - rc.HeartbeatInterval
	if f.killAfter == 0 {
		f.killAfter = margin / 2
	}
	if f.killAfter >= margin {
		_ = l.Close()
		return usagef("--kill-after %s must be below the lock's safety margin %s (the server frees a lost lock %s after it stops hearing from this process; the loss is noticed within LeaseTimeout %s + HeartbeatInterval %s)",
			f.killAfter, margin, rc.ServerReleaseTimeout(), rc.LeaseTimeout, rc.HeartbeatInterval)
	}
	d := &cronDaemon{log: log, path: f.crontab, name: f.name, locker: l, grace: f.grace, killAfter: f.killAfter, instance: rc.InstanceName,
		jobs: map[string]cronJob{}, running: map[int]*cronRunning{}, reloadC: make(chan string, 1), reloadDone: make(chan struct{})}
	d.reaper = newCronReaper(log)
	sched, err := periodic.New(startCtx, periodic.Config{
		Locker:        l,
		Logger:        base,
		BusyLogLevel:  slog.LevelDebug,
		ShutdownGrace: f.grace,
	})
	if err != nil {
		msg := "cron: cannot start the scheduler"
		if errors.Is(err, periodic.ErrNotMigrated) {
			msg += "; run 'pgbaton migrate up' once against this database"
		}
		log.Error(msg, "err", redactDSN(err.Error()))
		d.reaper.close()
		_ = l.Close()
		return &exitCodeError{code: cronExitStart}
	}
	d.sched = sched
	var srv *http.Server
	if f.healthListen != "" {
		var lc net.ListenConfig
		ln, err := lc.Listen(startCtx, "tcp", f.healthListen)
		if err != nil {
			log.Error("cron: cannot start: --health-listen", "addr", f.healthListen, "err", err.Error())
			_ = sched.Close()
			d.reaper.close()
			_ = l.Close()
			return &exitCodeError{code: cronExitStart}
		}
		srv = &http.Server{Handler: sched.HealthHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		log.Info("cron: serving health", "addr", ln.Addr().String())
	}
	for _, j := range tab.Jobs {
		if err := sched.Add(d.periodicJob(j)); err != nil {
			log.Error("cron: cannot schedule a job of the crontab", "job", j.Name, "line", j.Line, "err", err.Error())
			d.stop("invalid job", srv)
			return &exitCodeError{code: cronExitCrontab}
		}
		d.jobs[j.Name] = j
	}
	d.fingerprint = crontabFingerprint(f.name, tab)
	if err := sched.Add(d.fingerprintJob()); err != nil {
		log.Error("cron: cannot schedule the crontab's fingerprint job", "err", err.Error())
		d.stop("invalid job", srv)
		return &exitCodeError{code: cronExitCrontab}
	}
	log.Info("cron: started", "pid", os.Getpid(), "crontab", f.crontab, "file_hash", tab.Hash, "jobs", len(tab.Jobs), "names", jobNames(tab.Jobs))

	rctx, rstop := context.WithCancel(context.Background())
	d.reloadStop = rstop
	go d.reloader(rctx)

	var poll <-chan time.Time
	if f.poll > 0 {
		t := time.NewTicker(f.poll)
		defer t.Stop()
		poll = t.C
	}
	seen := tab.Hash
	missing := false
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				d.requestReload("SIGHUP")
				continue
			}
			return d.exit(d.stop(signalName(s.(syscall.Signal)), srv))
		case <-ctx.Done():
			return d.exit(d.stop("interrupted", srv))
		case <-poll:
			data, err := os.ReadFile(f.crontab)
			if err != nil {
				if !missing {
					log.Warn("cron: cannot read the crontab; keeping the jobs in force", "crontab", f.crontab, "err", err.Error())
				}
				missing = true
				continue
			}
			missing = false
			sum := sha256.Sum256(data)
			if h := hex.EncodeToString(sum[:8]); h != seen {
				seen = h
				d.requestReload("file changed")
			}
		}
	}
}

func (d *cronDaemon) exit(code int) error {
	if code == 0 {
		return nil
	}
	return &exitCodeError{code: code}
}

func jobNames(jobs []cronJob) []string {
	var n []string
	for _, j := range jobs {
		n = append(n, j.Name)
	}
	return n
}

// requestReload asks the reloader for a reload (coalescing requests).
func (d *cronDaemon) requestReload(reason string) {
	select {
	case d.reloadC <- reason:
	default:
	}
}

// reloader runs reloads one at a time, off the signal loop, so that a
// shutdown is never delayed by a reload waiting for a run to finish.
func (d *cronDaemon) reloader(ctx context.Context) {
	defer close(d.reloadDone)
	for {
		select {
		case <-ctx.Done():
			return
		case reason := <-d.reloadC:
			d.reload(ctx, reason)
		}
	}
}

// reload re-reads the crontab and applies the difference.
func (d *cronDaemon) reload(ctx context.Context, reason string) {
	data, err := os.ReadFile(d.path)
	if err != nil {
		d.log.Error("cron: reload failed; the previous crontab stays in force", "reason", reason, "err", err.Error())
		return
	}
	tab, err := parseCrontab(d.path, data)
	if err != nil {
		d.log.Error("cron: reload failed, invalid crontab; the previous crontab stays in force", "reason", reason, "err", err.Error())
		return
	}
	for _, w := range tab.Warnings {
		d.log.Warn("cron: " + w)
	}
	next := map[string]cronJob{}
	for _, j := range tab.Jobs {
		next[j.Name] = j
	}
	d.mu.Lock()
	old := make(map[string]cronJob, len(d.jobs))
	for n, j := range d.jobs {
		old[n] = j
	}
	d.mu.Unlock()
	var added, removed, changed, kept []string
	for n, oj := range old {
		nj, ok := next[n]
		switch {
		case !ok:
			removed = append(removed, n)
		case !oj.sameDefinition(&nj):
			changed = append(changed, n)
		default:
			kept = append(kept, n)
		}
	}
	for n := range next {
		if _, ok := old[n]; !ok {
			added = append(added, n)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	sort.Strings(changed)
	sort.Strings(kept)
	// Stop removed and changed jobs: their current runs get --grace to
	// finish, then SIGTERM (and SIGKILL after --kill-after).
	var wg sync.WaitGroup
	for _, n := range append(append([]string(nil), removed...), changed...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, d.grace)
			defer cancel()
			if err := d.sched.Remove(rctx, n); err != nil && !errors.Is(err, periodic.ErrUnknownJob) {
				d.log.Error("cron: reload: stopping a job", "job", n, "err", err.Error())
			}
			d.mu.Lock()
			delete(d.jobs, n)
			d.mu.Unlock()
		}()
	}
	wg.Wait()
	for _, n := range append(append([]string(nil), added...), changed...) {
		if ctx.Err() != nil {
			return
		}
		if err := d.sched.Add(d.periodicJob(next[n])); err != nil {
			d.log.Error("cron: reload: scheduling a job", "job", n, "err", err.Error())
			continue
		}
		d.mu.Lock()
		d.jobs[n] = next[n]
		d.mu.Unlock()
	}
	d.mu.Lock()
	for _, n := range kept {
		d.jobs[n] = next[n]
	}
	d.mu.Unlock()
	if fp := crontabFingerprint(d.name, tab); fp.DefHash != d.fingerprint.DefHash {
		rctx, cancel := context.WithTimeout(ctx, d.grace)
		err := d.sched.Remove(rctx, fp.Name)
		cancel()
		if err != nil && !errors.Is(err, periodic.ErrUnknownJob) {
			d.log.Error("cron: reload: replacing the crontab's fingerprint job", "err", err.Error())
		}
		d.fingerprint = fp
		if err := d.sched.Add(d.fingerprintJob()); err != nil && ctx.Err() == nil {
			d.log.Error("cron: reload: replacing the crontab's fingerprint job", "err", err.Error())
		}
	}
	d.log.Info("cron: crontab reloaded", "reason", reason, "file_hash", tab.Hash,
		"added", added, "removed", removed, "changed", changed, "unchanged", len(kept))
}

// stop shuts down: stop claiming, SIGTERM running jobs, SIGKILL after
// --grace, record outcomes, release locks. It returns the exit status.
func (d *cronDaemon) stop(reason string, srv *http.Server) int {
	d.mu.Lock()
	d.closing = true
	n := 0
	for pid, r := range d.running {
		r.termSent = true
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		n++
	}
	d.mu.Unlock()
	d.log.Info("cron: shutting down: no new runs; running jobs got SIGTERM", "reason", reason, "running", n, "grace", d.grace)
	if d.reloadStop != nil {
		d.reloadStop()
		<-d.reloadDone
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.grace)
	defer cancel()
	err := d.sched.Shutdown(ctx)
	if srv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(sctx)
		scancel()
	}
	_ = d.locker.Close()
	d.reaper.close()
	if err != nil {
		d.log.Error("cron: shutdown incomplete", "err", err.Error())
		if errors.Is(err, periodic.ErrStuck) {
			return cronExitStuck
		}
		return exitFailure
	}
	d.log.Info("cron: stopped; every outcome recorded", "reason", reason)
	return 0
}

// crontabFingerprint is the job "crontab:NAME": a no-op every minute whose
// definition hashes the whole crontab (every job's name, schedule, what it
// runs and options). Replicas running different crontabs of one name, a
// job more or less included, so report periodic's definition drift on it,
// even for jobs whose identity (a hash) differs between the files.
func crontabFingerprint(name string, tab *cronTab) cronJob {
	var b strings.Builder
	for _, j := range tab.Jobs {
		fmt.Fprintf(&b, "%s\x00%s\x00%s\n", j.Name, j.Schedule.String(), j.optionsText())
	}
	sum := sha256.Sum256([]byte(b.String()))
	def := hex.EncodeToString(sum[:8])
	inner := periodic.Every(time.Minute)
	return cronJob{Name: "crontab:" + name, Spec: "@every 1m", DefHash: def, Explicit: true,
		Schedule: &tabSchedule{inner: inner, text: tabScheduleText("@every 1m", "", def)}}
}

func (d *cronDaemon) fingerprintJob() periodic.Job {
	return periodic.Job{
		Name:     d.fingerprint.Name,
		Schedule: d.fingerprint.Schedule,
		Timeout:  time.Minute,
		Run:      func(context.Context, periodic.Run) error { return nil },
	}
}

func (d *cronDaemon) periodicJob(j cronJob) periodic.Job {
	return periodic.Job{
		Name:          j.Name,
		Schedule:      j.Schedule,
		Overlap:       j.Overlap,
		Missed:        j.Missed,
		StartDeadline: j.StartDeadline,
		Timeout:       j.Timeout,
		Run:           func(ctx context.Context, run periodic.Run) error { return d.run(ctx, j, run) },
	}
}

// run is one run of a job: take the group's lock if any, start the shell,
// log its output, stop it when the run's context ends, and report the
// outcome as the run's error.
func (d *cronDaemon) run(ctx context.Context, j cronJob, run periodic.Run) error {
	log := d.log.With("job", j.Name, "run", run.Token, "tick", run.Tick)
	d.mu.Lock()
	closing := d.closing
	d.mu.Unlock()
	if closing {
		return fmt.Errorf("not started: %w", periodic.ErrShutdown)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if j.Group != "" {
		lease, err := d.locker.TryAcquire(ctx, pgbaton.KeyName("cron-group:"+j.Group))
		if errors.Is(err, pgbaton.ErrNotAcquired) {
			log.Warn("cron: lock group busy; tick not run", "group", j.Group)
			return fmt.Errorf("%w: lock group %q is busy (another job of the group is running); the tick did not run", errCronGroupBusy, j.Group)
		}
		if err != nil {
			return fmt.Errorf("taking the lock of group %q: %w", j.Group, err)
		}
		defer func() { _ = lease.Release() }()
		go func() {
			select {
			case <-lease.Done():
				if err := lease.Err(); err != nil && !errors.Is(err, pgbaton.ErrReleased) {
					cancel(fmt.Errorf("the lock of group %q was lost: %w", j.Group, err))
				}
			case <-ctx.Done():
			}
		}()
	}
	return d.runProcess(ctx, j, run, log)
}

// pipes are a run's stdin, stdout and stderr.
type cronPipes struct {
	child  []*os.File // given to the child, closed in the parent after fork
	parent []*os.File // stdout and stderr read ends
}

func (p *cronPipes) closeChild() {
	for _, f := range p.child {
		_ = f.Close()
	}
	p.child = nil
}

func (p *cronPipes) closeParent() {
	for _, f := range p.parent {
		_ = f.Close()
	}
}

func openCronPipes(stdin string) (*cronPipes, error) {
	p := &cronPipes{}
	fail := func(err error) (*cronPipes, error) {
		p.closeChild()
		p.closeParent()
		return nil, err
	}
	if stdin == "" {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return fail(err)
		}
		p.child = append(p.child, f)
	} else {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		p.child = append(p.child, r)
		go func() { _, _ = io.WriteString(w, stdin); _ = w.Close() }()
	}
	for range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		p.child = append(p.child, w)
		p.parent = append(p.parent, r)
	}
	return p, nil
}

func (d *cronDaemon) runProcess(ctx context.Context, j cronJob, run periodic.Run, log *slog.Logger) error {
	pipes, err := openCronPipes(j.Stdin)
	if err != nil {
		return fmt.Errorf("%w: %w", errCronStart, err)
	}
	env := append(os.Environ(), j.Env...)
	env = append(env,
		"PGBATON_JOB="+j.Name,
		"PGBATON_TICK="+run.Tick.UTC().Format(time.RFC3339Nano),
		"PGBATON_RUN_KIND="+string(run.Kind),
		"PGBATON_INSTANCE="+d.instance,
		"PGBATON_FENCING_TOKEN="+strconv.FormatInt(run.Token, 10))
	argv := []string{j.Shell, "-c", j.Command}

	// The forking goroutine keeps its OS thread until the child is reaped:
	// the parent-death signal is tied to that thread.
	type started struct {
		c   *cronChild
		err error
	}
	startedC := make(chan started, 1)
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c, err := d.reaper.start(argv, env, pipes.child)
		startedC <- started{c, err}
		if err == nil {
			exited <- <-c.status
		}
	}()
	st := <-startedC
	pipes.closeChild()
	if st.err != nil {
		pipes.closeParent()
		log.Error("cron: cannot start the command", "err", st.err.Error())
		return fmt.Errorf("%w: %w", errCronStart, st.err)
	}
	pid := st.c.pid
	begin := time.Now()
	log.Info("cron: command started", "pid", pid, "kind", string(run.Kind))
	// If the daemon dies, the job's whole group dies with it (the
	// parent-death signal reaches only the shell); the reaper collects the
	// watchdog.
	if stop, err := groupWatchdog(pid, false); err == nil {
		defer stop()
	} else {
		log.Warn("cron: no watchdog for the job's process group", "err", err.Error())
	}
	var readers sync.WaitGroup
	for i, stream := range []string{"stdout", "stderr"} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			logLines(pipes.parent[i], log, stream)
		}()
	}
	d.mu.Lock()
	r := &cronRunning{job: j.Name}
	if d.closing { // shutdown began between the check and the fork
		r.termSent = true
		_ = syscall.Kill(-pid, syscall.SIGTERM)
	}
	d.running[pid] = r
	d.mu.Unlock()

	var cause error
	var kill <-chan time.Time
	done := ctx.Done()
	var ws syscall.WaitStatus
wait:
	for {
		select {
		case <-done:
			done = nil
			cause = context.Cause(ctx)
			d.mu.Lock()
			termed := r.termSent
			d.mu.Unlock()
			if termed && errors.Is(cause, periodic.ErrShutdown) {
				log.Warn("cron: grace period over; sending SIGKILL", "pid", pid)
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				continue
			}
			log.Warn("cron: stopping the command: SIGTERM, then SIGKILL", "pid", pid, "cause", cause.Error(), "kill_after", d.killAfter.String())
			_ = syscall.Kill(-pid, syscall.SIGTERM)
			kill = time.After(d.killAfter)
		case <-kill:
			kill = nil
			log.Warn("cron: the command outlived SIGTERM; sending SIGKILL", "pid", pid)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		case ws = <-exited:
			break wait
		}
	}
	// What is left of the group must not outlive the run's lock. Under the
	// reaper's lock: no new group can take this id meanwhile.
	d.reaper.mu.Lock()
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	d.reaper.mu.Unlock()
	d.mu.Lock()
	termed := r.termSent
	delete(d.running, pid)
	d.mu.Unlock()
	// Output still in the pipes is logged; a process that left the group
	// (setsid) and keeps them open is not waited for.
	drained := make(chan struct{})
	go func() { readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(2 * time.Second):
		log.Warn("cron: a process outside the job's group holds its output open; no longer reading it")
	}
	pipes.closeParent()
	<-drained
	status := describeWait(ws)
	took := time.Since(begin)
	log.Info("cron: command exited", "pid", pid, "status", status, "took", took.Round(time.Millisecond).String())
	switch {
	case ws.Exited() && ws.ExitStatus() == 0:
		return nil
	case cause != nil:
		return fmt.Errorf("command stopped (%s): %w", status, cause)
	case termed:
		return fmt.Errorf("command stopped by SIGTERM at shutdown (%s): %w", status, periodic.ErrShutdown)
	}
	return fmt.Errorf("%w: %s", errCronCommand, status)
}
