#!/usr/bin/env bash
# Runs docs/quickstart.md as written: every fenced block marked
# `<!-- quickstart: run -->` in order, in one bash process in a scratch
# directory. A `python` block is a file the reader saves (its first line
# names it: `# score.py`); an `sh` block is commands the reader types. The
# guide reads its paths and the broker from the variables of its first
# step, which this script sets to the test broker (broker.env), a scratch
# segment directory and the build tree.
#
#   tests/docs/quickstart_test.sh BUILD_DIR
#
# Checks that no sh or python block is left unmarked (every command in the
# guide is run), that the script succeeds, and that what the reader is told
# to expect happens: the rows are applied, the bad rows are refused, the
# older credit limits land beside newer transactions, the features read
# after the restart equal those read before.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:?usage: quickstart_test.sh BUILD_DIR}" && pwd)
guide=$root/docs/quickstart.md

if [[ -z ${LARDER_TEST_AMQP_URL:-} ]]; then
  if [[ ${LARDER_TEST_ALLOW_SKIP:-} == 1 ]]; then
    echo "quickstart_test: LARDER_TEST_AMQP_URL is not set; skipped"
    exit 77
  fi
  echo "quickstart_test: LARDER_TEST_AMQP_URL is not set: run through scripts/test.sh (it starts the test broker)" >&2
  exit 1
fi

work=$(mktemp -d /tmp/larder-quickstart.XXXXXX)
shm=$(mktemp -d /dev/shm/larder-quickstart.XXXXXX)
chmod 755 "$shm"
cleanup() {
  # The guide stops its sidecar itself; a failed run may leave it up.
  if [[ -f $work/sidecar.pid ]]; then
    pid=$(cat "$work/sidecar.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$work" "$shm"
}
trap cleanup EXIT

# The guide as a script: sh blocks verbatim, python blocks written to the file
# their first line names.
/usr/bin/python3 - "$guide" "$work/guide.sh" <<'PY'
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
blocks = list(re.finditer(r"(<!-- quickstart: run -->\n)?```(\w*)[^\n]*\n(.*?)```", text, re.S))
out = []
for m in blocks:
    marked, lang, body = m.group(1), m.group(2), m.group(3)
    if lang in ("sh", "bash", "python", "console") and not marked:
        line = text[:m.start()].count("\n") + 1
        sys.exit("docs/quickstart.md:%d: a %s block not marked <!-- quickstart: run --> (every command "
                 "in the guide is run by this test)" % (line, lang))
    if not marked:
        continue
    if lang == "python":
        first = body.splitlines()[0]
        name = re.fullmatch(r"# ([\w.-]+\.py)", first)
        if not name:
            sys.exit("a python block must start with '# FILE.py', not %r" % first)
        out.append("cat > %s <<'LARDER_QUICKSTART_EOF'\n%sLARDER_QUICKSTART_EOF\n" % (name.group(1), body))
    elif lang == "sh":
        out.append(body)
    else:
        sys.exit("a block marked to run is sh or python, not %r" % lang)
if len(out) < 10:
    sys.exit("only %d runnable blocks found in the guide" % len(out))
open(sys.argv[2], "w").write("set -euo pipefail\n" + "\n".join(out))
PY

cd "$work"
echo "quickstart_test: running docs/quickstart.md in $work (segment dir $shm)"
# Debian's python3 has the packages the guide names (scripts/install-deps.sh).
env PATH="/usr/bin:$PATH" LARDER_REPO="$root" LARDER_BUILD_DIR="$build" \
  LARDER_AMQP_URL="$LARDER_TEST_AMQP_URL" LARDER_AMQP_PASSWORD="${LARDER_TEST_AMQP_PASSWORD:-guest}" \
  LARDER_DIR="$shm" bash "$work/guide.sh" > "$work/out.txt" 2>&1 || {
  rc=$?
  cat "$work/out.txt"
  echo "--- sidecar.log"
  tail -n 40 "$work/sidecar.log" 2>/dev/null || true
  echo "quickstart_test: the guide failed (exit $rc)" >&2
  exit 1
}
cat "$work/out.txt"

fail() {
  echo "quickstart_test: $*" >&2
  exit 1
}
grep -Eq "^applied: 2000 events, [0-9]+ cards$" out.txt || fail "the transactions were not all applied"
grep -q "3 bad row(s) for table 'cards', nothing sent" out.txt || fail "the bad rows were not refused"
grep -q "500 rows in 1 messages .* 1 confirmed (500 rows), 0 returned unroutable (0 rows), 0 nacked (0 rows)" \
  out.txt || fail "larderctl publish did not report 500 confirmed rows"
grep -q "^card-0042: OK, txn_10m=[0-9]" before_restart.txt || fail "card-0042 was not read"
# The limits are six hours older than the transactions and applied all the
# same (their own field group); the aggregates are within their computed-age
# bound on every card.
grep -Eq "^card-0042: its credit limit is [0-9]+\.[0-9] h older than its last transaction, and applied$" \
  before_restart.txt || fail "the older credit limit was not applied beside the newer transactions"
grep -Eq "^scored 500 cards \(500 fresh\), [1-9][0-9]* with transactions, riskiest card-[0-9]{4}" before_restart.txt ||
  fail "the batch read failed"
grep -q "^same features after the restart$" out.txt || fail "the features differ after the restart"
grep -q "0 messages rejected" out.txt || fail "the sidecar rejected messages"
echo "quickstart_test: the guide ran as written"
