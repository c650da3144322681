#!/usr/bin/env bash
# A bounded, reproducible run of the libFuzzer targets: the read side
# (fuzz/read_segment_fuzz.cc), then the message decoders of every format
# (fuzz/decoder_fuzz.cc for JSON, fuzz/format_fuzz.cc for Protobuf and
# Avro), built with clang, ASan and UBSan in their own build directory.
# scripts/test.sh runs it; docs/testing.md explains it.
#
#   bash scripts/fuzz.sh [--runs N] [--decoder-runs N] [--jobs N] [--build-dir D] [--build-only]
#
#   --runs N       executions of the read side (default 60000)
#   --decoder-runs N  executions of each decoder target (default 20000; 0: none)
#   --build-only   build the target, run nothing
#   --jobs N       build parallelism (default 2)
#   --build-dir D  default build-fuzz/
#
# LARDER_FUZZ_SEED sets libFuzzer's -seed (default 1): the same seed, runs
# and corpus give the same inputs. New inputs go to a temporary directory
# that is removed afterwards; the kept corpus (fuzz/corpus/read_segment and
# the regression inputs in fuzz/regressions/read_segment) is only read. A
# crash leaves its input in $PWD as crash-<sha1> and fails the run.
set -euo pipefail
{
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=60000
decoder_runs=20000
jobs=2
build_dir=build-fuzz
build_only=0
while (($#)); do
  case $1 in
    --runs) runs=${2:?--runs needs a number}; shift ;;
    --decoder-runs) decoder_runs=${2:?--decoder-runs needs a number}; shift ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift ;;
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift ;;
    --build-only) build_only=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $runs =~ ^[0-9]+$ ]] || { echo "fuzz.sh: --runs takes a number, not '$runs'" >&2; exit 2; }
[[ $decoder_runs =~ ^[0-9]+$ ]] || { echo "fuzz.sh: --decoder-runs takes a number, not '$decoder_runs'" >&2; exit 2; }
seed=${LARDER_FUZZ_SEED:-1}
[[ $seed =~ ^[0-9]+$ ]] || { echo "fuzz.sh: LARDER_FUZZ_SEED takes a number, not '$seed'" >&2; exit 2; }

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # Hits across checkouts and build directories: paths relative to the root.
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DLARDER_FUZZ=ON -DLARDER_SANITIZE=address,undefined -DLARDER_BUILD_TESTS=OFF -DLARDER_BUILD_BENCH=OFF \
  "${launcher[@]}" >/dev/null
targets=(larder_fuzz_read_segment)
((decoder_runs)) && targets+=(larder_fuzz_decoder larder_fuzz_protobuf larder_fuzz_avro)
cmake --build "$build_dir" --target "${targets[@]}" -j "$jobs"
((build_only)) && exit 0

work=$(mktemp -d /tmp/larder-fuzz-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/read_segment"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzz.sh: $runs runs, seed $seed (LARDER_FUZZ_SEED)"
# -print_funcs=0: naming each newly covered function starts llvm-symbolizer,
# which would outlive the run.
"$build_dir/fuzz/larder_fuzz_read_segment" "$work/read_segment" fuzz/corpus/read_segment fuzz/regressions/read_segment \
  -runs="$runs" -seed="$seed" -print_final_stats=1 -print_funcs=0
# The decoders read bodies straight from the queue: JSON (with its
# dictionary), Protocol Buffers and Avro, each from its kept seeds.
if ((decoder_runs)); then
  for target in decoder protobuf avro; do
    echo "fuzz.sh: larder_fuzz_$target, $decoder_runs runs, seed $seed"
    mkdir "$work/$target"
    dict=()
    [[ $target == decoder ]] && dict=(-dict=fuzz/decoder.dict)
    "$build_dir/fuzz/larder_fuzz_$target" "$work/$target" "fuzz/corpus/$target" "${dict[@]}" -max_len=4096 \
      -runs="$decoder_runs" -seed="$seed" -print_final_stats=1 -print_funcs=0
  done
fi
}
