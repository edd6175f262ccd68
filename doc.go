// Package pgbaton coordinates many instances of a service through the
// PostgreSQL they already run, with advisory locks that cannot leak, deadlock
// or be lost silently.
//
// # Model
//
// A [Locker] owns a small set of dedicated lock connections (Config.MaxConns),
// separate from the application's pool. A [Lease] is one held advisory lock,
// pinned to one of those connections for its whole life; many leases can share
// a connection (Config.MaxLocksPerConn). A lock connection is never handed to
// anyone else and never returned to a pool: it lives until it fails or the
// Locker closes, and closing it frees every lock on it. This makes the two
// classic bugs impossible by construction:
//
//   - unlock on another pooled connection (the lock stays held forever on an
//     idle backend): the unlock runs on the connection that took the lock,
//     guarded by the backend pid, and a false unlock is reported as a loss;
//   - lock holders starving their own work (every pool slot holds a lock and
//     waits for a work connection): lock connections never wait for the
//     application's pool, so the acquire graph has no cycle.
//
// Keys come from names ([KeyName]: a stable SHA-256 derivation that SQL and
// other languages reproduce, see [KeySQL]) or raw PostgreSQL keys ([KeyInt64],
// [KeyPair]). Locks are [Exclusive] or [Shared]. [Locker.TryAcquire] takes a
// lock in one round trip or returns [ErrNotAcquired]; [Locker.Acquire] waits in
// the server's FIFO queue, bounded by lock_timeout on that one statement;
// [Locker.WithLock] runs a function under a lease.
//
// # Transaction-scoped locks
//
// Two patterns need no session lease at all. [LockTx] and [TryLockTx] (and
// [LockSQLTx], [TryLockSQLTx] for database/sql) take pg_advisory_xact_lock in
// the caller's own transaction: the lock and the work share one connection
// and end together, so the lock also fences the work, and it works through
// PgBouncer's transaction pooling. [Locker.WithXactLock] holds the lock in a
// heartbeated transaction on a lock connection while the work runs on the
// application's pool ([NewPool] builds one that fails fast when exhausted).
// [Check] reports the connection budget and the settings that can end lock
// sessions. Code that takes locks should depend on [Interface], which the
// in-memory fake of package pgbatontest also implements ([NewLease],
// [Backend], [LeaseInfo], [AcquireOptions] and [ResolveOptions] exist for
// such implementations only).
//
// [Locker.WithLock] and [Locker.WithXactLock] release the lock when their
// function returns, and also when it panics or calls runtime.Goexit
// (t.FailNow); WithXactLock then rolls its transaction back. The panic goes
// on unchanged.
//
// # Who holds the lock
//
// [KeyName] is a one-way hash, so after [Migrate] the processes that lock by
// name record the names they use in <schema>.key_names: a Locker notes each
// granted key in memory (no round trip) and writes the noted names in
// batches on a short-lived connection of its own, at most once per name and
// process per [NameRefreshInterval]; the transaction helpers' names go along
// ([WriteNames] writes them in a process without a Locker). Package inspect
// and `pgbaton locks` read them to show every advisory lock of a database by
// name, classified (leaked, idle-in-transaction, stale holder, waiting).
//
// Leases are not re-entrant: each is an independent holder, so a second
// request for a key the same Locker holds exclusively is ordinary contention,
// decided in-process without a round trip.
//
// # Schema
//
// [Migrate] (or [Locker.Migrate]) creates the small schema that fencing
// tokens and package periodic use. On an up-to-date schema it only reads;
// otherwise its wait for the migration lock is bounded
// ([MigrateOptions].LockTimeout, [ErrMigrationLockTimeout]) independently of
// the database's lock_timeout and statement_timeout, so instances may all
// call it at start-up.
//
// # Loss is never silent
//
// Every lease has [Lease.Done], [Lease.Context] (cancelled with the cause) and
// [Lease.Err] ([ErrLeaseLost]). An idle lock connection is parked on its
// socket, so a terminated backend, a server restart or a crash of any backend
// is seen within milliseconds; it is heartbeated every
// Config.HeartbeatInterval, and if no round trip is confirmed within
// Config.LeaseTimeout its leases are reported lost and it is closed. The
// server is told (TCP keepalives, tcp_user_timeout,
// client_connection_check_interval) to free the locks of a client it cannot
// reach only after Config.ServerReleaseTimeout, which validation keeps longer
// than LeaseTimeout: under a network partition the holder learns it lost the
// lock before anyone else can take it.
//
// # An error means you hold nothing
//
// Session advisory locks outlive statement errors, and PostgreSQL can grant a
// queued lock and still fail the statement (lock_timeout firing at the grant,
// a cancel arriving just after it, a token draw failing after it). So after
// ANY failed lock or unlock statement on a connection that stays open, the
// Locker makes the session's hold on that key known before the connection
// serves anything else: it repeats the guarded unlock until the server
// answers false, and if other leases on that session share the key (so the
// count cannot be known) or the unlock keeps failing, it closes the
// connection and reports its leases lost. Hence every error from
// TryAcquire, Acquire, WithLock or WithXactLock means the caller holds
// nothing and the key is free of this Locker; a Release that an operator's
// pg_cancel_backend interrupts is completed, not reported as a loss (unless
// another lease shares that key on the same session, which the Locker
// avoids when it has a connection to spare: then the connection is closed
// and its leases are reported lost); a
// heartbeat that the server answers with an error (a cancel) still proves the
// connection alive; and a blocking wait cancelled by the server waits again
// for what is left of its bound ([ErrStatementCanceled] if a try is
// cancelled). The tests in lockstate_test.go force each of these on a real
// server.
//
// # Every wait is bounded
//
// Acquire waits at most its Wait (or ctx); every statement on a lock
// connection has a deadline (the wait plus Config.LeaseTimeout at most); a
// dial is bounded by Config.ConnectTimeout, and a failed dial falls back to
// open connections with room. [Locker.Close] ends in-flight statements
// through their contexts and closes every connection in parallel: it returns
// within about 300 ms even when the network is a black hole.
//
// # What pgbaton does NOT guarantee
//
//   - A process that is frozen (SIGSTOP, a long GC or VM pause, a debugger)
//     cannot notice anything: it can wake up after the server freed its lock
//     and another holder took it, still believing it holds the lease until its
//     next look at Done. Advisory locks alone cannot give mutual exclusion
//     across pauses and partitions; guard the resource itself with a fencing
//     token, or do the work in the lock's own transaction.
//   - The loss bound assumes the client's clock runs at the same rate as the
//     server's and TCP settings reach the server (they do nothing over a unix
//     socket, where a dead peer is reported at once anyway).
//   - Locks are per database and live on the primary: session leases refuse
//     hot standbys and connection poolers ([ErrHotStandby],
//     [ErrPoolerDetected]); behind a transaction pooler use [LockTx].
//   - Waiting is FIFO in the server, except when every lock connection is
//     busy: then Acquire polls with jittered backoff, still within its bound.
package pgbaton
