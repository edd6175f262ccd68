//go:build !unix

package main

import (
	"context"
	"errors"
)

func init() {
	register(&command{
		Name:    "exec",
		Summary: "run a command while holding a cluster-wide lock (Unix only)",
		Run: func(context.Context, *output, []string) error {
			return errors.New("exec needs process groups and signals: run it on Linux or another Unix")
		},
	})
}
