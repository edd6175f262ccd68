// Package pgbatontest is an in-memory fake of pgbaton's [pgbaton.Locker] for
// the unit tests of code that takes locks through [pgbaton.Interface].
//
// # Model
//
// A [DB] stands for one PostgreSQL database's advisory-lock table; a
// [Locker] stands for one process's pgbaton.Locker on it. Several Lockers on
// one DB contend like several processes; leases of one Locker contend like
// leases of one process (not re-entrant). The fake follows the server's
// rules, as verified against PostgreSQL:
//
//   - Shared locks are compatible with each other; Exclusive conflicts with
//     everything.
//   - Waiters queue in FIFO order, and a new request that conflicts with a
//     queued one waits behind it (a Shared request cannot jump a queued
//     Exclusive one), also for tries.
//   - Acquire waits at most the Wait option (default Options.AcquireTimeout,
//     30s), Wait(0) tries once, a cancelled context ends the wait.
//
// It hands out real [*pgbaton.Lease] values (through [pgbaton.NewLease]), so
// Done, Context, Err and Release behave exactly as in production, and it
// returns the same typed errors: [*pgbaton.NotAcquiredError] (Local set for
// contention inside one Locker), [*pgbaton.LeaseLostError],
// [pgbaton.ErrInvalidKey], [pgbaton.ErrLockerClosed]. Leases carry fencing
// tokens from one counter per DB, as from pgbaton's sequence.
//
// A test can end leases the way production loses them: [Locker.Lose] (the
// process notices at once: Done is closed, the lock is free), [DB.LoseKey]
// (every lease on a key), and [Locker.Drop] (the server freed the lock but
// the process has not noticed; its Release reports the loss).
//
// The conformance suite in internal/conformance runs the same tests against
// this fake and against the real Locker on PostgreSQL; keep them in step.
//
// # What it does NOT model
//
// Time-based loss (heartbeats, LeaseTimeout), connection counts and their
// limits, the lock table filling up, deadlock detection between keys,
// pg_locks, and WithXactLock's transaction: here WithXactLock behaves as
// WithLock. Transaction-scoped helpers (LockTx) need a real transaction and
// are not faked.
package pgbatontest
