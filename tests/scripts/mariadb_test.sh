#!/usr/bin/env bash
# Self-test of scripts/mariadb.sh against the real mariadbd: start, idempotent
# start, the test user over TCP with the password of mariadb.env, restart
# keeping data, a stale pid file never signalling another process, stop
# leaving no process and no listening port behind. Uses its own directory and
# port, so it can run beside the server that scripts/test.sh started.
#
#   bash tests/scripts/mariadb_test.sh

# mariadb.env is written at run time; LARDER_TEST_* commands split on purpose.
# shellcheck disable=SC1091,SC2086
set -euo pipefail

MARIADB_SH=$(readlink -f "$(dirname "${BASH_SOURCE[0]}")/../../scripts/mariadb.sh")
readonly MARIADB_SH
PORT=${LARDER_SELFTEST_PORT:-$((3900 + RANDOM % 500))}
while [[ -n $(ss -Hltn "sport = :$PORT" 2>/dev/null) ]]; do PORT=$((3900 + RANDOM % 500)); done
readonly PORT
DIR=$(mktemp -d /tmp/larder-mariadb-selftest.XXXXXX)
readonly DIR

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
check() { # description command...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}

sleeper=""
cleanup() {
  "$MARIADB_SH" stop --dir "$DIR" >/dev/null 2>&1 || true
  if [[ -n $sleeper ]]; then kill "$sleeper" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

sql() { # as the test user, over TCP, with the password from mariadb.env
  (
    set -a
    . "$DIR/mariadb.env"
    set +a
    mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$LARDER_TEST_MARIADB_PORT" -ularder \
      -p"$LARDER_TEST_MARIADB_PASSWORD" --batch --skip-column-names larder_test -e "$1"
  )
}
listening() { [[ -n $(ss -Hltn "sport = :$PORT" 2>/dev/null) ]]; }

"$MARIADB_SH" start --dir "$DIR" --port "$PORT"
check "mariadb.env names the port" grep -q "LARDER_TEST_MARIADB_URL=\"mysql://larder@127.0.0.1:$PORT/larder_test\"" \
  "$DIR/mariadb.env"
check "listens on 127.0.0.1:$PORT" listening
check "listens on loopback only" bash -c "ss -Hltn 'sport = :$PORT' | awk '{print \$4}' | grep -qx '127.0.0.1:$PORT'"
check "status says running" "$MARIADB_SH" status --dir "$DIR"
pid=$(cat "$DIR/mariadb.pid")
check "a second start leaves the running server alone" "$MARIADB_SH" start --dir "$DIR"
check "same pid after the second start" test "$(cat "$DIR/mariadb.pid")" = "$pid"
check "the test user creates a table" sql "CREATE TABLE kept (v INT); INSERT INTO kept VALUES (42)"
if [[ $(id -u) -eq 0 ]]; then
  check "mariadbd runs as mysql" test "$(ps -o user= -p "$pid" | tr -d ' ')" = mysql
fi

$(. "$DIR/mariadb.env" && echo "$LARDER_TEST_MARIADB_CTL") restart
check "restart gives a new pid" test "$(cat "$DIR/mariadb.pid")" != "$pid"
check "restart keeps the data" test "$(sql 'SELECT v FROM kept')" = 42
check "restart keeps the port" listening

"$MARIADB_SH" stop --dir "$DIR"
check "stop: status says stopped" bash -c "! '$MARIADB_SH' status --dir '$DIR'"
check "stop: nothing listens on $PORT" bash -c "[[ -z \$(ss -Hltn 'sport = :$PORT') ]]"
ours_left() { # mariadbd processes started for DIR
  local p
  for p in $(pgrep -x mariadbd || true); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "--socket=$DIR/mariadb.sock" && return 0
  done
  return 1
}
if ours_left; then fail "stop: no mariadbd of this directory left"; else pass "stop: no mariadbd of this directory left"; fi

# A stale pid file naming a live process that is not our server: stop must
# leave it alone.
sleep 300 &
sleeper=$!
echo "$sleeper" >"$DIR/mariadb.pid"
"$MARIADB_SH" stop --dir "$DIR" >/dev/null 2>&1
check "a stale pid file's process is not signalled" kill -0 "$sleeper"

"$MARIADB_SH" start --dir "$DIR"
check "start after stop serves the same data" test "$(sql 'SELECT v FROM kept')" = 42
"$MARIADB_SH" stop --dir "$DIR"

if ((failures > 0)); then
  echo "mariadb_test: $failures checks failed"
  exit 1
fi
echo "mariadb_test: all checks passed"
