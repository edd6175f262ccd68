package periodic

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
)

// Config configures a [Scheduler]. Zero fields take the default written
// next to them.
type Config struct {
	// Locker is required. It provides the connection settings, the schema
	// (pgbaton.Migrate must have run), the instance name, and the session
	// leases of lease-mode jobs. The scheduler does not close it.
	Locker *pgbaton.Locker
	// Pool is the application's pool, where transaction-mode jobs (RunTx)
	// run. Required if any job uses RunTx. The scheduler does not close it.
	Pool *pgxpool.Pool

	// Instance names this process in the runs table and logs. Default the
	// Locker's InstanceName.
	Instance string
	// Logger receives structured events. Default the Locker's Logger.
	Logger *slog.Logger
	// BusyLogLevel is the level of "lock busy" and "tick already claimed"
	// events, which every instance but one logs at every tick. Default
	// Info (slog's zero level); set slog.LevelDebug to quiet them, or
	// slog.LevelWarn to see contention.
	BusyLogLevel slog.Level
	// OnEvent, if set, receives every event (see [Event]) synchronously; a
	// metrics adapter counts them. It must not block.
	OnEvent func(Event)
	// Clock is the local clock (see [Clock]). Default [SystemClock].
	Clock Clock

	// ShutdownGrace is how long Close lets running functions finish before
	// cancelling their contexts. Default 10s.
	ShutdownGrace time.Duration
	// CancelWait is how long Close and Remove wait for functions to return
	// after cancelling them, before releasing their locks anyway and
	// reporting a [*StuckError]. Default 5s.
	CancelWait time.Duration
	// Retention is how long run history is kept; the scheduler's own job
	// "pgbaton.periodic.prune" deletes older rows every PruneInterval.
	// Default 7 days; negative disables pruning on this instance.
	Retention time.Duration
	// PruneInterval is the prune job's schedule. Default one hour.
	PruneInterval time.Duration
	// StaleAfter is the default of Job.StaleAfter. Default 3.
	StaleAfter int
	// OpTimeout bounds every bookkeeping statement and every wait for a
	// connection. Default 10s.
	OpTimeout time.Duration
	// MaxConns bounds the scheduler's own bookkeeping connections (claims,
	// records, health), separate from Pool. Default 4.
	MaxConns int32
	// Tracer, if set, traces the bookkeeping statements (an OpenTelemetry
	// adapter, or a counter).
	Tracer pgx.QueryTracer
	// ScheduleTimeout bounds every call into a job's Schedule that is not
	// one of this package's ([Every], [Cron]): a call that does not return
	// in time, panics, or returns a tick that does not advance marks the
	// schedule broken (see [ErrScheduleBroken]), so Add, Health, Close and
	// the job's loop never wait on it. Default 1s.
	ScheduleTimeout time.Duration

	// replay, set by tests only, runs the scheduler on a replayed time
	// line: database time is a linear function of the server's clock.
	replay *replay
}

// replay maps real time to a replayed time line: at real instant Real the
// replayed time is Start, and it runs Speed times as fast. It drives the
// local clock, the database's time (every statement reads it through the
// same function of clock_timestamp()) and the loop's sleeps alike, so a
// test can run a day of ticks, DST changes included, in seconds.
type replay struct {
	Start, Real time.Time
	Speed       float64
}

// Now is the replayed time now.
func (r *replay) Now() time.Time {
	return r.Start.Add(time.Duration(float64(time.Since(r.Real)) * r.Speed))
}

func (r *replay) sql() string {
	return fmt.Sprintf("('%s'::timestamptz + (clock_timestamp() - '%s'::timestamptz) * %g)",
		r.Start.UTC().Format(time.RFC3339Nano), r.Real.UTC().Format(time.RFC3339Nano), r.Speed)
}

// realDuration converts a duration of database time to a local sleep.
func (s *Scheduler) realDuration(d time.Duration) time.Duration {
	if r := s.cfg.replay; r != nil {
		return time.Duration(float64(d) / r.Speed)
	}
	return d
}

// virtualDuration converts a local duration to database time.
func (s *Scheduler) virtualDuration(d time.Duration) time.Duration {
	if r := s.cfg.replay; r != nil {
		return time.Duration(float64(d) * r.Speed)
	}
	return d
}

// Defaults.
const (
	DefaultShutdownGrace = 10 * time.Second
	DefaultCancelWait    = 5 * time.Second
	DefaultRetention     = 7 * 24 * time.Hour
	DefaultPruneInterval = time.Hour
	DefaultStaleAfter    = 3
	DefaultOpTimeout     = 10 * time.Second
	DefaultMaxConns      = 4
	// DefaultScheduleTimeout is the default of Config.ScheduleTimeout.
	DefaultScheduleTimeout = time.Second
	// PruneJob is the name of the scheduler's built-in retention job.
	PruneJob = "pgbaton.periodic.prune"
)

func (c Config) resolve() (Config, error) {
	bad := func(field, format string, args ...any) (Config, error) {
		return c, &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if c.Locker == nil {
		return bad("Locker", "nil; open one with pgbaton.New: it provides the connection, the schema and the leases")
	}
	lc := c.Locker.Config()
	if c.Instance == "" {
		c.Instance = lc.InstanceName
	}
	if c.Logger == nil {
		c.Logger = lc.Logger
	}
	if c.Clock == nil {
		c.Clock = SystemClock()
	}
	if c.replay != nil {
		c.Clock = c.replay
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.ShutdownGrace, DefaultShutdownGrace)
	def(&c.CancelWait, DefaultCancelWait)
	def(&c.Retention, DefaultRetention)
	def(&c.PruneInterval, DefaultPruneInterval)
	def(&c.OpTimeout, DefaultOpTimeout)
	def(&c.ScheduleTimeout, DefaultScheduleTimeout)
	if c.StaleAfter == 0 {
		c.StaleAfter = DefaultStaleAfter
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	switch {
	case len(c.Instance) > 100:
		return bad("Instance", "%d bytes; use at most 100", len(c.Instance))
	case c.ShutdownGrace < 0, c.CancelWait < 0, c.OpTimeout < 0, c.PruneInterval < 0, c.ScheduleTimeout < 0:
		return bad("ShutdownGrace/CancelWait/OpTimeout/PruneInterval/ScheduleTimeout", "negative; use a positive duration or 0 for the default")
	case c.StaleAfter < 0:
		return bad("StaleAfter", "%d; use a positive number of intervals", c.StaleAfter)
	case c.MaxConns < 1:
		return bad("MaxConns", "%d; need at least 1", c.MaxConns)
	case c.Retention > 0 && c.Retention < c.PruneInterval:
		return bad("Retention", "%s is shorter than PruneInterval %s", c.Retention, c.PruneInterval)
	}
	return c, nil
}

// Scheduler runs periodic jobs: once per tick across every instance that
// schedules the same job names against the same database. Make one per
// process with [New], add jobs with [Scheduler.Add], and Close it on
// shutdown.
type Scheduler struct {
	cfg    Config
	locker *pgbaton.Locker
	app    *pgxpool.Pool
	pool   *pgxpool.Pool // bookkeeping
	st     *store
	clock  *dbClock

	mu     sync.Mutex
	jobs   map[string]*jobState
	closed bool
	loops  sync.WaitGroup
}

// New validates cfg, opens the scheduler's bookkeeping connections, checks
// that the schema is migrated, and starts the built-in prune job. Jobs start
// being scheduled as soon as they are added.
func New(ctx context.Context, cfg Config) (*Scheduler, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	lc := cfg.Locker.Config()
	var pc *pgxpool.Config
	if lc.ConnConfig != nil {
		if pc, err = pgxpool.ParseConfig(""); err != nil {
			return nil, fmt.Errorf("periodic: %w", err)
		}
		pc.ConnConfig.Config = *lc.ConnConfig.Copy()
	} else if pc, err = pgxpool.ParseConfig(lc.ConnString); err != nil {
		return nil, &ConfigError{Field: "Locker", Msg: "cannot parse its ConnString: " + err.Error()}
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "pgbaton:" + cfg.Instance + ":periodic"
	pc.MaxConns = cfg.MaxConns
	if cfg.Tracer != nil {
		pc.ConnConfig.Tracer = cfg.Tracer
	}
	pc.MinConns = 0
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("periodic: opening bookkeeping connections: %w", err)
	}
	clock := &dbClock{local: cfg.Clock}
	s := &Scheduler{cfg: cfg, locker: cfg.Locker, app: cfg.Pool, pool: pool, clock: clock, jobs: map[string]*jobState{}}
	nowSQL := ""
	if cfg.replay != nil {
		nowSQL = cfg.replay.sql()
	}
	s.st = newStore(pool, lc.Schema, cfg.Instance, clock, cfg.OpTimeout, nowSQL)
	if err := s.st.checkSchema(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if _, err := s.st.now(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("periodic: reading database time: %w", err)
	}
	if cfg.Retention > 0 {
		if err := s.add(s.pruneJob(), true); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// Config returns the resolved configuration.
func (s *Scheduler) Config() Config { return s.cfg }

// Add validates job and starts scheduling it on this instance. The first
// claim happens at once: it records ticks missed while no instance ran the
// job (see Job.Missed) and honours RunOnStart.
func (s *Scheduler) Add(job Job) error { return s.add(job, false) }

func (s *Scheduler) add(job Job, builtin bool) error {
	// A schedule of the caller's own is called under a bound from here on:
	// Add, Health, Close and the loop never wait on it for longer than
	// ScheduleTimeout, nor after the job is stopped.
	stopCtx, stopCancel := context.WithCancelCause(context.Background())
	if job.Schedule != nil && !ownSchedule(job.Schedule) {
		g, err := guard(job.Schedule, s.cfg.ScheduleTimeout, stopCtx.Done())
		if err != nil {
			stopCancel(err)
			return &JobError{Job: job.Name, Field: "Schedule", Msg: err.Error(), Err: err}
		}
		job.Schedule = g
	}
	job, err := validateJob(job, builtin)
	if err != nil {
		stopCancel(err)
		return err
	}
	if job.StaleAfter == 0 {
		job.StaleAfter = s.cfg.StaleAfter
	}
	if job.txMode() && s.app == nil {
		stopCancel(ErrInvalidJob)
		return &JobError{Job: job.Name, Field: "RunTx", Msg: "transaction mode needs the application's pool: set Config.Pool"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		stopCancel(ErrClosed)
		return ErrClosed
	}
	if _, ok := s.jobs[job.Name]; ok {
		stopCancel(ErrJobExists)
		return fmt.Errorf("%w: %q", ErrJobExists, job.Name)
	}
	j := newJobState(job, stopCtx, stopCancel)
	s.jobs[job.Name] = j
	s.loops.Add(1)
	go s.loop(j)
	return nil
}

// Remove stops scheduling the job on this instance (other instances go on).
// A run in progress may finish until ctx ends; then its context is
// cancelled with ErrRemoved and Remove waits up to CancelWait for it to
// return. The job's history and cursor stay in the database.
func (s *Scheduler) Remove(ctx context.Context, name string) error {
	s.mu.Lock()
	j, ok := s.jobs[name]
	if ok {
		delete(s.jobs, name)
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownJob, name)
	}
	return s.stopJobs(ctx, []*jobState{j}, ErrRemoved)
}

// Jobs returns the names of the jobs this scheduler runs, sorted.
func (s *Scheduler) Jobs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.jobs))
	for n := range s.jobs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Close shuts down gracefully: it stops claiming ticks, lets running
// functions finish for up to Config.ShutdownGrace, then cancels their
// contexts (cause ErrShutdown), waits up to CancelWait for them to return,
// records every outcome, releases every lock and closes the bookkeeping
// connections. It returns a [*StuckError] if some function did not return.
// It is idempotent.
func (s *Scheduler) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	return s.Shutdown(ctx)
}

// Shutdown is Close with the grace period given by ctx: running functions
// are cancelled when ctx ends.
func (s *Scheduler) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.loops.Wait()
		return nil
	}
	s.closed = true
	jobs := make([]*jobState, 0, len(s.jobs))
	for _, j := range s.jobs {
		jobs = append(jobs, j)
	}
	s.mu.Unlock()
	err := s.stopJobs(ctx, jobs, ErrShutdown)
	s.loops.Wait()
	s.pool.Close()
	return err
}

// stopJobs stops claiming for jobs, waits for their runs until ctx ends,
// cancels what is left with cause, and waits for the loops to exit.
func (s *Scheduler) stopJobs(ctx context.Context, jobs []*jobState, cause error) error {
	for _, j := range jobs {
		j.stop(cause)
	}
	allDone := make(chan struct{})
	go func() {
		for _, j := range jobs {
			<-j.done
		}
		close(allDone)
	}()
	select {
	case <-allDone:
		return nil
	case <-ctx.Done():
	}
	for _, j := range jobs {
		j.cancelRuns(cause)
	}
	<-allDone // each loop bounds its wait for a cancelled run by CancelWait
	var stuck []string
	for _, j := range jobs {
		stuck = append(stuck, j.stuckRuns()...)
	}
	if len(stuck) > 0 {
		sort.Strings(stuck)
		return &StuckError{Runs: stuck, Wait: s.cfg.CancelWait}
	}
	return nil
}

// jobState is a job as this scheduler runs it.
type jobState struct {
	Job
	key pgbaton.Key // the job's lock under OverlapForbid

	stopCtx    context.Context // cancelled when claiming must stop
	stopCancel context.CancelCauseFunc
	runCtx     context.Context // cancelled when running functions must stop
	runCancel  context.CancelCauseFunc
	done       chan struct{} // closed when the loop and every run ended

	// scheduleText is Schedule.String(), read once. defText describes the
	// definition instances must agree on, defHash is its hash.
	scheduleText, defText, defHash string

	mu        sync.Mutex
	runs      sync.WaitGroup
	stuck     []string
	schedErr  error     // the schedule is broken (ErrScheduleBroken)
	drift     string    // the other definition hash and instance last reported
	driftSent time.Time // when the drift was last written to the jobs row
}

func newJobState(job Job, stopCtx context.Context, stopCancel context.CancelCauseFunc) *jobState {
	j := &jobState{Job: job, key: pgbaton.KeyName("periodic:" + job.Name), done: make(chan struct{})}
	j.stopCtx, j.stopCancel = stopCtx, stopCancel
	j.scheduleText = job.Schedule.String()
	j.defText = job.definition(j.scheduleText)
	j.defHash = definitionHash(j.defText)
	j.runCtx, j.runCancel = context.WithCancelCause(context.Background())
	return j
}

// tickKey is the lock of one tick's run under OverlapAllow.
func (j *jobState) tickKey(tick time.Time) pgbaton.Key {
	return pgbaton.KeyName("periodic:" + j.Name + "@" + fmtTick(tick))
}

func (j *jobState) stop(cause error)       { j.stopCancel(cause) }
func (j *jobState) cancelRuns(cause error) { j.runCancel(cause) }

func (j *jobState) addStuck(run string) {
	j.mu.Lock()
	j.stuck = append(j.stuck, run)
	j.mu.Unlock()
}

func (j *jobState) setScheduleErr(err error) {
	j.mu.Lock()
	j.schedErr = err
	j.mu.Unlock()
}

// scheduleErr returns why the job's schedule is broken, or nil.
func (j *jobState) scheduleError() error {
	if g, ok := j.Schedule.(*guardedSchedule); ok {
		if err := g.broken(); err != nil {
			return err
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.schedErr
}

func (j *jobState) stuckRuns() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.stuck...)
}
