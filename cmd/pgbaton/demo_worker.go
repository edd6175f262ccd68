//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton"
)

// workerEnv carries a worker's configuration (JSON) from the demo to the
// worker process: the environment, unlike the command line, is not shown to
// other users by ps, and the DSN may hold a password.
const workerEnv = "PGBATON_DEMO_WORKER"

// workerConfig is what the demo tells each worker.
type workerConfig struct {
	Name    string        `json:"name"`
	DSN     string        `json:"dsn"`
	Via     string        `json:"via,omitempty"` // host:port of the worker's proxy; empty: connect directly
	Key     string        `json:"key"`
	HoldMin time.Duration `json:"hold_min"`
	HoldMax time.Duration `json:"hold_max"`
	Wait    time.Duration `json:"wait"` // bound of each Acquire
}

// Demo loss settings: a lost lease is noticed within about a second, and a
// server that stops hearing from a client frees its locks after 2 s, later
// than that (Config.Validate checks the order).
const (
	demoHeartbeat     = 200 * time.Millisecond
	demoLeaseTimeout  = time.Second
	demoConnectTimout = 2 * time.Second
)

// demoLockerConfig is every worker's Locker configuration but the
// connection.
func demoLockerConfig(name string) pgbaton.Config {
	return pgbaton.Config{
		InstanceName:                  "demo-" + name,
		MaxConns:                      2,
		HeartbeatInterval:             demoHeartbeat,
		LeaseTimeout:                  demoLeaseTimeout,
		KeepaliveIdle:                 time.Second,
		KeepaliveInterval:             time.Second,
		KeepaliveCount:                1,
		TCPUserTimeout:                2 * time.Second,
		ClientConnectionCheckInterval: 500 * time.Millisecond,
		ConnectTimeout:                demoConnectTimout,
		// Every loss reaches the worker through Done and Err and is reported
		// to the demo as an event; the Locker's own log lines would repeat
		// them in the middle of the trace.
		Logger: slog.New(slog.DiscardHandler),
	}
}

func init() {
	register(&command{Name: "demo-worker", Run: runDemoWorker}) // hidden: started by demo
}

func runDemoWorker(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "demo-worker", "", "One contending instance of 'pgbaton demo', which starts it; it is not meant to be run by hand.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	raw := os.Getenv(workerEnv)
	if raw == "" {
		return usagef("demo-worker is started by 'pgbaton demo' (it reads $%s); run 'pgbaton demo' instead", workerEnv)
	}
	var cfg workerConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return fmt.Errorf("$%s: %w", workerEnv, err)
	}
	w := &demoWorker{cfg: cfg, enc: json.NewEncoder(out.Stdout), wake: make(chan struct{}, 1)}
	return w.run(ctx, os.Stdin)
}

// demoWorker contends for the demo's lock: acquire with a bounded wait,
// "work" for a random time, release, repeat. It reports every step as a JSON
// line on stdout, reads commands from stdin, and stops when stdin closes (the
// demo ended or died).
type demoWorker struct {
	cfg  workerConfig
	keep atomic.Bool   // hold each lease until it is lost
	wake chan struct{} // a command arrived

	mu  sync.Mutex
	enc *json.Encoder
}

func (w *demoWorker) emit(e event) {
	if e.T == 0 {
		e.T = now()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// A write error means the demo is gone; stdin's EOF stops the worker.
	_ = w.enc.Encode(e)
}

// readCommands applies commands from the demo until EOF.
func (w *demoWorker) readCommands(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if sc.Text() == "keep" {
			w.keep.Store(true)
		}
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *demoWorker) run(ctx context.Context, stdin io.Reader) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		w.readCommands(stdin)
		cancel()
	}()

	lcfg := demoLockerConfig(w.cfg.Name)
	connCfg, err := workerConnConfig(w.cfg.DSN, w.cfg.Via)
	if err != nil {
		w.emit(event{Kind: evFatal, Err: err.Error()})
		return err
	}
	lcfg.ConnConfig = connCfg
	l, err := pgbaton.New(ctx, lcfg)
	if err != nil {
		w.emit(event{Kind: evFatal, Err: err.Error()})
		return err
	}
	w.emit(event{Kind: evReady, PID: os.Getpid()})

	key := pgbaton.KeyName(w.cfg.Key)
	for ctx.Err() == nil {
		start := time.Now()
		lease, err := l.Acquire(ctx, key, pgbaton.Wait(w.cfg.Wait))
		switch {
		case err == nil:
			w.hold(ctx, lease, time.Since(start))
		case ctx.Err() != nil:
		case errors.Is(err, pgbaton.ErrNotAcquired):
			w.emit(event{Kind: evExpired})
		default:
			// Typically a lock connection that cannot be opened while the
			// worker's network is black-holed. Report it and try again.
			w.emit(event{Kind: evError, Err: err.Error(), Reason: shortErr(err)})
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	err = l.Close()
	w.emit(event{Kind: evBye})
	return err
}

// hold keeps the lease for a random time (or, in keep mode, until it is
// lost), then releases it.
func (w *demoWorker) hold(ctx context.Context, lease *pgbaton.Lease, waited time.Duration) {
	app, backend := lease.Session()
	keep := w.keep.Load()
	w.emit(event{Kind: evGranted, T: lease.AcquiredAt().UnixNano(), App: app, Backend: backend, Waited: waited, Keep: keep})
	var expire <-chan time.Time
	if !keep {
		timer := time.NewTimer(w.cfg.HoldMin + rand.N(w.cfg.HoldMax-w.cfg.HoldMin+1))
		defer timer.Stop()
		expire = timer.C
	}
	for {
		select {
		case <-expire: // the "work" is done
			w.release(lease)
			return
		case <-ctx.Done():
			w.release(lease)
			return
		case <-w.wake:
			if w.keep.Load() && expire != nil {
				expire = nil
				w.emit(event{Kind: evKeep})
			}
		case <-lease.Done():
			t := now()
			err := lease.Err()
			w.emit(event{Kind: evLost, T: t, Held: time.Duration(t - lease.AcquiredAt().UnixNano()),
				Reason: lossReason(err), Err: fmt.Sprint(err)})
			return
		}
	}
}

func (w *demoWorker) release(lease *pgbaton.Lease) {
	t := now()
	e := event{Kind: evReleased, T: t, Held: time.Duration(t - lease.AcquiredAt().UnixNano())}
	if err := lease.Release(); err != nil {
		e.Err, e.Reason = err.Error(), lossReason(err)
	}
	w.emit(e)
}

// lossReason names the cause of a loss in a few words.
func lossReason(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return "no error"
	case errors.Is(err, pgbaton.ErrHeartbeatTimeout):
		return "no heartbeat confirmed within the lease timeout"
	case errors.As(err, &pgErr):
		return fmt.Sprintf("server said %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	case errors.Is(err, pgbaton.ErrUnlockFalse):
		return "the server no longer held the lock at release"
	case errors.Is(err, pgbaton.ErrLockerClosed):
		return "the Locker was closed"
	}
	return innermost(err).Error()
}

// shortErr keeps the first and the innermost part of an error chain:
// "pgbaton: cannot open lock connection: connection reset by peer".
func shortErr(err error) string {
	inner := innermost(err)
	msg := err.Error()
	if inner == err { //nolint:errorlint // identity: err has no chain below it
		return msg
	}
	rest, head := msg, ""
	if strings.HasPrefix(rest, "pgbaton: ") {
		head, rest = "pgbaton: ", rest[len("pgbaton: "):]
	}
	if i := strings.Index(rest, ": "); i >= 0 {
		rest = rest[:i]
	}
	return head + rest + ": " + inner.Error()
}

// innermost follows an error chain to its end (the last error of a join).
func innermost(err error) error {
	for {
		switch u := err.(type) { //nolint:errorlint // walks the chain itself, one link at a time
		case interface{ Unwrap() error }:
			next := u.Unwrap()
			if next == nil {
				return err
			}
			err = next
		case interface{ Unwrap() []error }:
			errs := u.Unwrap()
			if len(errs) == 0 {
				return err
			}
			err = errs[len(errs)-1]
		default:
			return err
		}
	}
}

// workerConnConfig parses dsn and, when via is set, points it at the
// worker's proxy instead of the server. TLS settings made from the original
// host (such as the name to verify) are kept.
func workerConnConfig(dsn, via string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if via == "" {
		return cfg, nil
	}
	host, portStr, err := net.SplitHostPort(via)
	if err != nil {
		return nil, fmt.Errorf("proxy address %q: %w", via, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("proxy address %q: %w", via, err)
	}
	origHost, origPort := cfg.Host, cfg.Port
	cfg.Host, cfg.Port = host, uint16(port)
	// Keep only the fallbacks to the same server (sslmode=prefer's plain
	// attempt), pointed at the proxy too.
	var fbs []*pgconn.FallbackConfig
	for _, fb := range cfg.Fallbacks {
		if fb.Host == origHost && fb.Port == origPort {
			fb.Host, fb.Port = host, uint16(port)
			fbs = append(fbs, fb)
		}
	}
	cfg.Fallbacks = fbs
	return cfg, nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
