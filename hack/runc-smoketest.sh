#!/usr/bin/env bash
# Proves the mechanism of the agent's `runc` runtime end to end, with real
# CRIU on a real container:
#
#  1. two network namespaces stand for two nodes (A and B, `lo` up);
#  2. ferry-test-app runs in a runc container joined to netns A, with a
#     ballast (default 64 MiB) and stdio as pipes; a client in A holds an
#     established TCP connection to it;
#  3. `runc checkpoint --leave-running --tcp-established` writes CRIU's images
#     straight into the `checkpoint/` directory of an archive tree, which
#     becomes a kubelet/CRI-O-style checkpoint archive (uncompressed tar:
#     checkpoint/, config.dump, spec.dump, stats-dump, dump.log,
#     rootfs-diff.tar); leftover CRIU network-lock tables are removed from A;
#  4. the container on A is killed; the archive is unpacked, a bundle for B
#     is made from its spec.dump (network namespace path and cgroup path
#     rewritten), its rootfs-diff.tar applied, and `runc restore` brings the
#     container up in netns B;
#  5. on B: /health answers, /verify reports the ballast bit for bit intact,
#     and the counter continued from the checkpointed value (not from 0).
#
# Prints timings: checkpoint, archive size and tar time, unpack, restore,
# pause as the app saw it (largest gap between its counter log lines around
# the checkpoint) and CRIU's own freeze/frozen times from stats-dump.
# Everything it creates (containers, namespaces, nft tables, cgroups, files)
# is removed on exit, also on failure.
#
# Environment: BALLAST_MIB (64), PAUSE_FIRST (0: CRIU freezes the cgroup;
# 1: `runc pause` before and `runc resume` after the checkpoint, as CRI-O
# does), NETWORK_LOCK (nftables; iptables; empty: CRIU's default, iptables),
# FERRY_CACHE, KEEP=1 (keep the work
# directory), SMOKE_WORKDIR (parent of the work directory, default /tmp; put
# it on tmpfs to measure without disk writes).
# Needs root; uses hack/criu.sh (CRIU, runc, nftables) and
# hack/test-app-bundle.sh (static ferry-test-app).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

BALLAST_MIB="${BALLAST_MIB:-64}"
PAUSE_FIRST="${PAUSE_FIRST:-0}"
NETWORK_LOCK="${NETWORK_LOCK-nftables}"
TAG="$$"
NS_A="ferry-smoke-a-$TAG"
NS_B="ferry-smoke-b-$TAG"
ID_A="ferry-smoke-a-$TAG"
ID_B="ferry-smoke-b-$TAG"
PORT=8080

say() { printf 'runc-smoketest: %s\n' "$*" >&2; }
STEP="start"
step() { STEP="$*"; say "== $STEP"; }
fail() {
  say "FAILED at step '$STEP': $1"
  shift
  local f
  for f in "$@"; do
    [[ -f "$f" ]] || continue
    say "---- last lines of $f"
    tail -n 25 "$f" >&2
  done
  exit 1
}
ms() { echo $((($2 - $1) / 1000000)); }
now() { date +%s%N; }

[[ $EUID -eq 0 ]] || fail "must run as root"

step "provide CRIU and runc (hack/criu.sh)"
# shellcheck source=hack/criu.sh
source hack/criu.sh || fail "hack/criu.sh failed"
CRIU="$FERRY_CRIU"
say "criu $("$CRIU" --version | sed -n 's/^Version: //p'), $(runc --version | head -n1)"

WORK="$(mktemp -d "${SMOKE_WORKDIR:-/tmp}/ferry-runc-smoke.XXXXXX")"
RUNC_ROOT="$WORK/runc-root" # our own runc state dir: we never touch other containers
RUNC=(runc --root "$RUNC_ROOT" --criu "$CRIU")
HOLDER_PID=""

cleanup() {
  local rc=$? id ns table dir
  set +e
  [[ -n "$HOLDER_PID" ]] && kill "$HOLDER_PID" 2>/dev/null
  for id in "$ID_A" "$ID_B"; do
    if "${RUNC[@]}" state "$id" >/dev/null 2>&1; then
      "${RUNC[@]}" kill "$id" KILL 2>/dev/null
      sleep 0.2
      "${RUNC[@]}" delete -f "$id" 2>/dev/null || say "cleanup: runc delete $id failed"
    fi
  done
  for ns in "$NS_A" "$NS_B"; do
    [[ -e /run/netns/$ns ]] || continue
    # CRIU's network-lock tables (nftables lock: `inet CRIU-<pid>`).
    for table in $(nsenter --net="/run/netns/$ns" nft list tables 2>/dev/null | awk '$2=="inet" && $3 ~ /^CRIU-/ {print $3}'); do
      nsenter --net="/run/netns/$ns" nft delete table inet "$table"
    done
    ip netns delete "$ns" || say "cleanup: ip netns delete $ns failed"
  done
  # runc removes a container's cgroups on delete; remove what a failure left.
  for id in "$ID_A" "$ID_B"; do
    for dir in /sys/fs/cgroup/*/ferry/"$id" /sys/fs/cgroup/ferry/"$id"; do
      [[ -d "$dir" ]] && rmdir "$dir" 2>/dev/null
    done
  done
  for dir in /sys/fs/cgroup/*/ferry /sys/fs/cgroup/ferry; do
    [[ -d "$dir" ]] && rmdir "$dir" 2>/dev/null # only when empty: others may use /ferry
  done
  if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then
    say "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns="$1"; shift; nsenter --net="/run/netns/$ns" "$@"; }
http() { # http <ns> <path>: GET through the namespace's loopback
  in_ns "$1" curl -fsS --max-time 2 "http://127.0.0.1:$PORT$2"
}
wait_health() { # wait_health <ns> <seconds>
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    http "$1" /health >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}
counter_of() { jq -er .counter; }

step "network namespaces $NS_A and $NS_B (lo up)"
for ns in "$NS_A" "$NS_B"; do
  ip netns add "$ns" || fail "ip netns add $ns"
  in_ns "$ns" ip link set lo up || fail "lo up in $ns"
done

step "bundle for node A (hack/test-app-bundle.sh, ballast $BALLAST_MIB MiB)"
"$REPO/hack/test-app-bundle.sh" --ballast-mib "$BALLAST_MIB" --netns "/run/netns/$NS_A" \
  --id "$ID_A" "$WORK/bundle-a" >/dev/null || fail "test-app-bundle.sh for A"
# CRIU options runc has no flag for go into a CRIU config file named by the
# bundle annotation org.criu.config (else runc reads /etc/criu/runc.conf).
if [[ -n "$NETWORK_LOCK" ]]; then
  printf 'network-lock %s\n' "$NETWORK_LOCK" >"$WORK/criu.conf"
  jq --arg conf "$WORK/criu.conf" '.annotations["org.criu.config"] = $conf' \
    "$WORK/bundle-a/config.json" >"$WORK/config.tmp" && mv "$WORK/config.tmp" "$WORK/bundle-a/config.json"
fi
ROOTFS_STAMP="$WORK/rootfs.stamp"
touch "$ROOTFS_STAMP"

step "runc run on A (stdio are pipes to a log reader)"
LOG_A="$WORK/app-a.log"
LOG_B="$WORK/app-b.log"
# stdin: a pipe whose writer is gone; stdout+stderr: a pipe into `cat`.
# CRIU restores pipes (runc maps them onto the restoring runc's stdio), not
# host files.
: | "${RUNC[@]}" run -d --bundle "$WORK/bundle-a" "$ID_A" > >(exec cat >>"$LOG_A") 2>&1 ||
  fail "runc run" "$LOG_A"
wait_health "$NS_A" 20 || fail "/health on A did not answer in 20 s" "$LOG_A"
say "serving on A; $(http "$NS_A" /verify)"

step "a client in A holds an established TCP connection to the app"
in_ns "$NS_A" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT; exec sleep 600" &
HOLDER_PID=$!
sleep 1.2 # let the counter run a little
in_ns "$NS_A" ss -Htn state established "( sport = :$PORT )" | grep -q . ||
  fail "no established connection to the app in A"

step "runc checkpoint --leave-running --tcp-established"
ARCH_DIR="$WORK/archive-a"
mkdir -p "$ARCH_DIR"
before="$(http "$NS_A" /state | counter_of)" || fail "GET /state on A"
t0=$(now)
if [[ "$PAUSE_FIRST" == 1 ]]; then
  # runc's own freezer is fast; CRIU's polls the v1 freezer in 100 ms steps
  # and skips that when the cgroup is already frozen (CRI-O does the same).
  "${RUNC[@]}" pause "$ID_A" >"$WORK/checkpoint.out" 2>&1 || fail "runc pause" "$WORK/checkpoint.out"
fi
"${RUNC[@]}" checkpoint --leave-running --tcp-established \
  --image-path "$ARCH_DIR/checkpoint" --work-path "$WORK/ckpt-work" "$ID_A" \
  >>"$WORK/checkpoint.out" 2>&1 ||
  fail "runc checkpoint" "$WORK/checkpoint.out" "$WORK/ckpt-work/dump.log"
if [[ "$PAUSE_FIRST" == 1 ]]; then
  "${RUNC[@]}" resume "$ID_A" >>"$WORK/checkpoint.out" 2>&1 || fail "runc resume" "$WORK/checkpoint.out"
fi
t1=$(now)
CKPT_MS=$(ms "$t0" "$t1")
after="$(http "$NS_A" /state | counter_of)" || fail "GET /state on A after the checkpoint (--leave-running)"
say "checkpoint took ${CKPT_MS} ms; counter $before before, $after after; app on A still serving"

step "remove CRIU network-lock leftovers in A"
leftover="$(in_ns "$NS_A" nft list tables | awk '$2=="inet" && $3 ~ /^CRIU-/ {print $3}')"
for table in $leftover; do in_ns "$NS_A" nft delete table inet "$table"; done
say "lock tables removed from A: ${leftover:-none}; tables now: $(in_ns "$NS_A" nft list tables | tr '\n' ' ')"

step "build the checkpoint archive (kubelet/CRI-O layout)"
t0=$(now)
cp "$WORK/ckpt-work/stats-dump" "$ARCH_DIR/stats-dump" || fail "no stats-dump from CRIU"
cp "$WORK/ckpt-work/dump.log" "$ARCH_DIR/dump.log"
cp "$WORK/bundle-a/config.json" "$ARCH_DIR/spec.dump"
created="$(jq -r .created "$RUNC_ROOT/$ID_A/state.json")"
jq -n --arg id "$ID_A" --arg created "$created" --arg at "$(date -u +%FT%T.%NZ)" '{
  id: $id, name: "app", rootfsImage: "ferry-test-app", rootfsImageRef: "", rootfsImageName: "ferry-test-app",
  runtime: "runc", createdTime: $created, checkpointedTime: $at,
  restoredTime: "0001-01-01T00:00:00Z", restored: false }' >"$ARCH_DIR/config.dump"
# Root file system changes since the container started (mount points and the
# image's own files excluded). The runc runtime would take an overlay's upper
# dir; here the rootfs is a plain directory, so files newer than the start.
(cd "$WORK/bundle-a/rootfs" &&
  find . -mindepth 1 \( -path ./proc -o -path ./dev -o -path ./sys \) -prune -o \
    -type f -newer "$ROOTFS_STAMP" -print0 |
  tar --null --no-recursion -cf "$ARCH_DIR/rootfs-diff.tar" --files-from=-) ||
  fail "creating rootfs-diff.tar"
ARCHIVE="$WORK/checkpoint-${ID_A}-$(date -u +%Y-%m-%dT%H:%M:%SZ).tar"
tar -cf "$ARCHIVE" -C "$ARCH_DIR" checkpoint config.dump spec.dump stats-dump dump.log rootfs-diff.tar ||
  fail "tar of the archive"
t1=$(now)
TAR_MS=$(ms "$t0" "$t1")
ARCHIVE_BYTES=$(stat -c %s "$ARCHIVE")
say "archive $(basename "$ARCHIVE"): $((ARCHIVE_BYTES / 1048576)) MiB, built in ${TAR_MS} ms; members: $(tar -tf "$ARCHIVE" | grep -v '^checkpoint/.' | tr '\n' ' ')"

step "node A dies: kill the container and the client"
"${RUNC[@]}" kill "$ID_A" KILL || fail "runc kill $ID_A"
kill "$HOLDER_PID" 2>/dev/null || true
HOLDER_PID=""
for _ in $(seq 50); do
  [[ "$("${RUNC[@]}" state "$ID_A" 2>/dev/null | jq -r .status)" == stopped ]] && break
  sleep 0.05
done
"${RUNC[@]}" delete -f "$ID_A" || fail "runc delete $ID_A"
KILLED_AT=$(now)
http "$NS_A" /health >/dev/null 2>&1 && fail "the app on A still answers after the kill"

step "node B: unpack the archive and make a bundle from spec.dump"
t0=$(now)
RESTORE_DIR="$WORK/restore-b"
mkdir -p "$RESTORE_DIR"
tar -xf "$ARCHIVE" -C "$RESTORE_DIR" || fail "unpacking $ARCHIVE"
for member in checkpoint/inventory.img config.dump spec.dump; do
  [[ -e "$RESTORE_DIR/$member" ]] || fail "archive lacks $member"
done
# The image's rootfs (here: the static binary), then the container's changes.
"$REPO/hack/test-app-bundle.sh" --ballast-mib "$BALLAST_MIB" --netns "/run/netns/$NS_B" \
  --id "$ID_B" "$WORK/bundle-b" >/dev/null || fail "test-app-bundle.sh for B"
tar -xf "$RESTORE_DIR/rootfs-diff.tar" -C "$WORK/bundle-b/rootfs" || fail "applying rootfs-diff.tar"
# The checkpointed spec, with only the node-specific parts rewritten: the
# network namespace the container joins, and its cgroup.
jq --arg netns "/run/netns/$NS_B" --arg cgroup "/ferry/$ID_B" '
  .linux.namespaces = [.linux.namespaces[] | if .type == "network" then .path = $netns else . end]
  | .linux.cgroupsPath = $cgroup | .root.path = "rootfs"
' "$RESTORE_DIR/spec.dump" >"$WORK/bundle-b/config.json" || fail "rewriting spec.dump for B"
t1=$(now)
UNPACK_MS=$(ms "$t0" "$t1")

step "runc restore on B (images from the unpacked archive)"
t0=$(now)
: | "${RUNC[@]}" restore -d --tcp-established --image-path "$RESTORE_DIR/checkpoint" \
  --work-path "$WORK/restore-work" --bundle "$WORK/bundle-b" "$ID_B" \
  > >(exec cat >>"$LOG_B") 2>&1 ||
  fail "runc restore" "$LOG_B" "$WORK/restore-work/restore.log"
t1=$(now)
RESTORE_MS=$(ms "$t0" "$t1")
wait_health "$NS_B" 10 || fail "/health on B did not answer after restore" "$LOG_B" "$WORK/restore-work/restore.log"
SERVING_AT=$(now)
say "restore took ${RESTORE_MS} ms; kill to serving on B: $(ms "$KILLED_AT" "$SERVING_AT") ms (unpack and bundle ${UNPACK_MS} ms included)"

step "verify on B: ballast intact, counter continued"
verify="$(http "$NS_B" /verify)" || fail "GET /verify on B"
say "B /verify: $verify"
[[ "$(jq -r .ballast_ok <<<"$verify")" == true ]] || fail "ballast does not verify on B: $verify"
[[ "$(jq -r .ballast_bytes <<<"$verify")" == $((BALLAST_MIB << 20)) ]] || fail "ballast size differs: $verify"
first_b="$(sed -n 's/.* counter=\([0-9]*\)$/\1/p' "$LOG_B" | head -n1)"
[[ -n "$first_b" ]] || fail "no counter line from the restored app" "$LOG_B"
((first_b > before && first_b <= after + 1)) ||
  fail "restored counter starts at $first_b, expected in ($before, $((after + 1))] (checkpointed between $before and $after)" "$LOG_B"
in_ns "$NS_B" ss -Htn state established "( sport = :$PORT )" >"$WORK/b-established.txt" || true
say "counter continued at $first_b (checkpointed value $((first_b - 1)); A showed $before before and $after after the checkpoint)"
say "established connections restored in B: $(wc -l <"$WORK/b-established.txt") (the peer stayed on A)"

step "timings"
# The app's view: largest gap between consecutive counter lines on A
# (period 100 ms; the excess is the freeze).
gap="$(awk '/ counter=/ { split($1, t, "T"); split(t[2], h, ":"); s = h[1]*3600 + h[2]*60 + h[3];
  if (seen) { d = s - prev; if (d > max) max = d } prev = s; seen = 1 }
  END { printf "%.0f", max * 1000 }' "$LOG_A")"
# CRIU's own numbers: stats-dump is a CRIU image (two magics, a 4-byte size,
# then a StatsEntry protobuf whose field 1 is DumpStatsEntry: freezing_time=1,
# frozen_time=2, memdump_time=3, memwrite_time=4, pages_written=7; µs).
criu_stats="$(python3 - "$ARCH_DIR/stats-dump" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
size = struct.unpack_from("<I", data, 8)[0]
msg = data[12:12 + size]
def varint(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1; v |= (c & 0x7f) << s; s += 7
        if c < 0x80: return v, i
def fields(b):
    i, out = 0, {}
    while i < len(b):
        key, i = varint(b, i)
        if key & 7 == 0:
            out[key >> 3], i = varint(b, i)
        elif key & 7 == 2:
            n, i = varint(b, i); out[key >> 3] = b[i:i + n]; i += n
        else:
            raise SystemExit("unexpected wire type")
    return out
d = fields(fields(msg)[1])
print("freezing %.1f ms, frozen %.1f ms, memdump %.1f ms, memwrite %.1f ms, pages written %d" % (
    d.get(1, 0) / 1e3, d.get(2, 0) / 1e3, d.get(3, 0) / 1e3, d.get(4, 0) / 1e3, d.get(7, 0)))
EOF
)" || criu_stats="(stats-dump unreadable)"

cat <<EOF

ferry runc smoke test: PASSED ($(uname -r), $(nproc) cores, criu $("$CRIU" --version | sed -n 's/^Version: //p'), $(runc --version | head -n1))
  ballast                  $BALLAST_MIB MiB
  checkpoint (runc)        ${CKPT_MS} ms  (--leave-running --tcp-established; runc pause/resume around it: $PAUSE_FIRST; network lock: ${NETWORK_LOCK:-criu default})
  CRIU stats-dump          $criu_stats
  app pause (largest gap)  ${gap} ms between counter lines (period 100 ms)
  archive                  $ARCHIVE_BYTES bytes ($((ARCHIVE_BYTES / 1048576)) MiB), tar built in ${TAR_MS} ms
  unpack + bundle on B     ${UNPACK_MS} ms
  restore (runc)           ${RESTORE_MS} ms
  kill -> serving on B     $(ms "$KILLED_AT" "$SERVING_AT") ms
  counter                  ${before} before checkpoint, restored app continued at ${first_b}
  ballast                  verified bit for bit on B
EOF
