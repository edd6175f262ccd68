package main

import (
	"context"
)

func init() {
	register(&command{
		Name:    "help",
		Summary: "show the commands, or one command's flags",
		Run:     runHelp,
	})
}

func runHelp(ctx context.Context, out *output, args []string) error {
	if len(args) == 0 {
		printUsage(out.Stdout)
		return nil
	}
	if len(args) > 1 {
		return usagef("help takes one command name, got %d arguments", len(args))
	}
	c := commands[args[0]]
	if c == nil {
		return usagef("unknown command %q", args[0])
	}
	if c.Name == "help" {
		printUsage(out.Stdout)
		return nil
	}
	// Every command prints its usage for -h and returns flag.ErrHelp.
	return c.Run(ctx, out, []string{"-h"})
}
