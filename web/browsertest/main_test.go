package browsertest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pgbaton/pgbaton/pgtest"
)

// TestMain runs the tests against one throwaway cluster, then checks that no
// goroutine (chromedp's included) outlives them.
func TestMain(m *testing.M) {
	code := pgtest.Run(m, pgtest.Options{})
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
