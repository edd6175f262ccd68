#!/usr/bin/env bash
# Runs pgbaton's core benchmarks (bench_test.go) several times and prints
# the median of every metric across runs, with its spread, using benchstat.
# BENCHMARKS.md explains the figures.
#
# Usage: scripts/bench.sh [GROUP...]
#   GROUP is one of: uncontended handoff processes killed loss (default: all).
# Environment:
#   PGTEST_DURABLE=1  run on a durable cluster (fsync, synchronous_commit,
#          full_page_writes on) instead of pgtest's fast one
#   COUNT  runs of each group (default 6; BENCHMARKS.md quotes medians of >= 5)
#   OUT    directory for raw results (default .cache/bench/<UTC time>)
#
# The test binary is built once. Each run runs every group once, so the runs
# of one group are spread over the whole session rather than back to back
# (the machine may be shared: a burst of load then lands on one run, not on
# all of them). The binary starts its own throwaway PostgreSQL cluster
# (pgtest) each time it runs. Raw output, the environment (date, nproc,
# versions) and the load average before and after every group are kept in
# $OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-6}
OUT=${OUT:-$ROOT/.cache/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

# benchstat: from PATH, else ./bin (installed there through the module proxy).
BENCHSTAT=$(command -v benchstat || true)
if [[ -z $BENCHSTAT ]]; then
	BENCHSTAT=$ROOT/bin/benchstat
	if [[ ! -x $BENCHSTAT ]]; then
		echo "installing benchstat into $ROOT/bin" >&2
		GOBIN=$ROOT/bin go install golang.org/x/perf/cmd/benchstat@latest
	fi
fi

# name, -bench pattern, -benchtime
declare -A PATTERN=(
	[uncontended]='^BenchmarkUncontended$'
	[handoff]='^BenchmarkHandoff$'
	[processes]='^BenchmarkHandoffProcesses$'
	[killed]='^BenchmarkHolderKilled$'
	[loss]='^BenchmarkLossDetection$'
)
declare -A BENCHTIME=(
	[uncontended]=3000x # operations per implementation
	[handoff]=300x      # grants per implementation
	[processes]=3x      # rounds of processes per implementation
	[killed]=5x         # kills per implementation
	[loss]=5x           # faults
)
GROUPS_ORDER=(uncontended handoff processes killed loss)
if (($# > 0)); then
	GROUPS_ORDER=("$@")
fi
for g in "${GROUPS_ORDER[@]}"; do
	[[ -n ${PATTERN[$g]:-} ]] || { echo "unknown group $g; use: ${!PATTERN[*]}" >&2; exit 2; }
done

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "go: $(go version)"
	pg=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
	[[ -n $pg ]] && echo "postgres: $("$pg/postgres" --version)"
	echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) (plus uncommitted changes: $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l) files)"
	echo "count: $COUNT; groups: ${GROUPS_ORDER[*]}; cluster: $([[ ${PGTEST_DURABLE:-} == 1 ]] && echo "durable (PGTEST_DURABLE=1)" || echo "fast (fsync off)")"
} | tee "$OUT/env.txt"

(cd "$ROOT" && go test -c -o "$OUT/pgbaton.test" .)

failed=0
for run in $(seq "$COUNT"); do
	for g in "${GROUPS_ORDER[@]}"; do
		echo "== run $run/$COUNT: $g (load $(cut -d' ' -f1 /proc/loadavg))" >&2
		echo "$(date -u +%T) run=$run group=$g load-before=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
		if ! (cd "$ROOT" && "$OUT/pgbaton.test" -test.run '^$' -test.bench "${PATTERN[$g]}" \
			-test.benchtime "${BENCHTIME[$g]}" -test.count 1) >"$OUT/last.txt" 2>&1; then
			echo "run $run, group $g FAILED:" >&2
			cat "$OUT/last.txt" >&2
			failed=$((failed + 1))
		fi
		grep -E '^(Benchmark|---|FAIL)' "$OUT/last.txt" >&2 || true
		cat "$OUT/last.txt" >>"$OUT/raw.txt"
		echo "$(date -u +%T) run=$run group=$g load-after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
	done
done

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"

# Medians across runs (± is benchstat's 95% confidence interval of the
# median, i.e. the machine's noise), one table per metric.
"$BENCHSTAT" "$OUT/raw.txt" | tee "$OUT/benchstat.txt"

# The spread of each metric across runs: min, median, max.
awk '
/^Benchmark/ {
	name = $1; sub(/-[0-9]+$/, "", name)
	for (i = 3; i + 1 <= NF; i += 2) {
		if ($(i+1) == "ns/op") continue
		key = name " " $(i+1); v[key] = v[key] " " $i; keys[key] = 1
	}
}
END {
	for (k in keys) {
		n = split(substr(v[k], 2), a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		printf "%-70s min %10.4g  median %10.4g  max %10.4g  (n=%d)\n", k, a[1], med, a[n], n
	}
}' "$OUT/raw.txt" | sort | tee "$OUT/spread.txt"

echo "raw results, environment and load: $OUT" >&2
if ((failed > 0)); then
	echo "$failed benchmark invocations FAILED (see above and $OUT/raw.txt)" >&2
	exit 1
fi
