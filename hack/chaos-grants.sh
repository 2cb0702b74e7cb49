#!/usr/bin/env bash
# Tier 5, part four: the boundary of ferry's runtime handler, attacked on
# both real nodes (containerd 2.3 on ferry-a, 2.4 on ferry-b). Runs on the
# cluster hack/demo.sh leaves behind, after hack/chaos-state.sh:
#
#  11. on each node, pods that name the ferry RuntimeClass and
#      - a forged grant (from namespace intruder),
#      - a live grant prepared for the demo namespace (from intruder),
#      - a grant that was used already (from the demo namespace itself:
#        the one a real failover used, and one this scenario used)
#      never run: ferry-runc refuses their container, the kubelet reports
#      the refusal, no process answers, and the live grant stays for its
#      rightful pod. As a control, a pod in the demo namespace that names
#      a live grant is restored from it (counter and ballast), and uses it;
#      with the spent grant removed from it, as the controller does after a
#      restore, its container restarts in place like any other.
#      The live grants come from hack/testenv's grant-hold, which plays the
#      controller with a certificate from the CA key: a grant lives only
#      while a failover is pending, and the test must not wait on chance.
#  12. the standby node's containerd loses the handler (hack/cluster.sh
#      handler NODE off): once its kubelet reports that, the policy's
#      RuntimeHandlerMissing condition names the node, new checkpoints
#      are no longer replicated there, and when the app's container dies
#      the failover does not restore there (it starts cold: no other node
#      can restore). With the handler back, the condition clears and
#      checkpoints reach the node again.
# Exits 1 at the first failed check, with diagnostics.
#
#   FERRY_GRANT_HOLD=target/debug/grant-hold hack/chaos-grants.sh
#
# Needs root (it reads the nodes' grant directories).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source hack/lib.sh
source hack/lib-ferry.sh
NS=demo
APP=counter
INTRUDER_NS=intruder
STATE="${FERRY_CLUSTER_STATE:-/var/lib/ferry-cluster}"
PKI_DIR="$(mktemp -d)"
HELD=() # "node archive failover" of grants to release at the end

log() { printf '    %s\n' "$*"; }

HANDLERLESS=""

undo() {
  local status=$? held
  failed_command "$status"
  [[ -z "$HANDLERLESS" ]] || hack/cluster.sh handler "$HANDLERLESS" on >/dev/null 2>&1 || true
  for held in "${HELD[@]}"; do
    # shellcheck disable=SC2086 # node archive failover
    release $held >/dev/null 2>&1 || true
  done
  kubectl delete namespace "$INTRUDER_NS" --wait=false >/dev/null 2>&1 || true
  kubectl -n "$NS" delete pods -l app=grant-chaos --wait=false >/dev/null 2>&1 || true
  rm -rf "$PKI_DIR"
  exit "$status"
}
trap undo EXIT
trace_errors

use_local_cluster
[[ -x "${FERRY_GRANT_HOLD:-}" ]] || die "FERRY_GRANT_HOLD names no executable (hack/e2e.sh builds hack/testenv's grant-hold)"

agent_endpoint() { # node
  kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o json |
    jq -r --arg node "$1" '.items[] | select(.spec.nodeName == $node and .status.podIP != null
      and .metadata.deletionTimestamp == null) | "\(.status.podIP):50051"' | head -n1
}

# The controller's side of a restore, played with the CA key.
grant_hold() { # action node archive failover [namespace]
  "$FERRY_GRANT_HOLD" "$1" --endpoint "$(agent_endpoint "$2")" --ca "$PKI_DIR/ca.crt" --ca-key "$PKI_DIR/ca.key" \
    --archive "$3" --failover "$4" ${5:+--namespace "$5"}
}
# Prepares a restore of the demo counter's newest checkpoint (retention
# removes older ones meanwhile) on node $1, for a failover of its own (a
# failed pod's UID names it): sets ARCHIVE, GRANT and HELD_FAILOVER.
prepare() { # node
  local record
  record="$(policy | jq -c '.status.checkpoints[0] // {}')"
  ARCHIVE="$(jq -r '.archive // empty' <<<"$record")"
  [[ -n "$ARCHIVE" ]] || fail "no checkpoint of $NS/$APP to prepare"
  jq -e --arg node "$1" '.node == $node or (.replicas | index($node))' <<<"$record" >/dev/null ||
    fail "$1 holds no copy of checkpoint $ARCHIVE: $record"
  HELD_FAILOVER="$(cat /proc/sys/kernel/random/uuid)"
  HELD+=("$1 $ARCHIVE $HELD_FAILOVER")
  GRANT="$(grant_hold prepare "$1" "$ARCHIVE" "$HELD_FAILOVER" "$NS")"
  grant_present "$1" "$GRANT" || fail "grant-hold reported grant $GRANT, but $1 has no such grant"
}
release() { grant_hold release "$1" "$2" "$3"; }

grant_present() { [[ -d "$STATE/nodes/$1/grants/$2" ]]; } # node grant

# A pod pinned to a node that names the ferry RuntimeClass and a grant.
grant_pod() { # namespace name node grant
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $2
  namespace: $1
  labels: {app: grant-chaos}
  annotations: {ferry.dev/restore-grant: "$4"}
spec:
  nodeName: $3
  runtimeClassName: ferry
  dnsPolicy: Default
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: localhost/ferry/test-app:dev
    imagePullPolicy: Never
    args: ["--listen", "0.0.0.0:8080", "--ballast-mib", "16", "--period-ms", "100"]
EOF
}

pod_json() { kubectl -n "$1" get pod "$2" -o json; } # namespace name

# What the kubelet reports for the pod's container: events and statuses.
refusal_reported() { # namespace name needle
  local reported
  # Read whole before grep -q stops reading: pipefail would count a writer
  # it cut off as a failure.
  reported="$(kubectl -n "$1" get events --field-selector "involvedObject.name=$2" -o json | jq -r '.items[].message'
    pod_json "$1" "$2" | jq -r '.status.containerStatuses[]? | (.state, .lastState) | .[]?.message // empty')"
  grep -qF "$3" <<<"$reported"
}

never_ran() { # namespace name
  local pod ip
  pod="$(pod_json "$1" "$2")"
  jq -e '[.status.containerStatuses[]? | select(.state.running != null or .lastState.running != null
    or .started == true)] | length == 0' <<<"$pod" >/dev/null || return 1
  ip="$(jq -r '.status.podIP // empty' <<<"$pod")"
  [[ -z "$ip" ]] || ! answers "$ip"
}

# A pod naming $4 is refused on $3: the kubelet reports $5, and for 10 s
# more the container never runs and nothing answers at the pod's IP.
refused() { # namespace name node grant needle
  grant_pod "$1" "$2" "$3" "$4"
  wait_for 60 "$1/$2 on $3: the kubelet reports \"$5\"" refusal_reported "$1" "$2" "$5" || return 1
  hold 10 never_ran "$1" "$2" ||
    fail "$1/$2 on $3, grant $4: its container ran: $(pod_json "$1" "$2" | jq -c .status.containerStatuses)"
  kubectl -n "$1" delete pod "$2" --wait=false >/dev/null
  log "$1/$2 on $3 refused: \"$5\""
}

claimant_restored() { # name
  local ip counter
  ip="$(pod_json "$NS" "$1" | jq -r 'select(.status.phase == "Running") | .status.podIP // empty')"
  [[ -n "$ip" ]] && counter="$(counter_of "$ip")" && [[ "$counter" =~ ^[0-9]+$ ]] || return 1
  CLAIMANT_IP="$ip" CLAIMANT_COUNTER="$counter"
}

restarted_fresh() { # name
  local pod ip
  pod="$(pod_json "$NS" "$1")"
  jq -e '.status.containerStatuses[0] | .restartCount >= 1 and .state.running != null' <<<"$pod" >/dev/null || return 1
  ip="$(jq -r '.status.podIP // empty' <<<"$pod")"
  [[ "$(counter_of "$ip")" =~ ^[0-9]+$ ]] && (($(counter_of "$ip") < 1000))
}

refused_grants() {
  say "Scenario: forged, foreign and reused restore grants, on both nodes"
  kubectl -n ferry-system get configmap ferry-ca -o jsonpath='{.data.ca\.crt}' >"$PKI_DIR/ca.crt"
  kubectl -n ferry-system get secret ferry-ca -o jsonpath='{.data.ca\.key}' | base64 -d >"$PKI_DIR/ca.key"
  kubectl create namespace "$INTRUDER_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local node grant used summary=""

  # The grant the last real failover used (its replacement no longer
  # names it), on the node it restored on.
  local failover used_on
  failover="$(policy | jq -c '.status.lastFailover // {}')"
  used="$(jq -r '.podAnnotations["ferry.dev/restore-grant"] // empty' <<<"$failover")"
  used_on="$(jq -r '.toNode // empty' <<<"$failover")"
  [[ -n "$used" && -n "$used_on" ]] || fail "the demo's last failover restored from no grant: $failover"
  refused "$NS" grant-reused-failover "$used_on" "$used" "restore grant $used is unknown or was used already"

  for node in ferry-a ferry-b; do
    log "$node ($(kubectl get node "$node" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')):"

    grant="$(openssl rand -hex 16)"
    refused "$INTRUDER_NS" "grant-forged-$node" "$node" "$grant" "restore grant $grant is unknown or was used already"

    # A live grant of the demo namespace, named from another namespace: the
    # API server's guard knows no failover there, ferry-runc refuses it.
    prepare "$node"
    grant="$GRANT"
    refused "$INTRUDER_NS" "grant-foreign-$node" "$node" "$grant" \
      "restore grant $grant is for container app in namespace $NS"
    grant_present "$node" "$grant" || fail "$node: the foreign claim consumed grant $grant of $NS"
    release "$node" "$ARCHIVE" "$HELD_FAILOVER" >/dev/null
    poll 10 bash -c "[[ ! -d '$STATE/nodes/$node/grants/$grant' ]]" ||
      fail "$node: released grant $grant is still there"

    # The control: a pod of the demo namespace named with a live grant is
    # restored from it, and uses it up.
    prepare "$node"
    grant="$GRANT"
    grant_pod "$NS" "grant-claimant-$node" "$node" "$grant"
    wait_for 90 "$NS/grant-claimant-$node restored" claimant_restored "grant-claimant-$node"
    # A fresh start counts from 0 every 0.1 s; the demo counter is older
    # than the minutes tier 5 ran.
    ((CLAIMANT_COUNTER > 1000)) ||
      fail "$NS/grant-claimant-$node answers counter $CLAIMANT_COUNTER: it started fresh, not from grant $grant"
    [[ "$(curl -fsS --max-time 5 "http://$CLAIMANT_IP:8080/verify" | jq -r .ballast_ok)" == true ]] ||
      fail "$NS/grant-claimant-$node: the ballast does not verify"
    ! grant_present "$node" "$grant" || fail "$node: grant $grant is still there after its restore"
    # What the controller does once a restore is done: the spent grant
    # leaves the pod, and the kubelet restarts its container like any other.
    kubectl -n "$NS" annotate pod "grant-claimant-$node" ferry.dev/restore-grant- >/dev/null
    curl -fsS -X POST --max-time 2 "http://$CLAIMANT_IP:8080/kill" >/dev/null || true
    wait_for 60 "$NS/grant-claimant-$node restarted in place, fresh" restarted_fresh "grant-claimant-$node"
    kubectl -n "$NS" delete pod "grant-claimant-$node" --wait=false >/dev/null
    refused "$NS" "grant-reused-$node" "$node" "$grant" "restore grant $grant is unknown or was used already"
    release "$node" "$ARCHIVE" "$HELD_FAILOVER" >/dev/null
    summary="$summary $node: control restored at counter $CLAIMANT_COUNTER;"
  done
  HELD=()
  kubectl delete namespace "$INTRUDER_NS" --wait=false >/dev/null
  log "ok: forged, foreign-namespace and reused grants refused on both nodes;$summary"
}

# ---- 12. a node without the handler ------------------------------------------------
node_reports_handler() { # node
  kubectl get node "$1" -o json | jq -e '[.status.runtimeHandlers[]?.name] | index("ferry")' >/dev/null
}
node_lacks_handler() { ! node_reports_handler "$1"; }
names_handlerless() { # node
  policy | jq -e --arg node "$1" '.status.conditions[]? | select(.type == "RuntimeHandlerMissing"
    and .status == "True" and (.message | contains($node)))' >/dev/null
}
handler_condition_cleared() {
  policy | jq -e '[.status.conditions[]? | select(.type == "RuntimeHandlerMissing" and .status == "True")]
    | length == 0' >/dev/null
}
# A checkpoint of pod uid $1 taken after epoch $2; its replicas in REPLICAS.
checkpoint_since() { # uid epoch
  local record
  record="$(policy | jq -c --arg uid "$1" --argjson since "$2" 'first(.status.checkpoints[]?
    | select(.podUid == $uid and (.takenAt | sub("\\.[0-9]+"; "") | fromdateiso8601) > $since)) // empty')"
  [[ -n "$record" ]] || return 1
  REPLICAS="$(jq -r '.replicas | join(",")' <<<"$record")"
}
checkpoint_replicated_to() { checkpoint_since "$1" "$2" && [[ ",$REPLICAS," == *",$3,"* ]]; } # uid epoch node
failover_of() { # uid: the failover record of that pod, once it ended
  policy | jq -c --arg uid "$1" '[.status.lastFailover // empty, .status.failovers[]?]
    | map(select(.podUid == $uid and (.stage == "Completed" or .stage == "Failed"))) | .[0] // empty'
}
failover_ended() { [[ -n "$(failover_of "$1")" ]]; }

node_without_handler() {
  say "Scenario: the standby node's containerd loses ferry's runtime handler"
  wait_for 60 "a Running app pod" has_app_pod
  local pod node ip uid standby since record
  read -r pod node ip <<<"$POD_LINE"
  uid="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.metadata.uid}')"
  standby="$(other_node "$node")"
  HANDLERLESS="$standby"
  hack/cluster.sh handler "$standby" off >/dev/null
  wait_for 90 "$standby's kubelet reporting no handler ferry" node_lacks_handler "$standby"
  wait_for 60 "the policy naming $standby (RuntimeHandlerMissing)" names_handlerless "$standby"
  log "the policy says: $(policy | jq -r '.status.conditions[] | select(.type == "RuntimeHandlerMissing") | .message')"
  since="$(date +%s)"
  wait_for 60 "a checkpoint of $pod after the handler went" checkpoint_since "$uid" "$since"
  [[ ",$REPLICAS," != *",$standby,"* ]] ||
    fail "a checkpoint taken after $standby lost the handler was replicated there: replicas $REPLICAS"
  log "newest checkpoint's replicas: '${REPLICAS}' (not $standby)"

  curl -fsS -X POST --max-time 2 "http://$ip:8080/kill" >/dev/null
  wait_for 120 "the failover of $pod to end" failover_ended "$uid"
  record="$(failover_of "$uid")"
  [[ "$(jq -r '.toNode // ""' <<<"$record")" != "$standby" ]] ||
    fail "the failover restored on $standby, whose runtime lacks the handler: $record"
  jq -e '.coldStart == true' <<<"$record" >/dev/null ||
    fail "no node but $standby held a replica, yet the failover did not start cold: $record"
  log "the failover did not restore on $standby: $(jq -c '{stage, toNode, coldStart, message}' <<<"$record")"

  hack/cluster.sh handler "$standby" on >/dev/null
  HANDLERLESS=""
  wait_for 90 "$standby's kubelet reporting handler ferry again" node_reports_handler "$standby"
  wait_for 60 "the RuntimeHandlerMissing condition clearing" handler_condition_cleared
  wait_for 180 "a Running app pod" has_app_pod
  read -r pod node _ <<<"$POD_LINE"
  uid="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.metadata.uid}')"
  since="$(date +%s)"
  wait_for 90 "a checkpoint of $pod replicated to $(other_node "$node") again" \
    checkpoint_replicated_to "$uid" "$since" "$(other_node "$node")"
  log "ok: $standby named while it lacked the handler, never a standby or restore target; replicated to again once it had it"
}

refused_grants
node_without_handler
