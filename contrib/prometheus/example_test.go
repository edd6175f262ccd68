package prometheus_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgbaton/pgbaton"
	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/periodic"
)

// A service exports its lock and job metrics on /metrics.
func Example() {
	ctx := context.Background()
	m, err := pgbatonprom.New(pgbatonprom.Options{
		// Known lock families have their series from the start.
		Families: []string{"incident.dedupe-open-for-system"},
	})
	if err != nil {
		log.Fatal(err)
	}
	prometheus.MustRegister(m)

	cfg, err := pgbaton.ConfigFromEnv(os.Getenv)
	if err != nil {
		log.Fatal(err)
	}
	cfg.Observer = m.Observe
	locker, err := pgbaton.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()
	defer m.WatchLocker(locker)() // pgbaton_leases_held, pgbaton_lock_connections

	s, err := periodic.New(ctx, periodic.Config{Locker: locker, OnEvent: m.ObservePeriodic})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	defer m.WatchScheduler(s)() // every job's series at zero from the first scrape

	http.Handle("/metrics", promhttp.Handler())
	log.Fatal(http.ListenAndServe(":9090", nil))
}

// Keeping an observer of your own next to the metrics.
func ExampleMetrics_Observe() {
	m, _ := pgbatonprom.New(pgbatonprom.Options{})
	var cfg pgbaton.Config
	cfg.Observer = func(e pgbaton.Event) {
		m.Observe(e)
		if e.Kind == pgbaton.EventLoss {
			log.Printf("lease on %s lost: %s", e.Key, pgbaton.LossCause(e.Err))
		}
	}
}

// Keys named "<family>:<id>" count under their family, never their ID.
func ExampleKeyFamily() {
	fmt.Println(pgbatonprom.KeyFamily(pgbaton.KeyName("incident.dedupe-open-for-system:" + "4f1c")))
	fmt.Println(pgbatonprom.KeyFamily(pgbaton.KeyInt64(42)))
	// Output:
	// incident.dedupe-open-for-system
	// int8
}
