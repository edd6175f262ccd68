package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchproc:", err)
		os.Exit(1)
	}
}

// locker takes and releases one key, with pgbaton or raw pgx.
type locker struct {
	lock    func(ctx context.Context) error
	unlock  func() error
	backend func() uint32
	close   func()
}

func newLocker(ctx context.Context, impl, dsn string, key int64, wait time.Duration) (*locker, error) {
	switch impl {
	case "pgbaton":
		l, err := pgbaton.New(ctx, pgbaton.Config{
			ConnString:   dsn,
			InstanceName: fmt.Sprintf("benchproc-%d", os.Getpid()),
			Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			return nil, err
		}
		var ls *pgbaton.Lease
		return &locker{
			lock: func(ctx context.Context) (err error) {
				ls, err = l.Acquire(ctx, pgbaton.KeyInt64(key), pgbaton.Wait(wait))
				return err
			},
			unlock:  func() error { return ls.Release() },
			backend: func() uint32 { _, pid := ls.Session(); return pid },
			close:   func() { _ = l.Close() },
		}, nil
	case "pgx":
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return nil, err
		}
		return &locker{
			lock: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, wait)
				defer cancel()
				_, err := c.Exec(ctx, "SELECT pg_advisory_lock($1::int8)", key)
				return err
			},
			unlock: func() error {
				var ok bool
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int8)", key).Scan(&ok); err != nil {
					return err
				}
				if !ok {
					return errors.New("pg_advisory_unlock returned false")
				}
				return nil
			},
			backend: func() uint32 { return c.PgConn().PID() },
			close:   func() { _ = c.Close(context.Background()) },
		}, nil
	}
	return nil, fmt.Errorf("unknown -impl %q; use \"pgbaton\" or \"pgx\"", impl)
}

func run() error {
	mode := flag.String("mode", "hold", `"hold" or "contend"`)
	impl := flag.String("impl", "pgbaton", `how to take the lock: "pgbaton" or "pgx"`)
	dsn := flag.String("dsn", "", "PostgreSQL connection string (required)")
	key := flag.Int64("key", 0, "advisory lock key (int8)")
	grants := flag.Int("grants", 100, "contend: how many times to take the key")
	hold := flag.Duration("hold", 0, "contend: how long to hold the key each time")
	wait := flag.Duration("wait", 30*time.Second, "bound on connecting and on each wait for the lock")
	maxLife := flag.Duration("max", 5*time.Minute, "exit after this long even if stdin stays open")
	flag.Parse()
	if *dsn == "" {
		return errors.New("-dsn is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *maxLife)
	defer cancel()
	cctx, ccancel := context.WithTimeout(ctx, *wait)
	l, err := newLocker(cctx, *impl, *dsn, *key, *wait)
	ccancel()
	if err != nil {
		return err
	}
	defer l.close()

	stdin := make(chan string)
	go func() {
		defer close(stdin)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			stdin <- sc.Text()
		}
	}()

	switch *mode {
	case "hold":
		if err := l.lock(ctx); err != nil {
			return err
		}
		fmt.Printf("held %d\n", l.backend())
		for {
			select {
			case _, ok := <-stdin:
				if !ok {
					return l.unlock()
				}
			case <-ctx.Done():
				return l.unlock()
			}
		}
	case "contend":
		return contend(ctx, l, *grants, *hold, stdin)
	}
	return fmt.Errorf("unknown -mode %q; use \"hold\" or \"contend\"", *mode)
}

// contend warms up, prints "ready", waits for "go" on stdin, takes and
// releases the key grants times, then prints one line per grant:
// "rec <wait start> <granted> <release start>" in Unix nanoseconds, and
// "done".
func contend(ctx context.Context, l *locker, grants int, hold time.Duration, stdin <-chan string) error {
	if err := l.lock(ctx); err != nil {
		return err
	}
	if err := l.unlock(); err != nil {
		return err
	}
	fmt.Println("ready")
	select {
	case s := <-stdin:
		if strings.TrimSpace(s) != "go" {
			return fmt.Errorf("expected \"go\" on stdin, got %q", s)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	recs := make([][3]int64, 0, grants)
	for range grants {
		acq := time.Now().UnixNano()
		if err := l.lock(ctx); err != nil {
			return err
		}
		granted := time.Now().UnixNano()
		if hold > 0 {
			time.Sleep(hold)
		}
		rel := time.Now().UnixNano()
		if err := l.unlock(); err != nil {
			return err
		}
		recs = append(recs, [3]int64{acq, granted, rel})
	}
	// A bufio.Writer keeps its first write error; Flush returns it.
	w := bufio.NewWriter(os.Stdout)
	for _, r := range recs {
		_, _ = fmt.Fprintf(w, "rec %d %d %d\n", r[0], r[1], r[2])
	}
	_, _ = fmt.Fprintln(w, "done")
	return w.Flush()
}
