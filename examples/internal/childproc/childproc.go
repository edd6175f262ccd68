// Package childproc runs an example's test binary again as separate
// processes, so that the examples' tests exercise locks across processes as
// in production.
package childproc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Env names the variable that carries a child's arguments.
const Env = "PGBATON_EXAMPLE_ARGS"

// Args returns the child's arguments and true when this process is a child.
func Args() ([]string, bool) {
	s, ok := os.LookupEnv(Env)
	if !ok {
		return nil, false
	}
	return strings.Fields(s), true
}

// Proc is a running child.
type Proc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	err  error
	Name string
}

// Start runs the current test binary as a child with args (and
// DATABASE_URL=dsn). It is killed at the end of the test if still running.
func Start(t testing.TB, ctx context.Context, name, dsn string, args ...string) *Proc {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$") //nolint:gosec // re-runs this test binary; the arguments travel in the environment
	cmd.Env = append(os.Environ(), Env+"="+strings.Join(args, " "), "DATABASE_URL="+dsn)
	p := &Proc{cmd: cmd, done: make(chan struct{}), Name: name}
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// Wait waits for the child to exit and returns its output, failing the test
// if it failed.
func (p *Proc) Wait(t testing.TB) string {
	t.Helper()
	<-p.done
	if p.err != nil {
		t.Fatalf("%s: %v\n%s", p.Name, p.err, p.out.String())
	}
	return p.out.String()
}

// Done is closed when the child has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// String describes the child for messages.
func (p *Proc) String() string { return fmt.Sprintf("%s (pid %d)", p.Name, p.cmd.Process.Pid) }
