package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/web"
)

func init() {
	register(&command{
		Name:    "web",
		Summary: "the read-only dashboard: locks by name, instances, periodic jobs and runs, in a browser",
		Run:     runWeb,
	})
}

const webDescription = `Serves a read-only dashboard of the database: every advisory lock by name
with its holders, waiters and class (as pgbaton locks), the pgbaton instances
connected now, and periodic's jobs with their next tick, health and recent
runs (status, duration, lateness, token, skipped and missed ranges).

It has no write route (anything but GET and HEAD is refused) and sends only
SELECTs, on sessions that are read-only by default: a role with SELECT on
pgbaton's tables is enough. Every viewer shares one view, read from the
database at most once per --interval, and only while a page is open and
visible.

Exposure: it listens on 127.0.0.1:8080 by default. Any other address needs
--allow-remote and authentication from the environment (never the command
line, where other users can read it):
  PGBATON_WEB_TOKEN                         a bearer token (proxies, scripts)
  PGBATON_WEB_USER and PGBATON_WEB_PASSWORD basic authentication (browsers)
Either also protects a loopback listener when set.

Connection: --dsn, else $DATABASE_URL, else the PG* variables as psql reads
them. It stops at SIGINT or SIGTERM. Exit status: 0 when stopped; 1 when the
database or the address cannot be reached; 2 for a bad command line or an
exposure refused.

Examples:
  pgbaton web
  pgbaton web --listen 127.0.0.1:9090 --interval 10s
  PGBATON_WEB_USER=ops PGBATON_WEB_PASSWORD=... pgbaton web --listen 0.0.0.0:8080 --allow-remote`

func runWeb(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "web", "[flags]", webDescription)
	cf := addConnFlags(fs)
	var cfg web.Config
	listen := fs.String("listen", "127.0.0.1:8080", "host:port to serve on (loopback unless --allow-remote)")
	allowRemote := fs.Bool("allow-remote", false, "allow a non-loopback --listen address (needs PGBATON_WEB_TOKEN or PGBATON_WEB_USER/PGBATON_WEB_PASSWORD)")
	fs.DurationVar(&cfg.Interval, "interval", web.DefaultInterval, "refresh interval: the database is read at most once per interval, whatever the number of viewers (at least 1s)")
	fs.IntVar(&cfg.RunsPerJob, "runs", web.DefaultRunsPerJob, "recent runs shown per periodic job")
	fs.IntVar(&cfg.StaleAfter, "stale-intervals", periodic.DefaultStaleAfter, "a job without a successful run for this many intervals shows as stale")
	fs.StringVar(&cfg.Inspect.Schema, "schema", pgbaton.DefaultSchema, "pgbaton's schema (name registry, periodic jobs)")
	fs.DurationVar(&cfg.Inspect.StuckAfter, "stuck-after", 5*time.Minute, "an idle non-pgbaton session holding a session lock this long is leaked; a wait this long is stuck")
	fs.DurationVar(&cfg.Inspect.StaleAfter, "stale-after", 0, "a pgbaton lock connection silent this long is a stale holder (default 5 × --heartbeat)")
	fs.DurationVar(&cfg.Inspect.HeartbeatInterval, "heartbeat", pgbaton.DefaultHeartbeatInterval, "the lockers' Config.HeartbeatInterval")
	fs.DurationVar(&cfg.Inspect.IdleInTransactionAfter, "idle-tx-after", 10*time.Second, "a holder idle in a transaction this long is idle-in-transaction")
	fs.DurationVar(&cfg.Inspect.LongWaitAfter, "long-wait-after", 30*time.Second, "a wait this long is a warning")
	var names stringList
	fs.Var(&names, "name", "a key name to recognise (repeatable), for locks pgbaton has not recorded")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg.Inspect.Names = names
	cfg.Auth = web.Auth{BearerToken: os.Getenv("PGBATON_WEB_TOKEN"), BasicUser: os.Getenv("PGBATON_WEB_USER"), BasicPassword: os.Getenv("PGBATON_WEB_PASSWORD")}
	if err := web.CheckListen(*listen, *allowRemote, cfg.Auth); err != nil {
		return usagef("%v", err)
	}
	if cfg.Interval < web.MinInterval {
		return usagef("--interval %s: use %s or more", cfg.Interval, web.MinInterval)
	}
	cfg.Timeout = cf.timeout
	cfg.Logger = slog.New(slog.NewTextHandler(out.Stderr, nil))

	pool, err := webPool(ctx, cf)
	if err != nil {
		return err
	}
	defer pool.Close()
	cfg.DB = pool
	dash, err := web.New(cfg)
	if err != nil {
		return usagef("%v", err)
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", *listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w (is another process using the port? pick another with --listen)", *listen, err)
	}
	srv := &http.Server{
		Handler:           dash,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      cfg.Timeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	auth := "no authentication"
	if cfg.Auth.Enabled() {
		auth = "authentication required"
	}
	printf(out.Stdout, "pgbaton web: serving the read-only dashboard of %s at http://%s/ (%s; refresh every %s); Ctrl-C stops it\n",
		cf.connString(), ln.Addr(), auth, dash.Interval())

	select {
	case err := <-served:
		return fmt.Errorf("serving http://%s/: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close() // viewers still connected after 5s: cut them off
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// webPool opens the dashboard's pool: two connections at most (one refresh
// runs at a time), named pgbaton-cli:web, read-only by default, checked
// once before serving so that a wrong DSN fails at start.
func webPool(ctx context.Context, cf *connFlags) (*pgxpool.Pool, error) {
	cs := cf.connString()
	pc, err := pgxpool.ParseConfig(string(cs))
	if err != nil {
		return nil, redactErr(fmt.Errorf("cannot read the connection settings (%s): %w", cs, err), string(cs), "")
	}
	pc.MaxConns = 2
	rp := pc.ConnConfig.RuntimeParams
	if _, ok := rp["application_name"]; !ok {
		rp["application_name"] = "pgbaton-cli:web"
	}
	rp["default_transaction_read_only"] = "on"
	pc.ConnConfig.ConnectTimeout = cf.timeout
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, redactErr(fmt.Errorf("connect: %w", err), string(cs), pc.ConnConfig.Password)
	}
	pctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, redactErr(fmt.Errorf("connect: %w", err), string(cs), pc.ConnConfig.Password)
	}
	return pool, nil
}
