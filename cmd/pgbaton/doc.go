// Command pgbaton is pgbaton's command-line tool.
//
//	go install github.com/pgbaton/pgbaton/cmd/pgbaton@latest
//	pgbaton help
//	pgbaton demo
//	pgbaton locks [--json] [--watch 2s] [--key NAME] [--stuck-after 5m] [--check]
//	pgbaton check [--pods N] [--json]
//	pgbaton migrate up|status|sql
//	pgbaton web [--listen 127.0.0.1:8080] [--interval 5s]
//	pgbaton cron --crontab FILE [--check] [--health-listen ADDR]
//	pgbaton cron status [--runs N] [--json]
//
// # Commands
//
// Each subcommand lives in a file of its own and adds itself to the command
// table from an init function (see register in main.go), so a new command is
// one new file. Commands without a Summary are hidden from help; they exist
// for pgbaton's own use (demo-worker). Exit status: 0 on success, 1 on
// failure, 2 for a bad command line (the message says what to change), 130
// when interrupted by SIGINT or SIGTERM. The first signal cancels the
// command's context so it can clean up; a second one ends the process at
// once.
//
// # locks, check, migrate
//
// These read the connection from --dsn, else $DATABASE_URL, else the standard
// PG* variables and ~/.pgpass as psql does (pgx reads them), and never print
// a password: connection strings are redacted wherever they appear, and
// errors are passed through the same redaction. "locks" prints package
// inspect's snapshot (a table, or versioned JSON; NDJSON under --watch);
// with --check its exit status is 0 ok, 1 warning, 2 critical, 3 when the
// check could not run (a bad command line included). "check" prints
// [pgbaton.Check]'s report and exits 1 when it has an error finding. "migrate
// sql" needs no connection: it prints the schema as one transaction and the
// GRANTs a least-privilege application role needs.
//
// # exec
//
// "pgbaton exec KEY -- CMD" is flock(1) for a cluster: CMD runs only while
// this process holds the advisory lock KEY. It runs without a shell, in a
// process group of its own (SIGINT, SIGTERM and SIGHUP are forwarded to the
// group), with PGBATON_KEY, PGBATON_KEY_ID, PGBATON_INSTANCE and, when the
// schema exists, PGBATON_FENCING_TOKEN. On a lost lease the group gets
// SIGTERM, then SIGKILL after -kill-after, which must stay below the margin
// ServerReleaseTimeout - LeaseTimeout - HeartbeatInterval (about 1 s with
// the defaults): the command is stopped before the server can give the lock
// to anyone else, except when this process itself is frozen. If pgbaton
// dies (even by SIGKILL), the command's whole process group is killed: on
// Linux the command has a parent-death signal (from a thread locked for its
// lifetime), and a small watchdog (sh reading a pipe only pgbaton holds)
// kills the group when that pipe closes. Exit statuses follow
// timeout(1): the command's own; 75 busy; 124 lock lost; 125 pgbaton failed;
// 126 cannot execute; 127 not found; 128+N killed by signal N. Not
// guaranteed: processes that leave the group (setsid, daemons) are not
// signalled, and a command that exits leaving processes of its group
// behind frees the lock while they run (as flock(1) does).
//
// # Why the standard flag package
//
// Every subcommand parses its own flag.FlagSet, the layout litestream uses.
// Flags are written -name or --name, and -h prints a command's usage. A CLI
// library (cobra, urfave/cli, kong) would bring shell completion, nested
// commands and environment binding that the tool does not need, and
// dependencies into every build of it; the table in main.go is a few dozen
// lines. Revisit when the tool needs completion or nested commands.
//
// # The demo
//
// "pgbaton demo" shows the library at work. Without -dsn it starts a
// throwaway PostgreSQL cluster with package pgtest (the same code the tests
// use; it finds the server binaries or fails saying how to install them).
// It then starts -workers worker processes: the demo's own binary
// re-executed as the hidden "demo-worker" command, each with a
// [pgbaton.Locker] of its own, connected to the server through a
// [pgtest.Proxy] of its own. Each worker loops: Acquire with a bounded wait,
// hold the lock for a random time, Release.
//
// Workers report every step (granted, released, lost, errors) as JSON lines
// on their stdout, stamped with the host's wall clock; the demo stamps its
// own actions (the faults) with the same clock, so a handoff (one worker's
// Release call to the next one's grant) and a failover (a fault to the next
// grant) are differences of one clock. The trace holds events back for
// 100 ms and prints them in stamp order, so a release always precedes the
// grant it allowed. The trace also checks mutual exclusion: a grant while
// another worker still holds the lock, and its lock was not taken by a fault,
// is printed as OVERLAP and counted in the summary.
//
// After the contention phase the workers are told to keep each lease until
// it is lost, and the faults are injected one after another into the holder
// of the moment:
//
//   - kill: SIGKILL of the holder's process. It cannot report anything; the
//     server frees the lock when the socket closes, and the demo shows the
//     time from the kill to the next grant.
//   - terminate: pg_terminate_backend of the backend pid that Lease.Conn
//     reports. The holder's Done closes within milliseconds (57P01).
//   - blackhole: the holder's proxy stops forwarding without closing
//     anything. The holder's heartbeats go unconfirmed and its lease is
//     reported lost after at most LeaseTimeout (1 s here). A real server
//     would drop the silent session after ServerReleaseTimeout (2 s here,
//     keepalives and tcp_user_timeout); a userspace proxy cannot make the
//     server's keepalives go unanswered (its own kernel acknowledges them),
//     so at that moment the demo plays the server's part by resetting the
//     proxied connections. The summary shows that the holder knew of its loss
//     before the lock could go to anyone else.
//
// A killed worker is replaced by a new one, so that every later fault has
// a worker to hand the lock to (even with -workers 2). The demo exits with
// status 1 if it counted an overlap or a loss no fault explains.
//
// The demo never picks a database by itself: $DATABASE_URL is ignored. With
// -dsn it runs against that database instead, printing its host, port,
// user and database (never the password), and runs the contention part
// only: faults there need -allow-faults-on-dsn as well. The proxies then
// run in front of it, so it must be reachable over TCP, and for the
// terminate fault the demo's own connection must be allowed to terminate
// the workers' backends (same role, pg_signal_backend, or superuser).
// Every line it prints fits in 80 columns (longer ones are wrapped).
//
// # What the demo guarantees
//
//   - Nothing is left behind, however it ends. Workers run in process groups
//     of their own (a Ctrl-C at the terminal reaches the demo only) and stop
//     when their stdin closes, which also happens when the demo dies. At the
//     end, or at the first SIGINT or SIGTERM, the demo kills any worker still
//     running and waits for it, closes every proxy and its own connection,
//     and stops the throwaway server and removes its directory. If the demo
//     itself is SIGKILLed, pgtest's watchdog stops the server and removes the
//     directory.
//   - Every wait is bounded: worker start (30 s), each fault step (15 s), the
//     workers' exit (10 s, then SIGKILL).
//
// # What it does not guarantee
//
//   - It runs on Linux only (package pgtest uses Linux process control); on
//     other systems the demo command says so, and the rest of the tool works.
//   - Its latencies are one host's, under whatever else that host runs, and
//     include a hop through a userspace proxy in the demo's process. A step of
//     the wall clock during a run (NTP) would distort them.
//   - The black hole's server-side release is played, at the time a real
//     server would act, not observed; pgtest.CutPort makes a real silent
//     network cut, but needs root and nftables.
//
// # Dependencies
//
// Only what the module already uses: pgx's pgconn (connection strings, the
// demo's own connection) and the project's packages pgbaton and pgtest. The
// tests add goleak, already a test dependency of the module.
package main
