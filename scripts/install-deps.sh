#!/usr/bin/env bash
# Installs the Debian 12 packages Larder builds, tests and demos with.
# Idempotent: packages already present are skipped by apt-get.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake pkg-config clang libclang-rt-14-dev
  # core and client
  libxxhash-dev
  # snapshot files
  libzstd-dev
  # sidecar
  librabbitmq-dev librdkafka-dev libconcurrentqueue-dev libsimdjson-dev libyaml-cpp-dev
  libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev
  # database polling source: PostgreSQL client library, and the server its tests start
  libpq-dev postgresql-15 python3-psycopg2
  # message formats: Protocol Buffers (.proto parsed at start) and Avro
  libprotobuf-dev libprotoc-dev protobuf-compiler libavro-dev
  # database polling source: MariaDB Connector/C, and the server its tests start
  libmariadb-dev mariadb-server
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev libhiredis-dev liblmdb-dev
  redis-server rabbitmq-server amqp-tools openssl procps util-linux tmux
  # python client and examples
  python3 python3-numpy python3-pika python3-confluent-kafka python3-pytest python3-pandas python3-yaml
  python3-protobuf python3-sklearn
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# The Debian package starts a broker on the default ports; Larder's scripts
# run their own throwaway nodes, so stop the system one if it came up.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
  $SUDO systemctl stop rabbitmq-server || true
fi
# The same for the MariaDB server: the tests start their own (scripts/mariadb.sh).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mariadb 2>/dev/null; then
  $SUDO systemctl stop mariadb || true
fi
