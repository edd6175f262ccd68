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
// Each runs Options.Goroutines loops that pick one of a handful of keys,
// take it with pgbaton (a try or a bounded blocking wait), and in the
// critical section make one to three fenced writes to the key's row in
// chaos_resource with package fence, looking at Done before each. Every
// lease is recorded with the server's clock (package history); every write
// the resource applies is logged by a trigger in commit order. Worker slot 0
// reaches the server through a pgtest.Proxy; the others over TCP directly,
// with pgbaton's default timing (heartbeat 1s, lease bound 4s, server release
// 6s).
//
// Meanwhile a nemesis injects, in rounds of a shuffled order, each of:
// SIGKILL of a worker (replaced by a new one); SIGSTOP for longer than the
// lease bound; SIGSTOP while the worker's lock sessions are cut off by a
// packet filter until the server drops them (the frozen holder wakes up
// superseded); pg_terminate_backend of a lock session; a server restart; a
// crash of an unrelated backend (the server restarts every session); a proxy
// black hole under worker 0; a network partition of a worker's lock sessions
// (pgtest.CutPort); and exhaustion of a worker's application pool. Faults
// aimed at a worker prefer one that holds a lock.
//
// At the end the histories, the resource's write log and the fault log are
// checked by package history, and [Report.Table] gives acquisitions, faults
// by kind, losses reported, overlaps, stale writes accepted (which must be
// 0) and rejected, and per fault kind the loss-detection time and the time
// until the key was granted to someone else.
//
// The worker has deliberately broken modes the checker must catch:
// [ModePoolLock] takes session locks through a plain pool (the first seed's
// bug) and [ModeIgnoreDone] never looks at Done; Options.Unfenced writes
// without the fence (the control that shows what the fence prevents).
//
// # Running it
//
//	go test ./internal/chaos/                      # CI: 90s, plus the broken modes
//	CHAOS_DURATION=30m go test -run '^TestChaos$' -timeout 1h ./internal/chaos/
//	scripts/chaos.sh 30m                           # the same, keeping the table
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
package chaos
