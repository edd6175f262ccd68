// Package pgtest starts throwaway PostgreSQL clusters from locally
// installed server binaries and injects real faults into them, for tests
// of code that depends on PostgreSQL session semantics (advisory locks in
// particular). It is pgbaton's own test harness and is public so that
// users of pgbaton can test their code the same way.
//
// # Model
//
// A Cluster is one initdb'd data directory and one postmaster, in a fresh
// temp dir that also holds the unix socket and the server log. It listens
// on that socket and on 127.0.0.1 at a free port, with trust
// authentication and the superuser "postgres". When the test process is
// root the server programs run as the "postgres" OS user (else "nobody"),
// because PostgreSQL refuses to run as root.
//
// Typical use is one cluster per test package, started by TestMain, and
// one database per test:
//
//	func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		dsn := pgtest.Shared().NewDatabase(t) // dropped at test end
//		...
//	}
//
// Advisory locks are scoped to a database, so tests that each use their
// own database cannot see each other's locks. Tests whose faults affect
// the whole server (Crash, Stop, Restart, CutPort of the server port)
// should Start a cluster of their own.
//
// Binaries are found, in order, at Options.BinDir, $PGTEST_BINDIR, the
// directory of `initdb` on PATH (symlinks resolved), `pg_config --bindir`,
// and the newest /usr/lib/postgresql/*/bin. If none is usable, Start fails
// with ErrBinariesNotFound, whose message says how to install them; Main
// then fails the test binary rather than skipping tests.
//
// Settings default to a fast, disposable server: fsync, full_page_writes
// and synchronous_commit off, 300 connections, 32MB shared buffers,
// wal_level replica with 5 WAL senders (for StartStandby), and
// restart_after_crash on (for Crash). Options.Settings override them.
//
// # Faults
//
//   - TerminateBackend, TerminateApp: pg_terminate_backend; on PostgreSQL
//     14+ they return after the backends have exited, so their locks are
//     already released.
//   - Crash: SIGKILL of a backend, which makes the postmaster end every
//     session and run crash recovery; returns when the server accepts
//     connections again.
//   - Stop, StartAgain, Restart: fast shutdown and start on the same port.
//   - AlterRoleSet, AlterDatabaseSet: settings for sessions started later.
//   - StartStandby: a streaming hot standby, for code that must refuse to
//     run against a server in recovery.
//   - Proxy: a TCP forwarder with BlackHole/Heal, latency and ResetAll.
//   - CutPort: a real, silent network cut made with a packet filter.
//
// # Guarantees
//
//   - No orphans: no postmaster and no temp dir outlives the test process,
//     even when a test panics, calls os.Exit or the process is SIGKILLed.
//     Close cleans up in the normal case. Otherwise a watchdog process (a
//     /bin/sh in its own process group, one per cluster) notices that the
//     test process died when the pipe it reads from reaches end of file,
//     stops the postmaster (SIGQUIT, then SIGKILL after 15 s) and removes
//     the temp dir; in addition the postmaster gets SIGQUIT as its
//     parent-death signal. Cuts made by CutPort are removed the same way.
//   - Concurrency: all methods are safe for concurrent use. CreateDatabase
//     copies a template database (pgtest_template) that nothing connects
//     to, and retries the transient "being accessed by other users" error.
//   - Close is idempotent; Close of a primary also closes its standbys.
//
// # Non-guarantees
//
//   - Durability: fsync, synchronous_commit and full_page_writes are off
//     unless Options.Durable is set (or PGTEST_DURABLE=1 for Main and
//     Run). A cluster survives Stop/StartAgain and Crash, not a power loss;
//     none of this matters for a throwaway cluster, but do not point
//     Options at data you care about. Benchmarks whose figures must hold
//     in production set Durable: a commit that writes WAL then waits for
//     the disk, as it does with PostgreSQL's defaults.
//   - Ports: a free port is picked at Start; if another process takes it
//     while the cluster is stopped, StartAgain fails.
//   - Zombies: after the test process is killed its postmaster is
//     re-parented; on a system whose init does not reap, the exited
//     postmaster can remain as a zombie (it holds no resources).
//   - PGTEST_KEEP=1 (honoured by Main and Run) deliberately leaves the
//     shared cluster running and unwatched for debugging, and prints where
//     it is and how to remove it (go test shows that output with -v, or
//     when run without package arguments).
//   - Crash needs the right to signal the server processes (root, or the
//     same OS user); CutPort needs root.
//
// # Why a hand-written proxy
//
// Proxy is a few hundred lines on the standard library. Shopify's toxiproxy
// does more, but its Go packages bring prometheus, zerolog, gorilla/mux
// and others into the build of every program that imports this package,
// and pgtest is imported by users' tests. The faults pgbaton needs (hang
// without closing, resume, latency, reset) are small enough to own.
//
// # Black hole versus network cut
//
// A userspace proxy cannot hide a client from the server completely: the
// proxy's own kernel still acknowledges the server's TCP segments and
// keepalive probes, so under Proxy.BlackHole the server keeps the session
// (and its locks) for as long as the proxy lives. To test that the server
// frees a lock after a real network failure, use CutPort, which drops
// packets on the loopback interface with nftables (or iptables), so
// probes go unanswered. The server notices a cut session only if it is
// told to look: set tcp_keepalives_idle, tcp_keepalives_interval and
// tcp_keepalives_count for an idle session, and also tcp_user_timeout,
// because keepalives are not sent while the server's last reply is still
// unacknowledged, which is common right after a query. With idle=1,
// interval=1, count=2 and tcp_user_timeout=2000 the server ends the
// session about 3 s after the cut. CutPort of a client's local port cuts
// one connection; of the server's port, every TCP client. It returns an
// error wrapping ErrNetCutUnsupported when not root or when neither nft
// nor iptables works (install the nftables package).
//
// # PgBouncer
//
// Cluster.StartPgBouncer (or NewPgBouncer in a test) runs a real PgBouncer
// (Debian package pgbouncer; PGTEST_PGBOUNCER names another binary) in
// front of the cluster on loopback, in transaction or session pooling mode,
// under the same watchdog as the cluster. Through transaction pooling, pgx
// needs default_query_exec_mode=exec (or simple_protocol) in the connection
// string: its default statement cache fails there.
package pgtest
