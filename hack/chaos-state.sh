#!/usr/bin/env bash
# Tier 5, part three: strategy StateApi, and the history database going
# away. Runs on the cluster hack/demo.sh leaves behind (ferry installed with
# its history in PostgreSQL on the host, the demo counter under its
# CheckpointPolicy), after hack/chaos.sh:
#
#   9. strategy StateApi with the chart's example policy as shipped, in
#      namespace stateapi: a second counter, behind a Service, whose state
#      ferry reads with GET. Its container dies (controller leader on the
#      other node), then its node fails (leader on that node). Each time a
#      prober asks every ready endpoint of the Service every 0.2 s and must
#      never find one without the state: the replacement takes no traffic
#      until ferry wrote the state into it with PUT (readiness gate). The
#      counter continues from the state, and the history holds the reads
#      and writes.
#  10. the history database stopped for 60 s while the demo counter is
#      checkpointed and its container dies: checkpoints go on, the failover
#      completes warm, the policy says DatabaseUnavailable; once the
#      database is back every checkpoint and the failover of the outage are
#      in it and no row was dropped.
# Exits 1 at the first failed check, with diagnostics.
#
#   hack/chaos-state.sh
#
# Needs root (hack/cluster.sh fail-node, the history database's server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source hack/lib.sh
source hack/lib-ferry.sh
NS=demo
APP=counter
STATE_NS=stateapi
STATE_POLICY=counter-stateapi
FAILED_NODE=""

log() { printf '    %s\n' "$*"; }

# A node this script failed comes back, whatever happens.
undo() {
  local status=$?
  failed_command "$status"
  [[ -n "$FAILED_NODE" ]] && hack/cluster.sh up >/dev/null 2>&1 || true
  # The database must not stay down for whatever runs next.
  hack/history-db.sh start "$FERRY_HOST_IP" || true
  exit "$status"
}
trap undo EXIT
trace_errors

use_local_cluster

history_sql() { psql "$(hack/history-db.sh url 127.0.0.1)" -tAc "$1"; }

bring_back() { # node
  log "bringing $1 back (hack/cluster.sh up)"
  hack/cluster.sh up >/dev/null
  FAILED_NODE=""
  wait_for 120 "$1 Ready again" node_ready "$1"
  wait_for 180 "ferry on both nodes" ferry_on_both_nodes
}

# ---- 9. strategy StateApi ---------------------------------------------------------
state_policy() { kubectl -n "$STATE_NS" get checkpointpolicy "$STATE_POLICY" -o json; }

state_api_pod() { # the Running, undeleted counter pod: "name uid node ip"
  kubectl -n "$STATE_NS" get pods -l app=counter -o json |
    jq -r '.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running" and .status.podIP != null)
      | "\(.metadata.name) \(.metadata.uid) \(.spec.nodeName) \(.status.podIP)"' | head -n1
}

has_state_api_pod() { [[ -n "$(state_api_pod)" ]]; }

state_api_pod_answers() {
  local ip
  ip="$(state_api_pod | awk '{print $4}')"
  [[ -n "$ip" ]] && answers "$ip"
}

state_checkpoint_replicated() { # a state of pod $1 taken after epoch $2 is on a standby
  state_policy | jq -e --arg uid "$1" --argjson since "$2" '[.status.checkpoints[]?
      | select(.podUid == $uid and (.replicas | length) > 0 and (.takenAt | sub("\\.[0-9]+"; "") | fromdateiso8601) > $since)] | length > 0' >/dev/null
}

state_restored() { # a Ready replacement of pod uid $1, its gate opened by ferry
  kubectl -n "$STATE_NS" get pods -l app=counter -o json | jq -e --arg old "$1" '
    [.items[] | select(.metadata.uid != $old and .metadata.deletionTimestamp == null)
     | select(any(.status.conditions[]?; .type == "ferry.dev/state-restored" and .status == "True" and .reason == "StateRestored"))
     | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length == 1' >/dev/null
}

# What a client of the Service reaches: every 0.2 s, each endpoint the
# EndpointSlices call ready, and the counter it answers ("-": no answer).
# Lines: "epoch ip counter".
probe_endpoints() {
  local ip body counter
  while :; do
    for ip in $(kubectl -n "$STATE_NS" get endpointslices -l kubernetes.io/service-name=counter -o json |
      jq -r '.items[].endpoints[]? | select(.conditions.ready == true) | .addresses[]'); do
      counter=-
      body="$(curl -fsS --max-time 0.5 "http://$ip:8080/state" 2>/dev/null || true)"
      [[ "$body" =~ \"counter\":([0-9]+) ]] && counter="${BASH_REMATCH[1]}"
      echo "$(now) $ip $counter"
    done
    sleep 0.2
  done
}

state_api_setup() {
  kubectl create namespace "$STATE_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -f - >/dev/null <<EOF_APP
apiVersion: apps/v1
kind: Deployment
metadata: {name: counter, namespace: $STATE_NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: counter}}
  template:
    metadata: {labels: {app: counter}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: localhost/ferry/test-app:dev
        imagePullPolicy: Never
        args: ["--listen", "0.0.0.0:8080", "--ballast-mib", "1", "--period-ms", "100"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: counter, namespace: $STATE_NS}
spec:
  selector: {app: counter}
  ports: [{port: 8080, targetPort: http}]
EOF_APP
  # The example as shipped, in this namespace.
  sed "s/namespace: default/namespace: $STATE_NS/" charts/ferry/examples/counter-stateapi-policy.yaml |
    kubectl apply -f - >/dev/null
}

kill_container() { curl -fsS -X POST --max-time 2 "http://$1:8080/kill" >/dev/null || true; }

fail_node() {
  FAILED_NODE="$2"
  hack/cluster.sh fail-node "$2"
}

# A StateApi failover. $1: what fails ("container" or "node"), $2: where
# the controller leader runs ("failed" node or "surviving" one), $3: the
# counter written into the app first, which no cold start reaches.
state_api_failover() { # what placement mark
  local what="$1" placement="$2" mark="$3"
  SCENARIO="strategy StateApi: the $what fails (leader on the $placement node)"
  say "Scenario: $SCENARIO"
  ferry_on_both_nodes || fail "$SCENARIO: ferry is not on both nodes"
  wait_for 120 "a Running counter pod answering" state_api_pod_answers
  local pod uid node ip since
  read -r pod uid node ip <<<"$(state_api_pod)"
  if [[ "$placement" == failed ]]; then place_leader "$node"; else place_leader "$(other_node "$node")"; fi
  since="$(date +%s)"
  curl -fsS -X PUT --max-time 2 -H 'Content-Type: application/json' \
    -d "{\"counter\": $mark}" "http://$ip:8080/state" >/dev/null ||
    fail "$SCENARIO: setting the counter of $pod failed"
  poll 60 state_checkpoint_replicated "$uid" "$((since + 1))" ||
    fail "$SCENARIO: no state of $pod replicated: $(state_policy | jq -c '.status | {conditions, checkpoints}')"

  local probes prober failed_at
  probes="$(mktemp)"
  probe_endpoints >"$probes" &
  prober=$!
  sleep 1
  log "$pod on $node ($ip): state $mark read with GET and replicated; the $what fails now"
  failed_at="$(now)"
  if [[ "$what" == container ]]; then kill_container "$ip"; else fail_node "$pod" "$node"; fi
  poll 180 state_restored "$uid" ||
    fail "$SCENARIO: no replacement received its state: $(state_policy | jq -c '.status | {conditions, failovers, lastFailover}')"
  local line new_node new_ip counter ready_at
  read -r line _ new_node new_ip <<<"$(state_api_pod)"
  wait_for 30 "the replacement $line in the Service's endpoints" \
    grep -q " $new_ip [0-9]" "$probes"
  sleep 2
  kill "$prober" 2>/dev/null || true
  wait "$prober" 2>/dev/null || true

  [[ "$new_node" != "$node" ]] || fail "$SCENARIO: the replacement $line runs on the failed node $node"
  counter="$(counter_of "$new_ip")"
  [[ "$counter" =~ ^[0-9]+$ ]] && ((counter >= mark)) ||
    fail "$SCENARIO: the replacement $line counts $counter: it did not continue from the state"
  # No client of the Service ever reached a copy without the state.
  local early
  early="$(awk -v mark="$mark" '$3 != "-" && $3 < mark' "$probes" | head -3)"
  [[ -z "$early" ]] || fail "$SCENARIO: a ready endpoint answered without the state (epoch ip counter): $early"
  ready_at="$(awk -v ip="$new_ip" '$2 == ip { print $1; exit }' "$probes")"
  state_policy | jq -e '.status.lastFailover.coldStart != true and .status.lastFailover.stage == "Completed"' >/dev/null ||
    fail "$SCENARIO: the failover did not complete warm: $(state_policy | jq -c .status.lastFailover)"
  log "ok: $line on $new_node was a ready endpoint first at +$(secs "$failed_at" "$ready_at")s, already counting from the state; now $counter; $(wc -l <"$probes") probes, none without the state"
  rm -f "$probes"
  if [[ "$what" == node ]]; then bring_back "$node"; fi
}

state_api_history() {
  local calls reads writes
  calls="$(history_sql "SELECT count(*) FILTER (WHERE operation = 'read') || ' ' || count(*) FILTER (WHERE operation = 'write')
       FROM state_api_calls WHERE namespace = '$STATE_NS' AND error IS NULL")"
  read -r reads writes <<<"$calls"
  ((reads >= 2 && writes >= 2)) || fail "strategy StateApi: the history holds $reads reads and $writes writes of the state, expected 2 failovers' worth"
  log "ok: history: $reads reads and $writes writes of the state"
}

# ---- 10. the history database stopped for 60 s --------------------------------------
history_condition_is() { # reason
  policy | jq -e --arg reason "$1" 'any(.status.conditions[]?; .type == "HistoryRecorded" and .reason == $reason)' >/dev/null
}

# Every 1 s, the checkpoints the policy lists: "archive podUid takenAt".
sample_checkpoints() {
  while :; do
    policy | jq -r '.status.checkpoints[]? | "\(.archive) \(.podUid) \(.takenAt)"' 2>/dev/null || true
    sleep 1
  done
}

# The sum of the leader's samples of metric $1 whose labels contain $2.
leader_metric() { # metric labels-part
  local ip
  ip="$(leader | awk '{print $3}')"
  curl -fsS --max-time 3 "http://$ip:8080/metrics" |
    awk -v m="$1" -v l="$2" '(index($0, m "{") == 1 || index($0, m " ") == 1) && index($0, l) { n += $NF }
      END { printf "%d", n }'
}

history_outage() {
  SCENARIO="the history database stopped for 60 s"
  say "Scenario: $SCENARIO"
  ferry_on_both_nodes || fail "$SCENARIO: ferry is not on both nodes"
  wait_for 180 "the demo app running" has_app_pod
  read -r POD NODE IP <<<"$POD_LINE"
  place_leader "$(other_node "$NODE")"
  local uid leader_before dropped_before
  uid="$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.metadata.uid}')"
  wait_for 120 "a replicated checkpoint of $POD" fresh_checkpoint "$uid"
  leader_before="$(leader | awk '{print $1}')"
  dropped_before="$(leader_metric ferry_controller_history_rows_total 'result="dropped"')" ||
    fail "$SCENARIO: the leader's metrics do not answer"

  local samples sampler down_at up_at
  samples="$(mktemp)"
  sample_checkpoints >"$samples" &
  sampler=$!
  hack/history-db.sh stop
  down_at="$(now)"
  log "PostgreSQL stopped; $POD on $NODE, leader $leader_before"
  wait_for 45 "the policy saying DatabaseUnavailable" history_condition_is DatabaseUnavailable
  sleep 10

  local killed_at serving_s failover
  killed_at="$(now)"
  curl -fsS -X POST --max-time 2 "http://$IP:8080/kill" >/dev/null || true
  wait_for 120 "a replacement app pod on the other node" replacement_running "$NODE"
  read -r NEW_POD NEW_NODE NEW_IP <<<"$POD_LINE"
  wait_for 60 "the replacement answering" answers "$NEW_IP"
  serving_s="$(secs "$killed_at" "$(now)")"
  failover="$(policy | jq -c '.status.lastFailover // {}')"
  jq -e --arg uid "$uid" '.podUid == $uid and .stage == "Completed" and .coldStart == false' <<<"$failover" >/dev/null ||
    fail "$SCENARIO: the failover of $POD is not a completed warm restore: $failover"
  log "the container died at +$(secs "$down_at" "$killed_at")s into the outage; $NEW_POD served on $NEW_NODE ${serving_s}s later, warm"

  local rest
  rest="$(awk -v a="$down_at" -v b="$(now)" 'BEGIN { r = 60 - (b - a); printf "%d", (r > 0 ? r : 0) }')"
  sleep "$rest"
  local buffered
  buffered="$(leader_metric ferry_controller_history_buffered_rows '')" ||
    fail "$SCENARIO: the leader's metrics do not answer"
  ((buffered > 0)) || fail "$SCENARIO: no rows wait for the database after 60 s without it"
  hack/history-db.sh start "$FERRY_HOST_IP"
  up_at="$(now)"
  sleep 1
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true

  # The checkpoints taken while the database was down, and the largest gap
  # between two of the same pod (the interval is 10 s).
  local during count gaps
  # (An if, not `awk && echo`: a last sample outside the outage must not
  # end the loop with status 1, which pipefail and set -e turn into a stop.)
  during="$(sort -u "$samples" | while read -r archive pod_uid taken; do
    t="$(iso_to_epoch "$taken")"
    if awk -v t="$t" -v a="$down_at" -v b="$up_at" 'BEGIN { exit !(t >= a && t <= b) }'; then
      echo "$archive $pod_uid $t"
    fi
  done | sort -u -k1,1)"
  count="$(grep -c . <<<"$during" || true)"
  ((count >= 3)) || fail "$SCENARIO: $count checkpoints during the 60 s outage: $during"
  gaps="$(sort -k2,2 -k3,3n <<<"$during" | awk '$2 == p { g = $3 - t; if (g > m) m = g } { p = $2; t = $3 } END { printf "%.1f", m }')"
  log "$count checkpoints taken during the outage (largest gap between two of one pod: ${gaps}s)"

  # Once the database is back, every one of them and the failover arrive.
  local archives
  archives="$(awk '{ printf "%s\x27%s\x27", (NR > 1 ? "," : ""), $1 }' <<<"$during")"
  all_arrived() {
    [[ "$(history_sql "SELECT count(*) FROM checkpoints WHERE archive IN ($archives)")" == "$count" ]] &&
      [[ "$(history_sql "SELECT count(*) FROM failovers WHERE pod_uid = '$uid'")" == 1 ]]
  }
  wait_for 90 "the outage's $count checkpoints and the failover in the history" all_arrived
  wait_for 60 "the policy saying Recording again" history_condition_is Recording
  [[ "$(leader | awk '{print $1}')" == "$leader_before" ]] ||
    fail "$SCENARIO: the leader changed during the outage ($leader_before → $(leader | awk '{print $1}'))"
  local dropped_after
  dropped_after="$(leader_metric ferry_controller_history_rows_total 'result="dropped"')" ||
    fail "$SCENARIO: the leader's metrics do not answer"
  [[ "${dropped_after:-0}" == "${dropped_before:-0}" ]] ||
    fail "$SCENARIO: rows dropped during the outage: ${dropped_before:-0} → $dropped_after"
  log "ok: after $(secs "$down_at" "$up_at")s without PostgreSQL ($buffered rows waiting): $count checkpoints and the failover recorded once it was back, $(secs "$up_at" "$(now)")s later; rows dropped: ${dropped_after:-0}"
  rm -f "$samples"
}

state_api_setup
state_api_failover container surviving 1000000
state_api_failover node failed 2000000
state_api_history
kubectl delete namespace "$STATE_NS" --wait=false >/dev/null
history_outage

say "Summary"
log "strategy StateApi, container and node failure: no ready endpoint without the state; the counter continued from it"
log "history database down for 60 s: checkpoints and a failover went on, and every row arrived afterwards"
