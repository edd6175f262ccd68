// Package web is pgbaton's read-only dashboard: an http.Handler that shows,
// on one server-rendered page, every advisory lock by name with its holders,
// waiters and class (package inspect), the pgbaton instances connected now,
// and periodic's jobs with their next tick, health and recent runs
// (status, duration, lateness, fencing token, skipped and missed ranges).
// `pgbaton web` serves it on its own; [New] returns one to mount in a
// service next to periodic's HealthHandler and /metrics:
//
//	dash, err := web.New(web.Config{DB: pool, Health: sched.Health})
//	mux.Handle("/pgbaton/", http.StripPrefix("/pgbaton", dash))
//
// # Read-only
//
// The handler has no write route: only GET and HEAD are served, anything
// else is answered 405. Every statement it sends is a SELECT (see
// BENCHMARKS.md for the list), so a role with SELECT on pgbaton's tables and
// nothing else is enough; without even that, the locks and instances still
// show, and the page says which GRANT is missing. It never terminates a
// backend: for a leaked lock it prints the statement a person could run.
//
// # Load on the database
//
// Every viewer shares one view ([Dashboard.View]): it is read from the
// database at most once per Config.Interval (default 5s) however many pages
// are open, and only while someone looks: there is no background poller.
// One refresh is one statement for the instances, inspect.Take (two to six
// statements: six when locks are held and pgbaton's tables exist) and one
// for the jobs with their runs: eight statements at most, all SELECTs. Open pages
// refresh their content by a fetch of the page every interval, from a small
// embedded script that stops while the tab is hidden (document
// visibilityState); without JavaScript, a meta refresh does it.
//
// # Exposure
//
// `pgbaton web` listens on 127.0.0.1 by default; [CheckListen] refuses any
// other address unless remote access is allowed explicitly and a bearer
// token or basic authentication is configured ([Auth]). A handler mounted
// in a service is exposed as that service is: set Config.Auth, or put it
// behind the service's own authentication.
//
// # What it shows, and from where
//
//   - Locks: [inspect.Take], with the same classes and thresholds as
//     `pgbaton locks`.
//   - Instances: pg_stat_activity rows of the current database whose
//     application_name is "pgbaton:<instance>:<conn>" (a number for a lock
//     connection, periodic, names or migrate otherwise).
//   - Jobs: periodic_jobs and the latest Config.RunsPerJob rows of
//     periodic_runs per job. The next tick is computed from the schedule
//     text periodic records; health is judged from the history with
//     Config.StaleAfter intervals, or taken from Config.Health (the
//     scheduler's own verdict, which knows each job's StaleAfter) for the
//     jobs it reports.
//
// Times are the database's clock, shown in UTC.
package web
