// Package testmain is the TestMain of pgbaton's own test packages: one
// throwaway PostgreSQL cluster per package (pgtest.Run), then goleak, so no
// goroutine outlives the tests.
package testmain

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pgbaton/pgbaton/pgtest"
)

// Run runs the package's tests against a shared cluster and returns the exit
// code: non-zero if a test failed or a goroutine was left running. opts, if
// given, configures the cluster (e.g. DSNEnv for runnable Examples).
func Run(m *testing.M, opts ...pgtest.Options) int {
	var o pgtest.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	code := pgtest.Run(m, o)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}
