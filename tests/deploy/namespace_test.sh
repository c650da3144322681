#!/usr/bin/env bash
# The Kubernetes pod of docs/deployment.md, imitated with Linux namespaces.
#
#   namespace_test.sh SIDECAR LARDERCTL INFERENCE_READER PRODUCER
#
# Needs root (mounts and namespaces) and the broker of scripts/broker.sh
# (LARDER_TEST_AMQP_URL, LARDER_TEST_AMQP_PASSWORD); without them it fails,
# or exits 77 (skipped) when LARDER_TEST_ALLOW_SKIP=1 declares the
# environment lacking them. Every check runs in every passing run.
#
#   volume     a tmpfs of exactly the size `larderctl size` recommends, owned
#              by root:G with the setgid bit, as kubelet prepares an emptyDir
#              {medium: Memory} for a pod with fsGroup G
#   sidecar    own mount, IPC and PID namespaces, its own empty /dev/shm,
#              uid 65532 with supplementary group G; consumes from the real
#              broker and writes the segment (mode 0640) into the volume
#   reader     own mount, IPC and PID namespaces where the volume is the
#              only thing at /dev/shm, bind-mounted read-only; uid 65534
#              (nobody) with supplementary group G
#
# Checks: the reader reads features published through the broker (larderctl
# get and the example inference reader); writing to the volume fails with
# EROFS, even as root; a reader outside G is refused with the message that
# names the mode, owner and group; the segment file has exactly the bytes
# `larderctl size` computes, all allocated; a segment directory on a disk
# file system is refused by the sidecar and flagged by `larderctl size
# --check-dir`.
#
# Everything runs inside a private mount namespace, so the tmpfs and every
# bind mount disappear with the test's processes, whatever happens; the trap
# stops the sidecar and deletes the test's queues.
set -euo pipefail

readonly SIDECAR=${1:?usage: namespace_test.sh SIDECAR LARDERCTL INFERENCE_READER PRODUCER}
readonly LARDERCTL=${2:?} READER=${3:?} PRODUCER=${4:?}
readonly GROUP_G=47800 SIDECAR_UID=65532 READER_UID=65534

# A check that cannot run here fails the test unless LARDER_TEST_ALLOW_SKIP=1
# (never set by CI) declares the environment lacking it.
skip() {
  if [[ ${LARDER_TEST_ALLOW_SKIP:-} == 1 ]]; then
    echo "SKIP: $*"
    exit 77
  fi
  echo "FAIL: cannot run: $* (LARDER_TEST_ALLOW_SKIP=1 declares this environment lacking it and skips)" >&2
  exit 1
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok: $*"; }

if [[ ${LARDER_NS_TEST_INNER:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || skip "needs root for mounts and namespaces"
  [[ -n ${LARDER_TEST_AMQP_URL:-} && -n ${LARDER_TEST_AMQP_PASSWORD:-} ]] ||
    skip "LARDER_TEST_AMQP_URL and LARDER_TEST_AMQP_PASSWORD are not set (start scripts/broker.sh)"
  command -v setpriv >/dev/null || skip "setpriv (util-linux) is missing"
  unshare --mount --ipc --pid --fork true 2>/dev/null || skip "cannot create namespaces here"
  # Re-run inside a private mount namespace: the volume and all bind mounts
  # live and die with it.
  export LARDER_NS_TEST_INNER=1
  exec unshare --mount --propagation private -- bash "$0" "$@"
fi

T=$(mktemp -d /tmp/larder-ns-test.XXXXXX)
# The disk directory must be on a disk file system: $T may be a tmpfs
# (/tmp often is), then /var/tmp or the working directory (the build tree).
DISK=""
for base in "$T" /var/tmp "$PWD"; do
  case $(stat -f -c %T "$base" 2>/dev/null) in
    tmpfs | ramfs | "") ;;
    *) DISK=$(mktemp -d "$base/larder-ns-disk.XXXXXX") && break ;;
  esac
done
readonly T VOL=$T/vol DISK
chmod 0755 "$T"
mkdir -p "$VOL" "$T/bin"
# The unprivileged users must be able to run the tools whatever the
# permissions of the build tree.
cp "$SIDECAR" "$T/bin/larder-sidecar"
cp "$LARDERCTL" "$T/bin/larderctl"
cp "$READER" "$T/bin/larder-inference-reader"
chmod 0755 "$T/bin"/*
readonly SEG=ns-test-$$ QUEUE=larder-ns-test-$$ EXCHANGE=larder-ns-test-$$
readonly CTL=$T/bin/larderctl
sidecar_ns_pid="" sidecar_init_pid=""

# stop_sidecar SECONDS: SIGTERM to the sidecar namespace's init (bash, pid 1
# there), which forwards it to the sidecar; SIGKILL after SECONDS. Killing
# the init ends every process of its PID namespace. Returns 1 on a timeout.
stop_sidecar() {
  local timed_out=0
  [[ -n $sidecar_ns_pid ]] || return 0
  [[ -n $sidecar_init_pid ]] && kill -TERM "$sidecar_init_pid" 2>/dev/null
  for _ in $(seq 1 $(($1 * 10))); do
    kill -0 "$sidecar_ns_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$sidecar_ns_pid" 2>/dev/null; then
    timed_out=1
    [[ -n $sidecar_init_pid ]] && kill -KILL "$sidecar_init_pid" 2>/dev/null
    kill -KILL "$sidecar_ns_pid" 2>/dev/null  # unshare --kill-child=SIGKILL: the init dies with it
  fi
  wait "$sidecar_ns_pid" 2>/dev/null
  sidecar_ns_pid="" sidecar_init_pid=""
  return $((timed_out))
}

cleanup() {
  local rc=$?
  stop_sidecar 5 || true
  if [[ -n ${LARDER_TEST_RABBITMQCTL:-} ]]; then
    for q in "$QUEUE" "$QUEUE.dlq"; do $LARDER_TEST_RABBITMQCTL -q delete_queue "$q" >/dev/null 2>&1 || true; done
  fi
  if ((rc != 0)) && [[ -f $T/sidecar.log ]]; then
    echo "--- sidecar log (last 40 lines)" >&2
    tail -n 40 "$T/sidecar.log" >&2
  fi
  umount -l "$VOL" 2>/dev/null || true
  rm -rf "$T"
  [[ -z ${DISK:-} || $DISK == "$T"/* ]] || rm -rf "$DISK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

write_config() { # DIR
  cat <<EOF
segment:
  name: $SEG
  dir: $1
  mode: "0640"
tables:
  - name: users
    key_max_len: 32
    capacity: 2000
    fields:
      - {name: clicks_1h, type: int64}
      - {name: spend_usd, type: float64}
      - {name: is_premium, type: bool}
      - {name: country, type: string, max_len: 8}
      - {name: embedding, type: vector, dims: 16}
  - name: items
    key_max_len: 32
    capacity: 500
    fields:
      - {name: price, type: float64}
      - {name: ctr, type: float32}
      - {name: category, type: string, max_len: 16}
rabbitmq:
  url: $LARDER_TEST_AMQP_URL
  password_env: LARDER_AMQP_PASSWORD
  queue: {name: $QUEUE, type: quorum}
  bindings:
    - {exchange: $EXCHANGE, type: topic, routing_keys: ["users.#", "items.#"]}
  heartbeat_s: 5
  drain_timeout_s: 2
metrics: {listen: "127.0.0.1:0"}  # any free port: the log names it
logging:
  level: info
EOF
}
write_config "$VOL" >"$T/sidecar.yaml"
write_config "$DISK" >"$T/disk.yaml"
chmod 0644 "$T/sidecar.yaml" "$T/disk.yaml"

# --- sizing, and the volume at exactly the recommended size --------------
size_json=$("$CTL" size --config "$T/sidecar.yaml" --json 2>/dev/null) || fail "larderctl size failed"
json_get() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval("d"+sys.argv[2]))' "$@"; }
total=$(json_get "$size_json" '["total_bytes"]')
recommended=$(json_get "$size_json" '["recommended_tmpfs_bytes"]')
((total > 0 && recommended > total)) || fail "larderctl size: total $total, recommended $recommended"
ok "larderctl size: segment $total bytes, recommended tmpfs $recommended bytes"

# kubelet makes an fsGroup volume group-writable and setgid (files created
# in it get group G); others may traverse it, the segment's mode 0640 keeps
# them out.
mount -t tmpfs -o "size=$recommended,mode=2775,uid=0,gid=$GROUP_G" larder-volume "$VOL"

# --- a disk directory is refused ------------------------------------------
[[ -n $DISK ]] || skip "no disk file system among $T, /var/tmp and $PWD for the disk-directory check"
{
  set +e
  out=$("$CTL" size --config "$T/disk.yaml" --check-dir 2>&1)
  rc=$?
  set -e
  ((rc == 1)) && [[ $out == *"is not a tmpfs"* ]] || fail "size --check-dir on a disk directory: rc $rc: $out"
  set +e
  out=$(LARDER_AMQP_PASSWORD=$LARDER_TEST_AMQP_PASSWORD timeout 20 "$T/bin/larder-sidecar" --config "$T/disk.yaml" 2>&1)
  rc=$?
  set -e
  ((rc == 3)) && [[ $out == *"is not a tmpfs"* ]] || fail "sidecar on a disk directory: rc $rc: $out"
  [[ ! -e $DISK/$SEG ]] || fail "the sidecar created a segment on a disk directory"
  ok "a segment directory on $(stat -f -c %T "$DISK") is refused (sidecar exit 3, larderctl size --check-dir exit 1)"
}
"$CTL" size --config "$T/sidecar.yaml" --check-dir >/dev/null || fail "size --check-dir on the volume"

# --- the sidecar's namespace ------------------------------------------------
LARDER_AMQP_PASSWORD=$LARDER_TEST_AMQP_PASSWORD unshare --mount --ipc --pid --fork --kill-child=SIGKILL -- \
  bash -c '
    # its own, empty /dev/shm, as in a container: the segment goes to the volume
    mount -t tmpfs -o size=1m,mode=1777 container-shm /dev/shm
    trap "kill -TERM \$child 2>/dev/null" TERM INT
    setpriv --reuid='"$SIDECAR_UID"' --regid='"$SIDECAR_UID"' --groups='"$GROUP_G"' --inh-caps=-all \
      --bounding-set=-all -- "$1" --config "$2" &
    child=$!
    wait $child
    wait $child' _ "$T/bin/larder-sidecar" "$T/sidecar.yaml" >"$T/sidecar.log" 2>&1 &
sidecar_ns_pid=$!
for _ in $(seq 1 1200); do  # waits for the event; 120 s only guards a hang
  sidecar_init_pid=$(pgrep -P "$sidecar_ns_pid" || true)
  [[ -n $sidecar_init_pid ]] && break
  sleep 0.1
done
[[ -n $sidecar_init_pid ]] || fail "the sidecar namespace did not start"

connected=0
for _ in $(seq 1 600); do
  kill -0 "$sidecar_ns_pid" 2>/dev/null || fail "the sidecar exited at start"
  if info=$("$CTL" --dir "$VOL" --json info "$SEG" 2>/dev/null) &&
    [[ $(json_get "$info" '["connection"]') == connected ]]; then
    connected=1
    break
  fi
  sleep 0.2
done
((connected)) || fail "the sidecar did not connect within 120 s"
ok "sidecar (uid $SIDECAR_UID, groups $GROUP_G) is consuming $QUEUE into $VOL/$SEG"

# The probes of examples/k8s: /healthz and /readyz on the metrics listener.
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's|.*metrics: listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$T/sidecar.log" | head -n 1)
  [[ -n $port ]] && break
  sleep 0.2
done
[[ -n $port ]] || fail "the sidecar log names no metrics listener"
{
  for path in /healthz /readyz; do
    code=$(python3 -c 'import sys, urllib.request as u
try: print(u.urlopen(sys.argv[1], timeout=5).status)
except Exception as e: print(getattr(e, "code", e))' "http://127.0.0.1:$port$path")
    [[ $code == 200 ]] || fail "GET $path on the metrics listener: $code"
  done
  ok "the sidecar answers /healthz and /readyz with 200 (port $port)"
}

# --- the segment file: owner, group, mode, and its size ---------------------
read -r mode uid gid bytes blocks <<<"$(stat -c '%a %u %g %s %b' "$VOL/$SEG")"
[[ $mode == 640 && $uid == "$SIDECAR_UID" && $gid == "$GROUP_G" ]] ||
  fail "segment file mode $mode uid $uid gid $gid, expected 640 $SIDECAR_UID $GROUP_G"
((bytes == total)) || fail "larderctl size says $total bytes, the segment file has $bytes"
((blocks * 512 == total)) || fail "the segment file has $((blocks * 512)) bytes allocated, expected $total"
ok "segment file: mode 0640, owner $SIDECAR_UID, group $GROUP_G; $bytes bytes, all allocated, = larderctl size"
[[ ! -e /dev/shm/$SEG ]] || fail "the segment leaked into the host's /dev/shm"

# --- publish through the broker ---------------------------------------------
LARDER_AMQP_PASSWORD=$LARDER_TEST_AMQP_PASSWORD "$PRODUCER" --url "$LARDER_TEST_AMQP_URL" --exchange "$EXCHANGE" \
  --count 400 --users 20 --items 10 --seed 7 --print 0 >"$T/producer.log" 2>&1 ||
  { cat "$T/producer.log" >&2; fail "the producer failed"; }
now_ms=$(date +%s%3N)
marker='{"table":"users","key":"ns-marker","event_time":'$now_ms',"fields":{"clicks_1h":4242,"spend_usd":12.5,"country":"NZ"}}'
url_with_password=${LARDER_TEST_AMQP_URL/@/:$LARDER_TEST_AMQP_PASSWORD@}
amqp-publish --url="$url_with_password" --exchange="$EXCHANGE" --routing-key=users.ns-marker \
  --content-type=application/json --body="$marker" || fail "amqp-publish failed"
# Messages of one queue are applied in order: the marker comes last.
applied=0
for _ in $(seq 1 600); do
  if "$CTL" --dir "$VOL" get "$SEG" users ns-marker >/dev/null 2>&1; then
    applied=1
    break
  fi
  sleep 0.2
done
((applied)) || fail "the marker update did not reach the segment within 120 s"
ok "400 producer updates and a marker published through the broker are in the segment"

# --- the reader's namespace -------------------------------------------------
# in_reader_ns GROUPS CMD...: runs CMD in new mount, IPC and PID namespaces
# where the volume is the only thing at /dev/shm, read-only, and its own
# path is unmounted; as root when GROUPS is "root", else as uid 65534 with
# those supplementary groups ("none": no group).
in_reader_ns() {
  local groups=$1
  shift
  unshare --mount --ipc --pid --fork --kill-child=SIGKILL -- bash -c '
    set -e
    vol=$1 groups=$2
    shift 2
    mount --bind "$vol" /dev/shm
    mount -o remount,bind,ro /dev/shm
    umount -l "$vol"
    case $groups in
      root) exec "$@" ;;
      none) exec setpriv --reuid='"$READER_UID"' --regid='"$READER_UID"' --clear-groups --inh-caps=-all \
                --bounding-set=-all -- "$@" ;;
      *) exec setpriv --reuid='"$READER_UID"' --regid='"$READER_UID"' --groups="$groups" --inh-caps=-all \
                --bounding-set=-all -- "$@" ;;
    esac' _ "$VOL" "$groups" "$@"
}

listing=$(in_reader_ns "$GROUP_G" ls -A /dev/shm) || fail "listing the reader's /dev/shm"
[[ $(echo $listing) == "$SEG $SEG.lock" ]] || fail "the reader's /dev/shm holds '$(echo $listing)', expected the segment and its lock"
id_line=$(in_reader_ns "$GROUP_G" id -u) || fail "id in the reader namespace"
[[ $id_line == "$READER_UID" ]] || fail "the reader runs as uid $id_line"

row=$(in_reader_ns "$GROUP_G" "$CTL" --json get "$SEG" users ns-marker) || fail "reader in group $GROUP_G: larderctl get: $row"
[[ $(json_get "$row" '["status"]') == ok && $(json_get "$row" '["fields"]["clicks_1h"]') == 4242 &&
  $(json_get "$row" '["fields"]["country"]') == NZ ]] || fail "reader got $row"
ok "reader (uid $READER_UID, group $GROUP_G, read-only /dev/shm) reads the marker: clicks_1h 4242, country NZ"

out=$(in_reader_ns "$GROUP_G" "$T/bin/larder-inference-reader" --segment "$SEG" --dir /dev/shm --users 5 --items 4 2>&1) ||
  fail "the inference reader failed: $out"
[[ $out == *"u000000"* && $out == *"clicks_1h="* ]] || fail "the inference reader printed no features: $out"
ok "the example inference reader scores features in the reader namespace"

set +e
out=$(in_reader_ns "$GROUP_G" touch /dev/shm/probe 2>&1)
rc=$?
set -e
((rc != 0)) && [[ $out == *"Read-only file system"* ]] || fail "creating a file in the volume: rc $rc: $out"
set +e
out=$(in_reader_ns root bash -c ': >>"/dev/shm/$1"' _ "$SEG" 2>&1)
rc=$?
set -e
((rc != 0)) && [[ $out == *"Read-only file system"* ]] || fail "root opening the segment for writing: rc $rc: $out"
ok "writes to the volume fail with EROFS (reader creating a file; root opening the segment)"

set +e
out=$(in_reader_ns none "$CTL" get "$SEG" users ns-marker 2>&1)
rc=$?
set -e
((rc == 3)) || fail "reader outside group $GROUP_G: larderctl exit $rc, expected 3: $out"
[[ $out == *"permission denied (mode 0640, owner $SIDECAR_UID, group $GROUP_G)"* &&
  $out == *"Run the reader as a member of the file's group"* ]] || fail "unclear refusal: $out"
set +e
out=$(in_reader_ns none "$T/bin/larder-inference-reader" --segment "$SEG" --dir /dev/shm 2>&1)
rc=$?
set -e
((rc != 0)) && [[ $out == *"permission denied (mode 0640"* ]] || fail "inference reader outside the group: rc $rc: $out"
ok "a reader outside group $GROUP_G is refused: ${out%%$'\n'*}"

# --- the sidecar stops cleanly ---------------------------------------------
stop_sidecar 60 || fail "the sidecar did not stop within 60 s of SIGTERM"
[[ $("$CTL" --dir "$VOL" --json info "$SEG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connection"])') == stopped ]] ||
  fail "the segment does not record connection = stopped"
ok "the sidecar stopped on SIGTERM; the segment stays readable (connection = stopped)"
echo "PASS"
