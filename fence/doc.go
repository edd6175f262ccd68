// Package fence checks fencing tokens at the resource, so that a lock holder
// that lost its lease without noticing cannot overwrite the work of the
// holder that came after it.
//
// # Model
//
// Every lease that pgbaton grants on a migrated database carries a token
// ([pgbaton.Lease.Token]) drawn from one global sequence in the same
// statement that takes the lock, after the grant. Tokens therefore strictly
// increase per key in grant order, across processes, server restarts and
// crashes. A resource that remembers the largest token it has accepted and
// refuses anything smaller is safe even when two processes believe they hold
// the same lock at once: a process frozen by a GC pause, a debugger or
// SIGSTOP, or cut off by the network, wakes up believing it still holds the
// lock; its writes carry its old token and are rejected.
//
// The pattern for a table is a fence_token column, bigint NOT NULL DEFAULT
// 0, updated only in the statement that makes the guarded change and only if
// the row's token is not larger:
//
//	UPDATE jobs SET state = $3, fence_token = $1
//	WHERE id = $2 AND fence_token <= $1
//
// [Table.Update] (pgx) and [Table.UpdateDB] (database/sql) run exactly that
// in one round trip and return a [*StaleTokenError] (errors.Is
// [ErrStaleToken]) when the row holds a newer token, or [ErrNoRow] when the
// row does not exist. [Table.AddColumnSQL] adds the column to an existing
// table. An equal token is accepted: tokens are unique per grant, so an
// equal token is the same lease writing again. Set [Table.Strict] to accept
// each token once.
//
// For other systems (an HTTP service, a queue, object storage), pass the
// token along: [Token.String] and [Parse] are its decimal text form (also the
// JSON and slog form), [Header] is a conventional header name, and [Check]
// is the comparison the receiving side makes against the largest token it
// has stored. The receiving side must store that token durably and compare
// and store atomically, as the UPDATE above does.
//
// # Guarantees
//
//   - A guarded write whose token is smaller than one already written to
//     the same row is never applied, whatever the writer believes about its
//     lease. Under READ COMMITTED a concurrent newer write that commits first
//     makes the older one re-check the row and fail.
//   - The check costs nothing extra: it is part of the write's own WHERE
//     clause, one statement, one round trip.
//
// # What it does NOT guarantee
//
//   - Fencing orders writes to one row (or whatever the resource compares
//     tokens on); a stale holder can still write to rows that no newer
//     holder has touched yet. Guard every row the critical section writes,
//     or a single row that stands for the whole resource.
//   - Side effects that do not check the token (an e-mail, a call to a
//     system that ignores it) are not fenced.
//   - Tokens come from a PostgreSQL sequence: after a failover to an
//     asynchronous replica that had not received the latest sequence WAL,
//     tokens already handed out can be handed out again, and a resource
//     that saw them would reject the new holder's writes until the sequence
//     passes them. Use synchronous replication for the lock database, or
//     advance the sequence after a failover (SELECT setval(...)).
//   - A resource that loses its stored token (restored from an old backup,
//     or written with synchronous_commit=off and crashed) forgets which
//     writers are stale.
package fence
