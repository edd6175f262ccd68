// Command dedupcreate opens an incident for a system unless one is open,
// safely from any number of concurrent calls in any number of processes: the
// first seed's pattern, lock and work in one transaction.
//
// The advisory lock is taken with pgbaton.LockTx in the same transaction as
// the check and the insert, so the lock also fences the work: a second
// caller waits at the lock until the first one has committed its incident,
// and then finds it. Run with -nolock to see the race this closes.
//
//	DATABASE_URL=postgres://... dedupcreate -system S -calls 10
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// Schema is the table the example writes.
const Schema = `CREATE TABLE IF NOT EXISTS incidents (
	id         bigserial PRIMARY KEY,
	system_id  text NOT NULL,
	status     text NOT NULL DEFAULT 'open',
	created_at timestamptz NOT NULL DEFAULT now()
)`

// Service opens incidents.
type Service struct {
	Pool *pgbaton.Pool
	// Window is how long the check takes before the insert (a real service
	// calls out to other systems there); it widens the race window.
	Window time.Duration
	// NoLock skips the lock: the control that shows the race.
	NoLock bool
}

// OpenIncident returns the open incident of systemID, creating it if there
// is none. created says whether this call created it.
func (s *Service) OpenIncident(ctx context.Context, systemID string) (id int64, created bool, err error) {
	err = pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		if !s.NoLock {
			// Waits its turn (bounded); released when tx ends.
			if err := pgbaton.LockTx(ctx, tx, pgbaton.KeyName("incident.dedupe-open-for-system:"+systemID), pgbaton.Wait(30*time.Second)); err != nil {
				return err
			}
		}
		err := tx.QueryRow(ctx, `SELECT id FROM incidents WHERE system_id = $1 AND status = 'open'`, systemID).Scan(&id)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_sleep($1::float8)`, s.Window.Seconds()); err != nil {
			return err
		}
		created = true
		return tx.QueryRow(ctx, `INSERT INTO incidents (system_id) VALUES ($1) RETURNING id`, systemID).Scan(&id)
	})
	return id, created, err
}

// cli runs the command with args and returns the exit code.
func cli(args []string) int {
	fs := flag.NewFlagSet("dedupcreate", flag.ContinueOnError)
	system := fs.String("system", "S", "system to open an incident for")
	calls := fs.Int("calls", 10, "concurrent calls")
	window := fs.Duration("window", 200*time.Millisecond, "time between check and insert")
	noLock := fs.Bool("nolock", false, "skip the lock (shows the race)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgbaton.PoolConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.MaxConns = max(cfg.MaxConns, *calls)
	pool, err := pgbaton.NewPool(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	svc := &Service{Pool: pool, Window: *window, NoLock: *noLock}
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := false
	for i := 0; i < *calls; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id, created, err := svc.OpenIncident(ctx, *system)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failed = true
				fmt.Fprintln(os.Stderr, "open incident:", err)
			case created:
				fmt.Printf("created %d\n", id)
			default:
				fmt.Printf("existing %d\n", id)
			}
		}()
	}
	close(start)
	wg.Wait()
	if failed {
		return 1
	}
	return 0
}

func main() { os.Exit(cli(os.Args[1:])) }
