//go:build !linux

package main

import (
	"context"
	"errors"
)

func init() {
	register(&command{
		Name:    "demo",
		Summary: "watch worker processes hand a lock over (Linux only)",
		Run: func(context.Context, *output, []string) error {
			return errors.New("the demo needs Linux: its throwaway server and fault tools (package pgtest) use Linux-only process control; run it on Linux or in a Linux container")
		},
	})
}
