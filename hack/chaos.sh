#!/usr/bin/env bash
# Tier 5, part two: what must NOT fail over, and a partition that must not
# leave two live copies. Runs on the cluster hack/demo.sh leaves behind
# (ferry installed, the counter Deployment under its CheckpointPolicy):
#
#   1. the agent kept off the app's Ready node for 2x the default node-loss
#      grace period (a DaemonSet node affinity that excludes the node):
#      no failover, the policy says Degraded and names the node;
#   2. the Deployment scaled 1 -> 3 -> 1, then rolled out to a new template:
#      no failover;
#   3. `helm upgrade` that rolls every agent and controller pod while
#      checkpoints run: no failover, checkpoints go on;
#   4. the app's node partitioned (hack/cluster.sh partition: kubelet and
#      containerd frozen, its pods cut off from the API server and the other
#      node's pods) while its containers keep running: a prober on the host
#      asks the old and the new copy every 50 ms and must never see both
#      answer; the new copy continues from the checkpoint;
#   5. cuts of 1, 2.5 and 4 s that heal by themselves: the same prober, one
#      app pod at the end that did not restart from zero; the summary says
#      what each cut led to (the detection/false-positive trade-off);
#   6. retention: every node, standbys included, holds at most `keep`
#      archives per container, and none of pods gone for minutes;
#   7. identities: with the cluster's 10-minute certificates, every agent
#      and the controller renewed theirs while all of the above ran, no
#      renewal failed, and a certificate request that is not an agent's
#      own is denied with the reason;
#   8. a stolen agent certificate: one node's agent identity, obtained the
#      way a thief holding that agent's pod-bound token would (a CSR made
#      with it), is used against the other node's agent in both directions
#      (hack/testenv's agent-attack): every call only the controller may
#      make, a heartbeat in another node's name and an unannounced replica
#      are refused and counted; no certificate, another CA's and an expired
#      one are turned away at the handshake.
# (Scenarios 9 and 10, StateApi and the history database, are
# hack/chaos-state.sh.)
# Scenarios 1 and 4 run with the controller leader on the affected node and
# again on the other one (placed deterministically). Exits 1 at the first
# failed check, with diagnostics.
#
#   hack/chaos.sh
#
# Needs root (iptables, signals to the node's processes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source hack/lib.sh
source hack/lib-ferry.sh
NS=demo
APP=counter
AGENT_DS=ferry-agent
# The API's default spec.failover.nodeLossGracePeriod (api/src/policy.rs).
DEFAULT_NODE_LOSS_GRACE=20
PARTITIONED=""
AGENT_EXCLUDED=0

log() { printf '    %s\n' "$*"; }

undo() {
  local status=$?
  failed_command "$status"
  [[ -n "$PARTITIONED" ]] && hack/cluster.sh heal "$PARTITIONED" || true
  ((AGENT_EXCLUDED)) && allow_agent_everywhere || true
  exit "$status"
}
trap undo EXIT
trace_errors

use_local_cluster

# Everything that shows a failover was started: FailoverStarted Events,
# the last failover's start and the failovers in progress.
failover_fingerprint() {
  local events
  events="$(kubectl -n "$NS" get events -o json |
    jq '[.items[] | select(.reason == "FailoverStarted") | (.count // 1)] | add // 0')"
  policy | jq -r --arg events "$events" \
    '"events=\($events) last=\(.status.lastFailover.startedAt // "none") running=\(.status.failovers // [] | length) queued=\(.status.queuedFailovers // [] | length)"'
}

no_failover_since() { # fingerprint
  local now_print
  now_print="$(failover_fingerprint)"
  [[ "$now_print" == "$1" ]] || fail "$SCENARIO: a failover was started: before: $1, now: $now_print"
}

pod_uid() { kubectl -n "$NS" get pod "$1" -o jsonpath='{.metadata.uid}' 2>/dev/null; }

# A checkpoint of pod UID $1 replicated to a standby and taken after epoch $2.
checkpoint_after() { # uid epoch
  policy | jq -e --arg uid "$1" --argjson after "${2%.*}" \
    'any(.status.checkpoints[]?; .podUid == $uid and (.replicas | length) > 0
      and (.takenAt | sub("\\.[0-9]+"; "") | fromdateiso8601) > $after)' >/dev/null
}

running_app_pods() {
  kubectl -n "$NS" get pods -l app="$APP" -o json |
    jq '[.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running")] | length'
}
app_pods_are() { [[ "$(running_app_pods)" == "$1" ]] && [[ "$(kubectl -n "$NS" get pods -l app="$APP" -o name | wc -l)" == "$1" ]]; }

# Every Running app pod has a checkpoint replicated to a standby.
all_app_pods_checkpointed() {
  local uids
  uids="$(kubectl -n "$NS" get pods -l app="$APP" -o json |
    jq -c '[.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running") | .metadata.uid]')"
  policy | jq -e --argjson uids "$uids" \
    '[.status.checkpoints[]? | select((.replicas | length) > 0) | .podUid] as $done | all($uids[]; . as $u | $done | index($u))' >/dev/null
}

app_ready() {
  has_app_pod || return 1
  read -r POD NODE IP <<<"$POD_LINE"
  answers "$IP"
}

# The app running and answering, a checkpoint of it replicated, both nodes
# with an agent and a controller replica, the leader where $1 says:
# "affected" (the app's node) or "other".
prepare() { # placement
  ferry_on_both_nodes
  wait_for 180 "the app running and answering" app_ready
  if [[ "$1" == affected ]]; then place_leader "$NODE"; else place_leader "$(other_node "$NODE")"; fi
  UID_BEFORE="$(pod_uid "$POD")"
  wait_for 120 "a replicated checkpoint of $POD" fresh_checkpoint "$UID_BEFORE"
  FINGERPRINT="$(failover_fingerprint)"
  log "app pod $POD on $NODE ($IP), leader $(leader | awk '{print $1 " on " $2}'); $FINGERPRINT"
}

# ---- 1. the agent kept away from a healthy node -----------------------------
exclude_agent_from() { # node
  AGENT_EXCLUDED=1
  kubectl -n ferry-system patch daemonset "$AGENT_DS" --type merge -p "$(jq -nc --arg node "$1" \
    '{spec: {template: {spec: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {
      nodeSelectorTerms: [{matchExpressions: [{key: "kubernetes.io/hostname", operator: "NotIn", values: [$node]}]}]}}}}}}}')" >/dev/null
}
allow_agent_everywhere() {
  kubectl -n ferry-system patch daemonset "$AGENT_DS" --type json \
    -p '[{"op": "remove", "path": "/spec/template/spec/affinity"}]' >/dev/null 2>&1 || true
  AGENT_EXCLUDED=0
}
no_agent_on() { # node
  [[ -z "$(kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent \
    --field-selector "spec.nodeName=$1" -o name)" ]]
}
degraded_naming() { # node
  policy | jq -e --arg node "$1" '.status.phase == "Degraded"
    and any(.status.conditions[]?; .status == "False" and (.message | contains("agent of node " + $node)))' >/dev/null
}
app_pod_unchanged() { [[ "$(pod_uid "$POD")" == "$UID_BEFORE" ]] && answers "$IP"; }

agent_kept_away() { # placement
  SCENARIO="agent kept off a healthy node (leader on the $1 node)"
  say "Scenario: $SCENARIO"
  prepare "$1"
  local hold_for=$((2 * DEFAULT_NODE_LOSS_GRACE))
  exclude_agent_from "$NODE"
  wait_for 120 "the agent gone from $NODE" no_agent_on "$NODE"
  log "no agent on $NODE (Ready, its app running); holding ${hold_for}s"
  wait_for 30 "the policy Degraded, naming $NODE's agent" degraded_naming "$NODE"
  log "policy: $(policy | jq -r '.status.phase + ": " + ([.status.conditions[]? | select(.status == "False") | .message] | join("; "))')"
  hold "$hold_for" app_pod_unchanged || fail "$SCENARIO: the app pod $POD changed or stopped answering"
  no_failover_since "$FINGERPRINT"
  allow_agent_everywhere
  wait_for 180 "the agent back on $NODE" agent_ready_on "$NODE"
  wait_for 60 "a checkpoint after the agent's return" checkpoint_after "$UID_BEFORE" "$(now)"
  no_failover_since "$FINGERPRINT"
  log "ok: ${hold_for}s without an agent on $NODE, no failover, $POD kept running"
}

# ---- 2. scale and roll out --------------------------------------------------
scale_and_roll_out() {
  SCENARIO="scale 1->3->1 and roll out"
  say "Scenario: $SCENARIO"
  prepare other
  kubectl -n "$NS" scale deployment "$APP" --replicas=3 >/dev/null
  wait_for 180 "three app pods running" app_pods_are 3
  wait_for 120 "a replicated checkpoint of each of the three" all_app_pods_checkpointed
  log "three pods, each checkpointed; scaling down to one"
  kubectl -n "$NS" scale deployment "$APP" --replicas=1 >/dev/null
  wait_for 120 "one app pod left" app_pods_are 1
  log "rolling out a new template"
  kubectl -n "$NS" set env deployment/"$APP" FERRY_CHAOS_ROLLOUT="$(date +%s)" >/dev/null
  kubectl -n "$NS" rollout status deployment/"$APP" --timeout=180s >/dev/null ||
    fail "$SCENARIO: the rollout did not finish"
  wait_for 120 "one app pod left after the rollout" app_pods_are 1
  wait_for 60 "the new pod running" app_ready
  wait_for 120 "a replicated checkpoint of the rolled-out pod" fresh_checkpoint "$(pod_uid "$POD")"
  no_failover_since "$FINGERPRINT"
  local released
  released="$(kubectl -n "$NS" get events -o json | jq '[.items[] | select(.reason == "CheckpointsReleased")] | length')"
  ((released > 0)) || fail "$SCENARIO: no CheckpointsReleased Event for the removed pods"
  log "ok: no failover; $released CheckpointsReleased Event(s); $POD protected"
}

# ---- 3. helm upgrade rolling every ferry pod ----------------------------------
ferry_pod_uids() {
  kubectl -n ferry-system get pods -o json |
    jq -r '.items[] | select(.metadata.deletionTimestamp == null) | .metadata.uid' | sort
}
all_ferry_pods_new() { # old uids
  local now_uids
  now_uids="$(ferry_pod_uids)"
  [[ -z "$(comm -12 <(echo "$1") <(echo "$now_uids"))" ]] &&
    agent_ready_on ferry-a && agent_ready_on ferry-b &&
    [[ "$(kubectl -n ferry-system get deploy ferry-controller -o jsonpath='{.status.readyReplicas}')" == 2 ]]
}

helm_upgrade_rolls_everything() {
  SCENARIO="helm upgrade rolling every agent and controller"
  say "Scenario: $SCENARIO"
  prepare other
  local helm uids started
  helm="$(hack/helm.sh)"
  uids="$(ferry_pod_uids)"
  started="$(now)"
  "$helm" upgrade ferry charts/ferry -n ferry-system --reuse-values \
    --set-string "agent.podAnnotations.ferry\.dev/rolled-at=$started" \
    --set-string "controller.podAnnotations.ferry\.dev/rolled-at=$started" \
    --wait --timeout 300s >/dev/null || fail "$SCENARIO: helm upgrade failed"
  wait_for 240 "every agent and controller pod replaced and Ready" all_ferry_pods_new "$uids"
  log "every ferry pod replaced after $(secs "$started" "$(now)")s; waiting for the next checkpoint"
  wait_for 90 "a checkpoint after the upgrade" checkpoint_after "$UID_BEFORE" "$(now)"
  [[ "$(pod_uid "$POD")" == "$UID_BEFORE" ]] || fail "$SCENARIO: the app pod $POD was replaced"
  no_failover_since "$FINGERPRINT"
  log "ok: no failover, $POD kept running, checkpoints go on"
}

# ---- 4. a partition ----------------------------------------------------------
# One line per round: "epoch old new", the counter each copy answered or "-".
# The new copy is the newest app pod off node $2 in the stream that
# watch_app_pods writes to file $3, asked as soon as it has an address.
probe_both() { # old-ip old-node watch-file
  local old_ip="$1" new_ip old new body
  while :; do
    new_ip=""
    read -r _ new_ip < <(replacement_address "$2" "$3") || true
    old=- new=-
    body="$(curl -fsS --max-time 0.3 "http://$old_ip:8080/state" 2>/dev/null || true)"
    [[ "$body" =~ \"counter\":([0-9]+) ]] && old="${BASH_REMATCH[1]}"
    if [[ -n "$new_ip" ]]; then
      body="$(curl -fsS --max-time 0.3 "http://$new_ip:8080/state" 2>/dev/null || true)"
      [[ "$body" =~ \"counter\":([0-9]+) ]] && new="${BASH_REMATCH[1]}"
    fi
    echo "$EPOCHREALTIME $old $new"
    sleep 0.05
  done
}

# Whether the prober's file $1 has a round where the new copy answered.
new_copy_answered() { awk '$3 != "-" { found = 1; exit } END { exit !found }' "$1"; }

partition() { # placement
  SCENARIO="the app's node partitioned (leader on the $1 node)"
  say "Scenario: $SCENARIO"
  prepare "$1"
  local old_node="$NODE" old_ip="$IP" probes pods prober watcher
  probes="$(mktemp)" pods="$(mktemp)"
  watch_app_pods "$pods" &
  watcher=$!
  probe_both "$old_ip" "$old_node" "$pods" >"$probes" &
  prober=$!
  sleep 1
  local cut_at
  cut_at="$(now)"
  PARTITIONED="$old_node"
  hack/cluster.sh partition "$old_node"
  wait_for 180 "a replacement on the other node answering" new_copy_answered "$probes"
  wait_for 60 "one app pod running, on the other node" replacement_running "$old_node"
  read -r NEW_POD NEW_NODE NEW_IP <<<"$POD_LINE"
  sleep 5
  log "healing $old_node"
  hack/cluster.sh heal "$old_node"
  PARTITIONED=""
  wait_for 120 "$old_node Ready again" node_ready "$old_node"
  sleep 10
  stop_job "$prober"
  stop_job "$watcher"

  local both last_old first_new rounds
  rounds="$(wc -l <"$probes")"
  both="$(awk '$2 != "-" && $3 != "-"' "$probes" | head -3)"
  last_old="$(awk '$2 != "-" { t = $1 } END { print t }' "$probes")"
  first_new="$(awk '$3 != "-" { print $1; exit }' "$probes")"
  log "prober: $rounds rounds; old copy last answered +$(secs "$cut_at" "$last_old")s, new copy first answered +$(secs "$cut_at" "$first_new")s after the cut"
  [[ -z "$both" ]] || fail "$SCENARIO: both copies answered in one round: $both"
  [[ -n "$first_new" ]] || fail "$SCENARIO: the new copy never answered the prober"
  awk -v a="$last_old" -v b="$first_new" 'BEGIN { exit !(a < b) }' ||
    fail "$SCENARIO: the old copy answered at $last_old, after the new one first did at $first_new"
  local failover first_counter
  failover="$(policy | jq -c '.status.lastFailover // {}')"
  [[ "$(jq -r '.stage' <<<"$failover")" == Completed && "$(jq -r '.coldStart' <<<"$failover")" == false ]] ||
    fail "$SCENARIO: the failover is not a completed warm restore: $failover"
  first_counter="$(awk '$3 != "-" { print $3; exit }' "$probes")"
  ((first_counter > 0)) || fail "$SCENARIO: the new copy started from zero"
  log "ok: never two copies; restored warm on $NEW_NODE ($NEW_POD), counter continued at $first_counter; evidence: $(jq -r '(.evidence // []) | join("; ")' <<<"$failover"); fence: $(jq -r '.fence // ""' <<<"$failover")"
  printf '%s\t%s\t%s\n' "$1" "$(secs "$cut_at" "$last_old")" "$(secs "$cut_at" "$first_new")" >>"$PARTITION_TIMINGS"
  rm -f "$probes" "$pods"
}

# ---- 5. short cuts: how long a cut must last to be failed over ---------------
# What unreachableGracePeriod (2 s) and --fence-timeout (2.5 s) trade: a cut
# shorter than the grace period changes nothing; a longer one may be
# detected, and once the node's agent fenced (2.5 s without the API server
# and every peer) the pod is failed over even if the node is back. Whatever
# happens, a prober never sees two copies, and the counter never restarts
# from zero. The outcome per cut goes into the summary.

short_cut() { # seconds
  SCENARIO="the app's node cut off for ${1}s"
  say "Scenario: $SCENARIO"
  prepare other
  local old_node="$NODE" old_ip="$IP" old_uid="$UID_BEFORE" probes pods prober watcher
  probes="$(mktemp)" pods="$(mktemp)"
  watch_app_pods "$pods" &
  watcher=$!
  probe_both "$old_ip" "$old_node" "$pods" >"$probes" &
  prober=$!
  sleep 1
  local cut_at
  cut_at="$(now)"
  PARTITIONED="$old_node"
  hack/cluster.sh partition "$old_node" >/dev/null 2>&1
  sleep "$1"
  hack/cluster.sh heal "$old_node" >/dev/null 2>&1
  PARTITIONED=""
  # Past the controller's fence deadline (last contact + 4.5 s), a restore,
  # and the kubelet's return.
  sleep 25
  wait_for 120 "one app pod running and answering" app_ready
  sleep 5
  stop_job "$prober"
  stop_job "$watcher"

  local both outcome counter first_after
  both="$(awk '$2 != "-" && $3 != "-"' "$probes" | head -3)"
  [[ -z "$both" ]] || fail "$SCENARIO: both copies answered in one round: $both"
  app_pods_are 1 || fail "$SCENARIO: not exactly one app pod: $(kubectl -n "$NS" get pods -l app="$APP" -o name | paste -sd' ')"
  app_ready || fail "$SCENARIO: the app pod $POD ($IP) stopped answering after the cut healed: $(kubectl -n "$NS" get pods -l app="$APP" -o wide 2>&1 | tail -n +2 | paste -sd ';')"
  counter="$(counter_of "$IP" || true)"
  ((counter > 0)) || fail "$SCENARIO: the app answers counter ${counter:-none}: it started from zero"
  # Shorter than unreachableGracePeriod: nothing at all may happen.
  if awk -v c="$1" 'BEGIN { exit !(c < 2) }'; then
    no_failover_since "$FINGERPRINT"
    [[ "$(pod_uid "$POD")" == "$old_uid" ]] || fail "$SCENARIO: the app pod was replaced"
  fi
  if [[ "$(pod_uid "$POD")" == "$old_uid" ]]; then
    outcome="kept running on $old_node"
    [[ "$(failover_fingerprint)" == "$FINGERPRINT" ]] || outcome="$outcome (failover started, cancelled)"
  else
    local failover
    failover="$(policy | jq -c '.status.lastFailover // {}')"
    [[ "$(jq -r '.stage' <<<"$failover")" == Completed && "$(jq -r '.coldStart' <<<"$failover")" == false ]] ||
      fail "$SCENARIO: the pod was replaced, but not by a completed warm restore: $failover"
    first_after="$(awk '$3 != "-" { print $1; exit }' "$probes")"
    outcome="failed over to $NODE, serving +$(secs "$cut_at" "${first_after:-$(now)}")s after the cut ($(jq -r '.fence' <<<"$failover" | cut -c1-60)...)"
  fi
  log "ok: $outcome; never two copies; counter $counter"
  printf '%ss\t%s\n' "$1" "$outcome" >>"$CUT_OUTCOMES"
  rm -f "$probes" "$pods"
}

# ---- 6. retention on every node ------------------------------------------------
# After all of the above (a quarter of an hour, a dozen failovers): every
# node, standbys included, holds at most `keep` archives per container, and
# archives of pods that no longer exist are gone once the controller's
# sweep (every 60 s, for archives older than 120 s) came by.
no_group_over() { [[ -z "$(over_retention "$1")" ]]; }

retention_holds() {
  SCENARIO="retention on every node"
  say "Scenario: $SCENARIO"
  local keep needed stale
  keep="$(policy | jq -r '.spec.retention.keep // 3')"
  poll 30 no_group_over "$keep" ||
    fail "$SCENARIO: more than $keep archives of one container: $(over_retention "$keep")"
  needed="$(kubectl -n "$NS" get pods -o jsonpath='{.items[*].metadata.uid}') $(policy |
    jq -r '[.status.lastFailover.podUid, .status.failovers[]?.podUid, .status.checkpoints[]?.podUid] | map(select(. != null)) | join(" ")')"
  stale="$(stale_gone_pods 200 "$needed")"
  [[ -z "$stale" ]] || fail "$SCENARIO: archives of pods that no longer exist stayed: $stale"
  poll 60 no_checkpoint_images_left ||
    fail "$SCENARIO: checkpoint images left after the failovers: $(checkpoint_images_left | paste -sd ';')"
  log "ok: at most $keep archives per container; no checkpoint image left; per node: $(archive_groups |
    awk '{ n[$1]++; a[$1] += $2 } END { for (k in n) printf "%s %d archives of %d containers; ", k, a[k], n[k] }')"
}

# ---- 7. identities ---------------------------------------------------------------
# The cluster runs with 10-minute certificates (hack/cluster-values.yaml):
# after a quarter of an hour each component has renewed without a restart,
# while checkpoints and failovers went on.
# awk reads to the end: quitting at the match would fail curl (exit 23,
# "write error") once the page outgrows the pipe's buffer.
metric_of() { # url metric-line-prefix
  curl -fsS --max-time 3 "$1" 2>/dev/null | awk -v m="$2" 'index($0, m) == 1 && !found { print $NF; found = 1 }'
}

# Agent requests the controllers approved and signed, of the agent pod $1
# (the pod name its bound token carries) or of every agent.
issued_agent_requests() { # [pod]
  kubectl get csr -l app.kubernetes.io/component=agent -o json | jq --arg pod "${1:-}" '[.items[]
    | select(.spec.signerName == "ferry.dev/agent-ferry-system" and .status.certificate != null)
    | select(any(.status.conditions[]?; .type == "Approved" and .reason == "FerryAgentOfNode"))
    | select($pod == "" or .spec.extra["authentication.kubernetes.io/pod-name"] == [$pod])] | length'
}

identities_hold() {
  SCENARIO="identities renewed, foreign requests denied"
  say "Scenario: $SCENARIO"
  local pods ip name renewed failed issued
  pods="$(kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o json |
    jq -r '.items[] | select(.status.podIP != null) | "\(.metadata.name) \(.status.podIP) \(.metadata.creationTimestamp)"')"
  [[ -n "$pods" ]] || fail "$SCENARIO: no agent pods"
  local summary=""
  while read -r name ip created; do
    renewed="$(metric_of "http://$ip:8081/metrics" 'ferry_agent_certificate_renewals_total{result="ok"}')"
    failed="$(metric_of "http://$ip:8081/metrics" 'ferry_agent_certificate_renewals_total{result="error"}')"
    # Pods the helm upgrade of scenario 3 started are younger; a pod older
    # than 5 minutes has renewed its 10-minute certificate at least once.
    if (($(date +%s) - $(date -d "$created" +%s) > 300)); then
      ((${renewed%.*} >= 2)) || fail "$SCENARIO: agent $name issued $renewed certificates in $(( $(date +%s) - $(date -d "$created" +%s) ))s"
    fi
    [[ "${failed:-0}" == 0 ]] || fail "$SCENARIO: agent $name failed $failed renewals"
    # The certificate the agent presents answers a request made with this
    # pod's token that a controller replica signed. The replicas' own
    # counters start again when the rollouts and partitions above replace
    # them, so the request is looked up instead. (The cluster's CSR cleaner
    # may delete requests whose certificates expired, not this one.)
    issued="$(issued_agent_requests "$name")"
    ((issued >= 1)) || fail "$SCENARIO: no signed request of agent $name"
    summary="$summary $name: ${renewed%.*} certificates;"
  done <<<"$pods"
  # Each controller replica renews its own certificate as well.
  local signed=0 n
  while read -r name ip created; do
    n="$(metric_of "http://$ip:8080/metrics" 'ferry_controller_certificate_requests_total{result="signed"}')"
    signed=$((signed + ${n:-0}))
    renewed="$(metric_of "http://$ip:8080/metrics" 'ferry_controller_certificate_renewals_total{result="ok"}')"
    if (($(date +%s) - $(date -d "$created" +%s) > 300)); then
      ((${renewed%.*} >= 2)) || fail "$SCENARIO: controller $name issued itself $renewed certificates"
    fi
    summary="$summary $name: ${renewed%.*} certificates;"
  done < <(kubectl -n ferry-system get pods -l app.kubernetes.io/component=controller -o json |
    jq -r '.items[] | select(.status.podIP != null and .metadata.deletionTimestamp == null) | "\(.metadata.name) \(.status.podIP) \(.metadata.creationTimestamp)"')
  issued="$(issued_agent_requests)"
  # The cluster admin is not an agent: its request for an agent
  # certificate is denied, naming who asked.
  local csr=ferry-chaos-foreign-request request
  request="$(openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout /dev/null \
    -subj /CN=ferry-agent:ferry-a 2>/dev/null | base64 -w0)"
  kubectl delete csr "$csr" --ignore-not-found >/dev/null
  kubectl create -f - >/dev/null <<EOF_CSR
{"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
 "metadata": {"name": "$csr"},
 "spec": {"request": "$request", "signerName": "ferry.dev/agent-ferry-system",
          "usages": ["digital signature", "client auth", "server auth"]}}
EOF_CSR
  denied() {
    kubectl get csr "$csr" -o json |
      jq -e '.status.conditions[]? | select(.type == "Denied" and (.message | contains("may ask signer")))' >/dev/null
  }
  poll 30 denied || fail "$SCENARIO: a request of the cluster admin was not denied: $(kubectl get csr "$csr" -o json | jq -c .status)"
  kubectl get csr "$csr" -o json | jq -e '.status.certificate == null' >/dev/null ||
    fail "$SCENARIO: the denied request got a certificate"
  kubectl delete csr "$csr" >/dev/null
  log "ok:$summary $issued agent requests signed, $signed of them by the controller replicas running now; a foreign request was denied"
}

# ---- 8. a stolen agent certificate ------------------------------------------------
# What a thief gets with the token of the agent pod of $1: a CSR made with
# it is signed for that node (the signer checks the token's pod, not who
# holds it). Writes thief.crt and thief.key into $2.
steal_agent_certificate() { # node dir
  local node=$1 dir=$2 pod sa token server csr=ferry-chaos-stolen-$1 request
  pod="$(kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o json |
    jq -r --arg node "$node" '.items[] | select(.spec.nodeName == $node and .metadata.deletionTimestamp == null) | .metadata.name' | head -n1)"
  [[ -n "$pod" ]] || fail "$SCENARIO: no agent pod on $node"
  sa="$(kubectl -n ferry-system get pod "$pod" -o jsonpath='{.spec.serviceAccountName}')"
  token="$(kubectl -n ferry-system create token "$sa" --bound-object-kind Pod --bound-object-name "$pod" --duration 10m)"
  server="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
  # The API server's CA, whether the kubeconfig embeds it or names a file.
  kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
    base64 -d >"$dir/apiserver-ca.crt"
  request="$(openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/thief.key" -subj "/CN=ferry-agent:$node" 2>/dev/null | base64 -w0)"
  kubectl delete csr "$csr" --ignore-not-found >/dev/null
  # Only the token authenticates: no admin certificate goes along.
  kubectl --kubeconfig=/dev/null --server="$server" --certificate-authority="$dir/apiserver-ca.crt" \
    --token="$token" create -f - >/dev/null <<EOF_CSR
{"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
 "metadata": {"name": "$csr"},
 "spec": {"request": "$request", "signerName": "ferry.dev/agent-ferry-system",
          "expirationSeconds": 600, "usages": ["digital signature", "client auth", "server auth"]}}
EOF_CSR
  issued() { [[ -n "$(kubectl get csr "$csr" -o jsonpath='{.status.certificate}')" ]]; }
  poll 30 issued || fail "$SCENARIO: the request made with $pod's token was not signed: $(kubectl get csr "$csr" -o json | jq -c .status)"
  kubectl get csr "$csr" -o jsonpath='{.status.certificate}' | base64 -d >"$dir/thief.crt"
  kubectl delete csr "$csr" >/dev/null
}

stolen_certificate_refused() {
  SCENARIO="a stolen agent certificate"
  say "Scenario: $SCENARIO"
  [[ -x "${FERRY_AGENT_ATTACK:-}" ]] || fail "$SCENARIO: FERRY_AGENT_ATTACK names no executable (hack/e2e.sh builds it)"
  local dir thief victim ip record refused summary=""
  dir="$(mktemp -d)"
  kubectl -n ferry-system get configmap ferry-ca -o jsonpath='{.data.ca\.crt}' >"$dir/ca.crt"
  # The cluster admin may read the CA key; it makes an expired certificate.
  kubectl -n ferry-system get secret ferry-ca -o jsonpath='{.data.ca\.key}' | base64 -d >"$dir/ca.key"
  record="$(policy | jq -c '.status.checkpoints[0] // {}')"
  for thief in ferry-a ferry-b; do
    victim="$(other_node "$thief")"
    steal_agent_certificate "$thief" "$dir"
    ip="$(kubectl -n ferry-system get pods -l app.kubernetes.io/component=agent -o json |
      jq -r --arg node "$victim" '.items[] | select(.spec.nodeName == $node and .status.podIP != null) | .status.podIP' | head -n1)"
    [[ -n "$ip" ]] || fail "$SCENARIO: no agent pod IP on $victim"
    "$FERRY_AGENT_ATTACK" --endpoint "$ip:50051" --ca "$dir/ca.crt" --ca-key "$dir/ca.key" \
      --cert "$dir/thief.crt" --key "$dir/thief.key" --thief-node "$thief" \
      --archive "$(jq -r '.archive // ""' <<<"$record")" --policy "$NS/$APP" --namespace "$NS" \
      --pod "$(jq -r '.pod // "counter"' <<<"$record")" --pod-uid "$(jq -r '.podUid // ""' <<<"$record")" \
      --container "$(jq -r '.container // "app"' <<<"$record")" | sed 's/^/      /' ||
      fail "$SCENARIO: the agent of $victim let the certificate of $thief's agent in"
    refused="$(curl -fsS --max-time 3 "http://$ip:8081/metrics" |
      awk -v who="caller=\"agent/$thief\"" 'index($0, "ferry_agent_rpc_refused_total{") == 1 && index($0, who) { n += $NF } END { print n + 0 }')"
    ((refused >= 9)) || fail "$SCENARIO: the agent of $victim counted $refused refusals of $thief's agent"
    summary="$summary $thief->$victim: $refused refusals counted;"
  done
  rm -rf "$dir"
  log "ok:$summary no certificate, another CA's and an expired one refused at the handshake"
}

PARTITION_TIMINGS="$(mktemp)"
agent_kept_away affected
agent_kept_away other
scale_and_roll_out
helm_upgrade_rolls_everything
partition other
partition affected
CUT_OUTCOMES="$(mktemp)"
short_cut 1
short_cut 2.5
short_cut 4

retention_holds
identities_hold
stolen_certificate_refused

say "Summary"
log "agent kept off a Ready node for $((2 * DEFAULT_NODE_LOSS_GRACE))s (leader on it, then elsewhere): no failover, Degraded"
log "scale 1->3->1 and a rollout: no failover"
log "helm upgrade rolling every ferry pod: no failover"
log "retention: at most keep archives per container on every node; none of gone pods"
log "identities: every agent renewed its certificate without a restart; a foreign request was denied"
log "a stolen agent certificate: refused every privileged call on the other node's agent, both ways"
{
  printf 'partition, leader on\told copy last answered\tnew copy first answered\n'
  cat "$PARTITION_TIMINGS"
} | column -t -s $'\t'
rm -f "$PARTITION_TIMINGS"
{
  printf 'cut\toutcome\n'
  cat "$CUT_OUTCOMES"
} | column -t -s $'\t'
rm -f "$CUT_OUTCOMES"
