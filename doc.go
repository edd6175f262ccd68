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
// in-memory fake of package pgbatontest also implements.
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
