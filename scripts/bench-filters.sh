#!/usr/bin/env bash
# Filter scaling benchmark: a CPU-heavy plugin filter at 1, 2, 4 ... N sessions.
#
# usage: scripts/bench-filters.sh PETREL_BIN
#
# petrel runs every filter in the per-connection worker, so a CPU-bound filter
# should use every core: accepted messages/s should grow near-linearly with
# parallel sessions up to the core count, then flatten.
#
# The filter is tests/integration/plugins/burn.c (compiled here into the temp
# dir), which spends BENCH_FILTER_CPU_MS (default 20) ms of CPU per message in
# scan. Load: Postfix's smtp-source, one 1 KiB message per connection, on
# loopback, BENCH_FILTER_MESSAGES (default 300) messages per run, each run
# bounded by BENCH_TIMEOUT seconds (default 300). Sessions: 1, 2, 4 ... up to
# BENCH_FILTER_MAX_SESSIONS (default 2 x nproc). Mail is accepted into the
# spool and discarded at delivery.
#
# Prints a table: sessions, messages accepted, seconds, msg/s, speedup against
# 1 session, mean filter latency (wall clock, as petrel logs it), and nproc.
# Nothing is installed here; no root needed. petrel is stopped by PID on exit.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 PETREL_BIN" >&2
  exit 64
fi
PETREL_BIN=$(readlink -f "$1" || echo "$1")
REPO=$(cd "$(dirname "$0")/.." && pwd)
NPROC=$(nproc)
CPU_MS=${BENCH_FILTER_CPU_MS:-20}
MESSAGES=${BENCH_FILTER_MESSAGES:-300}
MAX_SESSIONS=${BENCH_FILTER_MAX_SESSIONS:-$((2 * NPROC))}
SIZE=${BENCH_SIZE:-1024}
WARMUP=${BENCH_WARMUP:-20}
LOAD_TIMEOUT=${BENCH_TIMEOUT:-300}   # seconds per load run

PATH=$PATH:/usr/sbin:/sbin
die() { echo "bench-filters: $*" >&2; exit 1; }
[ -x "$PETREL_BIN" ] || die "petrel binary not found: $1"
command -v smtp-source >/dev/null || die "smtp-source not found (apt-get install postfix)"
CC=${CC_FOR_PLUGIN:-cc}
command -v "$CC" >/dev/null || die "no C compiler ($CC) to build the benchmark plugin"
PY=/usr/bin/python3
[ -x "$PY" ] || die "$PY not found"
[ "$MAX_SESSIONS" -ge 1 ] || die "BENCH_FILTER_MAX_SESSIONS must be >= 1"

work=$(mktemp -d /tmp/petrel-bench-filters.XXXXXX)
petrel_pid=""
BENCH_TAG=bench-filters
# shellcheck source=scripts/bench-lib.sh
. "$REPO/scripts/bench-lib.sh"

cleanup() {
  local rc=$?
  stop_petrel
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "bench-filters: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# load NAME SESSIONS COUNT -> prints elapsed seconds; fails if smtp-source fails.
load() {
  local name=$1 sessions=$2 count=$3 t0 t1 rc
  t0=$(now)
  set +e
  timeout "$LOAD_TIMEOUT" smtp-source -s "$sessions" -m "$count" -l "$SIZE" \
    -M bench-client.localdomain -f bench@localhost -t user@localhost \
    "127.0.0.1:$pport" >"$work/$name.source.log" 2>&1
  rc=$?
  set -e
  t1=$(now)
  if [ $rc -ne 0 ]; then
    echo "bench-filters: smtp-source ($name) failed (exit $rc):" >&2
    tail -n 20 "$work/$name.source.log" >&2
    return 1
  fi
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

accepted() { grep -c ': from=<' "$work/petrel.log" || true; }

# CPU ticks used by petrel: the master, its reaped workers (cutime/cstime)
# and its live children (the queue runner).
petrel_ticks() {
  local t=0 p v
  for p in "$petrel_pid" $(pids_children "$petrel_pid"); do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# Non-idle CPU ticks of the whole machine, all cores.
host_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# --- the plugin and petrel ---------------------------------------------------
"$CC" -O2 -shared -fPIC -Wall -Wextra -Werror -I"$REPO/include" \
  "$REPO/tests/integration/plugins/burn.c" -o "$work/burn.so" || die "building burn.so failed"

pport=$(free_port)
mkdir -p "$work/state" "$work/filters.d"
cat > "$work/petrel.yaml" <<EOF
hostname: bench.petrel.example
state_dir: $work/state
listen: [{address: "127.0.0.1:$pport"}]
limits: {max_workers: 200, max_per_ip: 200}
relay: {networks: ["127.0.0.0/8"]}
domains: {localhost: {deliver: discard}}
filter_dir: $work/filters.d
filters:
  - name: burn
    plugin: $work/burn.so
    options: {cpu_ms: "$CPU_MS"}
    timeout: 30s
EOF
"$PETREL_BIN" check-config -c "$work/petrel.yaml" >/dev/null || die "petrel rejected the bench config"
"$PETREL_BIN" serve -c "$work/petrel.yaml" </dev/null >"$work/petrel.log" 2>&1 &
petrel_pid=$!
wait_listen "$pport" 15 || { tail -n 20 "$work/petrel.log" >&2; die "petrel did not start"; }

echo "bench-filters: plugin burn.so, ${CPU_MS} ms CPU per message; $MESSAGES messages of $SIZE bytes per run, one per connection; nproc=$NPROC"
if [ "$WARMUP" -gt 0 ]; then load warmup "$NPROC" "$WARMUP" >/dev/null || die "warm-up failed"; fi

sessions_list=""
s=1
while [ "$s" -lt "$MAX_SESSIONS" ]; do sessions_list="$sessions_list $s"; s=$((s * 2)); done
sessions_list="$sessions_list $MAX_SESSIONS"

HZ=$(getconf CLK_TCK)
printf '%-9s %9s %8s %8s %8s %10s %13s %11s\n' sessions accepted seconds "msg/s" speedup "filter ms" \
  "petrel cores" "host cores" > "$work/table"
base=""
warn=""
for s in $sessions_list; do
  before=$(accepted)
  lines_before=$(wc -l < "$work/petrel.log")
  pt0=$(petrel_ticks); ht0=$(host_busy_ticks)
  secs=$(load "s$s" "$s" "$MESSAGES") || die "load with $s sessions failed"
  sleep 0.2   # the last workers exit and are reaped
  pt1=$(petrel_ticks); ht1=$(host_busy_ticks)
  pcores=$(awk -v a="$pt0" -v b="$pt1" -v t="$secs" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz / t }')
  hcores=$(awk -v a="$ht0" -v b="$ht1" -v t="$secs" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz / (t + 0.2) }')
  # The last 250 is written after the spool commit and its log line: all in.
  after=$(accepted)
  got=$((after - before))
  [ "$got" -eq "$MESSAGES" ] || die "$s sessions: $got of $MESSAGES messages logged as accepted"
  rate=$(awk -v n="$got" -v t="$secs" 'BEGIN { printf "%.1f", (t > 0 ? n / t : 0) }')
  [ -n "$base" ] || base=$rate
  speedup=$(awk -v r="$rate" -v b="$base" 'BEGIN { printf "%.2f", (b > 0 ? r / b : 0) }')
  lat=$(tail -n +"$((lines_before + 1))" "$work/petrel.log" |
        sed -n 's/.*filter=burn verdict=[a-z]* latency=\([0-9]*\)ms.*/\1/p' |
        awk '{ t += $1; n++ } END { if (n) printf "%.1f", t / n; else print "-" }')
  printf '%-9s %9s %8s %8s %8s %10s %13s %11s\n' "$s" "$got" "$secs" "$rate" "$speedup" "$lat" \
    "$pcores" "$hcores" >> "$work/table"
  if [ "$s" -le "$NPROC" ]; then
    ok=$(awk -v x="$speedup" -v s="$s" 'BEGIN { print (x >= 0.75 * s) ? 1 : 0 }')
    [ "$ok" = 1 ] || warn="$warn $s"
  fi
done
stop_petrel

cat "$work/table"
echo "nproc: $NPROC"
echo "(filter ms: mean wall time of one scan; petrel cores: CPU seconds petrel used per second;"
echo " host cores: the same for the whole machine, petrel and smtp-source included)"
if [ -n "$warn" ]; then
  echo "bench-filters: WARNING: speedup below 0.75 x sessions at sessions:$warn (<= nproc)"
fi
exit 0
