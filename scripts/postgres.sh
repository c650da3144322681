#!/usr/bin/env bash
# postgres.sh: a throwaway PostgreSQL 15 server (Debian's postgresql-15) for
# the database-source tests and bench. Everything the server writes lives
# under one directory; it listens on 127.0.0.1 only, on its own port, with
# its unix socket in that directory, so it never touches a system cluster.
#
#   scripts/postgres.sh start --dir DIR [--port 5499] [--timeout 60]
#   scripts/postgres.sh stop|restart|status --dir DIR
#
# Without --port, start takes 5499, or a free port near it when 5499 is in
# use. The options may come before or after the command, so the line written
# to postgres.env as LARDER_TEST_POSTGRES_CTL works as a prefix:
#   $LARDER_TEST_POSTGRES_CTL restart
#
# Layout of DIR (owned by the postgres user when run as root):
#   data/            the cluster (initdb; kept by stop and restart)
#   .s.PGSQL.PORT    the server's unix socket
#   postgres.log     the server's log
#   postgres.state   the port start used; later commands read it
#   postgres.env     LARDER_TEST_POSTGRES_* variables for tests:
#     LARDER_TEST_POSTGRES_URL       postgresql://larder@127.0.0.1:PORT/larder_test
#     LARDER_TEST_POSTGRES_PASSWORD  the larder role's password
#     LARDER_TEST_POSTGRES_CTL       this script with --dir: restart, stop, start
#
# The first start creates the role larder (password auth, scram-sha-256, over
# TCP) and the database larder_test it owns; the superuser postgres logs in
# through the socket only (trust). Run as root, initdb and the server run as
# the postgres user (runuser): PostgreSQL refuses to run as root.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
readonly PG_BIN=/usr/lib/postgresql/15/bin

die() { echo "postgres.sh: error: $*" >&2; exit 1; }
note() { echo "postgres.sh: $*" >&2; }

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
[[ -x $PG_BIN/pg_ctl ]] || die "$PG_BIN/pg_ctl not found: install postgresql-15 (scripts/install-deps.sh)"

mkdir -p "$dir"
dir=$(readlink -f "$dir")
readonly DATA=$dir/data LOG=$dir/postgres.log STATE=$dir/postgres.state ENV_FILE=$dir/postgres.env
readonly DB=larder_test DB_USER=larder DB_PASSWORD=larder-test

if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "no postgres user: install postgresql-15 (scripts/install-deps.sh)"
  chown postgres: "$dir"
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

# Serialise commands on one directory (a test restarts the server while
# another asks for its status). The server must not inherit the lock fd.
exec 9>"$dir/.postgres.lock"
flock -w 120 9 || die "another postgres.sh command holds $dir/.postgres.lock"

PORT=""
# shellcheck disable=SC1090
[[ -f $STATE ]] && . "$STATE"

port_free() { [[ -z $(ss -Hltn "( sport = :$1 )" 2>/dev/null) ]]; }

server_pid() {
  local pid
  pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
  return 0
}

write_env() {
  cat >"$ENV_FILE" <<ENV
LARDER_TEST_POSTGRES_URL=postgresql://$DB_USER@127.0.0.1:$PORT/$DB
LARDER_TEST_POSTGRES_PASSWORD=$DB_PASSWORD
LARDER_TEST_POSTGRES_CTL="$SELF --dir $dir"
ENV
}

start_server() {
  if [[ -n $(server_pid) ]]; then
    note "already running (pid $(server_pid))"
    return 0
  fi
  if [[ ! -f $DATA/PG_VERSION ]]; then
    [[ -n $opt_port ]] && PORT=$opt_port
    if [[ -z $PORT ]]; then
      PORT=5499
      while ! port_free "$PORT"; do PORT=$((5500 + RANDOM % 400)); done
    fi
    echo "PORT=$PORT" >"$STATE"
    local pwfile
    pwfile=$(mktemp "$dir/.pw.XXXXXX")
    echo "$DB_PASSWORD" >"$pwfile"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$pwfile"
    # The superuser needs no password over the socket; every TCP login does.
    as_owner "$PG_BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { rm -f "$pwfile"; die "initdb failed (see $dir/initdb.log)"; }
    rm -f "$pwfile"
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
CONF
    fresh=1
  else
    fresh=0
  fi
  port_free "$PORT" || die "port $PORT is in use (another server?)"
  as_owner "$PG_BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t "$timeout_s" -s 9>&- ||
    die "the server did not start within ${timeout_s}s (log: $LOG)"
  if ((fresh)); then
    as_owner "$PG_BIN/psql" -h "$dir" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<SQL ||
CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD';
CREATE DATABASE $DB OWNER $DB_USER;
SQL
      die "creating the role and database failed"
  fi
  write_env
  note "server up: 127.0.0.1:$PORT, pid $(server_pid), env $ENV_FILE"
}

stop_server() {
  local pid
  pid=$(server_pid)
  [[ -n $pid ]] || { note "not running"; return 0; }
  if ! as_owner "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t "$timeout_s" -s; then
    note "pg_ctl stop failed; sending SIGQUIT to $pid"
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && die "server $pid survived SIGQUIT"
  fi
  note "stopped"
}

case $command in
  start) start_server ;;
  stop) stop_server ;;
  restart) stop_server; start_server ;;
  status)
    if [[ -n $(server_pid) ]]; then echo "running: pid $(server_pid), port $PORT"; else echo "stopped"; exit 3; fi
    ;;
esac
