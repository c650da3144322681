#!/usr/bin/env bash
# Self-test of scripts/broker.sh against the real rabbitmq-server: start,
# idempotent start, AMQP and AMQPS (verified against the generated CA),
# stop_app/start_app, restart keeping data, stop leaving no process and no
# listening port behind. Uses its own node name and ports, so it can run
# beside the broker that scripts/test.sh started. About 30 s.
#
#   bash tests/scripts/broker_test.sh

# broker.env is written at run time; LARDER_TEST_* commands split on purpose.
# shellcheck disable=SC1091,SC2086
set -euo pipefail

BROKER=$(readlink -f "$(dirname "${BASH_SOURCE[0]}")/../../scripts/broker.sh")
readonly BROKER
readonly BASE=${LARDER_SELFTEST_PORT:-$((5800 + (RANDOM % 100) * 10))}
readonly PORT=$BASE TLS_PORT=$((BASE + 1)) DIST_PORT=$((BASE + 20000))
readonly NODE=larder_selftest_$$
DIR=$(mktemp -d /tmp/larder-broker-selftest.XXXXXX)
readonly DIR

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
check() { # description command...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}

cleanup() {
  "$BROKER" stop --dir "$DIR" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# Processes that still run from DIR (the node's cwd), zombies excluded.
leftovers() {
  local p out=""
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/cwd" 2>/dev/null) == "$DIR" ]] && out+="${p#/proc/} "
  done
  echo "$out"
}
listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }

t0=$SECONDS
"$BROKER" start --dir "$DIR" --port "$PORT" --tls-port "$TLS_PORT" --dist-port "$DIST_PORT" --node "$NODE"
echo "     started in $((SECONDS - t0)) s"
check "broker.env written" test -s "$DIR/broker.env"
. "$DIR/broker.env"
for v in LARDER_TEST_AMQP_URL LARDER_TEST_AMQP_PASSWORD LARDER_TEST_AMQPS_URL LARDER_TEST_CA_FILE \
  LARDER_TEST_CLIENT_CERT LARDER_TEST_CLIENT_KEY LARDER_TEST_BROKER_CTL LARDER_TEST_RABBITMQCTL \
  LARDER_TEST_BROKER_PID; do
  check "broker.env sets $v" test -n "${!v:-}"
done
pid=$LARDER_TEST_BROKER_PID
URL="amqp://guest:$LARDER_TEST_AMQP_PASSWORD@127.0.0.1:$PORT"
TLS_URL="amqps://guest:$LARDER_TEST_AMQP_PASSWORD@localhost:$TLS_PORT"

check "listens on 127.0.0.1:$PORT only" bash -c "ss -Hltn 'sport = :$PORT' | grep -q '127.0.0.1:$PORT' && ! ss -Hltn 'sport = :$PORT' | grep -qv '127.0.0.1:$PORT'"
check "status reports running" "$BROKER" status --dir "$DIR"
check "guest declares a durable queue over 127.0.0.1" amqp-declare-queue --url "$URL" -d -q selftest
check "publish over AMQP" amqp-publish --url "$URL" -r selftest -p -b hello
check "publish over AMQPS, server verified with the test CA" \
  amqp-publish --url "$TLS_URL" --ssl --cacert "$LARDER_TEST_CA_FILE" -r selftest -p -b hello-tls
check "publish over AMQPS with the client certificate" \
  amqp-publish --url "$TLS_URL" --ssl --cacert "$LARDER_TEST_CA_FILE" \
  --cert "$LARDER_TEST_CLIENT_CERT" --key "$LARDER_TEST_CLIENT_KEY" -r selftest -p -b hello-mtls
check "AMQPS refuses a server not signed by the CA given" \
  bash -c "! amqp-publish --url '$TLS_URL' --ssl --cacert /etc/ssl/certs/ca-certificates.crt -r selftest -b x"
check "rabbitmqctl from broker.env reaches the node" $LARDER_TEST_RABBITMQCTL -q list_queues

"$BROKER" start --dir "$DIR" 2>/dev/null
. "$DIR/broker.env"
check "a second start is a no-op (same pid)" test "$LARDER_TEST_BROKER_PID" = "$pid"

$LARDER_TEST_BROKER_CTL stop_app 2>/dev/null
check "stop_app closes the listener" bash -c "! amqp-publish --url '$URL' -r selftest -b x"
check "status says the app is stopped" bash -c "'$BROKER' status --dir '$DIR' | grep -q 'app stopped'"
$LARDER_TEST_BROKER_CTL start_app 2>/dev/null
check "start_app reopens it" amqp-publish --url "$URL" -r selftest -p -b again

t0=$SECONDS
$LARDER_TEST_BROKER_CTL restart 2>/dev/null
echo "     restarted in $((SECONDS - t0)) s"
. "$DIR/broker.env"
check "restart runs a new VM" test "$LARDER_TEST_BROKER_PID" != "$pid"
check "restart keeps data (durable queue with 4 persistent messages)" \
  bash -c "$LARDER_TEST_RABBITMQCTL -q list_queues name messages | grep -qE '^selftest[[:space:]]+4\$'"

t0=$SECONDS
"$BROKER" stop --dir "$DIR" 2>/dev/null
echo "     stopped in $((SECONDS - t0)) s"
check "no process left running from $DIR" test -z "$(leftovers)"
check "VM $LARDER_TEST_BROKER_PID gone" bash -c "! kill -0 $LARDER_TEST_BROKER_PID 2>/dev/null || grep -q '^State:.*Z' /proc/$LARDER_TEST_BROKER_PID/status"
for p in "$PORT" "$TLS_PORT" "$DIST_PORT"; do
  check "port $p free after stop" bash -c "! { [[ -n \$(ss -Hltn 'sport = :$p') ]]; }"
done
check "status reports stopped (exit 3)" bash -c "'$BROKER' status --dir '$DIR'; test \$? -eq 3"
check "a second stop succeeds" "$BROKER" stop --dir "$DIR"

if ((failures)); then
  echo "broker_test: $failures check(s) failed"
  exit 1
fi
echo "broker_test: all checks passed"
