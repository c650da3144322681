#!/usr/bin/env bash
# broker.sh: a throwaway RabbitMQ node (Debian's rabbitmq-server 3.10) for the
# tests, the demo and the benchmarks. Everything the node writes lives under
# one directory; it listens on 127.0.0.1 only, on its own AMQP, AMQPS and
# Erlang distribution ports, so it never touches or collides with a system
# broker.
#
#   scripts/broker.sh start --dir DIR [--port 5699] [--tls-port 5698]
#                           [--dist-port 25699] [--node larder_test]
#                           [--timeout 90]
#   scripts/broker.sh stop|restart|stop_app|start_app|status --dir DIR
#
# The options may come before or after the command, so the line written to
# broker.env as LARDER_TEST_BROKER_CTL works as a prefix:
#   $LARDER_TEST_BROKER_CTL restart
#
# Layout of DIR (owned by the rabbitmq user when run as root):
#   rabbitmq.conf      listeners, TLS, logging      enabled_plugins  "[]."
#   mnesia/            node data (kept by stop and restart)
#   log/               <node>@localhost.log, startup.log (stdout/stderr)
#   tls/               ca.pem, server.pem/.key, client.pem/.key (made once)
#   broker.state       the settings start used; later commands read them
#   broker.env         LARDER_TEST_* variables for tests (see write_env)
#   rabbitmq.pid       pid of the Erlang VM, written by the node
#
# Debian specifics:
# - Run as root, the node runs as the rabbitmq user (setpriv, no extra
#   process) with HOME=/var/lib/rabbitmq, and the rabbitmqctl wrapper in
#   /usr/sbin switches to that user too, so both share the Erlang cookie
#   /var/lib/rabbitmq/.erlang.cookie. Run as another user, the node runs as
#   that user with its own ~/.erlang.cookie and the CLI is called directly.
# - Erlang starts epmd (port 4369, here bound to loopback) if it is not
#   running; it is a shared daemon that outlives the node. A start that
#   finds no epmd records the one its node launches in
#   /tmp/larder-broker-epmd.<uid>; a stop ends that epmd (and only that
#   one) once no node is registered with it any more.
# - The node runs in its own session (setsid); stop asks it to stop with
#   rabbitmqctl, then ends what is left of that session, and only that.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
readonly RABBIT_BIN=/usr/lib/rabbitmq/bin

die() { echo "broker.sh: error: $*" >&2; exit 1; }
note() { echo "broker.sh: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"
}

command=""
dir=""
opt_port="" opt_tls_port="" opt_dist_port="" opt_node=""
timeout_s=90
while (($#)); do
  case $1 in
    start | stop | restart | stop_app | start_app | status) command=$1 ;;
    --dir) dir=${2:?--dir needs a value}; shift ;;
    --dir=*) dir=${1#*=} ;;
    --port) opt_port=${2:?--port needs a value}; shift ;;
    --port=*) opt_port=${1#*=} ;;
    --tls-port) opt_tls_port=${2:?--tls-port needs a value}; shift ;;
    --tls-port=*) opt_tls_port=${1#*=} ;;
    --dist-port) opt_dist_port=${2:?--dist-port needs a value}; shift ;;
    --dist-port=*) opt_dist_port=${1#*=} ;;
    --node) opt_node=${2:?--node needs a value}; shift ;;
    --node=*) opt_node=${1#*=} ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift ;;
    --timeout=*) timeout_s=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ -n $command ]] || die "no command given: start, stop, restart, stop_app, start_app or status"
[[ -n $dir ]] || die "--dir DIR is required"
for p in "$opt_port" "$opt_tls_port" "$opt_dist_port" "$timeout_s"; do
  [[ -z $p || $p =~ ^[0-9]+$ ]] || die "'$p' is not a number"
done
[[ -z $opt_node || $opt_node =~ ^[A-Za-z0-9_-]+$ ]] ||
  die "--node '$opt_node': use letters, digits, '_' and '-' only (the host part is always @localhost)"

# --- who runs the node, and which CLI reaches it ----------------------------
if [[ $(id -u) -eq 0 ]]; then
  id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user: install rabbitmq-server (scripts/install-deps.sh)"
  readonly OWNER=rabbitmq:rabbitmq
  NODE_HOME=$(getent passwd rabbitmq | cut -d: -f6)
  readonly NODE_HOME
  readonly RUN_AS=(setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups)
  readonly CTL_CMD=rabbitmqctl # Debian's wrapper: switches to the rabbitmq user
else
  OWNER="$(id -un):$(id -gn)"
  readonly OWNER
  readonly NODE_HOME=$HOME
  readonly RUN_AS=()
  readonly CTL_CMD=$RABBIT_BIN/rabbitmqctl
fi
[[ -x $RABBIT_BIN/rabbitmq-server ]] || die "$RABBIT_BIN/rabbitmq-server not found: install rabbitmq-server (scripts/install-deps.sh)"

mkdir -p "$dir"
dir=$(readlink -f "$dir")
readonly STATE=$dir/broker.state ENV_FILE=$dir/broker.env PID_FILE=$dir/rabbitmq.pid

# Serialise commands on one directory (a test may restart the broker while
# another step asks for its status). The node must not inherit the lock fd.
exec 9>"$dir/.broker.lock"
flock -w 300 9 || die "another broker.sh command holds $dir/.broker.lock"

# --- saved settings ----------------------------------------------------------
NODE="" PORT="" TLS_PORT="" DIST_PORT="" SID=""
# shellcheck disable=SC1090
load_state() { [[ -f $STATE ]] && . "$STATE"; return 0; }
save_state() {
  cat >"$STATE.tmp" <<EOF
NODE=$NODE
PORT=$PORT
TLS_PORT=$TLS_PORT
DIST_PORT=$DIST_PORT
SID=$SID
EOF
  mv "$STATE.tmp" "$STATE"
}
load_state

ctl() { LC_ALL=C.UTF-8 timeout 120 "$CTL_CMD" -n "$NODE" "$@"; }

# True if pid $1 is a process this directory's node runs (its cwd is $dir).
# A stale pid that the kernel reused for something else never matches.
ours() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null &&
    [[ $(readlink "/proc/$1/cwd" 2>/dev/null) == "$dir" ]]
}
# The node's processes: the session leader (the rabbitmq-server script),
# the VM and their descendants (erl_child_setup and inet_gethost start
# sessions of their own, so a session id alone misses them). Only those that
# still run from $dir count: zombies and reused pids never do.
node_pids() {
  local vm
  vm=$(cat "$PID_FILE" 2>/dev/null || true)
  ps -eo pid=,ppid= | awk -v roots="$SID $vm" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do { grew = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
      } while (grew)
      for (p in keep) print p
    }' | while read -r p; do if ours "$p"; then echo "$p"; fi; done | sort -n | tr '\n' ' '
}
alive_of() { local p out=""; for p in "$@"; do ours "$p" && out+="$p "; done; echo "$out"; }
running() { ours "$SID" || ours "$(cat "$PID_FILE" 2>/dev/null || true)"; }
log_file() { echo "$dir/log/$NODE.log"; }

log_tail() {
  local f
  for f in "$dir/log/startup.log" "$(log_file)"; do
    [[ -s $f ]] || continue
    echo "---- last lines of $f ----" >&2
    tail -n 40 "$f" >&2
  done
}

epmd_has_node() { epmd -names 2>/dev/null | grep -q "^name ${NODE%@*} at port "; }

# --- epmd bookkeeping ----------------------------------------------------------
# One lock for all broker.sh runs of this user, held from "is epmd running?"
# until the node has registered, and around the stop-time check, so a stop
# never ends an epmd that a starting node is about to use.
EPMD_MARK=/tmp/larder-broker-epmd.$(id -u)
readonly EPMD_MARK
epmd_lock() { exec 8>"$EPMD_MARK.lock" && flock -w 120 8; }
epmd_unlock() { exec 8>&-; }
epmd_pid() { ss -Hltnp 'sport = :4369' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true; }
epmd_running() { epmd -names >/dev/null 2>&1; }
# Called after our node registered: if no epmd ran before, remember this one.
epmd_remember() {
  local pid
  pid=$(epmd_pid)
  if [[ -n $pid ]]; then echo "$pid" >"$EPMD_MARK"; fi
}
# End the epmd a broker.sh start launched, if nothing is registered with it.
epmd_release() {
  local mark pid
  mark=$(cat "$EPMD_MARK" 2>/dev/null) || return 0
  pid=$(epmd_pid)
  if [[ -z $pid || $pid != "$mark" ]]; then rm -f "$EPMD_MARK"; return 0; fi
  if ! epmd -names 2>/dev/null | grep -q '^name '; then
    epmd -kill >/dev/null 2>&1 || true
    rm -f "$EPMD_MARK"
  fi
}

port_busy() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }

# --- TLS material -------------------------------------------------------------
# A CA, a server certificate for localhost / 127.0.0.1 and a client
# certificate, all EC P-256, valid 30 days. Made once per directory so a
# restart keeps the CA that clients already trust.
make_tls() {
  local t=$dir/tls
  [[ -s $t/ca.pem && -s $t/server.pem && -s $t/client.pem ]] && return 0
  mkdir -p "$t"
  (
    cd "$t"
    umask 077
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 30 \
      -subj "/CN=Larder test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    sign() { # name subject extensions
      openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$1.pem" -days 30 -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth"
    sign client "/CN=guest" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    chmod 644 ca.pem server.pem client.pem
  ) || die "openssl failed to generate the test certificates in $t"
}

write_config() {
  mkdir -p "$dir/mnesia" "$dir/log" "$dir/conf.d"
  echo '[].' >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf" # shadows /etc/rabbitmq/rabbitmq-env.conf
  cat >"$dir/rabbitmq.conf" <<EOF
# Written by scripts/broker.sh for a throwaway node; rewritten on start.
listeners.tcp.default = 127.0.0.1:$PORT
listeners.ssl.default = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
# guest may log in over loopback only (the default, stated here on purpose).
loopback_users.guest = true
log.file.level = info
log.console = false
disk_free_limit.absolute = 50MB
EOF
}

write_env() {
  local t=$dir/tls
  # The URLs name no vhost (so "/"): rabbitmq-c's amqp_parse_url reads a
  # trailing "/" as the vhost "", which the broker does not have.
  cat >"$ENV_FILE.tmp" <<EOF
LARDER_TEST_AMQP_URL="amqp://guest@127.0.0.1:$PORT"
LARDER_TEST_AMQP_PASSWORD="guest"
LARDER_TEST_AMQP_PORT="$PORT"
LARDER_TEST_AMQPS_URL="amqps://guest@localhost:$TLS_PORT"
LARDER_TEST_AMQPS_PORT="$TLS_PORT"
LARDER_TEST_CA_FILE="$t/ca.pem"
LARDER_TEST_CLIENT_CERT="$t/client.pem"
LARDER_TEST_CLIENT_KEY="$t/client.key"
LARDER_TEST_BROKER_DIR="$dir"
LARDER_TEST_BROKER_NODE="$NODE"
LARDER_TEST_BROKER_PID="$(cat "$PID_FILE" 2>/dev/null || echo "$SID")"
LARDER_TEST_BROKER_CTL="$SELF --dir $dir"
LARDER_TEST_RABBITMQCTL="$CTL_CMD -n $NODE"
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# --- commands -------------------------------------------------------------------
# Start failed: print the logs, end whatever was started (the node, and an
# epmd it launched), and exit non-zero. Uses do_start's locals.
start_failed() {
  log_tail
  note "$1; stopping what was started"
  stop_node now >/dev/null 2>&1 || true
  if ((registered)); then
    epmd_lock || true
  elif ((!epmd_was_running)); then
    epmd_remember # the lock is still held: only our node could have launched it
  fi
  epmd_release
  epmd_unlock
  SID=""
  save_state
  die "broker start failed"
}

do_start() {
  if [[ -n $NODE ]] && running; then
    note "node $NODE already running from $dir (session $SID); options ignored"
    write_env
    return 0
  fi
  # Explicit options win; otherwise the settings of the last start in $dir.
  PORT=${opt_port:-${PORT:-5699}}
  TLS_PORT=${opt_tls_port:-${TLS_PORT:-5698}}
  DIST_PORT=${opt_dist_port:-${DIST_PORT:-25699}}
  [[ -n $opt_node ]] && NODE=$opt_node@localhost
  NODE=${NODE:-larder_test@localhost}
  [[ $PORT != "$TLS_PORT" && $PORT != "$DIST_PORT" && $TLS_PORT != "$DIST_PORT" ]] ||
    die "--port, --tls-port and --dist-port must differ ($PORT, $TLS_PORT, $DIST_PORT)"
  local p
  for p in "$PORT" "$TLS_PORT" "$DIST_PORT"; do
    port_busy "$p" && die "port $p is already in use on this host (ss -ltnp 'sport = :$p'); pick other ports with --port/--tls-port/--dist-port"
  done
  epmd_has_node && die "an Erlang node named $NODE is already registered with epmd (another broker.sh directory?); stop it or use --node"

  make_tls
  write_config
  rm -f "$PID_FILE"
  chown -R "$OWNER" "$dir"
  if ((${#RUN_AS[@]})); then
    "${RUN_AS[@]}" test -w "$dir/mnesia" ||
      die "the rabbitmq user cannot write $dir (a parent directory is not searchable?); use a directory under /tmp"
  fi

  local epmd_was_running=1 registered=0
  epmd_lock || die "another broker.sh holds $EPMD_MARK.lock"
  epmd_running || epmd_was_running=0

  # A clean environment: nothing from the caller's RABBITMQ_* leaks in, and
  # /etc/rabbitmq is not read. The distribution listener binds to loopback.
  local started=$SECONDS
  (
    cd "$dir"
    exec 8>&- 9>&-
    exec setsid "${RUN_AS[@]}" env -i \
      PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$NODE_HOME" LC_ALL=C.UTF-8 \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_NODENAME="$NODE" RABBITMQ_USE_LONGNAME=false \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$PORT" \
      RABBITMQ_DIST_PORT="$DIST_PORT" \
      RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_CONFIG_FILES="$dir/conf.d" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" \
      RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_PID_FILE="$PID_FILE" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      "$RABBIT_BIN/rabbitmq-server" </dev/null >"$dir/log/startup.log" 2>&1
  ) &
  SID=$!
  save_state

  # await_startup fails at once until the node has registered with epmd,
  # so wait for the registration (cheap), then let await_startup wait.
  local deadline=$((SECONDS + timeout_s))
  while :; do
    kill -0 "$SID" 2>/dev/null || start_failed "node $NODE exited during startup (logs in $dir/log)"
    if ((!registered)) && epmd_has_node; then
      registered=1
      ((epmd_was_running)) || epmd_remember
      epmd_unlock
    fi
    if ((registered)) && ctl await_startup --timeout "$((deadline - SECONDS + 1))" >/dev/null 2>&1; then
      break
    fi
    ((SECONDS < deadline)) || start_failed "node $NODE did not start within ${timeout_s}s (logs in $dir/log)"
    sleep 0.2
  done
  for p in "$PORT" "$TLS_PORT"; do
    port_busy "$p" || start_failed "node $NODE is up but nothing listens on port $p"
  done
  write_env
  note "node $NODE up in $((SECONDS - started))s: amqp 127.0.0.1:$PORT, amqps localhost:$TLS_PORT, dist $DIST_PORT, pid $(cat "$PID_FILE" 2>/dev/null || echo '?'), env $ENV_FILE"
}

# Ends the node's processes: rabbitmqctl stop first (graceful), then
# SIGTERM and SIGKILL for whatever is left. With "now", skips rabbitmqctl.
stop_node() {
  running || return 1
  local tree deadline=$((SECONDS + 30)) sig=TERM pids
  tree=$(node_pids)
  if [[ ${1:-} == now ]]; then
    deadline=$SECONDS
  elif ! ctl stop "$PID_FILE" >/dev/null 2>&1; then
    # rabbitmqctl stop with the pid file returns once the VM has exited.
    note "rabbitmqctl stop failed"
    deadline=$SECONDS
  fi
  while :; do
    # shellcheck disable=SC2086,SC2046
    pids=$(alive_of $tree $(node_pids))
    [[ -z $pids ]] && break
    if ((SECONDS >= deadline)); then
      [[ $sig == KILL ]] && die "node processes survived SIGKILL: $pids"
      note "sending SIG$sig to $pids"
      # shellcheck disable=SC2086
      kill -s "$sig" $pids 2>/dev/null || true
      deadline=$((SECONDS + 15)) sig=KILL
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
}

do_stop() {
  [[ -n $NODE ]] || { note "no broker was started in $dir"; return 0; }
  if stop_node; then
    note "node $NODE stopped"
  else
    note "node $NODE is not running"
  fi
  if epmd_lock; then
    epmd_release
    epmd_unlock
  fi
  SID=""
  save_state
}

require_running() {
  [[ -n $NODE ]] || die "no broker was started in $dir"
  running || die "node $NODE (from $dir) is not running; start it with: $SELF start --dir $dir"
}

do_status() {
  if [[ -z $NODE ]] || ! running; then
    echo "stopped${NODE:+: node $NODE}, dir $dir"
    return 3
  fi
  local app=stopped
  if ctl eval 'rabbit:is_running().' 2>/dev/null | grep -q true; then app=running; fi
  echo "running: node $NODE, app $app, pid $(cat "$PID_FILE" 2>/dev/null || echo '?'), session $SID"
  echo "  amqp 127.0.0.1:$PORT, amqps localhost:$TLS_PORT, dist 127.0.0.1:$DIST_PORT"
  echo "  dir $dir, env $ENV_FILE"
}

case $command in
  start) do_start ;;
  stop) do_stop ;;
  restart)
    do_stop
    do_start
    ;;
  stop_app)
    require_running
    ctl stop_app >/dev/null
    note "node $NODE: app stopped (listeners closed, VM up)"
    ;;
  start_app)
    require_running
    ctl start_app >/dev/null
    ctl await_startup --timeout "$timeout_s" >/dev/null
    note "node $NODE: app started"
    ;;
  status) do_status ;;
esac
