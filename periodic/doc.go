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
// # Schedules and daylight saving time
//
// Reference: ISC/Vixie cron as shipped by Debian, crontab(5) and cron(8).
// [Cron] follows its syntax (five fields, names, ranges, steps, lists, 0 or 7
// for Sunday; day-of-month and day-of-week combine with OR when both are
// restricted and with AND when either field's text starts with "*") and its
// rules for clock changes; [Every] with [EverySchedule.In] follows the same
// rules. A schedule names wall-clock times (a local date and time of day)
// and is one of two kinds:
//
//   - Fixed-time: a cron expression whose minute and hour fields do not
//     start with "*" ("30 2 * * *", "0 0 * * 0", "0 1-3 * * *", @daily,
//     @weekly, @monthly, @yearly), and Every(d).In(zone) with d over one
//     hour. Each matching wall-clock time W fires once, at the first instant
//     at which the local clock reads W or later: W itself if it exists, its
//     first occurrence if the clock passes it twice (cron(8): "those jobs
//     that fall into the repeated time will not be re-run"), and the end of
//     the gap, the instant of the change, if the clock skips it (cron(8):
//     "will be run soon after the change"). Several times skipped by one
//     gap fire once, together.
//   - Wildcard: a cron expression whose minute or hour field starts with
//     "*" ("*/15 * * * *", "0 * * * *", "0 */2 * * *", @hourly), and
//     Every(d).In(zone) with d of one hour or less. The schedule follows the
//     clock (cron(8): "jobs which are specified with wildcards are run based
//     on the new time immediately"): a wall-clock time that occurs twice
//     fires twice, one that does not exist does not fire, so hourly and
//     shorter schedules keep their elapsed-time rhythm through a change.
//
// Unlike cron(8), which cannot tell a daylight saving change from a clock
// being set and applies these rules only to changes under three hours, the
// rules apply to every change in the zone's tzdata, whatever its size
// (Pacific/Apia skipped 30 December 2011: its daily jobs of that date fire
// at the change, 00:00 on the 31st). A gap may end on the next local date:
// "59 23 * * *" in America/Nuuk on 28 March 2026, where the clock goes from
// 22:59:59 to 00:00 on the 29th, fires at 00:00 on the 29th, and again at
// 23:59 that day.
//
// Examples, in America/New_York unless stated (spring forward on 8 March
// 2026, 02:00 EST becomes 03:00 EDT; fall back on 1 November 2026, 02:00
// EDT becomes 01:00 EST):
//
//	schedule                       spring forward                 fall back
//	"30 2 * * *"                   03:00 EDT                      02:30 EST
//	"0,30 2 * * *"                 03:00 EDT (once)               02:00, 02:30 EST
//	"30 1 * * *"                   01:30 EST                      01:30 EDT only
//	"0 1-3 * * *"                  01:00 EST, 03:00 EDT           01:00 EDT, 02:00, 03:00 EST
//	"*/30 * * * *"                 01:30 EST, 03:00 EDT           01:00, 01:30 EDT, 01:00, 01:30 EST
//	@hourly, Every(1h).In          01:00 EST, 03:00 EDT           01:00 EDT, 01:00 EST, 02:00 EST
//	Every(2h).In                   00:00 EST, 03:00, 04:00 EDT    00:00 EDT, 02:00 EST
//	Every(24h).Offset(2h30m).In    03:00 EDT                      02:30 EST
//	Every(24h).Offset(1h30m).In    01:30 EST                      01:30 EDT only
//	Every(24h).Offset(20h).In      20:00 EDT                      20:00 EST
//	"0 0 * * *", America/Santiago  6 Sep 2026: 01:00 -03 (00:00 does not exist)
//	Every(1h).In, America/Santiago 5 Sep 23:00 -04, 6 Sep 01:00 -03, 02:00 -03
//	"15 2 * * *", Lord_Howe        4 Oct 2026: 02:30 +11 (02:00 +10:30 becomes 02:30 +11)
//	"45 1 * * *", Lord_Howe        5 Apr 2026: 01:45 +11 once (02:00 +11 becomes 01:30 +10:30)
//
// Every(d) without In is a grid of elapsed time from the Unix epoch and has
// no daylight saving behaviour.
//
// The searches are bounded: Next and Prev walk local dates for at most one
// 400-year Gregorian cycle plus a year (after which dates repeat with the
// same weekdays), at most 4096 periods of a zone's offsets, and at most
// 2^20 steps in all; they return the zero Time, and
// [EverySchedule.NextTick], [CronSchedule.NextTick] and the *Tick methods of
// [BoundedSchedule] return [ErrNoNextTick] or [ErrNoPrevTick], instead of
// searching further. [Cron] refuses an expression no date can match in a
// full cycle ("0 0 31 2 *"), so a valid schedule always finds its next tick
// (the longest wait is for 29 February on a given weekday: 40 years).
//
// These rules are checked, not sampled: a property test compares Next and
// Prev with an oracle that scans every minute of a 72-hour window around
// every UTC offset change from 2000 to 2040 of every zone of the system's
// tzdata and of Go's copy (lib/time/zoneinfo.zip, the data time/tzdata
// embeds), for 32 cron expressions and 13 Every schedules; SCHEDULES.md has
// the figures. Go's time package reports wrong zone bounds past a zone's
// last explicit transition (on 31 December of a leap year, and after a late
// change such as America/Ciudad_Juarez's in November 2022, with Go's copy of
// tzdata); the schedules correct them from the offsets, which are right.
//
// # Dependencies
//
// None beyond pgx. The cron parser is hand-written (about 250 lines,
// schedule_cron.go) and fuzzed (FuzzCron): the libraries considered compute
// ticks with time.Date and fault at daylight saving changes in the ways this
// package must not (github.com/netresearch/go-cron, used before, at its
// upstream head too: an hourly schedule looping forever where local
// midnight does not exist, a daily tick skipped on that day, a daily tick
// run twice in a repeated hour; github.com/adhocore/gronx: no Prev, and a
// daily tick skipped in a spring-forward gap), and their parsers differ
// from Vixie cron on the day-of-month/day-of-week rule and on "5/15". What
// remains to take from them, the five-field grammar, is smaller than the
// code that adapts it.
package periodic
