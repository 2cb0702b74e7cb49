#!/usr/bin/env bash
# The main demo: a real failover that keeps a container's memory, on a real
# two-node Kubernetes cluster on this machine (hack/cluster.sh: kubelets,
# containerd 2.3, runc, CRIU), with ferry installed by helm.
#
# A Deployment runs ferry's test app (a counter that ticks every 100 ms
# beside a 64 MiB memory ballast) under a CheckpointPolicy. Once a
# checkpoint is replicated to the other node, two failures are shown:
#   1. container: the app's process dies (the kubelet sees it terminate);
#      ferry restores the newest checkpoint on the standby node;
#   2. node: the pod's node fails (its kubelet, containerd and containers
#      are killed); ferry restores on the other node.
# After each: the counter at failure, after restore, steps lost, downtime,
# where the time went, and `kubectl get checkpointpolicies`. At the end,
# ferry-report prints what the controller recorded in its history database
# (PostgreSQL on the host, hack/history-db.sh): checkpoint, pause,
# replication and downtime percentiles, and draws two charts.
#
#   hack/demo.sh [--assert] [--down]
#     --assert  exit non-zero unless each restore continues the counter from
#               its checkpoint (not from zero), the ballast verifies,
#               exactly one app pod, owned by its ReplicaSet, is left and
#               no checkpoint image is left on either node
#               (the tier-5 test, hack/e2e.sh, runs this)
#     --down    tear the cluster down at the end (hack/cluster.sh down)
#
# Needs root on a Debian bookworm machine with Rust and Go: the first run
# builds Kubernetes v1.34.4, containerd v2.3.7 and CRIU 4.2.1 (cached under
# /var/cache/ferry) and installs Debian packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ASSERT=0
DOWN=0
for arg in "$@"; do
  case "$arg" in
    --assert) ASSERT=1 ;;
    --down) DOWN=1 ;;
    *) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

export FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
source hack/lib.sh
source hack/lib-ferry.sh
NS=demo
APP=counter
PERIOD_MS=100

# The demo talks to a reader: indented, on stdout.
log() { printf '    %s\n' "$*"; }

cleanup() {
  local status=$?
  failed_command "$status"
  if ((DOWN)); then
    say "Tearing the cluster down (hack/cluster.sh down)"
    hack/cluster.sh down || status=1
  fi
  exit "$status"
}
trap cleanup EXIT
trace_errors

# ferry-report reads the history the controller records in PostgreSQL;
# built before any cluster runs.
say "ferry-report (cargo build --release -p ferry-report)"
REPORT_TARGET="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
progress "ferry-report (cargo build --release)" "$FERRY_CACHE/logs/cargo-report.log" \
  env CARGO_TARGET_DIR="$REPORT_TARGET" cargo build --locked --release -p ferry-report ||
  die "building ferry-report failed"
REPORT="$REPORT_TARGET/release/ferry-report"

say "Cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, nodes ferry-a and ferry-b (hack/cluster.sh up)"
hack/cluster.sh up
eval "$(hack/cluster.sh env)"
export KUBECONFIG=/var/lib/ferry-cluster/admin.kubeconfig
PATH="$(hack/kube-assets.sh --with-kubelet):$PATH"
export PATH
kubectl get nodes -o wide

say "ferry: images built and imported on both nodes, helm install (hack/ferry-install.sh)"
hack/ferry-install.sh
kubectl -n ferry-system get pods -o wide

say "The app: a Deployment of the counter (64 MiB ballast) and its CheckpointPolicy"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" delete deployment "$APP" --ignore-not-found --wait=true >/dev/null
kubectl -n "$NS" delete checkpointpolicy "$APP" --ignore-not-found --wait=true >/dev/null
kubectl -n "$NS" wait --for=delete pod -l app="$APP" --timeout=120s >/dev/null 2>&1 || true
kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $APP, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: $APP}}
  template:
    metadata: {labels: {app: $APP}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: localhost/ferry/test-app:dev
        imagePullPolicy: Never
        args: ["--listen", "0.0.0.0:8080", "--ballast-mib", "64", "--period-ms", "$PERIOD_MS"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 2, failureThreshold: 2}
---
apiVersion: ferry.dev/v1alpha1
kind: CheckpointPolicy
metadata: {name: $APP, namespace: $NS}
spec:
  selector: {matchLabels: {app: $APP}}
  containers: [app]
  interval: 10s
  standbys: 1
  failover:
    triggers: [ContainerFailure, PodLoss, NodeLoss]
    nodeLossGracePeriod: 5s
    maxCheckpointAge: 5m
EOF

# A failure and its restore. $1: scenario name, $2: function that injects
# it, $3: where the controller leader runs when it happens: "failed" (the
# app's node) or "surviving" (the other node).
scenario() {
  local name="$1" inject="$2" placement="$3"
  say "Scenario: $name (controller leader on the $placement node)"
  ferry_on_both_nodes || return 0
  wait_for 180 "a Running app pod" has_app_pod || return 0
  read -r POD NODE IP <<<"$POD_LINE"
  wait_for 60 "the app answering at $IP" answers "$IP" || return 0
  if [[ "$placement" == failed ]]; then
    place_leader "$NODE" || return 0
  else
    place_leader "$(other_node "$NODE")" || return 0
  fi
  local uid
  uid="$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.metadata.uid}')"
  log "app pod $POD on $NODE ($IP); waiting for a checkpoint replicated to the other node"
  wait_for 120 "a replicated checkpoint of $POD" fresh_checkpoint "$uid" || return 0
  # One more interval so the checkpoint in hand is a periodic one.
  sleep 3
  fresh_checkpoint "$uid"
  local replicate_ms verified_ms standby_node
  replicate_ms="$(replication_ms "$CK_ARCHIVE")"
  verified_ms="$(verified_ms "$CK_ARCHIVE")"
  standby_node="$(other_node "$NODE")"
  wait_for 60 "a warm standby pod Running on $standby_node" warm_standby_running "$standby_node" || return 0
  kubectl get checkpointpolicies -A

  local before failed_at pods answered watcher prober
  pods="$(mktemp)" answered="$(mktemp)"
  watch_app_pods "$pods" &
  watcher=$!
  poll 10 test -s "$pods" || log "the watch of the app's pods printed nothing yet"
  before="$(counter_of "$IP")"
  failed_at=$(now)
  "$inject" "$POD" "$NODE" "$IP"
  log "failure injected at counter $before"
  probe_replacement "$NODE" "$pods" "$answered" &
  prober=$!

  local serving_at after verify
  poll 180 test -s "$answered" || true
  stop_job "$prober"
  stop_job "$watcher"
  local first_pod
  read -r serving_at after _ first_pod <"$answered" || true
  rm -f "$pods" "$answered"
  [[ -n "$serving_at" ]] || {
    fail "a replacement on another node than $NODE answering: not within 180s"
    return 0
  }
  wait_for 60 "one Running app pod, on the other node" replacement_running "$NODE" || return 0
  read -r NEW_POD NEW_NODE NEW_IP <<<"$POD_LINE"
  [[ "$first_pod" == "$NEW_POD" ]] ||
    fail "$name: $first_pod answered first, but the app pod that runs is $NEW_POD"
  verify="$(curl -fsS --max-time 5 "http://$NEW_IP:8080/verify" || echo '{}')"

  local failover started fenced completed image runtime_class restored_from new_runtime
  failover="$(kubectl -n "$NS" get checkpointpolicy "$APP" -o json | jq -c '.status.lastFailover // {}')"
  started="$(jq -r '.startedAt // empty' <<<"$failover")"
  fenced="$(jq -r '.fencedAt // empty' <<<"$failover")"
  completed="$(jq -r '.restoredAt // empty' <<<"$failover")"
  image="$(kubectl -n "$NS" get pod "$NEW_POD" -o jsonpath='{.spec.containers[0].image}')"
  runtime_class="$(kubectl -n "$NS" get pod "$NEW_POD" -o jsonpath='{.spec.runtimeClassName}')"
  restored_from="$(kubectl -n "$NS" get pod "$NEW_POD" -o jsonpath='{.metadata.annotations.ferry\.dev/restored-from}')"
  new_runtime="$(kubectl get node "$NEW_NODE" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')"

  local at_checkpoint lost
  # The counter when the checkpoint was taken, from its tick rate.
  at_checkpoint="$(awk -v c="$before" -v f="$failed_at" -v t="$CK_TAKEN" -v p="$PERIOD_MS" \
    'BEGIN { v = c - (f - t) * 1000 / p; printf "%d", (v < 0 ? 0 : v) }')"
  lost=$((before - after))
  say "Timeline of \"$name\""
  log "checkpoint through the kubelet:  ${CK_MS} ms (archive ${CK_ARCHIVE:0:12}…, replicas: $CK_REPLICAS)"
  log "replication to the standby:      ${replicate_ms:-?} ms (from the start of the stream, beside storing)"
  log "checkpoint to verified replica:  ${verified_ms:-?} ms (the request to the kubelet until the standby verified it; replicated while stored)"
  log "failure:                         $POD on $NODE, counter $before"
  if [[ -n "$started" ]]; then
    log "detected (failover recorded):    +$(secs "$failed_at" "$(iso_to_epoch "$started")") s = detection time (status keeps whole seconds)"
  fi
  if [[ -n "$fenced" ]]; then
    log "old instance known stopped:      +$(secs "$failed_at" "$(iso_to_epoch "$fenced")") s ($(jq -r '.fence // ""' <<<"$failover"))"
  fi
  log "evidence:                        $(jq -r '(.evidence // []) | join("; ")' <<<"$failover")"
  if [[ -n "$completed" ]]; then
    log "restore completed (pod Running): +$(secs "$failed_at" "$(iso_to_epoch "$completed")") s"
  fi
  log "warm standby pod there:          ${WARM_LINE% *} (Running before the failure)"
  log "kubelet of $NEW_NODE:             $(kubelet_steps "$NEW_POD" "$NEW_NODE" "$failed_at")"
  log "serving again:                   +$(secs "$failed_at" "$serving_at") s = downtime (first answer, asked every 50 ms)"
  log "replacement:                     $NEW_POD on $NEW_NODE ($new_runtime), image $image, runtime class ${runtime_class:-(none)}"
  log "restored from:                   ${restored_from:-?}"
  log "counter: at checkpoint ~$at_checkpoint, at failure $before, after restore $after → $lost steps lost (${PERIOD_MS} ms each)"
  log "ballast after restore:           $(jq -c . <<<"$verify")"
  log "last failover: $(jq -c '{reason, stage, fromNode, toNode, coldStart, checkpointAge, message}' <<<"$failover")"
  # What the history must hold for this failover (checked at the end).
  printf '%s %s\n' "$uid" "$CK_ARCHIVE" >>"$RECORDED"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$placement" "$NEW_NODE (${new_runtime#containerd://})" \
    "$( [[ -n "$started" ]] && secs "$failed_at" "$(iso_to_epoch "$started")")" \
    "$( [[ -n "$fenced" ]] && secs "$failed_at" "$(iso_to_epoch "$fenced")")" \
    "$(secs "$failed_at" "$serving_at")" "$lost" >>"$TIMINGS"
  kubectl get checkpointpolicies -A

  # What the e2e test asserts.
  ((after >= at_checkpoint && after > 0)) ||
    fail "$name: counter after restore ($after) is below the checkpointed value (~$at_checkpoint): not restored"
  [[ "$NEW_NODE" != "$NODE" ]] || fail "$name: replacement runs on the failed node $NODE"
  # The local cluster restores through ferry's runtime handler
  # (hack/cluster-values.yaml): the pod keeps its image.
  [[ "$runtime_class" == ferry && "$image" == localhost/ferry/test-app:dev ]] ||
    fail "$name: the replacement runs image $image with runtime class '${runtime_class}', not the app's image through ferry's runtime handler"
  [[ "$(jq -r '.ballast_ok // false' <<<"$verify")" == true ]] || fail "$name: ballast does not verify after restore: $verify"
  [[ "$(jq -r '.stage // empty' <<<"$failover")" == Completed && "$(jq -r '.coldStart // false' <<<"$failover")" == false ]] ||
    fail "$name: lastFailover is not a completed warm restore: $failover"
  sleep 3
  local pods owners
  pods="$(kubectl -n "$NS" get pods -l app="$APP" -o json)"
  [[ "$(jq '[.items[] | select(.metadata.deletionTimestamp == null)] | length' <<<"$pods")" == 1 ]] ||
    fail "$name: expected exactly one app pod, got: $(jq -r '[.items[].metadata.name] | join(" ")' <<<"$pods")"
  owners="$(jq -r '[.items[] | select(.metadata.deletionTimestamp == null) | .metadata.ownerReferences[]? | select(.controller) | .kind] | join(",")' <<<"$pods")"
  [[ "$owners" == ReplicaSet ]] || fail "$name: the app pod is owned by '$owners', not its ReplicaSet"
  # A checkpoint image is a copy of the app's memory: gone once restored.
  if poll 60 no_checkpoint_images_left; then
    log "checkpoint images left after the restore: none (either node's containerd, disk, Node.status.images)"
  else
    fail "$name: checkpoint images left after the restore: $(checkpoint_images_left | paste -sd ';')"
  fi
}

# One row per failover the demo made, and one row, with CRIU's statistics,
# for the checkpoint each restored. The statistics are plausible for the
# archive: CRIU wrote at most the archive's bytes and kept the app frozen
# for part of the checkpoint's time. (That they are the archive's own
# stats-dump, decoded, is checked against protoc in agent/tests/runc.rs.)
history_holds_each_failover() {
  local uid archive rows
  while read -r uid archive; do
    rows="$(psql "$(hack/history-db.sh url 127.0.0.1)" -tAc \
      "SELECT count(*) FROM failovers WHERE namespace = '$NS' AND pod_uid = '$uid'")"
    [[ "$rows" == 1 ]] || fail "the history holds $rows failovers of pod $uid, not 1"
    rows="$(psql "$(hack/history-db.sh url 127.0.0.1)" -tAc \
      "SELECT count(*), count(*) FILTER (WHERE criu_frozen_ms IS NOT NULL AND criu_pages_written > 0
                AND criu_pages_written * 4096 <= size_bytes AND criu_frozen_ms <= total_ms
                AND criu_memdump_ms <= criu_frozen_ms)
         FROM checkpoints WHERE namespace = '$NS' AND archive = '$archive'")"
    [[ "$rows" == "1|1" ]] ||
      fail "the history holds (rows|with plausible CRIU statistics) $rows for checkpoint $archive, not 1|1"
  done <"$RECORDED"
  log "history: one row per failover ($(wc -l <"$RECORDED")) and per checkpoint restored, with CRIU's statistics"
}

# When the kubelet of node $2 reached each step of starting pod $1, in
# seconds after epoch $3, from its log: "bound +a, volumes +b, sandbox +c,
# container started +d" (the last container the kubelet saw start: the
# app). Volumes wait when the kubelet asks for the pod's ConfigMaps before
# the API server's node authorizer knows the pod is on the node (it logs
# "no relationship found"): its ConfigMap cache retries only after
# 0.8-1.6 s. The warm standby pod on the node is there to prevent that.
kubelet_steps() { # pod node since
  local logfile="$FERRY_LOGS/kubelet-$2.log" year
  [[ -r "$logfile" ]] || return 0
  year="$(date -u +%Y)"
  grep -F "$1" "$logfile" | awk -v year="$year" -v since="$3" '
    function at(line,   md) {
      md = substr(line, 2, 4)
      cmd = "date -u -d \"" year "-" substr(md, 1, 2) "-" substr(md, 3, 2) " " $2 "\" +%s.%N"
      cmd | getline t; close(cmd)
      return sprintf("+%.1f", t - since)
    }
    /"SyncLoop ADD"/ && !bound { bound = at($0) }
    /MountVolume.SetUp succeeded/ && !volumes { volumes = at($0) }
    /Running pod with runtime handler|RunPodSandbox/ && !sandbox { sandbox = at($0) }
    # The sandbox and the app report started; the app, restored, comes last.
    /ContainerStarted/ { started = at($0) }
    # Only the ConfigMap and Secret caches wait for it; a status request
    # refused for a pod already deleted does not.
    /no relationship found between node/ && /configmaps|secrets/ { waited = 1 }
    END {
      printf "bound %s, volumes %s%s, sandbox %s, container started %s\n", bound, volumes,
        (waited ? " (the node authorizer lagged the kubelet)" : ""), sandbox, started
    }'
}

kill_container() { # pod node ip
  # The app exits (status 3): the kubelet sees the container terminate and
  # restart, ferry sees the restart count rise.
  curl -fsS -X POST --max-time 2 "http://$3:8080/kill" >/dev/null
}

fail_node() { # pod node ip
  hack/cluster.sh fail-node "$2"
}

bring_back() {
  say "Bringing the failed node back (hack/cluster.sh up)"
  hack/cluster.sh up >/dev/null
  kubectl get nodes
}

TIMINGS="$(mktemp)"
RECORDED="$(mktemp)"
if ((ASSERT)); then
  # Every case chance would otherwise decide: the leader on the failed
  # node and on the surviving one, for both failures.
  scenario "the container dies" kill_container failed
  scenario "the container dies" kill_container surviving
  scenario "the node fails" fail_node surviving
  bring_back
  scenario "the node fails" fail_node failed
else
  scenario "the container dies" kill_container surviving
  # The hard case: the node takes the controller leader with it.
  scenario "the node fails" fail_node failed
fi
bring_back

say "Summary (seconds after the failure)"
{
  printf 'scenario\tleader on\trestored on\tdetected\tfenced\tserving\tsteps lost\n'
  cat "$TIMINGS"
} | column -t -s $'\t'
if ((ASSERT)); then
  # The replacement always lands on the other node, so each kind of failure
  # restored once onto each node: the containerd 2.3 one and the 2.4 one.
  for kind in "the container dies" "the node fails"; do
    restored_on="$(awk -F'\t' -v k="$kind" '$1 == k {print $3}' "$TIMINGS" | sort -u)"
    (($(wc -l <<<"$restored_on") == 2)) ||
      fail "\"$kind\" did not restore onto both nodes: $(paste -sd ';' <<<"$restored_on")"
    log "\"$kind\" restored onto both nodes: $(paste -sd ';' <<<"$restored_on")"
  done
fi
rm -f "$TIMINGS"

say "History: what the controller recorded in PostgreSQL (ferry-report)"
REPORT_OUT=/var/lib/ferry-cluster/logs/report
if "$REPORT" --database-url "$(hack/history-db.sh url 127.0.0.1)" --out "$REPORT_OUT" >"$REPORT_OUT.txt"; then
  sed 's/^/    /' "$REPORT_OUT.txt"
  # Every failover above is in the history, restored from a checkpoint.
  recorded="$(awk '/Checkpoint \(warm\)/ { n += $(NF - 3) } END { print n + 0 }' "$REPORT_OUT.txt")"
  made="$(wc -l <"$RECORDED")"
  ((recorded >= made)) || fail "the history holds $recorded warm failovers; the demo made $made"
else
  fail "ferry-report failed"
fi
if ((ASSERT)); then
  history_holds_each_failover
fi
rm -f "$RECORDED"

if ((FAILURES)); then
  say "$FAILURES check(s) failed"
  exit 1
fi
say "Done: both failures restored from a checkpoint on the other node"
