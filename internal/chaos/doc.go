// Package chaos is pgbaton's fault-injection suite. It proves, by running
// it, what GUARANTEES.md promises: under process death, freezes, lost
// sessions, server restarts and crashes, partitions and pool exhaustion, no
// two healthy holders ever believe they hold one key at the same time, every
// loss is reported to its holder, and the resource never accepts a write
// from a superseded holder.
//
// # Model
//
// [Run] starts Options.Workers worker processes (the test binary
// re-executed with [WorkerEnv] set; TestMain hands them to [WorkerMain]).
// Each runs Options.Goroutines loops on two Lockers (goroutine g uses
// Locker g mod 2, so the goroutines of a process contend through the
// server like separate processes, and the process knows when its own
// holders release). Each iteration picks one of a handful of keys and one
// operation: TryAcquire; Acquire with Wait(1s); a short wait (1-20ms) that
// tends to expire as a holder of the process releases; a wait whose context
// is cancelled at a random moment; a hand-off (Wait(5s), context cancelled
// 0-3ms after a holder of the process starts releasing, so the cancel and
// the grant race); WithLock and WithXactLock, whose section panics one time
// in four (the worker recovers it). In a lease's critical section it makes
// one to three fenced writes to the key's row in chaos_resource with
// package fence, looking at Done before each. Every lease is recorded with
// the server's clock (package history); every write the resource applies
// is logged by a trigger in commit order; every call into pgbaton is
// recorded with its duration and its documented bound. Worker slot 0
// reaches the server through a pgtest.Proxy; the others over TCP directly,
// with pgbaton's default timing (heartbeat 1s, lease bound 4s, server
// release 6s) but a 2s ConnectTimeout and a 3s MaxConnIdleTime (lock
// connections keep being opened). The workers connect as a role of their
// own, not a superuser, so that role settings and connection limits apply
// to them and not to the harness.
//
// Meanwhile a nemesis injects, in rounds of a shuffled order, each of:
// SIGKILL of a worker (replaced by a new one); SIGSTOP for longer than the
// lease bound; SIGSTOP while the worker's lock sessions are cut off by a
// packet filter until the server drops them (the frozen holder wakes up
// superseded); pg_terminate_backend of a lock session; a server restart; a
// crash of an unrelated backend (the server restarts every session); a proxy
// black hole under worker 0, during which worker 0 closes one of its
// Lockers with a wait in flight on it and opens it again (locker-close:
// Close is a call with a bound too); a network partition of a worker's lock sessions
// (pgtest.CutPort); exhaustion of a worker's application pool; a burst of
// pg_cancel_backend aimed at lock sessions running a statement (two in
// three waiting for a lock), one every few milliseconds for 1.5s; a
// lock_timeout (1-50ms) and statement_timeout (20-220ms) set on the
// workers' role for 3s (ALTER ROLE ... IN DATABASE ... SET, then RESET: new
// sessions pick them up); and a connection limit of 1 on the workers' role
// for 3s (new connections refused). Faults aimed at a worker prefer one
// that holds a lock.
//
// # Liveness
//
// After every Options.QuietEvery faults, and at the end of the run, the
// harness makes a quiet point: every worker finishes its operation and
// starts no new one ("pause"), then the server is asked which of the run's
// keys are locked; a lock that stays for 3s is a leak, reported with the
// holding pid and application_name. After any call that failed other than
// by a plain busy answer (and after a panicked section, and a failed
// Release), the worker asks the server whether a session of its own still
// holds the key; if so it keeps every goroutine of the process off that key
// until none uses it, and a lock that is still there after the server's
// release time plus 2s (8s) is recorded on the call (LeftHeld): nothing of
// the process believes it holds the key, yet the process's session does.
//
// At the end the histories, the resource's write log, the calls, the quiet
// points and the fault log are checked by package history, and
// [Report.Table] gives acquisitions, faults by kind, losses reported,
// overlaps, stale writes accepted (which must be 0) and rejected, calls
// over their bound, failed calls that left their key locked, locks held at
// quiet points, and per fault kind the loss-detection time and the time
// until the key was granted to someone else.
//
// The worker has deliberately broken modes the checker must catch:
// [ModePoolLock] takes session locks through a plain pool (the first seed's
// bug), [ModeIgnoreDone] never looks at Done, [ModeForgetOnError] forgets a
// lock whose statement failed after the grant while its session goes on
// serving, [ModePanicLeak] leaves a transaction-scoped lock held when its
// section panics, and [ModeUnboundedWait] waits past the caller's bound;
// Options.Unfenced writes without the fence (the control that shows what
// the fence prevents). The last three take their locks with raw pgx on
// pinned sessions named like a Locker's, so they keep showing what the
// checker catches whatever the Locker does.
//
// A worker that does not stop within 30s (or is not ready within 60s) gets
// SIGQUIT, so that the Go runtime writes every goroutine's stack to its
// stderr, and SIGKILL 10s later; the tail of its stderr goes into the
// report's notes, which the test prints.
//
// # Running it
//
//	go test ./internal/chaos/                      # CI: 90s, plus the broken modes (about 4 minutes)
//	CHAOS_DURATION=30m go test -run '^TestChaos$' -timeout 1h ./internal/chaos/
//	scripts/chaos.sh 30m                           # the same, keeping the table
//	make chaos DURATION=30m                        # the same
//
// It needs root (signals to other processes are fine as any user, but the
// partition faults need nftables or iptables) and the PostgreSQL server
// binaries. The suite uses about one of the machine's cores.
//
// # What it does NOT show
//
//   - Anything about a failover to a replica: there is one server.
//   - Clock trouble between client and server beyond what a frozen process
//     shows: the lease bound is measured with the client's monotonic clock.
//   - Times are upper bounds: a detection time runs from a server clock read
//     made before the fault was injected (for a frozen worker, before it was
//     thawed) to one made after the loss was signalled.
//   - A holder is allowed [Grace] after the loss is signalled to stop, the
//     length of one step of its critical section; within it a write may
//     still be sent, and only the fence stops it.
//   - A failed call that left its key locked is known per process, not per
//     connection: the verdict names the failed call after which the key
//     stayed locked by a session of the process, which may be another
//     failed call's doing when two fail on one key at once.
//   - Bounds include Options.Slop (1s) for scheduling on a busy machine;
//     a call late by less than that is not reported.
package chaos
