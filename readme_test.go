package pgbaton

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// The README's Go blocks are programs a reader pastes: each must be a
// complete `package main`, must build against this module, must run to
// exit status 0 against a fresh database, and must handle its errors (exit
// status 1 with a message, not a panic, when the database is down).
//
// A block may be preceded by a marker line:
//
//	<!-- readme-test: interrupt-after "TEXT" -->
//
// for a program that runs until Ctrl-C: the test sends SIGINT once its
// output contains TEXT, and still expects status 0.

// readmeSnippet is one ```go block of README.md.
type readmeSnippet struct {
	Line           int    // of the opening fence
	Code           string // without the fences
	InterruptAfter string // from the marker, or ""
}

// Name is a directory name for the snippet.
func (s readmeSnippet) Name() string { return fmt.Sprintf("line%d", s.Line) }

var interruptMarker = regexp.MustCompile(`^<!-- readme-test: interrupt-after "([^"]+)" -->$`)

// readmeSnippets returns every ```go block of the README at path.
func readmeSnippets(t testing.TB, path string) []readmeSnippet {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var out []readmeSnippet
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "```go" {
			continue
		}
		s := readmeSnippet{Line: i + 1}
		if i > 0 {
			if m := interruptMarker.FindStringSubmatch(strings.TrimSpace(lines[i-1])); m != nil {
				s.InterruptAfter = m[1]
			}
		}
		j := i + 1
		for ; j < len(lines) && strings.TrimSpace(lines[j]) != "```"; j++ {
		}
		if j == len(lines) {
			t.Fatalf("README.md:%d: ```go block never closed", i+1)
		}
		s.Code = strings.Join(lines[i+1:j], "\n") + "\n"
		out = append(out, s)
		i = j
	}
	return out
}

// snippetModule writes each program (name -> files) into a module of its
// own in a temp dir that requires this repository through a replace
// directive, builds them all, and returns the binaries by name. The build
// is offline (GOPROXY=off): it uses the modules this repository already
// uses.
func snippetModule(t testing.TB, programs map[string]map[string]string) map[string]string {
	t.Helper()
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	// The repository's own requirements, so that the snippets' direct
	// imports (pgx) resolve to the same versions without a network.
	reqs := string(gomod[bytes.Index(gomod, []byte("\nrequire")):])
	mod := "module readme.example\n\ngo 1.26\n\nrequire github.com/pgbaton/pgbaton v0.0.0\n" + reqs +
		"\nreplace github.com/pgbaton/pgbaton => " + root + "\n"
	write := func(name, content string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", mod)
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	write("go.sum", string(gosum))
	for name, files := range programs {
		for f, content := range files {
			write(filepath.Join(name, f), content)
		}
	}
	bin := filepath.Join(dir, "bin")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOSUMDB=off", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the README's programs (module in %s): %v\n%s", dir, err, out)
	}
	bins := map[string]string{}
	for name := range programs {
		bins[name] = filepath.Join(bin, name)
	}
	return bins
}

// programRun is how one run of a built program ended.
type programRun struct {
	Code           int
	Stdout, Stderr string
}

// runProgram runs bin with env added, bounded by timeout. With interruptAfter
// set, it sends SIGINT once stdout contains it.
func runProgram(t testing.TB, bin string, env []string, interruptAfter string, timeout time.Duration) programRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if interruptAfter != "" && !signalled && strings.Contains(sc.Text(), interruptAfter) {
				_ = cmd.Process.Signal(syscall.SIGINT) // it may have exited already: Wait says how
				signalled = true
			}
		}
	}()
	wg.Wait()
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("%s still running after %s; stdout:\n%s\nstderr:\n%s", filepath.Base(bin), timeout, out.String(), stderr.String())
	}
	r := programRun{Stdout: out.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("running %s: %v", bin, err)
	}
	return r
}

// TestREADMEPrograms builds every Go block of README.md and runs it twice:
// against a fresh database (status 0), and with the database down (status
// 1 and a message: every error is handled, nothing panics).
func TestREADMEPrograms(t *testing.T) {
	t.Parallel()
	snippets := readmeSnippets(t, "README.md")
	if len(snippets) < 3 {
		t.Fatalf("found %d Go blocks in README.md, want at least the Quick start, PgBouncer and periodic programs", len(snippets))
	}
	programs := map[string]map[string]string{}
	for _, s := range snippets {
		if !strings.HasPrefix(s.Code, "package main\n") {
			t.Fatalf("README.md:%d: a Go block must be a complete program starting with \"package main\", "+
				"so that readers can run it and this test can build it", s.Line)
		}
		programs[s.Name()] = map[string]string{"main.go": s.Code}
	}
	bins := snippetModule(t, programs)
	for _, s := range snippets {
		t.Run(s.Name(), func(t *testing.T) {
			t.Parallel()
			dsn := pgtest.Shared().NewDatabase(t)
			env := []string{"DATABASE_URL=" + dsn, "ADDR=127.0.0.1:0"}
			r := runProgram(t, bins[s.Name()], env, s.InterruptAfter, 2*time.Minute)
			if r.Code != 0 {
				t.Errorf("README.md:%d: exit status %d against a fresh database\nstdout:\n%s\nstderr:\n%s", s.Line, r.Code, r.Stdout, r.Stderr)
			}
			if s.InterruptAfter != "" && !strings.Contains(r.Stdout, s.InterruptAfter) {
				t.Errorf("README.md:%d: output lacks %q", s.Line, s.InterruptAfter)
			}

			// Port 1 on the loopback refuses at once: the database is down.
			down := []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/app?connect_timeout=5", "ADDR=127.0.0.1:0"}
			r = runProgram(t, bins[s.Name()], down, "", 2*time.Minute)
			if r.Code != 1 || strings.Contains(r.Stderr, "panic:") || strings.TrimSpace(r.Stderr) == "" {
				t.Errorf("README.md:%d: with the database down: exit status %d (want 1, an error message, no panic)\nstderr:\n%s",
					s.Line, r.Code, r.Stderr)
			}
		})
	}
}

// The Quick start once held a lease and then waited for the same key on the
// same Locker, for itself: a 5 s wait and "not acquired within 5.001s". The
// error names the cause when the holder is another lease of this Locker.
func TestSameLockerHolderNamedInError(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	l := newTestLocker(t, pgtest.Shared().NewDatabase(t))
	k := KeyName("quick-start")
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ls.Release() }()
	_, err = l.TryAcquire(ctx, k)
	if !errors.Is(err, ErrNotAcquired) || !strings.Contains(err.Error(), "held by another lease of this Locker (leases are not re-entrant)") {
		t.Errorf("TryAcquire of a key this Locker holds: %v, want it to name the same-Locker holder", err)
	}
	if err := (&NotAcquiredError{Key: k, Waited: 5 * time.Second}).Error(); strings.Contains(err, "this Locker") {
		t.Errorf("a wait behind another process says %q", err)
	}
	got := (&NotAcquiredError{Key: k, Mode: Exclusive, Waited: 5 * time.Second, Local: true}).Error()
	want := `pgbaton: lock "quick-start" (exclusive) not acquired within 5s: held by another lease of this Locker (leases are not re-entrant)`
	if got != want {
		t.Errorf("Error() = %q\nwant      %q", got, want)
	}
}

// TestSameLockerWaitNamedInError: a bounded wait that expires behind a lease
// of the same Locker must say so too (Quick start: TryAcquire, then WithLock
// with Wait(5s) on the same key).
func TestSameLockerWaitNamedInError(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	l := newTestLocker(t, pgtest.Shared().NewDatabase(t))
	k := KeyName("quick-start-wait")
	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ls.Release() }()
	err = l.WithLock(ctx, k, func(context.Context) error { return nil }, Wait(100*time.Millisecond))
	var nae *NotAcquiredError
	if !errors.As(err, &nae) {
		t.Fatalf("WithLock behind this Locker's own lease: %v, want NotAcquiredError", err)
	}
	if !nae.Local {
		t.Errorf("a wait that expired behind a lease of the same Locker: Local is false (%v)", err)
	}
	if !strings.Contains(err.Error(), "held by another lease of this Locker") {
		t.Errorf("WithLock behind this Locker's own lease: %v", err)
	}
}
