package pgtest_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/pgtest"
)

// TestMissingBinaries: a BinDir without the server binaries is an error
// that says how to install them.
func TestMissingBinaries(t *testing.T) {
	t.Parallel()
	_, err := pgtest.Start(testCtx(t, 10*time.Second), pgtest.Options{BinDir: t.TempDir()})
	if !errors.Is(err, pgtest.ErrBinariesNotFound) {
		t.Fatalf("err = %v, want ErrBinariesNotFound", err)
	}
	if !strings.Contains(err.Error(), "apt-get install postgresql-15 (or set PGTEST_BINDIR)") {
		t.Fatalf("error does not name the fix: %v", err)
	}
}

// TestLifecycle: Start with extra settings, both DSNs, Stop keeps data,
// StartAgain on the same port, Restart, and an idempotent Close that
// leaves no process and no directory.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	c, err := pgtest.Start(ctx, pgtest.Options{
		Settings: map[string]string{"max_connections": "50", "cluster_name": `it's a \ name`},
		Logf:     t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir, port := c.Dir(), c.Port()
	if c.Host() != dir || !strings.Contains(c.DSN("x"), "host="+dir) {
		t.Fatalf("Host %q / DSN %q do not use the socket dir %q", c.Host(), c.DSN("x"), dir)
	}
	if _, err := os.Stat(dir + "/.s.PGSQL." + strconv.Itoa(port)); err != nil {
		t.Fatalf("socket file: %v", err)
	}

	unix := connect(t, ctx, c.DSN("postgres"))
	if n := queryInt(t, ctx, unix, "SELECT current_setting('max_connections')::int"); n != 50 {
		t.Fatalf("max_connections = %d, want 50 (Options.Settings)", n)
	}
	var fsync, name string
	if err := unix.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('cluster_name')").Scan(&fsync, &name); err != nil {
		t.Fatal(err)
	}
	if fsync != "off" || name != `it's a \ name` {
		t.Fatalf("fsync = %q (want off), cluster_name = %q (want the quoted value back)", fsync, name)
	}
	tcp := connect(t, ctx, c.TCPDSN("postgres"))
	var addr string
	if err := tcp.QueryRow(ctx, "SELECT host(inet_server_addr())").Scan(&addr); err != nil || addr != "127.0.0.1" {
		t.Fatalf("TCP connection server addr = %q, %v; want 127.0.0.1", addr, err)
	}
	if c.TCPAddr() != "127.0.0.1:"+strconv.Itoa(port) {
		t.Fatalf("TCPAddr = %q", c.TCPAddr())
	}
	if err := c.Exec(ctx, "postgres", "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)"); err != nil {
		t.Fatal(err)
	}

	pid := c.PostmasterPID()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatalf("postmaster %d still alive after Stop", pid)
	}
	if err := unix.Ping(ctx); err == nil {
		t.Fatal("session survived Stop")
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Port() != port {
		t.Fatalf("port changed: %d -> %d", port, c.Port())
	}
	again := connect(t, ctx, c.TCPDSN("postgres"))
	if n := queryInt(t, ctx, again, "SELECT v FROM kept"); n != 7 {
		t.Fatalf("kept = %d, want 7", n)
	}
	if err := c.StartAgain(ctx); err == nil {
		t.Fatal("StartAgain on a running cluster succeeded")
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := again.Ping(ctx); err == nil {
		t.Fatal("session survived Restart")
	}
	if err := c.Exec(ctx, "postgres", "SELECT 1 FROM kept"); err != nil {
		t.Fatalf("after Restart: %v", err)
	}

	pid = c.PostmasterPID()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if alive(pid) {
		t.Fatalf("postmaster %d alive after Close", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir %s still there after Close: %v", dir, err)
	}
	if err := c.StartAgain(ctx); err == nil {
		t.Fatal("StartAgain after Close succeeded")
	}
}

// TestCrash: after Crash, a session opened before it is dead, a new one
// works, and the postmaster is the same process.
func TestCrash(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgtest.Options{})
	ctx := testCtx(t, time.Minute)
	before := connect(t, ctx, c.DSN("postgres"))
	if _, err := before.Exec(ctx, "SELECT pg_advisory_lock(1)"); err != nil {
		t.Fatal(err)
	}
	pid := c.PostmasterPID()
	if err := c.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	if err := before.Ping(ctx); err == nil {
		t.Fatal("session opened before Crash still works")
	}
	after := connect(t, ctx, c.DSN("postgres"))
	if n := queryInt(t, ctx, after, "SELECT pg_try_advisory_lock(1)::int"); n != 1 {
		t.Fatal("advisory lock held before the crash survived it")
	}
	if c.PostmasterPID() != pid || !alive(pid) {
		t.Fatalf("postmaster changed or died: %d -> %d", pid, c.PostmasterPID())
	}
	if b, err := os.ReadFile(c.LogPath()); err != nil || !strings.Contains(string(b), "terminated by signal 9") {
		t.Fatalf("server log does not show the crash (%v)", err)
	}
}

// TestStandby: StartStandby yields a hot standby that is in recovery,
// streams from the primary and refuses writes; the primary's Close would
// close it, and its own Close removes it.
func TestStandby(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	ctx := testCtx(t, time.Minute)
	db, dsn := c.NewDB(t)
	if err := c.Exec(ctx, db, "CREATE TABLE r (v int); INSERT INTO r VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	s, err := c.StartStandby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.IsStandby() || s.Port() == c.Port() || s.Dir() == c.Dir() {
		t.Fatalf("standby shares identity with primary: port %d dir %s", s.Port(), s.Dir())
	}
	sconn := connect(t, ctx, s.DSN(db))
	var inRecovery bool
	if err := sconn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
		t.Fatalf("pg_is_in_recovery() = %v, %v; want true", inRecovery, err)
	}
	if _, err := sconn.Exec(ctx, "INSERT INTO r VALUES (2)"); err == nil {
		t.Fatal("write on standby succeeded")
	}
	// Streaming: a row committed on the primary after the base backup
	// appears on the standby (polled: replication is external state).
	pconn := connect(t, ctx, dsn)
	if _, err := pconn.Exec(ctx, "INSERT INTO r VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	for queryInt(t, ctx, sconn, "SELECT count(*) FROM r WHERE v = 3") != 1 {
		select {
		case <-ctx.Done():
			t.Fatal("row never replicated")
		case <-time.After(20 * time.Millisecond):
		}
	}
	dir := s.Dir()
	closeQuiet(sconn)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("standby dir %s still there", dir)
	}
}

func closeQuiet(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn.Close(ctx)
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		state := s[i+2]
		return state != 'Z' && state != 'X'
	}
	return true
}

// TestDurable: Options.Durable turns fsync, synchronous_commit and
// full_page_writes on (the defaults turn them off), Settings still override
// it, and PGTEST_DURABLE=1 sets it for Main and Run.
func TestDurable(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	c, err := pgtest.Start(ctx, pgtest.Options{
		Durable:  true,
		Settings: map[string]string{"full_page_writes": "off"},
		Logf:     t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := connect(t, ctx, c.DSN("postgres"))
	var fsync, syncCommit, fpw string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('full_page_writes')").
		Scan(&fsync, &syncCommit, &fpw); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" || syncCommit != "on" || fpw != "off" {
		t.Fatalf("fsync, synchronous_commit, full_page_writes = %s, %s, %s; want on, on, off (Durable, then Settings)", fsync, syncCommit, fpw)
	}
	var fast string
	if err := connect(t, ctx, pgtest.Shared().DSN("postgres")).QueryRow(ctx,
		"SELECT current_setting('fsync') || current_setting('synchronous_commit') || current_setting('full_page_writes')").Scan(&fast); err != nil {
		t.Fatal(err)
	}
	if fast != "offoffoff" && os.Getenv("PGTEST_DURABLE") != "1" {
		t.Fatalf("default cluster: fsync, synchronous_commit, full_page_writes = %q, want all off", fast)
	}

	t.Setenv("PGTEST_DURABLE", "1")
	if !pgtest.EnvOptions(pgtest.Options{}).Durable {
		t.Fatal("PGTEST_DURABLE=1 did not set Options.Durable")
	}
	t.Setenv("PGTEST_DURABLE", "")
	if pgtest.EnvOptions(pgtest.Options{}).Durable {
		t.Fatal("Options.Durable set without PGTEST_DURABLE")
	}
}
