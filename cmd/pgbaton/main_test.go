//go:build linux

package main

import (
	"os"
	"testing"

	"github.com/pgbaton/pgbaton/internal/testmain"
)

// TestMain runs the CLI instead of the tests when the test binary is started
// with a command name: the demo re-executes its own binary as
// "demo-worker", and TestDemoInterrupt runs "demo" in a process of its own.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && commands[os.Args[1]] != nil {
		os.Exit(cliMain(os.Args[1:]))
	}
	os.Exit(testmain.Run(m))
}
