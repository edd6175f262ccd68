package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"syscall"
)

// command is one subcommand. Each lives in a file of its own and adds itself
// to the table with register from an init function, so adding a subcommand
// never touches this file.
type command struct {
	// Name is what the user types after "pgbaton".
	Name string
	// Summary is the one-line description shown by "pgbaton help". A command
	// without one is hidden (it exists for pgbaton's own use).
	Summary string
	// Run runs the command. ctx is cancelled by SIGINT or SIGTERM. A
	// *usageError makes the exit status 2; flag.ErrHelp makes it 0.
	Run func(ctx context.Context, out *output, args []string) error
}

// output is where a command writes: Stdout for its result, Stderr for
// diagnostics and usage.
type output struct {
	Stdout, Stderr io.Writer
}

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.Name]; dup {
		panic("pgbaton: command registered twice: " + c.Name)
	}
	commands[c.Name] = c
}

// usageError is a mistake in the command line; the message says how to fix
// it, and the exit status is 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitCodeError ends a command with a given exit status; main's run uses
// it as is.
type exitCodeError struct {
	code int
	err  error // already reported when nil
}

func (e *exitCodeError) Error() string {
	if e.err == nil {
		return "exit status " + strconv.Itoa(e.code)
	}
	return e.err.Error()
}

func (e *exitCodeError) Unwrap() error { return e.err }

// Exit statuses.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130 // 128 + SIGINT, as shells report it
)

func main() { os.Exit(cliMain(os.Args[1:])) }

// cliMain runs the command line args with the process's stdio, cancelling
// the command's context at the first SIGINT or SIGTERM.
func cliMain(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default action: a second Ctrl-C
	// ends the process at once (throwaway servers have watchdogs of their
	// own, and workers end when their input pipe closes).
	go func() { <-ctx.Done(); stop() }()
	return run(ctx, args, &output{Stdout: os.Stdout, Stderr: os.Stderr})
}

// run dispatches args to a subcommand and returns the exit status.
func run(ctx context.Context, args []string, out *output) int {
	if len(args) == 0 {
		printUsage(out.Stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		name = "help"
	case "-version", "--version":
		name = "version"
	}
	cmd := commands[name]
	if cmd == nil {
		printf(out.Stderr, "pgbaton: unknown command %q; run 'pgbaton help' for the list\n", name)
		return exitUsage
	}
	err := cmd.Run(ctx, out, args[1:])
	if isExitError(err) { // a status chosen by the command (locks --check)
		return reportExit(out, name, err)
	}
	var ue *usageError
	var ce *exitCodeError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ce):
		// The command chose its exit status and reported what it had to.
		if ce.err != nil {
			printf(out.Stderr, "pgbaton %s: %v\n", name, ce.err)
		}
		return ce.code
	case errors.As(err, &ue):
		printf(out.Stderr, "pgbaton %s: %v\nrun 'pgbaton help %s' for usage\n", name, err, name)
		return exitUsage
	case ctx.Err() != nil:
		printf(out.Stderr, "pgbaton %s: interrupted: %v\n", name, err)
		return exitInterrupted
	default:
		printf(out.Stderr, "pgbaton %s: %v\n", name, err)
		return exitFailure
	}
}

// visibleCommands returns the commands shown by help, sorted by name.
func visibleCommands() []*command {
	var cs []*command
	for _, c := range commands {
		if c.Summary != "" {
			cs = append(cs, c)
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	return cs
}

// printf writes terminal output: usage, diagnostics, the demo's report. A
// write that fails (a closed pipe, say) has nowhere better to be reported,
// and the exit status already says how the command ended, so the error is
// dropped.
func printf(w io.Writer, format string, args ...any) {
	_, _ = fmt.Fprintf(w, format, args...)
}

func printUsage(w io.Writer) {
	printf(w, "pgbaton coordinates service instances with PostgreSQL advisory locks.\n\n")
	printf(w, "Usage:\n\n\tpgbaton <command> [flags]\n\nCommands:\n\n")
	width := 0
	for _, c := range visibleCommands() {
		width = max(width, len(c.Name))
	}
	for _, c := range visibleCommands() {
		printf(w, "\t%-*s  %s\n", width, c.Name, c.Summary)
	}
	printf(w, "\nRun 'pgbaton help <command>' for a command's flags.\n")
}

// newFlagSet makes a command's flag set: errors are returned, not fatal, and
// -h prints synopsis, description and flags to stderr.
func newFlagSet(out *output, name, synopsis, description string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out.Stderr)
	fs.Usage = func() {
		printf(out.Stderr, "Usage: pgbaton %s %s\n\n%s\n", name, synopsis, description)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			printf(out.Stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args and rejects positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q (flags go before it, as -name value)", fs.Arg(0))
	}
	return nil
}
