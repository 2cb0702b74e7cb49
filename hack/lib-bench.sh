# shellcheck shell=bash
# The benchmarks' one case on the local cluster (hack/bench-strategies.sh,
# hack/bench-restore.sh): the counter app with a memory ballast as a
# one-replica Deployment that prefers $APP_NODE, under a CheckpointPolicy of
# a strategy (or none: "cold"); its container killed 2 s after a state of it
# reached the other node. Source after hack/lib.sh and hack/lib-ferry.sh;
# expects NS, APP, PERIOD_MS, APP_NODE and RESULTS.

deploy() { # ballast-mib strategy
  kubectl -n "$NS" delete deployment "$APP" --ignore-not-found --wait=true >/dev/null
  kubectl -n "$NS" delete checkpointpolicy "$APP" --ignore-not-found --wait=true >/dev/null
  kubectl -n "$NS" wait --for=delete pod -l app="$APP" --timeout=120s >/dev/null 2>&1 || true
  kubectl apply -f - >/dev/null <<EOF
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
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$APP_NODE]}]}
      containers:
      - name: app
        image: localhost/ferry/test-app:dev
        imagePullPolicy: Never
        args: ["--listen", "0.0.0.0:8080", "--ballast-mib", "$1", "--period-ms", "$PERIOD_MS"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
EOF
  [[ "$2" == cold ]] && return 0
  kubectl apply -f - >/dev/null <<EOF
apiVersion: ferry.dev/v1alpha1
kind: CheckpointPolicy
metadata: {name: $APP, namespace: $NS}
spec:
  selector: {matchLabels: {app: $APP}}
  containers: [app]
  interval: 10s
  standbys: 1
  strategy: $2
  stateApi: {port: 8080, path: /state, timeout: 5s, maxSize: 1Mi}
  failover:
    triggers: [ContainerFailure]
    maxCheckpointAge: 5m
EOF
}

next_checkpoint() { fresh_checkpoint "$1" && [[ "$CK_ARCHIVE" != "$2" ]]; }

app_answering() { has_app_pod && answers "$(awk '{print $3}' <<<"$POD_LINE")"; }
down() { ! answers "$1"; }

# One case; appends "strategy ballast round downtime_s lost_s age_s size" to
# $RESULTS, and leaves the failed pod in CASE_POD and the kill's time (epoch)
# in CASE_FAILED_AT.
run_case() { # strategy ballast round
  local strategy="$1" ballast="$2" round="$3"
  deploy "$ballast" "$strategy"
  wait_for 180 "the $ballast MiB app answering" app_answering || return 1
  read -r POD NODE IP <<<"$POD_LINE"
  local uid age=- size=-
  uid="$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.metadata.uid}')"
  if [[ "$strategy" == cold ]]; then
    sleep 15
  else
    wait_for 120 "a replicated $strategy checkpoint of $POD" fresh_checkpoint "$uid" || return 1
    # The next one, so that every case fails at the same point of the
    # interval: 2 s after a state reached the standby.
    local first="$CK_ARCHIVE"
    wait_for 60 "the next replicated $strategy checkpoint of $POD" next_checkpoint "$uid" "$first" || return 1
    size="$(kubectl -n "$NS" get checkpointpolicy "$APP" -o json |
      jq -r --arg a "$CK_ARCHIVE" '.status.checkpoints[] | select(.archive == $a) | .sizeBytes')"
    sleep 2
  fi
  local before failed_at serving_at after
  before="$(counter_of "$IP")"
  failed_at=$(now)
  CASE_POD="$POD" CASE_FAILED_AT="$failed_at"
  curl -fsS -X POST --max-time 2 "http://$IP:8080/kill" >/dev/null
  if [[ "$strategy" == cold ]]; then
    wait_for 10 "$POD to stop answering" down "$IP" || return 1
    wait_for 120 "$POD restarted in place" answers "$IP" || return 1
  else
    wait_for 120 "a replacement on the other node" replacement_running "$NODE" || return 1
    read -r _ _ IP <<<"$POD_LINE"
    wait_for 60 "the replacement answering" answers "$IP" || return 1
  fi
  serving_at=$(now)
  after="$(counter_of "$IP")"
  [[ "$strategy" == cold ]] || age="$(secs "$CK_TAKEN" "$failed_at")"
  local lost=$((before > after ? before - after : 0))
  printf '%s %s %s %s %s %s %s\n' "$strategy" "$ballast" "$round" "$(secs "$failed_at" "$serving_at")" \
    "$(awk -v n="$lost" -v p="$PERIOD_MS" 'BEGIN { printf "%.1f", n * p / 1000 }')" "$age" "$size" >>"$RESULTS"
  log "$strategy, $ballast MiB, round $round: counter $before at the kill, $after at the first answer; down $(secs "$failed_at" "$serving_at") s"
}

# awk's median(a, n) of a[1..n], sorting a in place (a[1] and a[n] are then
# the minimum and maximum), for the benchmarks' summaries.
# shellcheck disable=SC2034 # used by the scripts that source this
MEDIAN_AWK='
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return a[int((n + 1) / 2)]
  }
'
