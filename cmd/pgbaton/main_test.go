//go:build linux

package main

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pgbaton/pgbaton/pgtest"
)

// TestMain runs the CLI instead of the tests when the test binary is started
// with a command name: the demo re-executes its own binary as
// "demo-worker", and TestDemoInterrupt runs "demo" in a process of its own.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && commands[os.Args[1]] != nil {
		os.Exit(cliMain(os.Args[1:]))
	}
	code := pgtest.Run(m, pgtest.Options{})
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
