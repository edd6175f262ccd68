// Command serializer runs health evaluations so that, across every process,
// evaluations of one system run one at a time while different systems run
// in parallel: the second seed's per-entity serializer.
//
// The lock lives in a transaction on the Locker's own lock connection
// (pgbaton.Locker.WithXactLock) while the evaluation does its work through
// the application's pool: lock connections never wait for that pool, so
// any concurrency is deadlock-free. The code depends on pgbaton.Interface,
// so its unit tests can use pgbatontest's fake.
//
//	DATABASE_URL=postgres://... serializer -systems A,B -per-system 3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pgbaton/pgbaton"
)

// Schema is the table where evaluations record their interval, in the
// database's clock so that processes can be compared.
const Schema = `CREATE TABLE IF NOT EXISTS evaluations (
	id         bigserial PRIMARY KEY,
	system_id  text NOT NULL,
	process    int NOT NULL,
	started_at timestamptz NOT NULL,
	ended_at   timestamptz
)`

// Evaluator evaluates the health of systems.
type Evaluator struct {
	Locks pgbaton.Interface
	Pool  *pgbaton.Pool
	// Work is how long an evaluation takes.
	Work time.Duration
	// NoLock skips the serializer: the control.
	NoLock bool
}

// Evaluate runs one evaluation of systemID, serialized per system.
func (e *Evaluator) Evaluate(ctx context.Context, systemID string) error {
	if e.NoLock {
		return e.evaluate(ctx, systemID)
	}
	return e.Locks.WithXactLock(ctx, pgbaton.KeyName("healthcheck.evaluate:"+systemID), func(ctx context.Context) error {
		return e.evaluate(ctx, systemID)
	}, pgbaton.Wait(time.Minute))
}

func (e *Evaluator) evaluate(ctx context.Context, systemID string) error {
	var id int64
	if err := e.Pool.QueryRow(ctx, `INSERT INTO evaluations (system_id, process, started_at)
		VALUES ($1, pg_backend_pid(), clock_timestamp()) RETURNING id`, systemID).Scan(&id); err != nil {
		return err
	}
	if _, err := e.Pool.Exec(ctx, `SELECT pg_sleep($1::float8)`, e.Work.Seconds()); err != nil {
		return err
	}
	_, err := e.Pool.Exec(ctx, `UPDATE evaluations SET ended_at = clock_timestamp() WHERE id = $1`, id)
	return err
}

func cli(args []string) int {
	fs := flag.NewFlagSet("serializer", flag.ContinueOnError)
	systems := fs.String("systems", "A,B", "comma-separated systems")
	per := fs.Int("per-system", 3, "concurrent evaluations per system")
	work := fs.Duration("work", 50*time.Millisecond, "duration of one evaluation")
	noLock := fs.Bool("nolock", false, "skip the serializer (shows overlap)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lcfg, err := pgbaton.ConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	pcfg, err := pgbaton.PoolConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	locker, err := pgbaton.New(ctx, lcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := locker.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the locker:", err)
		}
	}()
	pool, err := pgbaton.NewPool(ctx, pcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	ev := &Evaluator{Locks: locker, Pool: pool, Work: *work, NoLock: *noLock}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for _, sys := range strings.Split(*systems, ",") {
		for i := 0; i < *per; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := ev.Evaluate(ctx, sys); err != nil {
					errs <- fmt.Errorf("evaluate %s: %w", sys, err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	code := 0
	for err := range errs {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

func main() { os.Exit(cli(os.Args[1:])) }
