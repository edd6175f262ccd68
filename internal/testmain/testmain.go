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
// code: non-zero if a test failed or a goroutine was left running.
func Run(m *testing.M) int {
	code := pgtest.Run(m, pgtest.Options{})
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}
