#!/usr/bin/env bash
# The run command (README): a one-command demo of Larder on this host.
#
#   bash scripts/demo.sh [--count N] [--rate MSG_PER_S] [--batch N] [--seed S]
#                        [--skip-deps] [--skip-build]
#
# It installs the Debian packages it needs, builds, starts a throwaway
# RabbitMQ on loopback (scripts/broker.sh, node larder_demo), starts the
# sidecar with examples/demo.yaml, publishes a realistic stream of feature
# updates with the C++ producer (then a short one with the Python producer),
# waits until the sidecar has applied them, runs the inference reader, which
# prints features with their age, streams raw events for 10 s while the
# reader shows one user's rolling features rise and decay, shows
# `larderctl info` of the segment, and
# then stops everything it started:
# the sidecar (SIGTERM), the broker, and the segment /dev/shm/larder-demo
# (with its writer lock file).
# Logs stay in build/demo/.
set -euo pipefail
# The whole script is one block, read before it runs: editing or updating
# the file during a run cannot change what this run executes.
{

cd "$(dirname "${BASH_SOURCE[0]}")/.."

count=20000
rate=400
batch=10
seed=42
skip_deps=0
skip_build=0
while (($#)); do
  case $1 in
    --count) count=${2:?}; shift ;;
    --rate) rate=${2:?}; shift ;;
    --batch) batch=${2:?}; shift ;;
    --seed) seed=${2:?}; shift ;;
    --skip-deps) skip_deps=1 ;;
    --skip-build) skip_build=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

readonly CONFIG=examples/demo.yaml
readonly BUILD=${LARDER_DEMO_BUILD_DIR:-build}
readonly LOGS=$BUILD/demo
readonly SIDECAR=$BUILD/sidecar/larder-sidecar
readonly PRODUCER=$BUILD/examples/larder-example-producer
readonly READER=$BUILD/examples/larder-inference-reader
readonly LARDERCTL=$BUILD/tools/larderctl

step() { printf '\n== demo: %s\n' "$*"; }
die() { echo "demo.sh: error: $*" >&2; exit 1; }

# The few settings of examples/demo.yaml this script needs: the value of
# "name:" in the block "segment:" or "queue:", the first URL, segment.dir.
[[ -f $CONFIG ]] || die "$CONFIG is missing"
yaml_name_in() {
  awk -v block="$1" '
    $0 ~ "^ *" block ":" { inside = 1; next }
    inside && /^ *name:/ { sub(/^ *name: */, ""); gsub(/["\047]/, ""); print; exit }' "$CONFIG"
}
SEGMENT=$(yaml_name_in segment)
QUEUE=$(yaml_name_in queue)
url=$(grep -oE 'amqps?://[^ "'\'']+' "$CONFIG" | head -n 1)
port=$(sed -E 's|^amqps?://([^@/]*@)?[^:/]+:([0-9]+).*|\2|;t;s/.*/5672/' <<<"$url")
shm_dir=$(awk '/^segment:/ { s = 1; next } /^[^ ]/ { s = 0 } s && /^ *dir:/ { sub(/^ *dir: */, ""); gsub(/["\047]/, ""); print; exit }' "$CONFIG")
segment_file=${shm_dir:-/dev/shm}/$SEGMENT
[[ -n $SEGMENT && -n $QUEUE && -n $url ]] ||
  die "cannot read segment.name, rabbitmq.queue.name and rabbitmq.url from $CONFIG"
grep -q 'password_env: *LARDER_AMQP_PASSWORD' "$CONFIG" ||
  die "$CONFIG must take the password from LARDER_AMQP_PASSWORD (password_env)"

if ((!skip_deps)); then
  step "dependencies"
  bash scripts/install-deps.sh
fi

if ((!skip_build)); then
  step "build ($BUILD/, RelWithDebInfo)"
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BUILD" -j 2 --target larder-sidecar larder-example-producer larder-inference-reader larderctl \
    larder_client_shared
fi
[[ -x $SIDECAR ]] || die "$SIDECAR was not built"
[[ -x $PRODUCER ]] || die "$PRODUCER was not built"
[[ -x $READER ]] || die "$READER was not built"
[[ -x $LARDERCTL ]] || die "$LARDERCTL was not built"
mkdir -p "$LOGS"

# --- everything below is stopped by cleanup, whatever happens -------------------
broker_dir=""
sidecar_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  step "stopping what the demo started"
  if [[ -n $sidecar_pid ]] && kill -0 "$sidecar_pid" 2>/dev/null; then
    kill -TERM "$sidecar_pid"
    local waited=0
    while kill -0 "$sidecar_pid" 2>/dev/null && ((waited < 150)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$sidecar_pid" 2>/dev/null; then
      echo "demo: sidecar did not exit 15 s after SIGTERM; killing it" >&2
      kill -KILL "$sidecar_pid" 2>/dev/null || true
      rc=1
    fi
    local sidecar_rc=0
    wait "$sidecar_pid" 2>/dev/null || sidecar_rc=$?
    echo "demo: sidecar exited with status $sidecar_rc (log: $LOGS/sidecar.log)"
    grep -E 'stopped cleanly|exit [0-9]' "$LOGS/sidecar.log" | tail -n 2 | sed 's/^/demo: sidecar: /' || true
    ((sidecar_rc == 0)) || rc=1
  fi
  if [[ -n $broker_dir ]]; then
    cp "$broker_dir"/log/*.log "$LOGS/" 2>/dev/null || true
    scripts/broker.sh stop --dir "$broker_dir" || rc=1
    rm -rf "$broker_dir"
  fi
  if [[ -n $sidecar_pid ]]; then
    rm -f "$segment_file" "$segment_file.lock"
    echo "demo: removed $segment_file"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The broker listens where the config's URL points. If that port is taken
# (say, by a test run), use a free one and a copy of the config that says so.
config=$CONFIG
port_busy() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
if port_busy "$port" || port_busy "$((port + 10))" || port_busy "$((port + 20010))"; then
  for candidate in $(seq 5720 10 5990); do
    if ! port_busy "$candidate" && ! port_busy "$((candidate + 10))" && ! port_busy "$((candidate + 20010))"; then
      echo "demo: port $port is in use; using $candidate and $LOGS/demo.yaml"
      sed -E "s|(amqps?://[^ \"':/]*(@[^ \"':/]*)?):$port|\1:$candidate|" "$CONFIG" >"$LOGS/demo.yaml"
      config=$LOGS/demo.yaml
      port=$candidate
      break
    fi
  done
fi

step "throwaway RabbitMQ (node larder_demo, amqp 127.0.0.1:$port)"
broker_dir=$(mktemp -d /tmp/larder-demo-broker.XXXXXX)
scripts/broker.sh start --dir "$broker_dir" --node larder_demo \
  --port "$port" --tls-port "$((port + 10))" --dist-port "$((port + 20010))"
# shellcheck disable=SC1091
. "$broker_dir/broker.env"
ctl() { $LARDER_TEST_RABBITMQCTL "$@"; }
export LARDER_AMQP_PASSWORD=$LARDER_TEST_AMQP_PASSWORD

if [[ -e $segment_file ]]; then
  echo "demo: removing $segment_file left by an earlier run"
  rm -f "$segment_file" "$segment_file.lock"
fi

step "sidecar: $SIDECAR --config $config"
"$SIDECAR" --config "$config" >"$LOGS/sidecar.log" 2>&1 &
sidecar_pid=$!
# Ready when it consumes from its queue (the queue, bindings and the
# segment exist by then).
ready=0
for _ in $(seq 1 150); do
  kill -0 "$sidecar_pid" 2>/dev/null || { tail -n 30 "$LOGS/sidecar.log" >&2; die "the sidecar exited at start"; }
  if ctl -q list_queues name consumers 2>/dev/null | awk -v q="$QUEUE" '$1 == q && $2 > 0 { f = 1 } END { exit !f }'; then
    ready=1
    break
  fi
  sleep 0.2
done
((ready)) || { tail -n 30 "$LOGS/sidecar.log" >&2; die "the sidecar did not start consuming $QUEUE within 30 s"; }
echo "demo: sidecar (pid $sidecar_pid) is consuming $QUEUE into segment $SEGMENT"

step "C++ producer: $count updates, $batch per message, $rate msg/s, seed $seed"
"$PRODUCER" --url "$LARDER_TEST_AMQP_URL" --exchange features \
  --count "$count" --batch "$batch" --rate "$rate" --seed "$seed" --print 1 |
  cut -c1-400

step "Python producer (python3-pika): 500 more updates"
/usr/bin/python3 examples/producer.py --url "$LARDER_TEST_AMQP_URL" --exchange features \
  --count 500 --batch 25 --seed "$((seed + 1))" --print 0

step "waiting until the sidecar has applied and acknowledged everything"
drained=0
for _ in $(seq 1 150); do
  left=$(ctl -q list_queues name messages 2>/dev/null | awk -v q="$QUEUE" '$1 == q { print $2 }')
  if [[ $left == 0 ]]; then
    drained=1
    break
  fi
  sleep 0.2
done
((drained)) || die "messages still queued in $QUEUE after 30 s: ${left:-?}"
ctl -q list_queues name type messages consumers 2>/dev/null | sed 's/^/demo: /'

step "inference reader"
"$READER" --segment "$SEGMENT" --dir "${shm_dir:-/dev/shm}"

step "the same features in Python (NumPy batch into a logistic regression)"
LARDER_BUILD_DIR="$BUILD" /usr/bin/python3 examples/inference.py --segment "$SEGMENT" --dir "${shm_dir:-/dev/shm}"

step "rolling features, live: 10 s of events for a few users, then silence"
# The sidecar folds raw events ("click", "amount") into windowed aggregates;
# the reader polls one user's row once a second. clicks_10s and spend_10s
# climb while the producer runs and fall back to 0 (and "-", an empty
# window) about 10 s after it stops: the sidecar refreshes them as buckets
# leave the window, with no new event.
"$PRODUCER" --url "$LARDER_TEST_AMQP_URL" --exchange features --users 20 --items 50 \
  --count 2000 --batch 1 --rate 200 --seed "$((seed + 2))" --print 0 >"$LOGS/producer-live.log" 2>&1 &
producer_pid=$!
"$READER" --segment "$SEGMENT" --dir "${shm_dir:-/dev/shm}" --watch 22 --watch-key u000000
wait "$producer_pid" || die "the live producer failed (log: $LOGS/producer-live.log)"

step "what an operator sees: larderctl info $SEGMENT"
"$LARDERCTL" --dir "${shm_dir:-/dev/shm}" info "$SEGMENT"
exit 0
}
