package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

func init() {
	register(&command{
		Name:    "version",
		Summary: "print the version of this pgbaton binary",
		Run:     runVersion,
	})
}

func runVersion(_ context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "version", "", "Print the module version, the source revision it was built from, and the Go toolchain.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	_, err := fmt.Fprintln(out.Stdout, versionString())
	return err
}

// versionString describes the binary from its embedded build information:
// the module version for "go install ...@version", "(devel)" plus the VCS
// revision for a build from a checkout.
func versionString() string {
	version, rev, dirty := "(unknown)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	s := "pgbaton " + version
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += " " + rev
		if dirty {
			s += "+dirty"
		}
	}
	return fmt.Sprintf("%s (%s, %s/%s)", s, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
