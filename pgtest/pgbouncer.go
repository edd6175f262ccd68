package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPgBouncerNotFound is returned (wrapped) by StartPgBouncer when no
// pgbouncer binary was found.
var ErrPgBouncerNotFound = errors.New("pgbouncer not found; install it with: apt-get install pgbouncer (or set PGTEST_PGBOUNCER to the binary)")

// pgbouncerEnv names the variable that overrides pgbouncer discovery.
const pgbouncerEnv = "PGTEST_PGBOUNCER"

// Pool modes of PgBouncer.
const (
	// PoolTransaction hands a server connection to a client for one
	// transaction: session state (session advisory locks, SET, prepared
	// statements) stays on a backend that other clients then use.
	PoolTransaction = "transaction"
	// PoolSession keeps one server connection per client connection.
	PoolSession = "session"
)

// PgBouncerOptions configures StartPgBouncer.
type PgBouncerOptions struct {
	// PoolMode is PoolTransaction (the default) or PoolSession.
	PoolMode string
	// PoolSize is default_pool_size: server connections per database and
	// user. Default 10.
	PoolSize int
	// Users may log in (trust authentication, as the cluster). Default
	// {"postgres"}.
	Users []string
	// Settings are extra [pgbouncer] lines (name -> value).
	Settings map[string]string
}

// PgBouncer is a running pgbouncer in front of a Cluster, listening on
// 127.0.0.1. Every database of the cluster is reachable through it.
type PgBouncer struct {
	c       *Cluster
	dir     string
	port    int
	mode    string
	pid     int
	cmd     *exec.Cmd
	exited  chan struct{}
	release func()
	wd      *watchdog

	closeOnce sync.Once
	closeErr  error
}

// pgbouncerCleanup is the watchdog's action for a pgbouncer temp dir ($1):
// stop the process last reported with "pid N" and remove the directory.
const pgbouncerCleanup = `
dir=$1
stop TERM 50
rm -rf "$dir"
`

// findPgBouncer returns the pgbouncer binary: $PGTEST_PGBOUNCER, pgbouncer
// on PATH, or /usr/sbin/pgbouncer (Debian's package installs it there,
// outside an unprivileged PATH).
func findPgBouncer() (string, error) {
	if p := os.Getenv(pgbouncerEnv); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("pgtest: $%s=%q is not an executable: %w", pgbouncerEnv, p, ErrPgBouncerNotFound)
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"} {
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("pgtest: %w", ErrPgBouncerNotFound)
}

// StartPgBouncer starts pgbouncer in front of c on a free loopback port. It
// connects to the cluster over its unix socket and runs as the cluster's
// server user (pgbouncer refuses to run as root). Like the cluster, it
// cannot outlive the test process: it gets a parent-death signal and a
// watchdog. Close it when done.
func (c *Cluster) StartPgBouncer(ctx context.Context, opts PgBouncerOptions) (_ *PgBouncer, err error) {
	bin, err := findPgBouncer()
	if err != nil {
		return nil, err
	}
	if opts.PoolMode == "" {
		opts.PoolMode = PoolTransaction
	}
	if opts.PoolMode != PoolTransaction && opts.PoolMode != PoolSession {
		return nil, fmt.Errorf("pgtest: PgBouncerOptions.PoolMode %q: use PoolTransaction or PoolSession", opts.PoolMode)
	}
	if opts.PoolSize == 0 {
		opts.PoolSize = 10
	}
	if len(opts.Users) == 0 {
		opts.Users = []string{"postgres"}
	}
	if _, err := c.running(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(c.base), "pgtest-pgbouncer-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.user.chown(dir); err != nil {
		_ = os.RemoveAll(dir) // best effort; the chown error is the one to report
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	b := &PgBouncer{c: c, dir: dir, mode: opts.PoolMode}
	if b.wd, err = startWatchdog(pgbouncerCleanup, dir); err != nil {
		_ = os.RemoveAll(dir) // best effort; the watchdog error is the one to report
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = b.Close() // it removes what was made; the start error is the one to report
		}
	}()
	var users strings.Builder
	for _, u := range opts.Users {
		fmt.Fprintf(&users, "%q \"\"\n", u)
	}
	if err := b.writeFile("userlist.txt", users.String()); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if b.port, err = freePort(ctx); err != nil {
			return nil, fmt.Errorf("pgtest: pick a port: %w", err)
		}
		if err := b.writeFile("pgbouncer.ini", b.ini(opts)); err != nil {
			return nil, err
		}
		err = b.start(ctx, bin)
		if err == nil {
			break
		}
		if attempt == 4 || !strings.Contains(err.Error(), "Address already in use") || ctx.Err() != nil {
			return nil, err
		}
	}
	c.logf("pgtest: started pgbouncer (%s mode) on %s, pid %d", b.mode, b.Addr(), b.pid)
	return b, nil
}

// NewPgBouncer starts pgbouncer in front of c in the given pool mode and
// closes it in t.Cleanup.
func (c *Cluster) NewPgBouncer(t testing.TB, mode string) *PgBouncer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := c.StartPgBouncer(ctx, PgBouncerOptions{PoolMode: mode})
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return b
}

func (b *PgBouncer) writeFile(name, content string) error {
	path := filepath.Join(b.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := b.c.user.chown(path); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

func (b *PgBouncer) ini(opts PgBouncerOptions) string {
	settings := map[string]string{
		"listen_addr":               "127.0.0.1",
		"listen_port":               strconv.Itoa(b.port),
		"unix_socket_dir":           "",
		"auth_type":                 "trust",
		"auth_file":                 filepath.Join(b.dir, "userlist.txt"),
		"pool_mode":                 opts.PoolMode,
		"default_pool_size":         strconv.Itoa(opts.PoolSize),
		"max_client_conn":           "500",
		"ignore_startup_parameters": "extra_float_digits",
		"admin_users":               strings.Join(opts.Users, ","),
		"server_login_retry":        "1",
		"log_connections":           "0",
		"log_disconnections":        "0",
		"logfile":                   filepath.Join(b.dir, "pgbouncer.log"),
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	var s strings.Builder
	// "*" is the fallback entry: every database name maps to the same
	// name on the cluster, over its unix socket.
	fmt.Fprintf(&s, "[databases]\n* = host=%s port=%d\n\n[pgbouncer]\n", b.c.base, b.c.port)
	for k, v := range settings {
		fmt.Fprintf(&s, "%s = %s\n", k, v)
	}
	return s.String()
}

// start runs pgbouncer and waits until it accepts a connection.
func (b *PgBouncer) start(ctx context.Context, bin string) error {
	logPath := filepath.Join(b.dir, "stderr.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644) //nolint:gosec // a log for people to read, in pgbouncer's own 0700 temp dir
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	// pgbouncer outlives ctx, which bounds only the start: Close ends it.
	cmd := exec.CommandContext(context.Background(), bin, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = b.dir
	cmd.Env = serverEnv()
	// pgbouncer has no children and nothing to flush: SIGKILL on parent
	// death is a clean enough end.
	cmd.SysProcAttr = b.c.user.sysProcAttr(syscall.SIGKILL)
	release, err := spawner.start(cmd)
	_ = logf.Close() // pgbouncer writes through its own copy of the descriptor
	if err != nil {
		return fmt.Errorf("pgtest: start pgbouncer: %w", err)
	}
	b.cmd, b.release, b.exited, b.pid = cmd, release, make(chan struct{}), cmd.Process.Pid
	b.wd.setPID(cmd.Process.Pid)
	go func() {
		_ = cmd.Wait()
		release()
		close(b.exited)
	}()
	if err := b.waitReady(ctx); err != nil {
		b.stop()
		tail := fileTail(filepath.Join(b.dir, "pgbouncer.log")) + fileTail(logPath)
		return fmt.Errorf("pgtest: pgbouncer did not start: %w%s", err, tail)
	}
	return nil
}

// waitReady polls (external process state) until a client can run a query
// through pgbouncer, the process exits or ctx ends.
func (b *PgBouncer) waitReady(ctx context.Context) error {
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgconn.Connect(attemptCtx, b.DSN("postgres")+" application_name="+AdminApplicationName)
		if err == nil {
			_, err = conn.Exec(attemptCtx, "SELECT 1").ReadAll()
			_ = conn.Close(attemptCtx) // a readiness probe: the query's result is what counts
		}
		cancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-b.exited:
			t.Stop()
			return errors.New("pgbouncer exited")
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last connection error: %v)", ctx.Err(), err) //nolint:errorlint // ctx's error is the cause; the last attempt's is detail
		case <-t.C:
		}
	}
}

// stop ends the process: SIGTERM (immediate shutdown in pgbouncer before
// 1.23, which closes every client and server connection), then SIGKILL.
func (b *PgBouncer) stop() {
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-b.exited:
	case <-t.C:
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
	b.wd.setPID(0)
	b.cmd = nil
}

// Close stops pgbouncer (its clients see their connections closed) and
// removes its directory. It is idempotent.
func (b *PgBouncer) Close() error {
	b.closeOnce.Do(func() {
		b.stop()
		if err := os.RemoveAll(b.dir); err != nil {
			b.closeErr = fmt.Errorf("pgtest: remove %s: %w", b.dir, err)
		}
		b.wd.disarm()
	})
	return b.closeErr
}

// Addr returns "127.0.0.1:port".
func (b *PgBouncer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// Port returns the TCP port pgbouncer listens on.
func (b *PgBouncer) Port() int { return b.port }

// PoolMode returns PoolTransaction or PoolSession.
func (b *PgBouncer) PoolMode() string { return b.mode }

// PID returns pgbouncer's OS pid.
func (b *PgBouncer) PID() int { return b.pid }

// Dir returns pgbouncer's temp dir (configuration and pgbouncer.log).
func (b *PgBouncer) Dir() string { return b.dir }

// DSN returns a keyword/value DSN for database db through pgbouncer.
//
// With pgx in transaction mode, add default_query_exec_mode=exec (or
// simple_protocol): pgx's default statement cache prepares named statements
// on whichever server connection a transaction lands on, and PgBouncer
// before 1.21 does not track them (errors 42P05 and 26000).
func (b *PgBouncer) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", b.port, dsnQuote(db))
}
