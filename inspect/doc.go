// Package inspect answers "who holds the lock?" for every advisory lock of a
// database, pgbaton's or not, by name.
//
// [Take] reads one snapshot: every advisory row of pg_locks in the current
// database joined with its backend in pg_stat_activity, pg_blocking_pids for
// the waiters only, and the names of the keys seen from pgbaton's schema (the
// name registry that Lockers and the transaction helpers write, periodic's
// jobs and running runs). That is three to six statements (the server
// version and pgbaton's tables, the locks, the backends, and one per source
// of names present), whatever the number of locks; at 10,000 held locks it takes milliseconds (BENCHMARKS.md).
// It changes nothing on the server.
//
// # Reading pg_locks
//
// PostgreSQL has two advisory key spaces, told apart by pg_locks.objsubid
// (PostgreSQL docs, "pg_locks"): objsubid = 1 is one int8 key, its high 32
// bits in classid and its low 32 bits in objid; objsubid = 2 is the
// (int4, int4) form, classid the first key and objid the second. The two
// never collide; [KeyState.Form] says which one a key is.
//
// # What is known, and what is not
//
//   - Scope: pg_locks does not say whether a lock is a session or a
//     transaction lock. A holder outside any transaction (state "idle") can
//     only hold session locks; a pgbaton lock connection inside a transaction
//     is WithXactLock's transaction lock; anything else is "unknown", said so.
//   - Held since: PostgreSQL records no grant time (pg_locks.waitstart is for
//     waiters). A holder's HeldSince is set only when a pgbaton process
//     recorded it (a running periodic run), and is nil otherwise. The
//     snapshot never passes a query, transaction or state start off as a
//     grant time; it shows those as what they are.
//   - Waiters are in queue order by waitstart (PostgreSQL 14+), and
//     BlockedBy is pg_blocking_pids.
//   - A role without pg_read_all_stats sees other roles' backends without
//     state or client; such holders are never classified on facts it cannot
//     see.
//
// # Classes
//
// Each holder, waiter and key gets a [Class]: ok, waiting,
// idle-in-transaction (the holder sits in a transaction doing nothing on its
// connection: the second incident, with a hint when many come from one
// application), stale-holder (a pgbaton lock connection that stopped
// heartbeating), leaked (a session lock on an idle non-pgbaton session: the
// first incident, with the pg_terminate_backend statement that would free it;
// nothing here ever runs it). [Snapshot.Check] grades a snapshot
// ok/warning/critical for monitoring.
//
// The JSON form of [Snapshot] is versioned ([Version]).
package inspect
