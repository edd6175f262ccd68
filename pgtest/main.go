package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// keepEnv names the variable that makes Run leave its cluster behind.
const keepEnv = "PGTEST_KEEP"

// durableEnv names the variable that makes Run start a durable cluster
// (Options.Durable), e.g. to run a package's benchmarks on production
// settings: PGTEST_DURABLE=1 go test -bench . ./pkg
const durableEnv = "PGTEST_DURABLE"

// startTimeout bounds Start in Run.
const startTimeout = 2 * time.Minute

var shared atomic.Pointer[Cluster]

// Run starts one cluster for the test package, runs m.Run, closes the
// cluster and returns the exit code, for a TestMain that has more to do
// (e.g. goleak.Find) before os.Exit:
//
//	func TestMain(m *testing.M) {
//		code := pgtest.Run(m, pgtest.Options{})
//		if code == 0 {
//			if err := goleak.Find(); err != nil {
//				fmt.Fprintln(os.Stderr, err)
//				code = 1
//			}
//		}
//		os.Exit(code)
//	}
//
// If the cluster cannot be started, Run prints why and returns 1: tests
// that need PostgreSQL fail rather than skip. With PGTEST_KEEP=1 the
// cluster is neither closed nor watched: it keeps running after the test
// process exits, and Run prints where it is and how to remove it. With
// PGTEST_DURABLE=1 the cluster is started with Options.Durable set.
func Run(m *testing.M, opts Options) int {
	keep := os.Getenv(keepEnv) == "1"
	opts = envOptions(opts)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	c, err := start(ctx, opts, keep)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	shared.Store(c)
	if opts.DSNEnv != "" {
		if err := os.Setenv(opts.DSNEnv, c.DSN("postgres")); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: setting %s: %v\n", opts.DSNEnv, err)
		}
	}
	code := m.Run()
	if opts.DSNEnv != "" {
		_ = os.Unsetenv(opts.DSNEnv) // the process is about to exit; nothing reads it after
	}
	shared.Store(nil)
	if keep {
		fmt.Fprintf(os.Stderr, "pgtest: %s=1: cluster left running in %s (postmaster pid %d)\n"+
			"pgtest:   connect: psql %q\n"+
			"pgtest:   remove:  kill -INT %d; rm -rf %s\n",
			keepEnv, c.Dir(), c.PostmasterPID(), c.DSN("postgres"), c.PostmasterPID(), c.Dir())
		return code
	}
	if err := c.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// envOptions applies $PGTEST_DURABLE to opts.
func envOptions(opts Options) Options {
	if os.Getenv(durableEnv) == "1" {
		opts.Durable = true
	}
	return opts
}

// Main is for TestMain: os.Exit(Run(m, opts)).
func Main(m *testing.M, opts Options) {
	os.Exit(Run(m, opts))
}

// Shared returns the cluster started by Main or Run. It panics if neither
// is running.
func Shared() *Cluster {
	c := shared.Load()
	if c == nil {
		panic("pgtest.Shared: no shared cluster; call pgtest.Main(m, opts) or pgtest.Run(m, opts) from TestMain")
	}
	return c
}
