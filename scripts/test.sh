#!/usr/bin/env bash
# Runs pgbaton's whole test suite on a fresh machine: installs what is
# missing (PostgreSQL server binaries, PgBouncer, nftables for the network-cut
# tests) from the system's packages, then runs every test with the race
# detector against real PostgreSQL clusters started by pgtest.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  return 1
}
have_initdb || need+=(postgresql-15)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing missing packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq
    # A server started by the package's own scripts is not needed: pgtest
    # starts throwaway clusters of its own.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" ||
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql pgbouncer nftables
  else
    echo "cannot install ${need[*]}: no apt-get; install PostgreSQL server binaries (initdb) and pgbouncer, or set PGTEST_BINDIR" >&2
    exit 1
  fi
fi

# The dashboard's browser test (web/browsertest) drives Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ] && [ -z "${PGBATON_CHROMIUM:-}" ]; then
  echo "installing missing package: chromium (for the dashboard's browser test)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
  else
    echo "cannot install chromium: no apt-get; install a Chromium and set PGBATON_CHROMIUM to its binary" >&2
    exit 1
  fi
fi

go version
go vet ./...
# -p 2: one package per core; each package starts its own PostgreSQL cluster.
go test -race -count=1 -p 2 -timeout 40m "$@" ./...
# Nested modules (contrib/*: adapters with dependencies of their own) are not
# reached by ./... above; each is vetted and tested in its own directory.
for mod in contrib/*/go.mod; do
  dir=$(dirname "$mod")
  echo "== $dir"
  (cd "$dir" && go vet ./... && go test -race -count=1 -timeout 20m "$@" ./...)
done
# The dashboard's browser test, a module of its own so that chromedp stays
# out of pgbaton's go.mod.
(cd web/browsertest && go vet ./... && go test -race -count=1 -timeout 10m "$@" ./...)
