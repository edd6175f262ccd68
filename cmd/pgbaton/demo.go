//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

func init() {
	register(&command{
		Name:    "demo",
		Summary: "watch worker processes hand a lock over, and lose it safely to injected faults",
		Run:     runDemoCmd,
	})
}

const demoDescription = `Starts a throwaway PostgreSQL server, runs -workers worker processes
that contend for one advisory lock, and prints a live trace: who holds
the lock, each handoff and its latency. Then it injects faults into the
holder, one after another:

  kill        SIGKILL the holder's process (a new worker replaces it)
  terminate   pg_terminate_backend on the holder's lock connection
  blackhole   the holder's network stops answering (its TCP proxy
              forwards nothing and closes nothing)

and shows, for each, when the holder saw the loss (Lease.Done) and how
long until another worker held the lock. A summary table ends the run.
The exit status is 1 if two workers ever held the lock at once or a
lease was lost without a fault.

The database: a throwaway server created for the run, unless -dsn names
one. $DATABASE_URL is ignored: the demo never picks a database by
itself. With -dsn it says which database it uses (password redacted)
and runs the contention part only; faults there (killing and
terminating the demo's own workers and backends) need
-allow-faults-on-dsn as well.

Every worker connects through a TCP proxy of its own, so a -dsn server
must be reachable over TCP. Ctrl-C stops everything and leaves nothing
behind: workers, proxies, and the throwaway server and its directory.

Examples:

  pgbaton demo
  pgbaton demo -workers 6 -duration 20s
  pgbaton demo -dsn 'postgres://me@localhost:5432/scratch'
  pgbaton demo -dsn 'postgres://me@localhost:5432/scratch' \
      -allow-faults-on-dsn -faults blackhole`

// demoOptions are the demo's flags, checked.
type demoOptions struct {
	DSN string
	// AllowFaultsOnDSN lets the demo inject faults into the -dsn database.
	AllowFaultsOnDSN bool
	// FaultsRefused is set when -dsn was given without AllowFaultsOnDSN:
	// the default faults were dropped, and the demo says why.
	FaultsRefused bool
	Workers       int
	Duration      time.Duration
	HoldMin       time.Duration
	HoldMax       time.Duration
	Faults        []string
	PGBin         string
	Key           string
}

var allFaults = []string{"kill", "terminate", "blackhole"}

func parseDemoFlags(out *output, args []string) (demoOptions, error) {
	fs := newFlagSet(out, "demo", "[flags]", demoDescription)
	o := demoOptions{}
	fs.StringVar(&o.DSN, "dsn", "", "connection string of an existing database to run against instead of a\nthrowaway server; needs a TCP host. $DATABASE_URL is ignored")
	fs.BoolVar(&o.AllowFaultsOnDSN, "allow-faults-on-dsn", false, "with -dsn, inject the faults there too (they kill and terminate\nthe demo's own workers and backends only)")
	fs.IntVar(&o.Workers, "workers", 4, "worker processes contending for the lock (2 to 16)")
	fs.DurationVar(&o.Duration, "duration", 8*time.Second, "length of the contention phase before the faults")
	fs.DurationVar(&o.HoldMax, "hold", 200*time.Millisecond, "longest a worker holds the lock doing \"work\"; each hold is random\nbetween a fifth of it and it")
	faults := fs.String("faults", strings.Join(allFaults, ","), "faults to inject after the contention phase, in order\n(comma-separated; \"none\" for none)")
	fs.StringVar(&o.PGBin, "pg-bin", "", "directory holding initdb and postgres for the throwaway server\n(default: found on PATH, pg_config or /usr/lib/postgresql/*/bin)")
	fs.StringVar(&o.Key, "key", "pgbaton-demo", "name of the lock the workers contend for")
	if err := parseFlags(fs, args); err != nil {
		return o, err
	}
	faultsSet := false
	fs.Visit(func(f *flag.Flag) { faultsSet = faultsSet || f.Name == "faults" })
	switch {
	case o.Workers < 2 || o.Workers > 16:
		return o, usagef("-workers %d: use 2 to 16 (contention needs at least two)", o.Workers)
	case o.Duration < 0:
		return o, usagef("-duration %s is negative; use 0 to go straight to the faults", o.Duration)
	case o.HoldMax < 5*time.Millisecond || o.HoldMax > time.Minute:
		return o, usagef("-hold %s: use 5ms to 1m", o.HoldMax)
	case o.Key == "" || len(o.Key) > pgbaton.MaxKeyNameLen:
		return o, usagef("-key: give a name of 1 to %d bytes", pgbaton.MaxKeyNameLen)
	}
	o.HoldMin = o.HoldMax / 5
	if *faults != "none" {
		for _, f := range strings.Split(*faults, ",") {
			f = strings.TrimSpace(f)
			if !contains(allFaults, f) {
				return o, usagef("-faults: unknown fault %q; choose from %s, or none", f, strings.Join(allFaults, ", "))
			}
			o.Faults = append(o.Faults, f)
		}
	}
	if o.DSN != "" {
		if _, err := serverAddr(o.DSN); err != nil {
			return o, &usageError{msg: err.Error()}
		}
	}
	switch {
	case o.AllowFaultsOnDSN && o.DSN == "":
		return o, usagef("-allow-faults-on-dsn is for -dsn; without -dsn the faults go to a throwaway server anyway")
	case o.DSN != "" && !o.AllowFaultsOnDSN && len(o.Faults) > 0:
		if faultsSet {
			return o, usagef("-faults %s with -dsn: the demo injects faults only into a database it created, "+
				"unless you add -allow-faults-on-dsn", strings.Join(o.Faults, ","))
		}
		o.Faults, o.FaultsRefused = nil, true
	}
	return o, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// serverAddr returns the TCP address the demo's proxies forward to: the
// first host of dsn.
func serverAddr(dsn string) (string, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("-dsn: %w", err)
	}
	if strings.HasPrefix(cfg.Host, "/") || strings.HasPrefix(cfg.Host, "@") {
		return "", fmt.Errorf("-dsn connects over the unix socket %s, but every worker connects through a TCP proxy of its own "+
			"(the black-hole fault needs it): give a TCP host, e.g. host=localhost port=%d", cfg.Host, cfg.Port)
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), nil
}

func runDemoCmd(ctx context.Context, out *output, args []string) error {
	opts, err := parseDemoFlags(out, args)
	if err != nil {
		return err
	}
	_, err = runDemo(ctx, out.Stdout, opts)
	return err
}

// errDemoBroken is the demo's failure when it counted an overlap or a loss
// no fault explains: what pgbaton promises did not hold.
var errDemoBroken = errors.New("the demo saw pgbaton's promises broken")

// verdict turns a run's counts into its outcome: nil, or errDemoBroken
// saying what was counted (exit status 1).
func verdict(s stats) error {
	var what []string
	if s.Overlaps > 0 {
		what = append(what, fmt.Sprintf("%d overlapping grants (two workers held the lock at once)", s.Overlaps))
	}
	if s.Spurious > 0 {
		what = append(what, fmt.Sprintf("%d leases lost although no fault was injected into their holder", s.Spurious))
	}
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", errDemoBroken, strings.Join(what, "; "))
}

// demoResult is what a run did, for tests.
type demoResult struct {
	ClusterDir    string // "" with -dsn
	PostmasterPID int
	WorkerPIDs    []int
	Stats         stats
}

// demo is one run.
type demo struct {
	opts      demoOptions
	out       io.Writer
	exe       string // this program, re-executed as each worker
	res       *demoResult
	cluster   *pgtest.Cluster
	target    string // host:port of the server
	workerDSN string
	admin     *pgconn.PgConn // the demo's own connection, for pg_terminate_backend
	version   string
	tr        *trace
	workers   []*demoProc
}

// runDemo runs the demo, printing to w. Whatever happens (an error, ctx
// cancelled by a signal) it stops every worker, closes every proxy and
// removes the throwaway server before returning.
func runDemo(ctx context.Context, w io.Writer, opts demoOptions) (res *demoResult, err error) {
	ww := newWrapWriter(w, demoWidth)
	defer ww.Flush()
	w = ww
	d := &demo{opts: opts, out: w, res: &demoResult{}}
	defer func() {
		err = errors.Join(err, d.cleanup(err != nil))
	}()
	if err := d.setup(ctx); err != nil {
		return d.res, err
	}
	d.printHeader()
	d.tr = newTrace(w, 100*time.Millisecond)
	d.tr.start()
	if err := d.startWorkers(ctx); err != nil {
		return d.res, err
	}
	if opts.Duration > 0 {
		t := time.NewTimer(opts.Duration)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return d.res, context.Cause(ctx)
		}
	}
	if err := d.injectFaults(ctx); err != nil {
		return d.res, err
	}
	if err := d.stopWorkers(ctx); err != nil {
		return d.res, err
	}
	d.tr.close()
	d.res.Stats = d.tr.stats()
	d.printSummary(d.res.Stats)
	return d.res, verdict(d.res.Stats)
}

// acquireWait bounds each Acquire of the workers.
func (d *demo) acquireWait() time.Duration { return 5 * time.Second }

// setup finds the server: -dsn, or a throwaway one.
func (d *demo) setup(ctx context.Context) error {
	adminDSN := d.opts.DSN
	if d.opts.DSN != "" {
		addr, err := serverAddr(d.opts.DSN)
		if err != nil {
			return err
		}
		d.target, d.workerDSN = addr, d.opts.DSN
	} else {
		printf(d.out, "starting a throwaway PostgreSQL server (initdb into a temp dir)...\n")
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		c, err := pgtest.Start(sctx, pgtest.Options{BinDir: d.opts.PGBin})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				// Start removed what it had made; its log tail would be noise.
				return fmt.Errorf("starting the throwaway server: %w", context.Cause(ctx))
			}
			if errors.Is(err, pgtest.ErrBinariesNotFound) {
				return fmt.Errorf("%w\n\nThe demo needs them for its throwaway server: install PostgreSQL "+
					"(apt-get install postgresql-15) or point -pg-bin at their directory; "+
					"or run the demo against a database you have: pgbaton demo -dsn 'postgres://user@localhost:5432/db'", err)
			}
			return fmt.Errorf("starting a throwaway server: %w", err)
		}
		d.cluster = c
		d.res.ClusterDir, d.res.PostmasterPID = c.Dir(), c.PostmasterPID()
		d.target, d.workerDSN, adminDSN = c.TCPAddr(), c.TCPDSN("postgres"), c.DSN("postgres")
	}
	cfg, err := pgconn.ParseConfig(adminDSN)
	if err != nil {
		return fmt.Errorf("-dsn: %w", err)
	}
	if d.cluster == nil {
		// Say which database before touching it.
		printf(d.out, "using YOUR DATABASE (-dsn), not a throwaway one:\n  %s\n", describeDSN(cfg))
	}
	cfg.RuntimeParams["application_name"] = "pgbaton-demo"
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if d.admin, err = pgconn.ConnectConfig(cctx, cfg); err != nil {
		return fmt.Errorf("cannot connect to the server: %w", err)
	}
	d.version = d.admin.ParameterStatus("server_version")
	return nil
}

// describeDSN names the server, user and database of cfg, on two lines,
// without the password.
func describeDSN(cfg *pgconn.Config) string {
	pw := "no password"
	if cfg.Password != "" {
		pw = "password redacted"
	}
	return fmt.Sprintf("host %s port %d, user %s (%s),\n  database %s", cfg.Host, cfg.Port, cfg.User, pw, cfg.Database)
}

// shortVersion keeps the number of a server_version such as
// "15.18 (Debian 15.18-0+deb12u1)".
func shortVersion(v string) string {
	if i := strings.IndexByte(v, ' '); i > 0 {
		return v[:i]
	}
	return v
}

func (d *demo) printHeader() {
	w := d.out
	lc := demoLockerConfig("")
	printf(w, "\npgbaton demo: %d worker processes contend for the advisory lock %q\n\n", d.opts.Workers, d.opts.Key)
	if d.cluster != nil {
		printf(w, "  target   a throwaway server created for this run: PostgreSQL %s\n", shortVersion(d.version))
		printf(w, "           at %s, postmaster pid %d\n           in %s\n", d.target, d.cluster.PostmasterPID(), d.cluster.Dir())
	} else {
		printf(w, "  target   YOUR DATABASE (-dsn): PostgreSQL %s at %s\n", shortVersion(d.version), d.target)
		if d.opts.AllowFaultsOnDSN {
			printf(w, "           faults allowed there (-allow-faults-on-dsn): they hit the demo's\n"+
				"           own workers, backends and proxies only\n")
		}
	}
	printf(w, "  workers  each a Locker in its own process, behind its own TCP proxy\n")
	printf(w, "  work     Acquire (waiting at most %s), hold the lock %s-%s, Release,\n           repeat\n",
		fmtDur(d.acquireWait()), fmtDur(d.opts.HoldMin), fmtDur(d.opts.HoldMax))
	printf(w, "  loss     heartbeat every %s; a lease is lost after %s without a\n"+
		"           confirmed heartbeat; the server frees a silent client's locks\n"+
		"           after %s (keepalives, tcp_user_timeout)\n",
		fmtDur(lc.HeartbeatInterval), fmtDur(lc.LeaseTimeout), fmtDur(lc.ServerReleaseTimeout()))
	faults := "none"
	if len(d.opts.Faults) > 0 {
		faults = strings.Join(d.opts.Faults, ", ")
	}
	printf(w, "  plan     %s of contention, then faults: %s\n", d.opts.Duration, faults)
	printf(w, "  times    since the start of the trace; handoff = one worker's Release\n"+
		"           call to the next one's grant; [pid N] = the lock's backend\n")
	if d.opts.FaultsRefused {
		printf(w, "\n  No faults: the demo kills, terminates and black-holes only in a\n"+
			"  database it created. To inject them into this one (they hit the\n"+
			"  demo's own workers), add -allow-faults-on-dsn; or run without -dsn\n"+
			"  for a throwaway server.\n")
	}
	printf(w, "\n")
}

// cleanup stops everything the run started, in order: workers, the trace,
// proxies, the demo's connection, the throwaway server. failed says the run
// is ending early (an error or a signal), so workers are killed rather than
// asked to stop.
func (d *demo) cleanup(failed bool) error {
	var errs []error
	killed := d.killWorkers()
	if d.tr != nil {
		d.tr.close()
	}
	for _, p := range d.workers {
		if p.proxy != nil {
			if err := p.proxy.Close(); err != nil {
				errs = append(errs, fmt.Errorf("closing %s's proxy: %w", p.name, err))
			}
		}
	}
	if d.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.admin.Close(ctx) // a broken connection is closed anyway; nothing to report
		cancel()
	}
	var done []string
	if len(d.workers) > 0 {
		if killed > 0 {
			done = append(done, fmt.Sprintf("%d worker processes killed", killed))
		} else {
			done = append(done, fmt.Sprintf("%d worker processes stopped", len(d.workers)))
		}
		done = append(done, fmt.Sprintf("%d proxies closed", len(d.workers)))
	}
	if d.cluster != nil {
		if err := d.cluster.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the throwaway server: %w", err))
		} else {
			done = append(done, "throwaway server stopped", d.cluster.Dir()+" removed")
		}
	}
	if len(done) > 0 {
		prefix := "cleaned up"
		if failed {
			prefix = "stopped early; cleaned up"
		}
		printf(d.out, "\n%s:\n  %s\n", prefix, strings.Join(done, "\n  "))
	}
	return errors.Join(errs...)
}
