// Command benchproc is a lock holder or contender run as a separate process
// by pgbaton's benchmarks (bench_test.go in the module root), for figures
// that need separate processes: "holder killed -> next holder" and handoff
// between processes.
//
// # Model
//
// The benchmark builds this command with `go build`, starts it, and talks
// to it through its standard input and output. It takes one advisory lock
// key either with pgbaton (-impl pgbaton: a Locker, Acquire, Release) or
// with raw pgx (-impl pgx: pg_advisory_lock and pg_advisory_unlock on one
// connection).
//
//   - -mode hold: take the key, print "held <backend pid>", and block until
//     standard input reaches end of file, then release it and exit. The
//     benchmark SIGKILLs it to simulate a crashed holder.
//   - -mode contend: take and release the key once (warm-up), print
//     "ready", wait for a "go" line, then take the key -grants times,
//     holding it -hold each time, and print one line per grant, "rec <wait
//     start> <granted> <release start>" in Unix nanoseconds (wall clock, so
//     that processes' records can be merged), then "done". Several of them
//     contend for one key to measure handoff between processes.
//
// # Guarantees
//
//   - It never outlives its parent for long: a holder exits when its stdin
//     pipe closes (the parent released it or died), a contender when its
//     grants are done, and either after -max (default 5 minutes) at most.
//   - Every wait is bounded: connecting and locking by -wait (default 30 s).
//
// # Not guaranteed
//
//   - It is a benchmark fixture, not a tool: nothing beyond what the
//     connection string carries (TLS, passwords), and no retries.
//
// # Dependencies
//
// Only the module's own: pgbaton and pgx (already the core's driver).
package main
