# shellcheck shell=bash
# Helpers shared by scripts/bench.sh, scripts/bench-relay.sh and
# scripts/bench-filters.sh. Source it; it runs nothing by itself.
#
# The sourcing script sets, before calling these:
#   BENCH_TAG     prefix of the messages printed here ("bench", ...)
#   PY            the Python interpreter (/usr/bin/python3)
#   PETREL_BIN    absolute path of the petrel binary
#   work          its private temp dir
#   petrel_pid    "" or the PID of the `petrel serve` it started
#   pf_conf, pf_queue, pf_started
#                 the private Postfix instance's config and queue dirs, and 1
#                 once it may be running (then stop_postfix stops it); only
#                 for the Postfix helpers
# and defines die().
# Every process is stopped by its PID, never by name.

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
      echo "$BENCH_TAG: postfix master $mpid still running, killing it" >&2
      kill -KILL "$mpid" 2>/dev/null || true
    fi
    local ddir
    ddir=$(postconf -c "$pf_conf" -h daemon_directory 2>/dev/null || echo /usr/lib/postfix/sbin)
    for k in $kids; do kill_if_exe "$k" "$ddir/"; done
    wait_gone "$mpid" 5 || echo "$BENCH_TAG: postfix master $mpid survived SIGKILL" >&2
  fi
  pf_started=0
}

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

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f\n", (s > 0 ? n / s : 0) }'; }

# pf_write_config SMTPD_PORT MAIN_EXTRA MASTER_EXTRA: the private Postfix
# instance's main.cf and master.cf in $pf_conf: loopback only, smtpd on
# SMTPD_PORT, relay for 127.0.0.0/8. MAIN_EXTRA (the transports) is added to
# main.cf, MASTER_EXTRA (their services) to master.cf.
pf_write_config() {
  local port=$1 main_extra=$2 master_extra=$3
  mkdir -p "$pf_conf" "$pf_queue" "$work/postfix/data"
  chown postfix "$work/postfix/data"
  cat > "$pf_conf/main.cf" <<EOF
# Private benchmark instance: loopback only.
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
biff = no
syslog_name = postfix-bench
maillog_file = $work/postfix/maillog
maillog_file_prefixes = $work/postfix
smtpd_banner = \$myhostname ESMTP
multi_instance_enable = no
$main_extra
EOF
  cat > "$pf_conf/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$port inet n - n - - smtpd
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
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
$master_extra
EOF
}

# pf_start SMTPD_PORT: starts the instance configured in $pf_conf and waits
# for its smtpd to listen. Dies on failure.
pf_start() {
  local port=$1
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
  wait_listen "$port" 15 || { cat "$work/postfix.start.log" >&2; die "postfix smtpd is not listening"; }
}
