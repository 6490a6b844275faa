#!/usr/bin/env bash
# Receive-rate benchmark: petrel against a private Postfix instance, same load.
#
# usage: scripts/bench.sh PETREL_BIN
#
# Load: Postfix's smtp-source, one 1 KiB message per connection, 20 parallel
# sessions, 10,000 messages (env BENCH_MESSAGES, BENCH_SESSIONS, BENCH_SIZE to
# change). Both servers accept into their queue and discard at delivery.
# Prints "petrel: X msg/s", "postfix: Y msg/s", "ratio: X/Y".
#
# The Postfix instance lives entirely in a temp dir (its own config_directory,
# queue_directory, data_directory, smtpd on a free loopback port) and is started
# and stopped with `postfix -c DIR`; the system's /etc/postfix is never written.
# Nothing is installed here (`make bench` runs scripts/install-deps.sh first).
# Every daemon started here is stopped by PID on exit.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 PETREL_BIN" >&2
  exit 64
fi
PETREL_BIN=$(readlink -f "$1" || echo "$1")
MESSAGES=${BENCH_MESSAGES:-10000}
SESSIONS=${BENCH_SESSIONS:-20}
SIZE=${BENCH_SIZE:-1024}
WARMUP=${BENCH_WARMUP:-200}
ONLY=${BENCH_ONLY:-}                 # "petrel" or "postfix": run one side only
LOAD_TIMEOUT=${BENCH_TIMEOUT:-600}   # seconds per load run

PATH=$PATH:/usr/sbin:/sbin
die() { echo "bench: $*" >&2; exit 1; }
[ "$ONLY" = postfix ] || [ -x "$PETREL_BIN" ] || die "petrel binary not found: $1"
command -v smtp-source >/dev/null || die "smtp-source not found (apt-get install postfix)"
command -v postfix >/dev/null || die "postfix not found (apt-get install postfix)"
command -v postconf >/dev/null || die "postconf not found"
[ "$(id -u)" -eq 0 ] || die "the private Postfix instance needs root (its master runs as root)"
PY=/usr/bin/python3
[ -x "$PY" ] || die "$PY not found"
BENCH_TAG=bench
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"

work=$(mktemp -d /tmp/petrel-bench.XXXXXX)
chmod 755 "$work"   # Postfix daemons run as the postfix user
petrel_pid=""
pf_conf="$work/postfix/etc"
pf_queue="$work/postfix/spool"
pf_started=0

cleanup() {
  local rc=$?
  stop_petrel
  stop_postfix
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "bench: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# load NAME PORT COUNT -> prints elapsed seconds; fails if smtp-source fails.
load() {
  local name=$1 port=$2 count=$3 t0 t1 rc
  t0=$(now)
  set +e
  timeout "$LOAD_TIMEOUT" smtp-source -s "$SESSIONS" -m "$count" -l "$SIZE" \
    -M bench-client.localdomain -f bench@localhost -t user@localhost \
    "127.0.0.1:$port" >"$work/$name.source.log" 2>&1
  rc=$?
  set -e
  t1=$(now)
  if [ $rc -ne 0 ]; then
    echo "bench: smtp-source against $name failed (exit $rc):" >&2
    tail -n 20 "$work/$name.source.log" >&2
    return 1
  fi
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

echo "bench: $MESSAGES messages of $SIZE bytes, $SESSIONS parallel sessions, one message per connection"

# --- petrel -----------------------------------------------------------------
petrel_secs=""; petrel_accepted=0
run_petrel() {
  pport=$(free_port)
  mkdir -p "$work/petrel/state" "$work/petrel/filters.d"
  cat > "$work/petrel/petrel.yaml" <<EOF
hostname: bench.petrel.example
state_dir: $work/petrel/state
listen: [{address: "127.0.0.1:$pport"}]
limits: {max_workers: 200, max_per_ip: 200}
relay: {networks: ["127.0.0.0/8"]}
domains: {localhost: {deliver: discard}}
filter_dir: $work/petrel/filters.d
EOF
  "$PETREL_BIN" check-config -c "$work/petrel/petrel.yaml" >/dev/null || die "petrel rejected the bench config"
  "$PETREL_BIN" serve -c "$work/petrel/petrel.yaml" </dev/null >"$work/petrel.log" 2>&1 &
  petrel_pid=$!
  wait_listen "$pport" 15 || { tail -n 20 "$work/petrel.log" >&2; die "petrel did not start"; }

  if [ "$WARMUP" -gt 0 ]; then load petrel-warmup "$pport" "$WARMUP" >/dev/null; fi
  petrel_secs=$(load petrel "$pport" "$MESSAGES") || die "petrel run failed"
  petrel_accepted=$(grep -c ': from=<' "$work/petrel.log" || true)
  stop_petrel
}

# --- postfix ----------------------------------------------------------------
postfix_secs=""; postfix_accepted=0
run_postfix() {
  fport=$(free_port)
  # Accepts into its queue, discards at delivery.
  pf_write_config "$fport" "default_transport = discard
local_transport = discard
relay_transport = discard
virtual_transport = discard" \
    "discard   unix  -       -       n       -       -       discard"
  pf_start "$fport"

  if [ "$WARMUP" -gt 0 ]; then load postfix-warmup "$fport" "$WARMUP" >/dev/null; fi
  postfix_secs=$(load postfix "$fport" "$MESSAGES") || die "postfix run failed"
  sleep 1
  postfix_accepted=$(grep -c 'postfix-bench/cleanup.*message-id=' "$work/postfix/maillog" 2>/dev/null || true)
  stop_postfix
}

[ "$ONLY" = postfix ] || run_petrel
[ "$ONLY" = petrel ] || run_postfix

# --- results ----------------------------------------------------------------
prate=0; frate=0
if [ -n "$petrel_secs" ]; then
  prate=$(rate "$MESSAGES" "$petrel_secs")
  echo "bench: petrel took ${petrel_secs}s; $petrel_accepted messages logged as accepted (incl. warm-up)"
fi
if [ -n "$postfix_secs" ]; then
  frate=$(rate "$MESSAGES" "$postfix_secs")
  echo "bench: postfix took ${postfix_secs}s; $postfix_accepted messages logged as accepted (incl. warm-up)"
fi
[ -n "$petrel_secs" ] && echo "petrel: $prate msg/s"
[ -n "$postfix_secs" ] && echo "postfix: $frate msg/s"
if [ -n "$petrel_secs" ] && [ -n "$postfix_secs" ]; then
  awk -v a="$prate" -v b="$frate" 'BEGIN { if (b > 0) printf "ratio: %.2f\n", a / b; else print "ratio: n/a" }'
fi
exit 0
