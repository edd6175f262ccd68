package pgbaton_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// Lock and work in one transaction: the lock also fences the work, and
// COMMIT or ROLLBACK releases it.
func ExampleLockTx() {
	ctx := context.Background()
	pool, err := pgbaton.NewPool(ctx, pgbaton.PoolConfig{ConnString: os.Getenv("DATABASE_URL")})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	systemID := "S-42"
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		key := pgbaton.KeyName("incident.dedupe-open-for-system:" + systemID)
		if err := pgbaton.LockTx(ctx, tx, key, pgbaton.Wait(5*time.Second)); err != nil {
			return err // an expired wait aborted tx; BeginFunc rolls it back
		}
		var open bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM incidents WHERE system_id = $1 AND status = 'open')", systemID).Scan(&open); err != nil {
			return err
		}
		if !open {
			_, err = tx.Exec(ctx, "INSERT INTO incidents (system_id) VALUES ($1)", systemID)
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Skip the work when another process is doing it.
func ExampleTryLockTx() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := pgbaton.TryLockTx(ctx, tx, pgbaton.KeyName("jobs.retention")); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DELETE FROM events WHERE created_at < now() - interval '30 days'")
		return err
	})
	if errors.Is(err, pgbaton.ErrNotAcquired) {
		fmt.Println("retention-lock-busy: another instance is running it")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
}

// database/sql (and sqlx, bun, GORM's ConnPool): pass the *sql.Tx.
func ExampleLockSQLTx() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL")) // import _ "github.com/jackc/pgx/v5/stdlib"
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if err := pgbaton.LockSQLTx(ctx, tx, pgbaton.KeyName("billing.close-month"), pgbaton.Wait(10*time.Second)); err != nil {
		log.Fatal(err)
	}
	// ... the month's closing statements on tx ...
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
}

// The application's own pool, from DATABASE_URL, DATABASE_POOL_MAX,
// DATABASE_POOL_CONNECTION_TIMEOUT_MS and DATABASE_POOL_IDLE_TIMEOUT_MS.
func ExampleNewPool() {
	ctx := context.Background()
	cfg, err := pgbaton.PoolConfigFromEnv(os.Getenv)
	if err != nil {
		log.Fatal(err)
	}
	pool, err := pgbaton.NewPool(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, "UPDATE counters SET n = n + 1")
	if errors.Is(err, pgbaton.ErrPoolExhausted) {
		log.Printf("overloaded, retry later: %v", err) // fails fast, recovers by itself
	}
}

// Check the connection budget for 6 pods before a deploy.
func ExampleCheck() {
	r, err := pgbaton.Check(context.Background(), pgbaton.CheckConfig{
		ConnString: os.Getenv("DATABASE_URL"), Pods: 6, PoolMax: 20, LockPoolMax: 10,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("need %d of %d connections (%s)\n", r.Budget.Need, r.Budget.Limit, r.Budget.LimitedBy)
	for _, f := range r.Findings {
		fmt.Printf("%s: %s: %s\n", f.Severity, f.Subject, f.Message)
	}
}
