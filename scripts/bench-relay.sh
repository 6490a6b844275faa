#!/usr/bin/env bash
# Relay benchmark: petrel against a private Postfix instance, both relaying
# the same load to one remote domain served by Postfix's smtp-sink.
#
# usage: scripts/bench-relay.sh PETREL_BIN
#
# Load: Postfix's smtp-source, 1 KiB messages, one per connection, 20 parallel
# sessions, 10,000 messages (env BENCH_RELAY_MESSAGES, BENCH_SESSIONS,
# BENCH_SIZE to change), all to user@bench.test. Each MTA relays bench.test
# to one smtp-sink on a loopback port (petrel: `routes`, Postfix: `relayhost`,
# both without TLS). The sink runs for the whole benchmark; its `-c` counters
# (sess = sessions ended, mesg = messages received) are read before and after
# each run.
#
# Measured per MTA, after a warm-up of BENCH_WARMUP (200) messages relayed and
# every connection to the sink closed:
#   seconds      from the start of smtp-source to the sink's mesg counter
#                reaching the total (polled every 10 ms; bounded by
#                BENCH_TIMEOUT, 600 s)
#   msg/s        messages / seconds, end to end
#   connections  sessions the sink saw for the run (read once the MTA has
#                closed every connection to it, bounded by 60 s)
#   accept s     when smtp-source finished (all messages accepted), for context
# then the ratio petrel/postfix msg/s.
#
# BENCH_ONLY=petrel|postfix runs one side; BENCH_KEEP=1 keeps the temp dir;
# BENCH_RELAY_STRACE=1 attaches `strace -c -f` to petrel's queue runner during
# the petrel run and prints its syscall counts (timings are then not
# comparable).
#
# The Postfix instance lives entirely in a temp dir (as in scripts/bench.sh);
# the system's /etc/postfix is never written. Loopback only. Nothing is
# installed here (`make bench` runs scripts/install-deps.sh first). Every
# process started here is stopped by PID on exit.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 PETREL_BIN" >&2
  exit 64
fi
PETREL_BIN=$(readlink -f "$1" || echo "$1")
MESSAGES=${BENCH_RELAY_MESSAGES:-10000}
SESSIONS=${BENCH_SESSIONS:-20}
SIZE=${BENCH_SIZE:-1024}
WARMUP=${BENCH_WARMUP:-200}
ONLY=${BENCH_ONLY:-}                 # "petrel" or "postfix": run one side only
LOAD_TIMEOUT=${BENCH_TIMEOUT:-600}   # seconds per run, accept to last message at the sink
STRACE=${BENCH_RELAY_STRACE:-0}
DOMAIN=bench.test
# petrel's outbound caps (SPEC §3 defaults, stated so the figure is reproducible)
P_MAX_CONN=50
P_MAX_CONN_DOMAIN=10
P_MAX_MSG_CONN=100

PATH=$PATH:/usr/sbin:/sbin
die() { echo "bench-relay: $*" >&2; exit 1; }
case "$MESSAGES" in '' | *[!0-9]*) die "BENCH_RELAY_MESSAGES must be a number" ;; esac
if [ "$MESSAGES" -lt 1 ] || [ "$MESSAGES" -gt 1000000 ]; then die "BENCH_RELAY_MESSAGES must be 1..1000000"; fi
[ "$ONLY" = postfix ] || [ -x "$PETREL_BIN" ] || die "petrel binary not found: $1"
for p in smtp-source smtp-sink postfix postconf; do
  command -v "$p" >/dev/null || die "$p not found (apt-get install postfix)"
done
[ "$STRACE" = 0 ] || command -v strace >/dev/null || die "strace not found"
[ "$(id -u)" -eq 0 ] || die "the private Postfix instance needs root (its master runs as root)"
PY=/usr/bin/python3
[ -x "$PY" ] || die "$PY not found"
BENCH_TAG=bench-relay
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"

work=$(mktemp -d /tmp/petrel-bench-relay.XXXXXX)
chmod 755 "$work"   # Postfix daemons run as the postfix user
petrel_pid=""
pf_conf="$work/postfix/etc"
pf_queue="$work/postfix/spool"
pf_started=0
sink_pid=""
src_sub=""      # the subshell around a background smtp-source
strace_pid=""
poll_pid=""     # a background sinkctl.py
SINK_BIN=$(readlink -f "$(command -v smtp-sink)")
TIMEOUT_BIN=$(readlink -f "$(command -v timeout)")
STRACE_BIN=$(readlink -f "$(command -v strace || echo /usr/bin/strace)")

stop_source() {
  [ -n "$src_sub" ] || return 0
  local tpid
  tpid=$(cat "$work/source.pid" 2>/dev/null || true)
  # `timeout` passes SIGTERM on to smtp-source.
  [ -n "$tpid" ] && kill_if_exe "$tpid" "$TIMEOUT_BIN"
  wait "$src_sub" 2>/dev/null || true
  src_sub=""
}

stop_strace() {
  [ -n "$strace_pid" ] || return 0
  kill -INT "$strace_pid" 2>/dev/null || true   # detaches and writes the summary
  wait_gone "$strace_pid" 10 || kill_if_exe "$strace_pid" "$STRACE_BIN"
  wait "$strace_pid" 2>/dev/null || true
  strace_pid=""
}

stop_sink() {
  [ -n "$sink_pid" ] || return 0
  kill -TERM "$sink_pid" 2>/dev/null || true
  wait_gone "$sink_pid" 5 || kill_if_exe "$sink_pid" "$SINK_BIN"
  wait "$sink_pid" 2>/dev/null || true
  sink_pid=""
}

stop_poll() {
  [ -n "$poll_pid" ] || return 0
  kill -TERM "$poll_pid" 2>/dev/null || true
  wait "$poll_pid" 2>/dev/null || true
  poll_pid=""
}

cleanup() {
  local rc=$?
  stop_poll
  stop_source
  stop_strace
  stop_petrel
  stop_postfix
  stop_sink
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "bench-relay: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Reads smtp-sink's `-c` output: "sess=N quit=N mesg=N" records ended by \r.
#   sinkctl now FILE                        -> "sess quit mesg" (the latest)
#   sinkctl mesg FILE TARGET TIMEOUT        -> the epoch time mesg reached TARGET
#   sinkctl idle FILE PORT TIMEOUT          -> "sess quit mesg" once the sink
#                                              holds no open connection
cat > "$work/sinkctl.py" <<'EOF'
import re, sys, time

REC = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")

class Counters:
    def __init__(self, path):
        self.f = open(path, "rb")
        self.buf = b""
        self.last = (0, 0, 0)

    def poll(self):
        data = self.f.read()
        if data:
            self.buf += data
            recs = self.buf.split(b"\r")
            self.buf = recs.pop()          # partial record, if any
            for r in reversed(recs):
                m = REC.search(r)
                if m:
                    self.last = tuple(int(x) for x in m.groups())
                    break
        return self.last

def open_on_sink(port):
    # Sockets on the sink's side still open: ESTABLISHED, SYN_RECV, CLOSE_WAIT.
    suffix = ":%04X" % port
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] in ("01", "03", "08"):
                n += 1
    return n

mode, path = sys.argv[1], sys.argv[2]
c = Counters(path)
if mode == "now":
    print(*c.poll())
elif mode == "mesg":
    target, limit = int(sys.argv[3]), float(sys.argv[4])
    end = time.time() + limit
    while True:
        v = c.poll()
        if v[2] >= target:
            print("%.6f" % time.time())
            break
        if time.time() > end:
            sys.exit("sink: mesg=%d after %.0f s, wanted %d" % (v[2], limit, target))
        time.sleep(0.01)
elif mode == "idle":
    port, limit = int(sys.argv[3]), float(sys.argv[4])
    end = time.time() + limit
    while open_on_sink(port) > 0:
        if time.time() > end:
            sys.exit("sink: %d connection(s) still open after %.0f s" % (open_on_sink(port), limit))
        time.sleep(0.1)
    time.sleep(0.3)   # the counter line follows the close
    print(*c.poll())
else:
    sys.exit("sinkctl: bad mode " + mode)
EOF
sinkctl() { "$PY" "$work/sinkctl.py" "$@"; }

# --- the sink ---------------------------------------------------------------
sink_port=$(free_port)
smtp-sink -c -u root -h sink.bench.test "127.0.0.1:$sink_port" 1024 \
  >"$work/sink.out" 2>"$work/sink.err" </dev/null &
sink_pid=$!
wait_listen "$sink_port" 15 || { cat "$work/sink.err" >&2; die "smtp-sink did not start"; }

# relay_run NAME PORT COUNT: smtp-source COUNT messages into the MTA on PORT,
# wait for them all at the sink, then for the MTA to close its connections.
# Sets run_secs, run_accept_secs, run_conns, run_quits.
run_secs=""; run_accept_secs=""; run_conns=""; run_quits=""
relay_run() {
  local name=$1 port=$2 count=$3 b_sess b_quit b_mesg a_sess a_quit a_mesg t0 t_end t_src rc
  read -r b_sess b_quit b_mesg < <(sinkctl now "$work/sink.out")
  rm -f "$work/source.pid" "$work/source.rc" "$work/source.t1"
  t0=$(now)
  (
    timeout "$LOAD_TIMEOUT" smtp-source -s "$SESSIONS" -m "$count" -l "$SIZE" \
      -M bench-client.localdomain -f "bench@client.example" -t "user@$DOMAIN" \
      "127.0.0.1:$port" >"$work/$name.source.log" 2>&1 </dev/null &
    echo $! > "$work/source.pid"
    wait $! && r=0 || r=$?
    now > "$work/source.t1"
    echo "$r" > "$work/source.rc"
  ) &
  src_sub=$!
  # In the background, so a signal to this script is handled at once.
  sinkctl mesg "$work/sink.out" $((b_mesg + count)) "$LOAD_TIMEOUT" >"$work/t_end" &
  poll_pid=$!
  wait "$poll_pid" && rc=0 || rc=$?
  poll_pid=""
  if [ "$rc" != 0 ]; then
    tail -n 5 "$work/$name.source.log" >&2 || true
    die "$name: not every message reached the sink in ${LOAD_TIMEOUT}s"
  fi
  t_end=$(cat "$work/t_end")
  wait "$src_sub" 2>/dev/null || true
  src_sub=""
  rc=$(cat "$work/source.rc" 2>/dev/null || echo 1)
  if [ "$rc" != 0 ]; then
    echo "bench-relay: smtp-source against $name failed (exit $rc):" >&2
    tail -n 20 "$work/$name.source.log" >&2
    die "$name run failed"
  fi
  t_src=$(cat "$work/source.t1")
  sinkctl idle "$work/sink.out" "$sink_port" 60 >"$work/after" &
  poll_pid=$!
  wait "$poll_pid" && rc=0 || rc=$?
  poll_pid=""
  [ "$rc" = 0 ] || die "$name: connections to the sink stay open"
  read -r a_sess a_quit a_mesg <"$work/after"
  run_secs=$(awk -v a="$t0" -v b="$t_end" 'BEGIN { printf "%.3f\n", b - a }')
  run_accept_secs=$(awk -v a="$t0" -v b="$t_src" 'BEGIN { printf "%.3f\n", b - a }')
  run_conns=$((a_sess - b_sess))
  run_quits=$((a_quit - b_quit))
  if [ $((a_mesg - b_mesg)) -ne "$count" ]; then
    echo "bench-relay: $name: the sink counted $((a_mesg - b_mesg)) messages, sent $count" >&2
  fi
}

# warm_up NAME PORT: relays BENCH_WARMUP messages and waits until every
# connection to the sink is closed, so each run starts the same way.
warm_up() {
  [ "$WARMUP" -gt 0 ] || return 0
  relay_run "$1-warmup" "$2" "$WARMUP"
}

echo "bench-relay: $MESSAGES messages of $SIZE bytes to one domain ($DOMAIN), $SESSIONS parallel sessions in," \
  "one message per inbound connection; relayed to smtp-sink on 127.0.0.1:$sink_port"

# --- petrel -----------------------------------------------------------------
petrel_secs=""; petrel_accept=""; petrel_conns=""; petrel_quits=""; petrel_runner_cpu="?"
# cpu_ticks PID: user + system clock ticks of PID so far, -1 when it is gone.
cpu_ticks() {
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo -1; return 0; }
  # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}; petrel_sent=0; petrel_other=0; petrel_strace=""
run_petrel() {
  local pport runner
  pport=$(free_port)
  mkdir -p "$work/petrel/state" "$work/petrel/filters.d"
  cat > "$work/petrel/petrel.yaml" <<EOF
hostname: bench.petrel.example
state_dir: $work/petrel/state
listen: [{address: "127.0.0.1:$pport"}]
limits: {max_workers: 200, max_per_ip: 200}
relay: {networks: ["127.0.0.0/8"]}
routes: {"$DOMAIN": "[127.0.0.1]:$sink_port"}
queue:
  tls: none
  max_connections: $P_MAX_CONN
  max_connections_per_domain: $P_MAX_CONN_DOMAIN
  max_messages_per_connection: $P_MAX_MSG_CONN
filter_dir: $work/petrel/filters.d
EOF
  "$PETREL_BIN" check-config -c "$work/petrel/petrel.yaml" >/dev/null || die "petrel rejected the bench config"
  "$PETREL_BIN" serve -c "$work/petrel/petrel.yaml" </dev/null >"$work/petrel.log" 2>&1 &
  petrel_pid=$!
  wait_listen "$pport" 15 || { tail -n 20 "$work/petrel.log" >&2; die "petrel did not start"; }
  # The queue runner is the master's only child before any client connects.
  runner=$(pids_children "$petrel_pid" | head -n 1)

  warm_up petrel "$pport"
  if [ "$STRACE" != 0 ]; then
    [ -n "$runner" ] || die "no queue runner process under petrel $petrel_pid"
    strace -c -f -o "$work/petrel.strace" -p "$runner" 2>"$work/strace.err" &
    strace_pid=$!
    sleep 1
  fi
  local cpu0
  cpu0=$(cpu_ticks "$runner")
  relay_run petrel "$pport" "$MESSAGES"
  petrel_runner_cpu=$(awk -v a="$cpu0" -v b="$(cpu_ticks "$runner")" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { if (a >= 0 && b >= 0) printf "%.2f", (b - a) / hz; else print "?" }')
  petrel_secs=$run_secs; petrel_accept=$run_accept_secs; petrel_conns=$run_conns; petrel_quits=$run_quits
  if [ "$STRACE" != 0 ]; then
    stop_strace
    petrel_strace=$work/petrel.strace
  fi
  petrel_sent=$(grep -c "to=<user@$DOMAIN>.*status=sent" "$work/petrel.log" || true)
  petrel_other=$(grep "to=<user@$DOMAIN>" "$work/petrel.log" | grep -vc 'status=sent' || true)
  stop_petrel
}

# --- postfix ----------------------------------------------------------------
postfix_secs=""; postfix_accept=""; postfix_conns=""; postfix_quits=""; postfix_sent=0; postfix_other=0
run_postfix() {
  local fport
  fport=$(free_port)
  # Relays everything non-local to the sink; Postfix's own defaults for
  # concurrency and connection reuse (smtp_connection_cache_on_demand).
  pf_write_config "$fport" "default_transport = smtp
relay_transport = smtp
relayhost = [127.0.0.1]:$sink_port
smtp_tls_security_level = none
smtp_sasl_auth_enable = no" \
    "smtp      unix  -       -       n       -       -       smtp"
  pf_start "$fport"

  warm_up postfix "$fport"
  relay_run postfix "$fport" "$MESSAGES"
  postfix_secs=$run_secs; postfix_accept=$run_accept_secs; postfix_conns=$run_conns; postfix_quits=$run_quits
  postfix_sent=$(grep -c "postfix-bench/smtp.*to=<user@$DOMAIN>.*status=sent" "$work/postfix/maillog" 2>/dev/null || true)
  postfix_other=$(grep "postfix-bench/smtp.*to=<user@$DOMAIN>" "$work/postfix/maillog" 2>/dev/null | grep -vc 'status=sent' || true)
  stop_postfix
}

[ "$ONLY" = postfix ] || run_petrel
[ "$ONLY" = petrel ] || run_postfix

# --- results ----------------------------------------------------------------
echo "bench-relay: petrel: max_connections $P_MAX_CONN, max_connections_per_domain $P_MAX_CONN_DOMAIN," \
  "max_messages_per_connection $P_MAX_MSG_CONN (at least $(( (MESSAGES + P_MAX_MSG_CONN - 1) / P_MAX_MSG_CONN )) connections)"
echo "bench-relay: postfix: $(postconf -d -h mail_version 2>/dev/null || echo '?'), default_destination_concurrency_limit" \
  "$(postconf -d -h default_destination_concurrency_limit 2>/dev/null || echo '?'), connection cache on demand," \
  "smtp_connection_reuse_count_limit $(postconf -d -h smtp_connection_reuse_count_limit 2>/dev/null || echo '?')"
[ -n "$petrel_secs" ] && echo "bench-relay: petrel logged $petrel_sent deliveries sent, $petrel_other other (incl. warm-up);" \
  "$petrel_quits of its $petrel_conns connections in the run ended with QUIT;" \
  "queue runner CPU ${petrel_runner_cpu}s during the run"
[ -n "$postfix_secs" ] && echo "bench-relay: postfix logged $postfix_sent deliveries sent, $postfix_other other (incl. warm-up);" \
  "$postfix_quits of its $postfix_conns connections in the run ended with QUIT"
if [ -n "$petrel_strace" ]; then
  echo "bench-relay: petrel queue runner syscalls during the run (strace -c -f; timing not comparable):"
  cat "$petrel_strace"
  awk -v n="$MESSAGES" '$NF=="total" { printf "bench-relay: %.1f syscalls per relayed message\n", $4 / n }' "$petrel_strace"
fi
prate=0; frate=0
printf '%-8s %9s %9s %8s %12s %9s\n' "" messages seconds "msg/s" connections "accept s"
if [ -n "$petrel_secs" ]; then
  prate=$(rate "$MESSAGES" "$petrel_secs")
  printf '%-8s %9s %9s %8s %12s %9s\n' petrel "$MESSAGES" "$petrel_secs" "$prate" "$petrel_conns" "$petrel_accept"
fi
if [ -n "$postfix_secs" ]; then
  frate=$(rate "$MESSAGES" "$postfix_secs")
  printf '%-8s %9s %9s %8s %12s %9s\n' postfix "$MESSAGES" "$postfix_secs" "$frate" "$postfix_conns" "$postfix_accept"
fi
if [ -n "$petrel_secs" ] && [ -n "$postfix_secs" ]; then
  awk -v a="$prate" -v b="$frate" 'BEGIN { if (b > 0) printf "ratio: %.2f (petrel/postfix msg/s)\n", a / b; else print "ratio: n/a" }'
fi
exit 0
