#!/usr/bin/env bash
# mariadb.sh: a throwaway MariaDB server (Debian's mariadb-server 10.11) for
# the database-source tests. Everything the server writes lives under one
# directory; it listens on 127.0.0.1 only, on its own port, with its socket
# and pid file in that directory, so it never touches a system server.
#
#   scripts/mariadb.sh start --dir DIR [--port 3399] [--timeout 60]
#   scripts/mariadb.sh stop|restart|status --dir DIR
#
# The options may come before or after the command, so the line written to
# mariadb.env as LARDER_TEST_MARIADB_CTL works as a prefix:
#   $LARDER_TEST_MARIADB_CTL restart
#
# Layout of DIR (owned by the mysql user when run as root):
#   data/            the data directory (mariadb-install-db; kept by stop and
#                    restart, so a restarted server has the same tables)
#   mariadb.sock     the server's socket; root logs in through it
#   mariadb.pid      pid of mariadbd, written by the server
#   mariadb.log      the error log
#   mariadb.state    the port start used; later commands read it
#   mariadb.env      LARDER_TEST_MARIADB_* variables for tests:
#     LARDER_TEST_MARIADB_URL       mysql://larder@127.0.0.1:PORT/larder_test
#     LARDER_TEST_MARIADB_PASSWORD  the larder user's password
#     LARDER_TEST_MARIADB_PORT      the port
#     LARDER_TEST_MARIADB_CTL       this script with --dir: restart, stop, start
#
# The first start creates the database larder_test and the user larder
# (password auth over TCP from 127.0.0.1), which has every privilege on it.
# Run as root, mariadbd drops to the mysql user (--user=mysql); run as
# another user, it runs as that user.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF

die() { echo "mariadb.sh: error: $*" >&2; exit 1; }
note() { echo "mariadb.sh: $*" >&2; }

command=""
dir=""
opt_port=""
timeout_s=60
while (($#)); do
  case $1 in
    start | stop | restart | status) command=$1 ;;
    --dir) dir=${2:?--dir needs a value}; shift ;;
    --dir=*) dir=${1#*=} ;;
    --port) opt_port=${2:?--port needs a value}; shift ;;
    --port=*) opt_port=${1#*=} ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift ;;
    --timeout=*) timeout_s=${1#*=} ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ -n $command ]] || die "no command given: start, stop, restart or status"
[[ -n $dir ]] || die "--dir DIR is required"
for p in "$opt_port" "$timeout_s"; do
  [[ -z $p || $p =~ ^[0-9]+$ ]] || die "'$p' is not a number"
done
command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] ||
  die "mariadbd not found: install mariadb-server (scripts/install-deps.sh)"
export PATH=$PATH:/usr/sbin

if [[ $(id -u) -eq 0 ]]; then
  id mysql >/dev/null 2>&1 || die "no mysql user: install mariadb-server (scripts/install-deps.sh)"
  readonly RUN_USER=mysql
else
  RUN_USER=$(id -un)
  readonly RUN_USER
fi

mkdir -p "$dir"
dir=$(readlink -f "$dir")
readonly DATA=$dir/data SOCK=$dir/mariadb.sock PID_FILE=$dir/mariadb.pid LOG=$dir/mariadb.log
readonly STATE=$dir/mariadb.state ENV_FILE=$dir/mariadb.env
readonly DB=larder_test DB_USER=larder DB_PASSWORD=larder-test

# Serialise commands on one directory (a test restarts the server while
# another may ask for its status). The server must not inherit the lock fd.
exec 9>"$dir/.mariadb.lock"
flock -w 300 9 || die "another mariadb.sh command holds $dir/.mariadb.lock"

PORT=""
# shellcheck disable=SC1090
[[ -f $STATE ]] && . "$STATE"

# The server's pid if it runs from this directory: a stale pid file, or a
# pid the kernel reused, never matches (the command line names our socket).
server_pid() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--socket=$SOCK" && echo "$pid"
}

root_sql() { mariadb --no-defaults --protocol=socket --socket="$SOCK" -uroot --batch "$@"; }

do_start() {
  if pid=$(server_pid); then
    note "server already running from $dir (pid $pid); options ignored"
    return 0
  fi
  PORT=${opt_port:-${PORT:-3399}}
  [[ -z $(ss -Hltn "sport = :$PORT" 2>/dev/null) ]] ||
    die "port $PORT is already in use on this host (ss -ltnp 'sport = :$PORT'); pick another with --port"
  local fresh=0
  if [[ ! -d $DATA/mysql ]]; then
    fresh=1
    rm -rf "$DATA"
    mkdir -p "$DATA"
    chown -R "$RUN_USER:" "$dir"
    # Root logs in through the socket only (unix_socket authentication).
    mariadb-install-db --no-defaults --datadir="$DATA" --user="$RUN_USER" --skip-test-db \
      --auth-root-authentication-method=socket >"$dir/install.log" 2>&1 ||
      { tail -n 30 "$dir/install.log" >&2; die "mariadb-install-db failed (log: $dir/install.log)"; }
  fi
  echo "PORT=$PORT" >"$STATE"
  chown -R "$RUN_USER:" "$dir"
  rm -f "$PID_FILE"
  # --no-defaults: no /etc/mysql configuration is read. The session time
  # zone is the client's business; the server's stays at the system's.
  (
    exec 9>&-
    exec setsid mariadbd --no-defaults --user="$RUN_USER" --datadir="$DATA" \
      --port="$PORT" --bind-address=127.0.0.1 --socket="$SOCK" --pid-file="$PID_FILE" \
      --log-error="$LOG" --skip-name-resolve --innodb-buffer-pool-size=32M \
      --innodb-log-file-size=16M --max-connections=50 </dev/null >>"$dir/startup.log" 2>&1
  ) &
  local launcher=$! started=$SECONDS deadline=$((SECONDS + timeout_s))
  until [[ -S $SOCK ]] && mariadb-admin --no-defaults --protocol=socket --socket="$SOCK" -uroot \
    --connect-timeout=2 ping >/dev/null 2>&1; do
    if ! kill -0 "$launcher" 2>/dev/null; then
      tail -n 30 "$LOG" >&2 || true
      die "mariadbd exited during startup (log: $LOG)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LOG" >&2 || true
      kill -TERM "$launcher" 2>/dev/null || true
      die "mariadbd did not answer within ${timeout_s}s (log: $LOG)"
    fi
    sleep 0.2
  done
  if ((fresh)); then
    root_sql <<EOF || die "could not create the test database and user"
CREATE DATABASE $DB;
CREATE USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON $DB.* TO '$DB_USER'@'127.0.0.1';
EOF
  fi
  cat >"$ENV_FILE.tmp" <<EOF
LARDER_TEST_MARIADB_URL="mysql://$DB_USER@127.0.0.1:$PORT/$DB"
LARDER_TEST_MARIADB_PASSWORD="$DB_PASSWORD"
LARDER_TEST_MARIADB_PORT="$PORT"
LARDER_TEST_MARIADB_CTL="$SELF --dir $dir"
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  note "server up in $((SECONDS - started))s: 127.0.0.1:$PORT, pid $(cat "$PID_FILE" 2>/dev/null || echo '?'), env $ENV_FILE"
}

# SIGTERM is mariadbd's clean shutdown; SIGKILL only if it is still there
# after 60 s.
do_stop() {
  local pid deadline sig=TERM
  if ! pid=$(server_pid); then
    note "no server running from $dir"
    return 0
  fi
  kill -TERM "$pid"
  deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      [[ $sig == KILL ]] && die "mariadbd (pid $pid) survived SIGKILL"
      note "mariadbd (pid $pid) still running after 60s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sig=KILL deadline=$((SECONDS + 15))
    fi
    sleep 0.1
  done
  rm -f "$PID_FILE"
  note "server stopped (pid $pid)"
}

case $command in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status)
    if pid=$(server_pid); then
      echo "running: pid $pid, 127.0.0.1:$PORT, dir $dir, env $ENV_FILE"
    else
      echo "stopped, dir $dir"
      exit 3
    fi
    ;;
esac
