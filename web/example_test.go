package web_test

import (
	"context"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/periodic"
	"github.com/pgbaton/pgbaton/web"
)

// Mount the dashboard in a service, next to the scheduler's health handler,
// behind basic authentication.
func Example() {
	ctx := context.Background()
	locker, err := pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL")})
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()
	sched, err := periodic.New(ctx, periodic.Config{Locker: locker})
	if err != nil {
		log.Fatal(err)
	}
	defer sched.Close()
	// The dashboard's own small pool (SELECTs only; one refresh at a time).
	pc, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	pc.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	dash, err := web.New(web.Config{
		DB:       pool,
		Health:   sched.Health, // the scheduler's own staleness verdicts
		Interval: 5 * time.Second,
		Auth:     web.Auth{BasicUser: "ops", BasicPassword: os.Getenv("DASHBOARD_PASSWORD")},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/health/jobs", sched.HealthHandler())
	mux.Handle("/pgbaton/", http.StripPrefix("/pgbaton", dash))
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", mux))
}
