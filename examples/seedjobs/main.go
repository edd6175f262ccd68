package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
)

// Config is the service's configuration.
type Config struct {
	DatabaseURL string
	Instance    string
	Listen      string
	HMACSecret  string

	HashRetryEvery time.Duration
	HashBatch      int
	HashMaxBatches int
	DripEvery      time.Duration
	DripDelay      time.Duration
	RetentionEvery time.Duration
	RetentionAge   time.Duration
	TestEvery      time.Duration
	TestTimeout    time.Duration

	// AllowTargets are prefixes the test-scheduler may call although the
	// SSRF guard would refuse them (e.g. 127.0.0.1/32 for a local server).
	AllowTargets []netip.Prefix
	// DialLoopbackOnly refuses, at dial time, every address outside
	// 127.0.0.0/8 and ::1 even if the guard accepted it: a safety net for
	// tests, which must never reach the network.
	DialLoopbackOnly bool
}

// configFromEnv reads SEEDJOBS_* variables and DATABASE_URL.
func configFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		DatabaseURL: getenv("DATABASE_URL"), Instance: getenv("SEEDJOBS_INSTANCE"),
		Listen: "127.0.0.1:8080", HMACSecret: getenv("SEEDJOBS_HMAC_SECRET"),
		HashRetryEvery: 30 * time.Second, HashBatch: 50, HashMaxBatches: 20,
		DripEvery: 6 * time.Hour, DripDelay: 24 * time.Hour,
		RetentionEvery: 24 * time.Hour, RetentionAge: 30 * 24 * time.Hour,
		TestEvery: 15 * time.Minute, TestTimeout: 12 * time.Minute,
		DialLoopbackOnly: getenv("SEEDJOBS_DIAL_LOOPBACK_ONLY") == "1",
	}
	if v := getenv("SEEDJOBS_LISTEN"); v != "" {
		c.Listen = v
	}
	durs := map[string]*time.Duration{
		"SEEDJOBS_HASH_RETRY_EVERY": &c.HashRetryEvery, "SEEDJOBS_DRIP_EVERY": &c.DripEvery, "SEEDJOBS_DRIP_DELAY": &c.DripDelay,
		"SEEDJOBS_RETENTION_EVERY": &c.RetentionEvery, "SEEDJOBS_RETENTION_AGE": &c.RetentionAge,
		"SEEDJOBS_TEST_EVERY": &c.TestEvery, "SEEDJOBS_TEST_TIMEOUT": &c.TestTimeout,
	}
	for name, dst := range durs {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return c, fmt.Errorf("%s=%q: want a positive Go duration such as 30s or 6h", name, v)
			}
			*dst = d
		}
	}
	if v := getenv("SEEDJOBS_HASH_BATCH"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return c, fmt.Errorf("SEEDJOBS_HASH_BATCH=%q: want a positive integer", v)
		}
		c.HashBatch = n
	}
	for _, p := range strings.Split(getenv("SEEDJOBS_ALLOW_TARGETS"), ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return c, fmt.Errorf("SEEDJOBS_ALLOW_TARGETS: %q is not a prefix such as 127.0.0.1/32: %w", p, err)
		}
		c.AllowTargets = append(c.AllowTargets, pfx)
	}
	switch {
	case c.DatabaseURL == "":
		return c, errors.New("DATABASE_URL is not set")
	case c.HMACSecret == "":
		return c, errors.New("SEEDJOBS_HMAC_SECRET is not set; the integrity hashes need a secret")
	}
	return c, nil
}

// guard builds the SSRF guard of the configuration.
func (c Config) guard() *Guard {
	g := &Guard{Allow: c.AllowTargets}
	if c.DialLoopbackOnly {
		g.OnDial = func(network, address string) error {
			if ap, err := netip.ParseAddrPort(address); err != nil || !ap.Addr().Unmap().IsLoopback() {
				return fmt.Errorf("test safety net: refusing to connect to %s (not loopback)", address)
			}
			return nil
		}
	}
	return g
}

// run serves until ctx ends, then shuts down gracefully. ready is called
// with the listening address once the jobs are scheduled.
func run(ctx context.Context, cfg Config, log *slog.Logger, ready func(addr string)) error {
	lcfg := pgbaton.Config{ConnString: cfg.DatabaseURL, InstanceName: cfg.Instance, Logger: log, BusyLogLevel: slog.LevelDebug}
	locker, err := pgbaton.New(ctx, lcfg)
	if err != nil {
		return err
	}
	defer func() { _ = locker.Close() }()
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrate(ctx, locker, pool); err != nil {
		return err
	}
	s, err := periodic.New(ctx, periodic.Config{Locker: locker, Pool: pool, Logger: log, BusyLogLevel: slog.LevelDebug})
	if err != nil {
		return err
	}
	js := &jobs{cfg: cfg, pool: pool, client: cfg.guard().Client(30 * time.Second), log: log}
	for _, j := range js.all() {
		if err := s.Add(j); err != nil {
			_ = s.Close()
			return err
		}
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		_ = s.Close()
		return err
	}
	srv := &http.Server{Handler: routes(pool, s), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if ready != nil {
		ready(ln.Addr().String())
	}
	log.Info("seedjobs: serving", "addr", ln.Addr().String(), "jobs", s.Jobs())
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return errors.Join(err, s.Close())
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		log.Error("seedjobs: configuration", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("seedjobs", "err", err)
		os.Exit(1)
	}
}
