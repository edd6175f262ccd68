package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrBinariesNotFound is returned (wrapped) by Start when no directory
// holding the PostgreSQL server binaries (initdb and postgres) was found.
var ErrBinariesNotFound = errors.New("PostgreSQL server binaries not found; install them with: apt-get install postgresql-15 (or set PGTEST_BINDIR)")

// binDirEnv names the environment variable that overrides discovery.
const binDirEnv = "PGTEST_BINDIR"

// findBinDir returns the directory holding initdb and postgres.
//
// Order: explicit (Options.BinDir), $PGTEST_BINDIR, the directory of
// `initdb` on PATH after resolving symlinks, `pg_config --bindir`, and the
// newest /usr/lib/postgresql/*/bin. An explicit BinDir or $PGTEST_BINDIR
// that does not hold the binaries is an error: it is not silently replaced
// by another installation.
func findBinDir(ctx context.Context, explicit string) (string, error) {
	if explicit != "" {
		if isServerBinDir(explicit) {
			return explicit, nil
		}
		return "", fmt.Errorf("pgtest: Options.BinDir %q has no initdb and postgres: %w", explicit, ErrBinariesNotFound)
	}
	if dir := os.Getenv(binDirEnv); dir != "" {
		if isServerBinDir(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("pgtest: $%s=%q has no initdb and postgres: %w", binDirEnv, dir, ErrBinariesNotFound)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if dir := filepath.Dir(real); isServerBinDir(dir) {
				return dir, nil
			}
		}
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.CommandContext(ctx, p, "--bindir").Output(); err == nil {
			if dir := strings.TrimSpace(string(out)); dir != "" && isServerBinDir(dir) {
				return dir, nil
			}
		}
	}
	if dir := newestDebianBinDir("/usr/lib/postgresql"); dir != "" {
		return dir, nil
	}
	return "", fmt.Errorf("pgtest: %w", ErrBinariesNotFound)
}

// newestDebianBinDir returns root/<highest version>/bin if it holds the
// server binaries, trying lower versions when the newest is incomplete.
func newestDebianBinDir(root string) string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return ""
	}
	type cand struct {
		ver float64
		dir string
	}
	var cands []cand
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64)
		if err != nil {
			continue
		}
		cands = append(cands, cand{v, filepath.Join(root, e.Name(), "bin")})
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].ver > cands[j].ver })
	for _, c := range cands {
		if isServerBinDir(c.dir) {
			return c.dir
		}
	}
	return ""
}

func isServerBinDir(dir string) bool {
	return isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path) //nolint:gosec // only reads metadata of a candidate server binary
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
