#!/usr/bin/env bash
# Runs pgbaton's fault-injection suite for a given time and keeps its
# results table.
#
#   scripts/chaos.sh [DURATION]     DURATION is a Go duration: 90s, 30m, 1h30m (default 30m)
#
# Environment: CHAOS_OUT is the directory for the table and the log
# (default ${TMPDIR:-/tmp}/pgbaton-chaos); CHAOS_NO_PANICS=1 keeps the
# WithLock/WithXactLock sections from panicking (while a panic leaks its
# lock, such leaks can take every key out of the run and hide the rest). Needs root for the network
# partition faults (nftables or iptables) and the PostgreSQL server
# binaries (see pgtest). The CI run is the same test with its default
# duration: go test ./internal/chaos/
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-30m}

# Seconds in a Go duration of h/m/s parts, to bound the test binary.
secs=0
rest=$duration
while [[ -n $rest ]]; do
	if [[ $rest =~ ^([0-9]+)(h|m|s)(.*)$ ]]; then
		n=${BASH_REMATCH[1]}
		case ${BASH_REMATCH[2]} in
		h) secs=$((secs + n * 3600)) ;;
		m) secs=$((secs + n * 60)) ;;
		s) secs=$((secs + n)) ;;
		esac
		rest=${BASH_REMATCH[3]}
	else
		echo "chaos.sh: duration '$duration' is not like 90s, 30m or 1h30m" >&2
		exit 2
	fi
done
if ((secs < 10)); then
	echo "chaos.sh: duration '$duration' is too short (at least 10s)" >&2
	exit 2
fi

out=${CHAOS_OUT:-${TMPDIR:-/tmp}/pgbaton-chaos}
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
report="$out/chaos-$stamp.md"
log="$out/chaos-$stamp.log"
# Setup, shutdown and the history check come on top of the duration.
timeout=$((secs + 900))

echo "chaos.sh: running for $duration; table -> $report, log -> $log, histories -> $out/history-$stamp"
set +e
CHAOS_DURATION=$duration CHAOS_REPORT=$report CHAOS_DIR="$out/history-$stamp" \
	go test -count=1 -run '^TestChaos$' -timeout "${timeout}s" -v ./internal/chaos/ >"$log" 2>&1
code=$?
set -e
grep -E '^(--- |PASS|FAIL|ok )' "$log" || true
if [[ -f $report ]]; then
	cat "$report"
fi
exit $code
