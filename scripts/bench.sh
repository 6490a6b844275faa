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

work=$(mktemp -d /tmp/petrel-bench.XXXXXX)
chmod 755 "$work"   # Postfix daemons run as the postfix user
petrel_pid=""
pf_conf="$work/postfix/etc"
pf_queue="$work/postfix/spool"
pf_started=0

pids_children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# kill_if_exe PID EXE_PREFIX: SIGKILL a leftover only if it still runs that
# program, so a recycled PID is never hit.
kill_if_exe() {
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 0
  case "$exe" in "$2"*) kill -KILL "$1" 2>/dev/null || true ;; esac
}

# Waits up to $2 seconds for PID $1 to disappear (a zombie counts as gone).
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null | tr -d ' ') || return 1
  [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}
wait_gone() {
  local pid=$1 n=$(( $2 * 10 ))
  while [ $n -gt 0 ] && alive "$pid"; do sleep 0.1; n=$((n - 1)); done
  ! alive "$pid"
}

stop_petrel() {
  [ -n "$petrel_pid" ] || return 0
  local kids
  kids=$(pids_children "$petrel_pid")
  if kill -0 "$petrel_pid" 2>/dev/null; then
    kill -TERM "$petrel_pid" 2>/dev/null || true
    wait_gone "$petrel_pid" 20 || kill -KILL "$petrel_pid" 2>/dev/null || true
    wait "$petrel_pid" 2>/dev/null || true
  fi
  for k in $kids; do kill_if_exe "$k" "$PETREL_BIN"; done
  petrel_pid=""
}

postfix_master_pid() {
  [ -f "$pf_queue/pid/master.pid" ] && tr -d ' \n' < "$pf_queue/pid/master.pid" || true
}

stop_postfix() {
  [ "$pf_started" = 1 ] || return 0
  local mpid kids
  mpid=$(postfix_master_pid)
  kids=""
  [ -n "$mpid" ] && kids=$(pids_children "$mpid")
  timeout 30 postfix -c "$pf_conf" stop >/dev/null 2>&1 || true
  if [ -n "$mpid" ]; then
    if ! wait_gone "$mpid" 15; then
      echo "bench: postfix master $mpid still running, killing it" >&2
      kill -KILL "$mpid" 2>/dev/null || true
    fi
    local ddir
    ddir=$(postconf -c "$pf_conf" -h daemon_directory 2>/dev/null || echo /usr/lib/postfix/sbin)
    for k in $kids; do kill_if_exe "$k" "$ddir/"; done
    wait_gone "$mpid" 5 || echo "bench: postfix master $mpid survived SIGKILL" >&2
  fi
  pf_started=0
}

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

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 is in LISTEN state (no probe connection).
wait_listen() {
  local port=$1 n=$(( $2 * 10 ))
  local hex
  hex=$(printf ':%04X' "$port")
  while [ $n -gt 0 ]; do
    if awk -v p="$hex" 'NR>1 && $4=="0A" && substr($2, length($2)-4)==p {f=1} END{exit !f}' /proc/net/tcp; then
      return 0
    fi
    sleep 0.1; n=$((n - 1))
  done
  return 1
}

now() { date +%s.%N; }

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

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f\n", (s > 0 ? n / s : 0) }'; }

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
  mkdir -p "$pf_conf" "$pf_queue" "$work/postfix/data"
  chown postfix "$work/postfix/data"
  cat > "$pf_conf/main.cf" <<EOF
# Private benchmark instance: loopback only, accepts into its queue, discards.
compatibility_level = 3.6
queue_directory = $pf_queue
data_directory = $work/postfix/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.example
mydomain = postfix.example
myorigin = \$myhostname
mydestination = localhost, \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
local_recipient_maps =
alias_maps =
alias_database =
default_transport = discard
local_transport = discard
relay_transport = discard
virtual_transport = discard
biff = no
syslog_name = postfix-bench
maillog_file = $work/postfix/maillog
maillog_file_prefixes = $work/postfix
smtpd_banner = \$myhostname ESMTP
multi_instance_enable = no
EOF
  cat > "$pf_conf/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$fport inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  # Guard: this instance must not be the system one.
  [ "$(postconf -c "$pf_conf" -h config_directory)" = "$pf_conf" ] || die "postconf does not see $pf_conf"
  pf_started=1   # from here on, cleanup runs `postfix stop` and checks the master PID
  # postfix(1) logs its own errors to syslog unless stderr is a terminal: on
  # failure, `postfix check` under script(1) shows why.
  timeout 60 postfix -c "$pf_conf" start >"$work/postfix.start.log" 2>&1 || {
    cat "$work/postfix.start.log" >&2
    if command -v script >/dev/null; then
      timeout 60 script -qc "postfix -c $pf_conf check" /dev/null >&2 || true
    fi
    die "postfix did not start"; }
  wait_listen "$fport" 15 || { cat "$work/postfix.start.log" >&2; die "postfix smtpd is not listening"; }

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
