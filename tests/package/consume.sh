#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then configures, builds and
# runs a small project that uses find_package(larder) and larder::client.
#   consume.sh BUILD_DIR WORK_DIR
set -euo pipefail
build=$1 work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work/app"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
cp "$here/CMakeLists.txt.in" "$work/app/CMakeLists.txt"
cp "$here/main.cc" "$work/app/main.cc"
cmake -S "$work/app" -B "$work/app/build" -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/configure.log"
cmake --build "$work/app/build" >"$work/build.log"
"$work/app/build/app"
