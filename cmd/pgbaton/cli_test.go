package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &output{Stdout: &o, Stderr: &e})
	return code, o.String(), e.String()
}

func TestHelpListsVisibleCommands(t *testing.T) {
	t.Parallel()
	code, out, _ := runCLI(t, "help")
	if code != exitOK {
		t.Fatalf("help: exit %d", code)
	}
	for _, want := range []string{"demo", "version", "help"} {
		if !strings.Contains(out, "\t"+want+" ") {
			t.Errorf("help does not list %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "demo-worker") {
		t.Errorf("help lists the hidden demo-worker:\n%s", out)
	}
}

func TestHelpForCommandShowsItsFlags(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, "help", "demo")
	if code != exitOK {
		t.Fatalf("help demo: exit %d\n%s", code, errOut)
	}
	for _, want := range []string{"Usage: pgbaton demo", "-dsn", "-workers", "-duration", "-faults"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("help demo lacks %q:\n%s", want, errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	code, out, _ := runCLI(t, "version")
	if code != exitOK || !strings.HasPrefix(out, "pgbaton ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: exit %d, output %q", code, out)
	}
}

func TestBadCommandLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string // in stderr
	}{
		{nil, "Usage:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"; run 'pgbaton help'`},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
		{[]string{"help", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"demo-worker"}, "run 'pgbaton demo' instead"},
	} {
		code, _, errOut := runCLI(t, tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("pgbaton %q: exit %d (want %d), stderr %q (want it to contain %q)", tc.args, code, exitUsage, errOut, tc.want)
		}
	}
}
