#!/usr/bin/env bash
# Runs the peer comparison behind BENCHMARKS.md's first table, then the
# cross-process handoff benchmark, both on a durable cluster (fsync,
# synchronous_commit and full_page_writes on: PostgreSQL's defaults).
#
# Usage: scripts/bench-peers.sh [peers] [handoff]   (default: both)
# Environment:
#   REPS   repetitions, implementations interleaved within each (default 5)
#   DUR    measured time per implementation per repetition (default 2s),
#          taken in 100 ms slices in turn with the other implementations
#   OUT    directory for raw results (default .cache/bench/peers-<UTC time>)
#
# Peers (bench/peers, a module of its own so the library's go.mod stays
# small): raw pgx, pgbaton, pgbaton with fencing tokens, go-redsync on a
# local redis-server (Debian package redis-server, started here on a unix
# socket WITHOUT persistence: no RDB snapshots, no AOF), and WithXactLock
# against BEGIN / pg_advisory_xact_lock / COMMIT; on the durable cluster
# and on pgtest's fast one (fsync off) as a second column.
# Handoff: BenchmarkHandoffProcesses (separate processes) and
# BenchmarkHandoff (goroutines; it also reports each side's client time per
# handoff) of the root package, raw blocking pg_advisory_lock vs pgbaton,
# with PGTEST_DURABLE=1, REPS runs through scripts/bench.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
DUR=${DUR:-2s}
OUT=${OUT:-$ROOT/.cache/bench/peers-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
WHAT=("$@")
((${#WHAT[@]} > 0)) || WHAT=(peers handoff)

if ! command -v redis-server >/dev/null; then
	if [[ $(id -u) == 0 ]]; then
		echo "installing redis-server (Debian package; this script starts its own, without persistence)" >&2
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
	else
		echo "redis-server not found: apt-get install redis-server" >&2
		exit 1
	fi
fi

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "go: $(go version)"
	pg=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
	[[ -n $pg ]] && echo "postgres: $("$pg/postgres" --version)"
	echo "redis: $(redis-server --version)"
	echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) (plus uncommitted changes: $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l) files)"
	echo "reps: $REPS; dur: $DUR; what: ${WHAT[*]}"
} | tee "$OUT/env.txt"

for w in "${WHAT[@]}"; do
	case $w in
	peers)
		(cd "$ROOT/bench" && go build -o "$OUT/peers" ./peers)
		"$OUT/peers" -reps "$REPS" -dur "$DUR" -raw "$OUT/peers.tsv" 2> >(tee "$OUT/peers.log" >&2) | tee "$OUT/peers.md"
		;;
	handoff)
		PGTEST_DURABLE=1 COUNT=$REPS OUT=$OUT/handoff "$ROOT/scripts/bench.sh" processes handoff
		;;
	*)
		echo "unknown $w; use: peers handoff" >&2
		exit 2
		;;
	esac
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"
echo "results: $OUT" >&2
