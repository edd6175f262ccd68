package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configures Start.
type Options struct {
	// BinDir overrides binary discovery. Discovery order: BinDir,
	// $PGTEST_BINDIR, `initdb` on PATH (symlinks resolved),
	// `pg_config --bindir`, newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Settings are extra postgresql.conf lines (name -> value), e.g.
	// {"max_connections": "200"}. They override the defaults; port and
	// unix_socket_directories are always set by the harness.
	Settings map[string]string
	// Durable turns on what the defaults turn off for speed: fsync,
	// synchronous_commit and full_page_writes (PostgreSQL's own defaults,
	// i.e. production settings), so a commit that writes WAL waits for the
	// disk. For benchmarks whose figures must hold in production; Settings
	// still override it. Main and Run also set it when $PGTEST_DURABLE is 1.
	Durable bool
	// Logf, if set, receives harness log lines (e.g. t.Logf).
	Logf func(format string, args ...any)
	// DSNEnv, if set, names an environment variable that Run sets to the
	// shared cluster's DSN (database "postgres") before the tests run and
	// unsets after, so that runnable Examples can read
	// os.Getenv("DATABASE_URL") like the programs they show. Start ignores
	// it.
	DSNEnv string
}

// defaultSettings are written to postgresql.conf before Options.Settings.
var defaultSettings = map[string]string{
	"listen_addresses":    "127.0.0.1",
	"max_connections":     "300",
	"fsync":               "off",
	"synchronous_commit":  "off",
	"full_page_writes":    "off",
	"shared_buffers":      "32MB",
	"logging_collector":   "off",
	"max_wal_senders":     "5",
	"wal_level":           "replica",
	"restart_after_crash": "on",
	"hot_standby":         "on",
}

// durableSettings are the settings Options.Durable writes over the
// defaults: PostgreSQL's own defaults for durability.
var durableSettings = map[string]string{
	"fsync":              "on",
	"synchronous_commit": "on",
	"full_page_writes":   "on",
}

// Timeouts for steps that have no caller context.
const (
	immediateStopWait = 15 * time.Second // postmaster escalates to SIGKILL of children after 5 s
	adminTimeout      = 30 * time.Second
)

// Cluster is one throwaway PostgreSQL cluster (a primary, or a standby
// made by StartStandby). Its methods are safe for concurrent use.
type Cluster struct {
	opts     Options
	bin      string
	base     string // temp dir: unix socket, logs, data/
	dataDir  string
	logPath  string
	port     int
	user     serverUser
	keep     bool // no parent-death signal and no watchdog (PGTEST_KEEP)
	standby  bool
	baseConf []byte // postgresql.conf as initdb/pg_basebackup left it
	settings map[string]string
	template string
	version  int // server_version_num
	wd       *watchdog

	life sync.Mutex // serialises Stop, StartAgain, Close, StartStandby

	mu       sync.Mutex
	pm       *postmaster // nil while stopped
	closed   bool
	closeErr error
	standbys []*Cluster
}

// postmaster is one run of the server process.
type postmaster struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, valid once exited is closed
}

func (pm *postmaster) pid() int { return pm.cmd.Process.Pid }

// Start initdb's a cluster in a fresh temp dir and starts postgres
// listening on a unix socket in that dir and on 127.0.0.1 at a free port,
// with trust authentication and the superuser "postgres". When the test
// process is root, the server runs as the postgres OS user (else nobody).
// A missing installation yields an error wrapping ErrBinariesNotFound.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	return start(ctx, opts, false)
}

func start(ctx context.Context, opts Options, keep bool) (_ *Cluster, err error) {
	c, err := newCluster(ctx, opts, keep)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = c.Close() // it removes what start made; start's own error is the one to report
		}
	}()
	c.settings = map[string]string{}
	for k, v := range defaultSettings {
		c.settings[k] = v
	}
	if opts.Durable {
		for k, v := range durableSettings {
			c.settings[k] = v
		}
	}
	for k, v := range opts.Settings {
		c.settings[k] = v
	}
	initLog := filepath.Join(c.base, "initdb.log")
	if err := c.runTool(ctx, initLog, "initdb", "-D", c.dataDir, "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %w%s", err, fileTail(initLog))
	}
	if c.baseConf, err = os.ReadFile(filepath.Join(c.dataDir, "postgresql.conf")); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.startWithFreePort(ctx); err != nil {
		return nil, err
	}
	if err := c.initTemplate(ctx); err != nil {
		return nil, err
	}
	c.logf("pgtest: started cluster in %s (port %d, postmaster pid %d)", c.base, c.port, c.PostmasterPID())
	return c, nil
}

// newCluster finds the binaries and makes the temp dir and its watchdog.
func newCluster(ctx context.Context, opts Options, keep bool) (*Cluster, error) {
	bin, err := findBinDir(ctx, opts.BinDir)
	if err != nil {
		return nil, err
	}
	u, err := lookupServerUser()
	if err != nil {
		return nil, err
	}
	root := os.TempDir()
	// The socket path must fit in sun_path, and a dropped-privilege server
	// must be able to reach the directory.
	if len(root) > 60 || (u.switched && !traversableByOthers(root)) {
		root = "/tmp"
	}
	base, err := os.MkdirTemp(root, "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := u.chown(base); err != nil {
		_ = os.RemoveAll(base) // best effort; the chown error is the one to report
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{
		opts:    opts,
		bin:     bin,
		base:    base,
		dataDir: filepath.Join(base, "data"),
		logPath: filepath.Join(base, "postgres.log"),
		user:    u,
		keep:    keep,
	}
	if !keep {
		if c.wd, err = startWatchdog(clusterCleanup, base); err != nil {
			_ = os.RemoveAll(base) // best effort; the watchdog error is the one to report
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// runTool runs one of the server's command-line programs as the server
// user, its output appended to logPath.
func (c *Cluster) runTool(ctx context.Context, logPath, name string, args ...string) error {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644) //nolint:gosec // a log for people to read, in the cluster's own 0700 temp dir
	if err != nil {
		return err
	}
	// The tool writes through its own copy of the descriptor; closing ours loses nothing.
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(filepath.Join(c.bin, name), args...) //nolint:noctx,gosec // runPinned kills it when ctx ends; the binary is from the server's bin dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.base
	cmd.Env = serverEnv()
	cmd.SysProcAttr = c.user.sysProcAttr(syscall.SIGKILL)
	return runPinned(ctx, cmd)
}

// writeConf writes postgresql.conf: the initial file, then the settings,
// then the values the harness relies on.
func (c *Cluster) writeConf() error {
	var b bytes.Buffer
	b.Write(c.baseConf)
	b.WriteString("\n# pgtest\n")
	keys := make([]string, 0, len(c.settings))
	for k := range c.settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, confQuote(c.settings[k]))
	}
	fmt.Fprintf(&b, "port = %d\n", c.port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", confQuote(c.base))
	path := filepath.Join(c.dataDir, "postgresql.conf")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil { //nolint:gosec // path is in the cluster's own temp dir
		return err
	}
	return c.user.chown(path)
}

// confQuote quotes a postgresql.conf value.
func confQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`, "\n", `\n`).Replace(v) + "'"
}

// startWithFreePort picks a free TCP port and starts the postmaster,
// retrying with another port if something else took it meanwhile.
func (c *Cluster) startWithFreePort(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if c.port, err = freePort(ctx); err != nil {
			return fmt.Errorf("pgtest: pick a port: %w", err)
		}
		if err = c.writeConf(); err != nil {
			return fmt.Errorf("pgtest: write postgresql.conf: %w", err)
		}
		err = c.startPostmaster(ctx)
		if err == nil || !errors.Is(err, errPortInUse) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

var errPortInUse = errors.New("port in use")

func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// startPostmaster starts postgres and waits until it accepts connections.
// The caller holds c.life or has exclusive use of c.
func (c *Cluster) startPostmaster(ctx context.Context) error {
	logf, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644) //nolint:gosec // a log for people to read, in the cluster's own 0700 temp dir
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	logStart := fileSize(c.logPath)
	// The server outlives ctx, which bounds only the start: Stop and Close end it.
	cmd := exec.CommandContext(context.Background(), filepath.Join(c.bin, "postgres"), "-D", c.dataDir) //nolint:gosec // the binary is from the server's bin dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.base
	cmd.Env = serverEnv()
	pm := &postmaster{cmd: cmd, exited: make(chan struct{})}
	release := func() {}
	if c.keep {
		cmd.SysProcAttr = c.user.sysProcAttr(0)
		err = cmd.Start()
	} else {
		cmd.SysProcAttr = c.user.sysProcAttr(syscall.SIGQUIT)
		release, err = spawner.start(cmd)
	}
	_ = logf.Close() // the server writes through its own copy of the descriptor
	if err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.wd.setPID(cmd.Process.Pid)
	go func() {
		pm.err = cmd.Wait()
		release()
		close(pm.exited)
	}()
	if err := c.waitReady(ctx, pm); err != nil {
		c.stopPostmaster(pm, syscall.SIGQUIT, immediateStopWait)
		tail := logTailFrom(c.logPath, logStart)
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("pgtest: postgres did not start: %w%s", err, tail)
	}
	c.mu.Lock()
	c.pm = pm
	c.mu.Unlock()
	return nil
}

// waitReady polls until the server accepts a connection, pm exits or ctx
// ends. Polling is the only signal available for external process state.
func (c *Cluster) waitReady(ctx context.Context, pm *postmaster) error {
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := c.connect(attemptCtx, "postgres")
		cancel()
		if err == nil {
			_ = conn.Close(ctx) // a readiness probe: that it connected is all that counts
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-pm.exited:
			t.Stop()
			return fmt.Errorf("postgres exited: %w", pm.err)
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last connection error: %v)", ctx.Err(), err) //nolint:errorlint // ctx's error is the cause; the last attempt's is detail
		case <-t.C:
		}
	}
}

// stopPostmaster signals pm and waits for it to exit, escalating to
// SIGKILL after wait. It reports whether pm exited before the escalation.
func (c *Cluster) stopPostmaster(pm *postmaster, sig syscall.Signal, wait time.Duration) bool {
	_ = pm.cmd.Process.Signal(sig)
	t := time.NewTimer(wait)
	defer t.Stop()
	clean := true
	select {
	case <-pm.exited:
	case <-t.C:
		clean = false
		_ = pm.cmd.Process.Kill()
		<-pm.exited
	}
	c.wd.setPID(0)
	return clean
}

// running returns the current postmaster or an error if stopped/closed.
func (c *Cluster) running() (*postmaster, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("pgtest: cluster is closed")
	}
	if c.pm == nil {
		return nil, errors.New("pgtest: cluster is stopped")
	}
	return c.pm, nil
}

// Close stops the server immediately (SIGQUIT), closes standbys made from
// this cluster and removes the temp dir. It is idempotent.
func (c *Cluster) Close() error {
	c.life.Lock()
	defer c.life.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeErr
	}
	c.closed = true
	pm, standbys := c.pm, c.standbys
	c.pm, c.standbys = nil, nil
	c.mu.Unlock()

	var errs []error
	for _, s := range standbys {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if pm != nil {
		if !c.stopPostmaster(pm, syscall.SIGQUIT, immediateStopWait) {
			errs = append(errs, fmt.Errorf("pgtest: postmaster %d ignored SIGQUIT; killed", pm.pid()))
		}
	}
	if err := os.RemoveAll(c.base); err != nil { //nolint:gosec // the temp dir this cluster made
		errs = append(errs, fmt.Errorf("pgtest: remove %s: %w", c.base, err))
	}
	c.wd.disarm()
	c.closeErr = errors.Join(errs...)
	c.logf("pgtest: closed cluster %s", c.base)
	return c.closeErr
}

// Dir returns the cluster's temp dir (socket, logs, and data/).
func (c *Cluster) Dir() string { return c.base }

// DataDir returns the data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogPath returns the server log file.
func (c *Cluster) LogPath() string { return c.logPath }

// Host returns the unix socket directory.
func (c *Cluster) Host() string { return c.base }

// Port returns the TCP port, which also names the unix socket file.
func (c *Cluster) Port() int { return c.port }

// TCPAddr returns "127.0.0.1:port".
func (c *Cluster) TCPAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)) }

// DSN returns a unix-socket keyword/value DSN for database db.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", dsnQuote(c.base), c.port, dsnQuote(db))
}

// TCPDSN returns a DSN for database db over TCP to 127.0.0.1.
func (c *Cluster) TCPDSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", c.port, dsnQuote(db))
}

// PostmasterPID returns the postmaster's OS pid, or 0 while stopped.
func (c *Cluster) PostmasterPID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pm == nil {
		return 0
	}
	return c.pm.pid()
}

// IsStandby reports whether c was made by StartStandby.
func (c *Cluster) IsStandby() bool { return c.standby }

func dsnQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path) //nolint:gosec // a log in a temp dir the harness made
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logTailFrom returns the end of the file's content after offset,
// formatted for appending to an error.
func logTailFrom(path string, offset int64) string {
	b, err := os.ReadFile(path) //nolint:gosec // a log in a temp dir the harness made
	if err != nil || int64(len(b)) <= offset {
		return ""
	}
	b = b[offset:]
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- " + path + " ---\n" + strings.TrimRight(string(b), "\n")
}

func fileTail(path string) string { return logTailFrom(path, 0) }
