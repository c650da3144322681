#!/usr/bin/env bash
# Keeps the C ABI honest: every function larder.h declares is exported by
# the version script, called by the C test, and documented in
# docs/client.md; the version script exports nothing the header does not
# declare; its newest version node matches LARDER_ABI_VERSION_MAJOR/MINOR.
#
#   c_abi_coverage.sh larder.h larder.map c_abi_test.c client.md
set -euo pipefail
header=$1 map=$2 test=$3 doc=$4

# Declarations start in column 0 with their return type; comments in the
# header start with " *", so examples there do not count.
# The first name followed by "(" on a line is the function (a return type
# like larder_read_result is followed by a space).
mapfile -t declared < <(grep -E '^[A-Za-z_][A-Za-z0-9_ *]*[ *]larder_[a-z0-9_]+\(' "$header" |
  sed -E 's/^[^(]*[ *](larder_[a-z0-9_]+)\(.*/\1/' | sort -u)
mapfile -t exported < <(grep -oE '^[[:space:]]+larder_[a-z0-9_]+;' "$map" | tr -d ' \t;' | sort -u)

# Membership through arrays, not `printf | grep -q`: grep -q exits at its
# first match, printf then dies of SIGPIPE, and pipefail turns a found name
# into a missing one whenever the scheduler lets grep finish first.
declare -A is_declared=() is_exported=()
for f in "${declared[@]}"; do is_declared[$f]=1; done
for f in "${exported[@]}"; do is_exported[$f]=1; done

status=0
if ((${#declared[@]} < 40)); then
  echo "found only ${#declared[@]} declarations in $header: the pattern no longer matches" >&2
  status=1
fi
for f in "${declared[@]}"; do
  grep -qE "(^|[^a-z0-9_])$f\(" "$test" || { echo "$f: declared in larder.h, never called in $test" >&2; status=1; }
  [[ -n ${is_exported[$f]:-} ]] || { echo "$f: declared in larder.h, not in $map" >&2; status=1; }
  grep -q "$f" "$doc" || { echo "$f: declared in larder.h, not documented in $doc" >&2; status=1; }
done
for f in "${exported[@]}"; do
  [[ -n ${is_declared[$f]:-} ]] || { echo "$f: exported by $map, not declared in larder.h" >&2; status=1; }
done

major=$(sed -nE 's/^#define LARDER_ABI_VERSION_MAJOR ([0-9]+)$/\1/p' "$header")
minor=$(sed -nE 's/^#define LARDER_ABI_VERSION_MINOR ([0-9]+)$/\1/p' "$header")
newest=$(grep -oE '^LARDER_[0-9]+\.[0-9]+' "$map" | tail -n 1)
if [[ $newest != "LARDER_$major.$minor" ]]; then
  echo "$map's newest version node is $newest, larder.h says ABI $major.$minor" >&2
  status=1
fi
((status == 0)) && echo "${#declared[@]} functions: each exported, called by the C test and documented"
exit $status
