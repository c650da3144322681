#!/usr/bin/env bash
# The test command (README, .ci/run): installs the Debian packages it needs,
# builds, starts a throwaway RabbitMQ (scripts/broker.sh), PostgreSQL
# (scripts/postgres.sh) and MariaDB (scripts/mariadb.sh) on loopback, runs
# every test, and always stops all three. The exit status is the result.
#
#   bash scripts/test.sh                 all tests: unit, integration, database
#   bash scripts/test.sh --unit-only     no servers; ctest -LE 'integration|database'
#   bash scripts/test.sh --sanitize address,undefined    (build-asan/)
#   bash scripts/test.sh --sanitize thread               (build-tsan/)
#       a sanitizer build, running the tests that need no broker
#
# Other options:
#   -R REGEX        pass a test-name filter to ctest
#   --jobs N        build and test parallelism (default 2)
#   --build-dir D   build in D instead of build/ (or build-asan/, build-tsan/)
#   --skip-deps     do not run scripts/install-deps.sh
#   --fuzz-runs N   executions of the bounded read-side fuzz run (default
#                   60000; 0 skips the fuzz run), followed by 20000 of each
#                   decoder target (JSON, Protobuf, Avro). It runs after the
#                   tests, except with -R or --sanitize (scripts/fuzz.sh:
#                   clang, ASan+UBSan, build-fuzz/; LARDER_FUZZ_SEED sets its
#                   seed, default 1)
#
# No silent skip: a test that cannot run here fails, unless the environment
# is declared lacking with LARDER_TEST_ALLOW_SKIP=1 (CI never sets it). The
# run ends with the list of skipped tests (ctest and pytest) and their count;
# any skip without LARDER_TEST_ALLOW_SKIP=1 fails the run.
#
# Integration tests find the broker through the variables of broker.env
# (LARDER_TEST_AMQP_URL, LARDER_TEST_AMQP_PASSWORD, LARDER_TEST_AMQPS_URL,
# LARDER_TEST_CA_FILE, LARDER_TEST_CLIENT_CERT, LARDER_TEST_CLIENT_KEY,
# LARDER_TEST_BROKER_CTL, LARDER_TEST_RABBITMQCTL, ...; see scripts/broker.sh),
# the database tests find PostgreSQL through postgres.env
# (LARDER_TEST_POSTGRES_URL, _PASSWORD, _CTL; see scripts/postgres.sh) and
# MariaDB through mariadb.env (LARDER_TEST_MARIADB_URL, _PASSWORD, _CTL; see
# scripts/mariadb.sh).
set -euo pipefail
# The whole script is one block, read before it runs: editing or updating
# the file during a run cannot change what this run executes.
{

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly ROOT=$PWD

unit_only=0
sanitize=""
jobs=2
filter=()
skip_deps=0
build_dir_opt=""
fuzz_runs=60000
while (($#)); do
  case $1 in
    --unit-only) unit_only=1 ;;
    --sanitize) sanitize=${2:?--sanitize needs address,undefined or thread}; shift ;;
    --sanitize=*) sanitize=${1#*=} ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift ;;
    -R) filter=(-R "${2:?-R needs a regex}"); shift ;;
    --build-dir) build_dir_opt=${2:?--build-dir needs a directory}; shift ;;
    --skip-deps) skip_deps=1 ;;
    --fuzz-runs) fuzz_runs=${2:?--fuzz-runs needs a number}; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

build_dir=build
cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
case $sanitize in
  "") ;;
  address | undefined | address,undefined | undefined,address)
    build_dir=build-asan
    unit_only=1
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  thread)
    # The in-process concurrency tests of the table and client. The sidecar
    # is left out: moodycamel's queue uses standalone fences, which TSAN
    # cannot model and -Werror=tsan refuses.
    build_dir=build-tsan
    unit_only=1
    cmake_args+=(-DLARDER_BUILD_SIDECAR=OFF)
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
    ;;
  *) echo "test.sh: --sanitize takes address,undefined or thread, not '$sanitize'" >&2; exit 2 ;;
esac
[[ -n $sanitize ]] && cmake_args+=(-DLARDER_SANITIZE="$sanitize" -DLARDER_BUILD_BENCH=OFF)
[[ -n $build_dir_opt ]] && build_dir=$build_dir_opt

step() { printf '\n== test.sh: %s\n' "$*"; }

if ((!skip_deps)); then
  step "dependencies"
  bash scripts/install-deps.sh
fi

step "build ($build_dir, RelWithDebInfo${sanitize:+, sanitize=$sanitize})"
cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$jobs"

# Test commands run in a process group of their own, so that an interrupted
# run, or a test that leaves forked children behind, leaves nothing running.
group=""
end_group() {
  [[ -n $group ]] || return 0
  local pids
  pids=$(pgrep -g "$group" 2>/dev/null | tr '\n' ' ' || true)
  if [[ -n $pids ]]; then
    echo "test.sh: ending processes the tests left running: $pids" >&2
    kill -TERM -- "-$group" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      pgrep -g "$group" >/dev/null 2>&1 || break
      sleep 0.5
    done
    kill -KILL -- "-$group" 2>/dev/null || true
  fi
  group=""
}
run_grouped() {
  setsid "$@" &
  group=$!
  local rc=0
  wait "$group" || rc=$?
  end_group
  return "$rc"
}

broker_dir=""
postgres_dir=""
mariadb_dir=""
report_dir=$(mktemp -d /tmp/larder-test-report.XXXXXX)
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  end_group
  rm -rf "$report_dir"
  if [[ -n $postgres_dir ]]; then
    step "stopping the test PostgreSQL"
    scripts/postgres.sh stop --dir "$postgres_dir" || rc=1
    rm -rf "$postgres_dir"
  fi
  if [[ -n $mariadb_dir ]]; then
    step "stopping the test MariaDB"
    scripts/mariadb.sh stop --dir "$mariadb_dir" || rc=1
    rm -rf "$mariadb_dir"
  fi
  if [[ -n $broker_dir ]]; then
    step "stopping the test broker"
    scripts/broker.sh stop --dir "$broker_dir" || rc=1
    rm -rf "$broker_dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ctest_args=(--test-dir "$build_dir" --output-on-failure --no-tests=error -j "$jobs" -O "$report_dir/ctest.log"
  "${filter[@]}")
if ((unit_only)); then
  ctest_args+=(-LE 'integration|database')
else
  step "starting a throwaway RabbitMQ"
  broker_dir=$(mktemp -d /tmp/larder-test-broker.XXXXXX)
  broker_args=()
  # Another broker (say, a running demo) may hold the default ports or node
  # name; the tests read ports and node from broker.env, so any will do.
  if [[ -n $(ss -Hltn '( sport = :5699 or sport = :5698 or sport = :25699 )' 2>/dev/null) ]] ||
    epmd -names 2>/dev/null | grep -q '^name larder_test at '; then
    base=$((5700 + (RANDOM % 200) * 10))
    broker_args=(--port "$base" --tls-port "$((base + 1))" --dist-port "$((base + 20000))" --node "larder_test_$$")
  fi
  scripts/broker.sh start --dir "$broker_dir" "${broker_args[@]}"
  set -a
  # shellcheck disable=SC1091
  . "$broker_dir/broker.env"
  set +a
  step "starting a throwaway PostgreSQL"
  postgres_dir=$(mktemp -d /tmp/larder-test-postgres.XXXXXX)
  scripts/postgres.sh start --dir "$postgres_dir"
  set -a
  # shellcheck disable=SC1091
  . "$postgres_dir/postgres.env"
  set +a

  step "starting a throwaway MariaDB"
  mariadb_dir=$(mktemp -d /tmp/larder-test-mariadb.XXXXXX)
  mariadb_port=3399
  if [[ -n $(ss -Hltn "( sport = :$mariadb_port )" 2>/dev/null) ]]; then
    mariadb_port=$((3400 + RANDOM % 500))
  fi
  scripts/mariadb.sh start --dir "$mariadb_dir" --port "$mariadb_port"
  set -a
  # shellcheck disable=SC1091
  . "$mariadb_dir/mariadb.env"
  set +a
fi

status=0
step "ctest ${ctest_args[*]}"
run_grouped ctest "${ctest_args[@]}" || status=1

# Python client tests, once client_lib/python exists. Debian's interpreter:
# python3-pytest and python3-numpy are installed for it, not for others on PATH.
if [[ -z $sanitize && -d client_lib/python/tests ]]; then
  step "python tests (client_lib/python/tests)"
  LARDER_BUILD_DIR="$(cd "$build_dir" && pwd)" PYTHONPATH="$ROOT/client_lib/python${PYTHONPATH:+:$PYTHONPATH}" \
    run_grouped /usr/bin/python3 -m pytest -q -rs --junitxml="$report_dir/pytest.xml" client_lib/python/tests ||
    status=1
fi

# The bounded fuzz run: a fixed number of executions from a fixed seed, so a
# failure reproduces (scripts/fuzz.sh prints both).
if [[ -z $sanitize && ${#filter[@]} -eq 0 && $fuzz_runs != 0 ]]; then
  step "bounded fuzz run (scripts/fuzz.sh --runs $fuzz_runs)"
  run_grouped bash scripts/fuzz.sh --runs "$fuzz_runs" --jobs "$jobs" || status=1
fi

# Skipped tests: ctest lists them under "The following tests did not run"
# (GTEST_SKIP, exit code 77), pytest in its JUnit report.
step "skipped tests"
skipped=()
if [[ -f $report_dir/ctest.log ]]; then
  while IFS= read -r line; do skipped+=("ctest: $line"); done < <(
    sed -n '/The following tests did not run:/,/^[^[:space:]]/p' "$report_dir/ctest.log" |
      sed -n 's/^[[:space:]]*[0-9]* - \(.*\)$/\1/p')
fi
if [[ -f $report_dir/pytest.xml ]]; then
  while IFS= read -r line; do skipped+=("pytest: $line"); done < <(
    /usr/bin/python3 - "$report_dir/pytest.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).iter("testcase"):
    for s in case.findall("skipped"):
        print("%s::%s (%s)" % (case.get("classname"), case.get("name"), s.get("message", "")))
PY
  )
fi
for t in "${skipped[@]}"; do echo "  skipped $t"; done
echo "test.sh: ${#skipped[@]} skipped"
if ((${#skipped[@]} > 0)) && [[ ${LARDER_TEST_ALLOW_SKIP:-} != 1 ]]; then
  echo "test.sh: tests were skipped without LARDER_TEST_ALLOW_SKIP=1: this environment must run every test" >&2
  status=1
fi

if ((status == 0)); then step "all tests passed"; else step "TESTS FAILED"; fi
exit "$status"
}
