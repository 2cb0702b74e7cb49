# shellcheck shell=bash
# Helpers of the scripts that drive ferry on the local cluster
# (hack/demo.sh, hack/chaos.sh): the demo app, the controller leader, the
# agents. Source after hack/lib.sh; expects NS and APP (the app's namespace
# and name) and kubectl on PATH with KUBECONFIG set.

# The local cluster's facts (hack/cluster.sh env: KUBECONFIG, FERRY_HOST_IP,
# per-node ports and paths) and its kubectl on PATH.
use_local_cluster() {
  eval "$(hack/cluster.sh env)"
  export KUBECONFIG
  PATH="$(hack/kube-assets.sh --with-kubelet):$PATH"
  export PATH
}

# A failed check. Counted in FAILURES; unless ASSERT is 0, it prints the
# diagnostics and exits 1.
FAILURES=0
fail() {
  printf '\033[31mFAILED: %s\033[0m\n' "$*" >&2
  FAILURES=$((FAILURES + 1))
  if ((${ASSERT:-1})); then
    diagnostics
    # Again, last: CI keeps only the tail of the output.
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
  fi
}

# wait_for SECONDS DESCRIPTION CMD...: poll, and a timeout is a failure.
wait_for() {
  local limit="$1" what="$2"
  shift 2
  poll "$limit" "$@" && return 0
  fail "$what: not within ${limit}s"
  return 1
}

diagnostics() {
  {
    echo "--- pods"
    kubectl get pods -A -o wide || true
    echo "--- policy"
    kubectl -n "$NS" get checkpointpolicy "$APP" -o yaml || true
    echo "--- events ($NS)"
    kubectl -n "$NS" get events --sort-by=.lastTimestamp | tail -30 || true
    echo "--- controller log (tail)"
    kubectl -n ferry-system logs deploy/ferry-controller --tail=40 || true
    for pod in $(kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o name 2>/dev/null); do
      echo "--- $pod log (tail)"
      kubectl -n ferry-system logs "$pod" --tail=20 || true
    done
  } >&2
}

# The app's CheckpointPolicy, as JSON.
policy() { kubectl -n "$NS" get checkpointpolicy "$APP" -o json; }

# The one Running, not terminating app pod: "name node ip".
app_pod() {
  kubectl -n "$NS" get pods -l app="$APP" -o json |
    jq -r '[.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running")] |
      if length == 1 then .[0] | "\(.metadata.name) \(.spec.nodeName) \(.status.podIP)" else empty end'
}

counter_of() { curl -fsS --max-time 2 "http://$1:8080/state" 2>/dev/null | jq -r .counter; }

# Streams the app's pods into file $1 as the API server reports them, one
# line per change: "epoch name node ip live|deleting" ("-" for no node or
# address yet). A replacement's address is known once its sandbox exists,
# before its container runs. One watch instead of polling kubectl: on two
# cores a kubectl process every 0.2 s slows what it measures. Run it in the
# background and end it with stop_job.
watch_app_pods() { # file
  kubectl -n "$NS" get pods -l app="$APP" --watch -o json 2>/dev/null |
    jq --unbuffered -r '"\(.metadata.name) \(.spec.nodeName // "-") \(.status.podIP // "-") \(if .metadata.deletionTimestamp then "deleting" else "live" end)"' |
    while read -r line; do echo "$EPOCHREALTIME $line"; done >"$1"
}

# "name ip" of the newest live app pod off node $1 that has an address, from
# the stream watch_app_pods writes to file $2; nothing if none.
replacement_address() { # failed-node watch-file
  awk -v failed="$1" '
    { seen[$2] = $0; if (!($2 in since)) since[$2] = $1 }
    END {
      for (name in seen) {
        split(seen[name], f, " ")
        if (f[3] != failed && f[3] != "-" && f[4] != "-" && f[5] == "live" && since[name] >= newest) {
          newest = since[name]; pick = name " " f[4]
        }
      }
      if (pick != "") print pick
    }' "$2"
}

# Asks the newest app pod off node $1 (from watch file $2) for its counter
# every 50 ms until it answers, then writes "epoch counter ip name" to file
# $3: when the replacement first served, to 50 ms.
probe_replacement() { # failed-node watch-file out-file
  local name ip body
  while :; do
    name="" ip=""
    read -r name ip < <(replacement_address "$1" "$2") || true
    if [[ -n "$ip" ]]; then
      body="$(curl -fsS --max-time 0.3 "http://$ip:8080/state" 2>/dev/null || true)"
      if [[ "$body" =~ \"counter\":([0-9]+) ]]; then
        echo "$EPOCHREALTIME ${BASH_REMATCH[1]} $ip $name" >"$3"
        return 0
      fi
    fi
    sleep 0.05
  done
}

# Waits for a checkpoint of the current pod with a replica on the other node;
# sets CK_TAKEN (epoch), CK_MS (checkpoint duration) and CK_ARCHIVE.
fresh_checkpoint() {
  local uid="$1" record
  record="$(kubectl -n "$NS" get checkpointpolicy "$APP" -o json |
    jq -c --arg uid "$uid" '[.status.checkpoints[]? | select(.podUid == $uid and (.replicas | length) > 0)] | .[0] // empty')"
  [[ -n "$record" ]] || return 1
  CK_TAKEN="$(iso_to_epoch "$(jq -r .takenAt <<<"$record")")"
  CK_MS="$(jq -r .durationMs <<<"$record")"
  CK_ARCHIVE="$(jq -r .archive <<<"$record")"
  CK_REPLICAS="$(jq -r '.replicas | join(",")' <<<"$record")"
}

has_app_pod() { POD_LINE="$(app_pod)"; [[ -n "$POD_LINE" ]]; }

# "name phase" of the app policy's warm standby pod on node $1 (kept on
# standby nodes so their kubelet has the app's ConfigMaps and Secrets
# cached); nothing if there is none.
warm_standby_on() { # node
  kubectl -n "$NS" get pods -l ferry.dev/warm-standby=true -o json |
    jq -r --arg node "$1" '.items[] | select(.spec.nodeName == $node and .metadata.deletionTimestamp == null)
      | "\(.metadata.name) \(.status.phase // "Pending")"' | head -n 1
}

# Whether a warm standby pod runs on node $1; sets WARM_LINE.
warm_standby_running() { # node
  WARM_LINE="$(warm_standby_on "$1")"
  [[ "$WARM_LINE" == *" Running" ]]
}

# The one app pod runs on another node than $1; sets POD_LINE.
replacement_running() { # failed node
  has_app_pod || return 1
  local node
  read -r _ node _ <<<"$POD_LINE"
  [[ "$node" != "$1" ]]
}

answers() { [[ "$(counter_of "$1")" =~ ^[0-9]+$ ]]; }

# The first value jq filter $2 gives for archive $1 (bound as $id) over the
# JSON log lines of every agent; nothing when no line matches.
agent_log_value() { # archive filter
  local pod
  for pod in $(kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o name); do
    kubectl -n ferry-system logs "$pod" 2>/dev/null | jq -r --arg id "$1" "$2" 2>/dev/null
  done | head -1
}

# How long the agent that sent archive $1 took to replicate it (ms), from
# its log line "replica stored and verified by peer" (or, streamed while
# stored, "replica streamed while stored, and verified by peer").
replication_ms() {
  agent_log_value "$1" 'select((.fields.message == "replica stored and verified by peer"
      or .fields.message == "replica streamed while stored, and verified by peer") and .fields.archive == $id)
    | .fields.elapsed_ms'
}

# Milliseconds from the checkpoint request to the last replica of archive
# $1 verified (the agent replicates while it stores), from the source
# agent's log.
verified_ms() {
  agent_log_value "$1" 'select(.fields.message == "checkpoint replicated" and .fields.archive == $id and .fields.verified > 0)
    | .fields.verified_ms'
}

# The controller leader: "pod node ip" of the Lease holder.
leader() {
  local holder
  holder="$(kubectl -n ferry-system get lease ferry-controller -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)"
  [[ -n "$holder" ]] || return 1
  kubectl -n ferry-system get pod "$holder" -o json 2>/dev/null |
    jq -r 'select(.metadata.deletionTimestamp == null) | "\(.metadata.name) \(.spec.nodeName) \(.status.podIP)"'
}

controller_ready_on() { # node
  kubectl -n ferry-system get pods -l app.kubernetes.io/component=controller -o json |
    jq -e --arg node "$1" '[.items[] | select(.metadata.deletionTimestamp == null and .spec.nodeName == $node)
      | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length > 0' >/dev/null
}

leader_on() { # node
  local line
  line="$(leader)" || return 1
  [[ "$(awk '{print $2}' <<<"$line")" == "$1" ]]
}

# Whether the leader decides failovers: its caches synced and it has
# watched the agents for one Lease period (its /metrics say so).
leader_deciding() {
  local ip
  ip="$(leader | awk '{print $3}')"
  # grep -c reads the whole page: grep -q would stop early and fail curl.
  [[ -n "$ip" ]] && (($(curl -fsS --max-time 2 "http://$ip:8080/metrics" 2>/dev/null |
    grep -c '^ferry_controller_view_complete 1$') > 0))
}

# Puts the controller leader on node $1, deterministically. While it runs
# on the other node, that node is cordoned and the leader's pod deleted (it
# releases the Lease on SIGTERM): every candidate left, the standby and the
# replacement pod, runs on $1, so the race for the released Lease is won on
# $1 whoever wins it. (Without the cordon the replacement started on the
# old node and won the race there as often as not; CI lost it 5 times.)
# Then a replica is put back on the other node as the standby.
place_leader() { # node
  local node="$1" other line attempt
  other="$(other_node "$node")"
  wait_for 180 "a Ready controller replica on $node" controller_ready_on "$node" || return 1
  for attempt in 1 2 3; do
    if leader_on "$node"; then
      spread_controller_to "$other" || return 1
      if leader_on "$node"; then
        log "controller leader: $(leader | awk '{print $1}') on $node"
        wait_for 60 "the leader deciding failovers (caches synced, agents watched one Lease period)" leader_deciding || return 1
        return 0
      fi
    fi
    line="$(leader || true)"
    if [[ -n "$line" && "$(awk '{print $2}' <<<"$line")" == "$other" ]]; then
      log "moving the controller leader off $other (attempt $attempt)"
      kubectl cordon "$other" >/dev/null
      kubectl -n ferry-system delete pod "$(awk '{print $1}' <<<"$line")" --wait=false >/dev/null
      poll 60 leader_on "$node" || true
      kubectl uncordon "$other" >/dev/null
    else
      poll 30 leader_on "$node" || true
    fi
  done
  fail "could not place the controller leader on $node"
}

controller_pods_on() { # node: names of the live controller replicas there
  kubectl -n ferry-system get pods -l app.kubernetes.io/component=controller -o json |
    jq -r --arg node "$1" '.items[] | select(.metadata.deletionTimestamp == null and .spec.nodeName == $node) | .metadata.name'
}

# Puts a controller replica on node $1, deterministically: the chart's
# anti-affinity is only a preference, so after a node was down both replicas
# may share the other node. Then the other node is cordoned and one of its
# replicas (not the leader) deleted, so its replacement can only go to $1.
spread_controller_to() { # node
  local node="$1" other victim holder
  controller_ready_on "$node" && return 0
  other="$(other_node "$node")"
  holder="$(kubectl -n ferry-system get lease ferry-controller -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
  victim="$(controller_pods_on "$other" | grep -vx "$holder" | head -1 || true)"
  if [[ -n "$victim" ]]; then
    log "both controller replicas run on $other: moving $victim to $node"
    kubectl cordon "$other" >/dev/null
    kubectl -n ferry-system delete pod "$victim" --wait=false >/dev/null
    local placed=0
    wait_for 180 "a Ready controller replica on $node" controller_ready_on "$node" || placed=1
    kubectl uncordon "$other" >/dev/null
    return "$placed"
  fi
  wait_for 240 "a Ready controller replica on $node" controller_ready_on "$node"
}

# Waits until both nodes run a Ready agent and a Ready controller replica.
ferry_on_both_nodes() {
  local node
  for node in ferry-a ferry-b; do
    wait_for 240 "a Ready agent on $node" agent_ready_on "$node" || return 1
    spread_controller_to "$node" || return 1
  done
}

agent_ready_on() { # node
  kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o json |
    jq -e --arg node "$1" '[.items[] | select(.metadata.deletionTimestamp == null and .spec.nodeName == $node)
      | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length > 0' >/dev/null
}

other_node() { [[ "$1" == ferry-a ]] && echo ferry-b || echo ferry-a; }

# Whether node $1 is Ready, as the API server has it.
node_ready() {
  kubectl get node "$1" -o json | jq -e 'any(.status.conditions[]; .type == "Ready" and .status == "True")' >/dev/null
}

# ---- archives on the nodes' disks ---------------------------------------------
# One line per container's archives on a node: "node count podUid pod/container
# newest-taken-at-millis", read from the agents' data dirs on this host.
archive_groups() {
  local node state="${FERRY_CLUSTER_STATE:-/var/lib/ferry-cluster}"
  for node in ferry-a ferry-b; do
    find "$state/nodes/$node/ferry/archives" -name '*.json' -exec cat {} + 2>/dev/null |
      jq -rs --arg node "$node" 'group_by([.policy, .podUid, .container])[]
        | "\($node) \(length) \(.[0].podUid) \(.[0].pod)/\(.[0].container) \(map(.takenAtMillis) | max)"'
  done
}

# Groups with more than $1 archives (retention broken on that node).
over_retention() { archive_groups | awk -v keep="$1" '$2 > keep'; }

# Groups of pods that are gone (not in $2, a space-separated list of live or
# still-needed pod UIDs) whose newest archive is older than $1 seconds.
stale_gone_pods() { # seconds uids
  local cutoff=$(( $(date +%s%3N) - $1 * 1000 ))
  archive_groups | awk -v cutoff="$cutoff" -v live=" $2 " 'index(live, " " $3 " ") == 0 && $5 < cutoff'
}

# What restores left behind, one "node place name" a line (nothing once
# ferry released them): checkpoint images in each node's containerd, files
# in its agent's images directory, checkpoint images in Node.status.images.
# A node whose containerd is down (failed) is skipped there.
checkpoint_images_left() {
  local node ctr state="${FERRY_CLUSTER_STATE:-/var/lib/ferry-cluster}"
  ctr="$(hack/containerd.sh 2>/dev/null | tail -n1)/ctr"
  for node in ferry-a ferry-b; do
    "$ctr" --address "/run/ferry-cluster/$node/containerd.sock" -n k8s.io images list --quiet 2>/dev/null |
      grep '^localhost/ferry/checkpoint' | sed "s|^|$node containerd |" || true
    find "$state/nodes/$node/ferry/images" -mindepth 1 -maxdepth 1 2>/dev/null | sed "s|^|$node disk |"
    kubectl get node "$node" -o json |
      jq -r '.status.images[]?.names[]? | select(startswith("localhost/ferry/checkpoint"))' |
      sed "s|^|$node Node.status.images |"
  done
}

no_checkpoint_images_left() { [[ -z "$(checkpoint_images_left)" ]]; }
