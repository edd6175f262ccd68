//go:build !unix

package main

import (
	"context"
	"errors"
)

func init() {
	register(&command{
		Name:    "cron",
		Summary: "run a crontab on every replica, each tick once across the cluster (Unix only)",
		Run: func(ctx context.Context, out *output, args []string) error {
			if len(args) > 0 && args[0] == "status" {
				return runCronStatus(ctx, out, args[1:])
			}
			return errors.New("cron needs process groups and signals: run it on Linux or another Unix (cron status works everywhere)")
		},
	})
}
