#!/usr/bin/env bash
# Benchmark on the local cluster: container-failure downtime by restore
# backend, and where the time goes. The counter app (N MiB of memory
# ballast) runs on ferry-b under a Checkpoint policy; 2 s after a checkpoint
# of it reached ferry-a its container is killed, and ferry restores it on
# ferry-a (containerd 2.3, the one node where both backends work) with
#   runtimeHandler  ferry-runc restores the unpacked archive in place of
#                   the container's start (the pod keeps its image);
#   containerd      the agent builds a checkpoint image of the archive and
#                   imports it into containerd, which restores it in
#                   CreateContainer (CRI restore-via-create, 2.2/2.3 only).
# Both backends run in the same invocation (helm upgrade switches the
# agents), alternating per round. Per case: the downtime (kill → the
# replacement answers), and from the controller leader's log the moments
# the failover was prepared (the restore ready on ferry-a), fenced (the
# failed instance known stopped), its replacement released to the
# scheduler and seen Running. Writes docs/bench-restore.md and prints the
# table.
#
#   hack/bench-restore.sh [--sizes "64 256"] [--rounds 3] [--backends "runtimeHandler containerd"]
#
# Needs root and the local cluster with ferry (hack/demo.sh leaves it up).
# Leaves the agents on the runtime handler (hack/cluster-values.yaml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES="64 256"
ROUNDS=3
BACKENDS="runtimeHandler containerd"
while (($#)); do
  case "$1" in
    --sizes) SIZES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --backends) BACKENDS="$2"; shift 2 ;;
    *) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

source hack/lib.sh
source hack/lib-ferry.sh
source hack/lib-bench.sh
NS=bench-restore
APP=bench
PERIOD_MS=100
APP_NODE=ferry-b
TARGET_NODE=ferry-a
ASSERT=1

use_local_cluster
HELM="$(hack/helm.sh)"

log() { printf '    %s\n' "$*"; }

CURRENT_BACKEND=""
use_backend() { # backend
  [[ "$CURRENT_BACKEND" == "$1" ]] && return 0
  log "agents restore with backend $1 (helm upgrade)"
  "$HELM" upgrade ferry charts/ferry -n ferry-system --reuse-values \
    --set "agent.restore.backend=$1" --wait --timeout 300s >/dev/null
  kubectl -n ferry-system rollout status daemonset/ferry-agent --timeout=300s >/dev/null
  wait_for 180 "ferry on both nodes" ferry_on_both_nodes
  CURRENT_BACKEND="$1"
}
# The cluster as hack/demo.sh left it, whatever happens.
restore_backend() {
  local status=$?
  [[ -z "$CURRENT_BACKEND" || "$CURRENT_BACKEND" == runtimeHandler ]] || use_backend runtimeHandler || true
  exit "$status"
}
trap restore_backend EXIT

# Seconds after the kill at which the leader logged each step of the
# failover of pod $1: "detected prepared fenced released running" ("-" if
# missing).
timeline() { # failed-pod killed-at(epoch)
  local leader_pod
  leader_pod="$(leader | awk '{print $1}')"
  kubectl -n ferry-system logs "$leader_pod" --since=3m 2>/dev/null | jq -R -r --arg pod "$1" --argjson t0 "$2" '
    def epoch: capture("^(?<s>[^.]+)(\\.(?<f>[0-9]+))?Z$") | (.s + "Z" | fromdateiso8601) + ("0." + (.f // "0") | tonumber);
    fromjson? | select(.fields.pod? == $pod and .fields.stage? != null)
    | [((.timestamp | epoch) - $t0), .fields.stage, .fields.message] | @tsv' |
    awk -F'\t' '
      function first(k, v) { if (!(k in at)) at[k] = sprintf("%.2f", v) }
      $2 == "Detected" { first("detected", $1) }
      $2 == "Detected" && index($3, "prepared the restore") { first("prepared", $1) }
      $2 == "Prepared" { first("fenced", $1) }
      $2 == "Fenced" && index($3, "released") { first("released", $1) }
      $2 == "Fenced" && index($3, "Running") { first("running", $1) }
      END {
        split("detected prepared fenced released running", k, " ")
        for (i = 1; i <= 5; i++) printf "%s%s", (k[i] in at ? at[k[i]] : "-"), (i < 5 ? " " : "\n")
      }'
}

RESULTS="$(mktemp)"
ROWS="$(mktemp)"
say "Benchmark: container-failure downtime by restore backend ($BACKENDS) at $SIZES MiB, $ROUNDS rounds"
ferry_on_both_nodes || die "ferry is not running on both nodes (hack/demo.sh leaves it up)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
place_leader "$TARGET_NODE" || die "could not place the controller leader"
for round in $(seq 1 "$ROUNDS"); do
  for backend in $BACKENDS; do
    use_backend "$backend"
    place_leader "$TARGET_NODE" || die "could not place the controller leader"
    for ballast in $SIZES; do
      : >"$RESULTS"
      run_case Checkpoint "$ballast" "$round" || die "the $backend case at $ballast MiB failed"
      [[ "$NODE" == "$APP_NODE" ]] || die "the app ran on $NODE, not $APP_NODE: the restore did not land on $TARGET_NODE"
      read -r _ _ _ down _ _ size <"$RESULTS"
      printf '%s %s %s %s %s %s\n' "$backend" "$ballast" "$round" "$down" "$size" \
        "$(timeline "$CASE_POD" "$CASE_FAILED_AT")" >>"$ROWS"
      log "$(tail -n1 "$ROWS")"
    done
  done
done
kubectl delete namespace "$NS" --wait=false >/dev/null

# Per backend and size: the medians of downtime (with min–max) and of each
# step's moment.
SUMMARY="$(sort -k1,1 -k2,2n "$ROWS" | awk "$MEDIAN_AWK"'
  function flush(   m, c) {
    if (n == 0) return
    m = median(d, n)
    printf "%s %s %s %s %s %s", s, b, m, d[1], d[n], size
    for (c = 6; c <= 10; c++) { for (i = 1; i <= n; i++) col[i] = v[c, i]; printf " %s", median(col, n) }
    printf "\n"
  }
  $1 != s || $2 != b { flush(); n = 0; s = $1; b = $2 }
  { n++; d[n] = $4; size = $5; for (c = 6; c <= 10; c++) v[c, n] = $c }
  END { flush() }')"

DOC=docs/bench-restore.md
{
  cat <<EOF
# Container failure: downtime by restore backend

Measured by \`hack/bench-restore.sh\` on the local cluster (hack/cluster.sh;
ferry installed by helm with hack/cluster-values.yaml) on $(date -u +%Y-%m-%d),
$(nproc) vCPUs, $ROUNDS rounds per cell, both backends in the same run,
commit ${FERRY_BENCH_COMMIT:-$(git rev-parse --short HEAD)}. The counter app runs on ferry-b; 2 s after a
checkpoint reached ferry-a its container is killed (\`/kill\`) and ferry
restores it on ferry-a, containerd 2.3, where both backends work. Seconds
after the kill (medians; the steps from the controller leader's log):

| backend | ballast MiB | downtime s (min–max) | archive bytes | detected | prepared | fenced | released to the scheduler | seen Running |
|---|---|---|---|---|---|---|---|---|
EOF
  awk '{ printf "| %s | %s | %s (%s–%s) | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' <<<"$SUMMARY"
  cat <<EOF

- **detected**: the controller saw the container's exit (the kubelet
  reports it) and asked the kubelet to stop the failed pod.
- **prepared**: the target agent has the restore ready: for the runtime
  handler, the archive unpacked into a one-time grant; for containerd, a
  checkpoint image built from the archive and imported into containerd.
- **fenced**: the failed instance known stopped (its pod deleted through its
  kubelet).
- **released**: ferry's scheduling gate lifted from the replacement, which
  the webhook rewrote (runtime class and grant, or checkpoint image).
- **seen Running**: the controller sees the replacement's containers run:
  the kubelet created its sandbox, and CRIU restored the process (through
  ferry-runc, or inside containerd's CreateContainer).
- **downtime**: until the restored app answers HTTP from the host.

Raw rows (backend, ballast MiB, round, downtime s, archive bytes,
detected, prepared, fenced, released, running):

\`\`\`
$(cat "$ROWS")
\`\`\`
EOF
} >"$DOC"
rm -f "$RESULTS" "$ROWS"
say "Container failure by restore backend (medians of $ROUNDS; $DOC)"
{
  printf 'backend\tballast MiB\tdowntime s\tmin\tmax\tarchive bytes\tdetected\tprepared\tfenced\treleased\trunning\n'
  tr ' ' '\t' <<<"$SUMMARY"
} | column -t -s $'\t'
