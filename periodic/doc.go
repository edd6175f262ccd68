// Package periodic runs scheduled jobs once per tick across every instance
// of a service, with their history and health in the PostgreSQL the service
// already uses.
//
// # Model
//
// A [Job] has a name, a [Schedule] and a function. A schedule is a fixed
// set of instants, ticks, that every instance computes alike: [Every]
// (multiples of an interval since the Unix epoch, or since local midnight
// with [EverySchedule.In], with optional deterministic jitter) or [Cron]
// (five-field expressions read in UTC or a CRON_TZ zone, never the
// machine's). Every instance that adds a job of the same name to a
// [Scheduler] on the same database competes for its ticks; the database
// decides, per (job, tick), who runs it.
//
// When a tick fires, each instance:
//
//  1. waits for it by the database's clock: it sleeps on its local
//     estimate of database time, then reads the server's clock_timestamp()
//     and the job's cursor in one statement, and sleeps the exact
//     remainder if the tick has not fired yet. No instance takes the job's
//     lock for a tick that is not due (the others would find the lock busy
//     at the tick). If the cursor shows the tick recorded already, another
//     instance covered it ("tick already claimed");
//  2. tries the job's advisory lock without waiting. Busy does not mean
//     covered: until the tick's start deadline, the instance re-checks the
//     cursor and the lock, with a doubling pause from 5 ms, and only a
//     recorded claim makes it let the tick go ("lock busy" if the lock
//     stayed busy past the deadline without one: an overlapping run);
//  3. claims the tick in the database, in database time: one statement
//     advances the job's cursor in pgbaton.periodic_jobs from the previous
//     tick to this one, if the tick has fired and is within its start
//     deadline by the server's clock_timestamp(), and inserts its "running"
//     row into pgbaton.periodic_runs (primary key (job, tick)). A claimer
//     that finds the cursor elsewhere takes the row lock, looks at every tick
//     since the cursor and records what each became (missed, per the job's
//     policy) before claiming the first that may still run;
//  4. runs the function while holding the lock, records the outcome, and
//     releases the lock.
//
// Next ticks are computed with a bound: a schedule's NextTick method when
// it has one, and a check that the tick advances and is less than ten
// years ahead. A schedule of the caller's own (not [Every] or [Cron]) is
// called in a goroutine given up after Config.ScheduleTimeout, or when its
// job stops, so that Add, Health, Close and the job's loop never wait on
// it. A schedule that gives no next tick, does not return, panics or does
// not advance is reported ([ErrScheduleBroken]: an error from Add, an
// [EventScheduleError], [JobHealth.ScheduleError] with a 503 from the
// handler) and its job is no longer scheduled on that instance.
//
// Each instance records its definition of a job (schedule, mode, policies,
// start deadline, timeout, RunOnStart) in the jobs row when it adds the
// job, as a description and its hash. An instance that finds another
// definition registered, or that learns from the row that another instance
// runs a different one, reports the drift: an [EventDefinitionDrift] whose
// error is a [*DefinitionDriftError] with both hashes, definitions and
// instances, and [JobHealth.Drift]. Drift does not make a job unhealthy: it
// is what a rolling deploy that changes a job looks like.
//
// Lease mode ([Job.Run]) holds a session lease of the pgbaton Locker (a
// dedicated lock connection) and gives the function a context cancelled if
// the lease is lost; the function's work uses the application's pool and
// commits as it goes (the first seed's test-scheduler: long cycles with
// external calls). Transaction mode ([Job.RunTx]) opens a transaction on the
// application's pool, takes the job's transaction-scoped lock in it
// (pgbaton.TryLockTx) and hands the transaction to the function; the run's
// "succeeded" record commits in that same transaction, so the job's writes
// and its record commit or roll back together (the seed's
// integrity-hash-retry, activation-drip and db-retention jobs).
//
// Claims and run records use the scheduler's own small pool
// (Config.MaxConns), never the application's: a job holding an application
// connection never waits for another one, so the pool-starvation deadlock
// of the second seed cannot form.
//
// # Policies
//
// Each job states them; the defaults are written next to each field:
//
//   - [Job.Overlap]: OverlapForbid (default) keeps one run at a time
//     cluster-wide; ticks that fire during a run are recorded as skipped
//     with the reason. OverlapAllow runs every tick.
//   - [Job.Missed]: what ticks become when nobody started them within
//     [Job.StartDeadline] (all instances down, a deploy, a stalled
//     database): MissedRunOnce (default, run the latest one late),
//     MissedSkip, or MissedBackfill(window). Missed ticks are recorded,
//     consecutive ones as one row with a count.
//   - [Job.Timeout] (default one hour) cancels the run's context.
//   - A panic is a failed run ([*PanicError] with the stack), not a crash.
//   - [Job.RunOnStart] runs the latest tick at start if nobody claimed it.
//   - [Scheduler.Close]: stop claiming, let runs finish for
//     Config.ShutdownGrace, cancel them (ErrShutdown), wait CancelWait,
//     record, release every lock.
//
// # History and health
//
// pgbaton.periodic_runs keeps every tick's fate: job, tick, instance,
// started and finished (database time), status (running, succeeded, failed,
// abandoned, skipped, missed), kind, error, duration and fencing token. A
// "running" row whose lock is gone (its instance was killed or lost its
// connection) is marked abandoned by the next claim. The built-in job
// "pgbaton.periodic.prune" deletes rows older than Config.Retention, keeping
// each job's latest success. [Scheduler.Health] reports, per job and from
// every instance's runs, the last success, the latest tick and its status,
// the next tick, and stale when no run succeeded for StaleAfter intervals;
// [Scheduler.HealthHandler] serves it with 200 or 503. Structured slog
// events ("periodic: lock busy" and "periodic: tick already claimed" at
// Config.BusyLogLevel; run started, finished with its duration, failed;
// ticks skipped, missed; run abandoned) and [Config.OnEvent] (for metrics)
// report each step.
//
// # Guarantees
//
//   - At most one run per (job, tick), whatever the instances' clocks,
//     restarts and crashes: the runs table's primary key and the cursor
//     decide it, in the database.
//   - Once an instance has claimed ticks up to T, every tick up to T has
//     exactly one row: a run (succeeded, failed, abandoned, running), a
//     skipped range or a missed range.
//   - No tick runs before it fires by the database's clock: a local clock
//     that is ahead or jumps is corrected at the claim.
//   - Under OverlapForbid, two runs of a job overlap only if a lock is lost
//     while its run goes on (see below).
//   - Close returns after every function returned or was given up on (a
//     [*StuckError] names them), with every outcome recorded and every lock
//     released, except the transaction of a transaction-mode function that
//     has not returned: it is rolled back, and its lock freed, when the
//     function returns. A transaction whose connection the driver closed
//     (a query cancelled by its context) is ended on the server too, so its
//     lock does not outlive the run.
//
// # What periodic does NOT guarantee
//
//   - At least once: a tick whose run failed, was abandoned by a dying
//     instance, was skipped for overlap or missed by policy is not retried.
//     Its row says so; the job's next tick runs as usual. Make jobs
//     idempotent over their backlog (drain "pending" rows) rather than per
//     tick.
//   - Exclusion across pauses and partitions in lease mode: a frozen
//     process keeps running its function after its lease is gone (see
//     pgbaton's package doc). Guard resources with [Run.Token], or use
//     transaction mode, where no write commits without the lock.
//   - In transaction mode PostgreSQL releases the lock at the first failed
//     statement: a function that catches the error and goes on runs without
//     the lock. Return the error.
//   - A function that ignores its context cannot be stopped: after Timeout
//     it runs on, and under OverlapForbid its lock keeps the job's next
//     ticks skipped (Health reports the job stale).
//   - Exact tick times: runs start when the tick fires plus scheduling and
//     database latency (milliseconds); the lateness is in the events.
//   - Instances must agree on a job's schedule and policies; the jobs table
//     records the definition last registered, and instances that disagree
//     report the drift (events, Health) but go on with their own.
//
// # Dependencies
//
// github.com/netresearch/go-cron parses cron expressions (standard fields,
// descriptors, CRON_TZ, DST handling as ISC cron, and Prev for finding the
// latest tick). It is a maintained fork of robfig/cron, which has had no
// release since 2020; it has no dependencies of its own. Considered and not
// chosen: github.com/adhocore/gronx (maintained, but no Prev, skips a daily
// tick that falls in a spring-forward gap, and about 20 times slower per
// Next).
package periodic
