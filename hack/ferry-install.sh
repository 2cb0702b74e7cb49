#!/usr/bin/env bash
# Installs ferry with its Helm chart onto the local two-node cluster of
# hack/cluster.sh, from locally built images:
#
#   hack/ferry-install.sh            # cluster up if needed, build + import the images,
#                                    # helm upgrade --install, wait until it all works
#   hack/ferry-install.sh --no-build # skip cargo (use the binaries already built)
#   hack/ferry-install.sh status     # only the checks at the end
#
# Ready means: the agent DaemonSet runs one Ready pod on each node, each
# agent renews its Lease ferry-agent-<node> in the release namespace with
# its current pod as holder, and a Ready controller pod holds the
# ferry-controller Lease (leader). On failure it names the failing pod and
# prints its state, events and the tail of its logs.
#
# The chart values are hack/cluster-values.yaml plus the host IP (for
# KUBERNETES_SERVICE_HOST: no kube-proxy here) and the image digests as pod
# annotations (a rebuilt image with the same :dev tag rolls the pods).
#
# Environment: FERRY_RELEASE (default ferry), FERRY_NAMESPACE (default
# ferry-system), FERRY_INSTALL_TIMEOUT seconds (default 180), FERRY_CACHE,
# CARGO_TARGET_DIR (see hack/ferry-images.sh).
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK/.." && pwd)"
FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
RELEASE="${FERRY_RELEASE:-ferry}"
NS="${FERRY_NAMESPACE:-ferry-system}"
TIMEOUT="${FERRY_INSTALL_TIMEOUT:-180}"
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
KUBECTL_BIN="$FERRY_CACHE/kube-assets/$KUBE_VERSION-kwok-v0.8.0/kubectl"
NODES=(ferry-a ferry-b)
# The chart's object names for release "ferry" (fullname = release name).
AGENT_DS="$RELEASE-agent"
CONTROLLER_DEPLOY="$RELEASE-controller"
LEADER_LEASE=ferry-controller  # controller/src/main.rs
AGENT_LEASE_PREFIX=ferry-agent- # api/src/names.rs

LOG_NAME=ferry-install.sh
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

k() { "$KUBECTL_BIN" --kubeconfig "$KUBECONFIG" "$@"; }

# Everything about one pod that says why it is not Ready.
describe_pod() {
  local pod="$1" restarts
  printf '\n--- pod %s/%s (node %s) ---\n' "$NS" "$pod" \
    "$(k -n "$NS" get pod "$pod" -o jsonpath='{.spec.nodeName}' 2>/dev/null)" >&2
  k -n "$NS" get pod "$pod" -o jsonpath='phase: {.status.phase}{"\n"}{range .status.conditions[*]}{.type}={.status} {.reason} {.message}{"\n"}{end}{range .status.containerStatuses[*]}container {.name}: ready={.ready} restarts={.restartCount} state={.state} lastState={.lastState}{"\n"}{end}' >&2 2>&1 || true
  printf -- '--- events of %s ---\n' "$pod" >&2
  k -n "$NS" get events --field-selector "involvedObject.name=$pod" \
    -o custom-columns=LAST:.lastTimestamp,TYPE:.type,REASON:.reason,MESSAGE:.message --no-headers 2>&1 | tail -n 15 >&2 || true
  restarts="$(k -n "$NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null || echo 0)"
  if [[ "${restarts:-0}" != 0 ]]; then
    printf -- '--- logs of the previous container of %s (tail) ---\n' "$pod" >&2
    k -n "$NS" logs "$pod" --previous --tail 25 >&2 2>&1 || true
  fi
  printf -- '--- logs of %s (tail) ---\n' "$pod" >&2
  k -n "$NS" logs "$pod" --tail 25 >&2 2>&1 || true
}

# Describes every pod of the release that is not Ready (all of them if
# they all are), then exits 1 with MESSAGE.
fail_with_pods() {
  local msg="$1" pod ready shown=0
  log "error: $msg"
  k -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o wide >&2 2>&1 || true
  while read -r pod ready; do
    [[ -n "$pod" ]] || continue
    if [[ "$ready" != True ]]; then describe_pod "$pod"; shown=1; fi
  done < <(k -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null)
  if ((shown == 0)); then
    while read -r pod; do
      [[ -n "$pod" ]] && describe_pod "$pod"
    done < <(k -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null | sed 's|^pod/||')
  fi
  log "error: $msg (details above)"
  exit 1
}

# The Ready agent pod on NODE, if any.
agent_pod_on() {
  k -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=agent" \
    --field-selector "spec.nodeName=$1,status.phase=Running" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    awk '$2 == "True" && NF == 2 {print $1}' | head -n1
}

# One pass of the checks; prints what is missing (nothing when all is well).
missing() {
  local node pod holder lease
  for node in "${NODES[@]}"; do
    pod="$(agent_pod_on "$node")"
    if [[ -z "$pod" ]]; then
      echo "no Ready agent pod on $node"
      continue
    fi
    lease="$AGENT_LEASE_PREFIX$node"
    holder="$(k -n "$NS" get lease "$lease" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
    [[ "$holder" == "$pod" ]] || echo "Lease $NS/$lease held by '${holder:-<no such Lease>}', not by $pod"
  done
  holder="$(k -n "$NS" get lease "$LEADER_LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
  if [[ -z "$holder" ]]; then
    echo "no controller leader (Lease $NS/$LEADER_LEASE missing or unheld)"
  elif [[ "$(k -n "$NS" get pod "$holder" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" != True ]]; then
    echo "the leader $holder (Lease $NS/$LEADER_LEASE) is not a Ready pod"
  fi
}

wait_until_working() {
  local deadline=$((SECONDS + TIMEOUT)) left
  while left="$(missing)"; [[ -n "$left" ]]; do
    ((SECONDS < deadline)) || fail_with_pods "not working after ${TIMEOUT}s: $(paste -sd';' <<<"$left")"
    sleep 2
  done
}

summary() {
  local node
  k -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o wide >&2
  for node in "${NODES[@]}"; do
    log "agent $node: pod $(agent_pod_on "$node"), Lease $AGENT_LEASE_PREFIX$node endpoint $(k -n "$NS" get lease "$AGENT_LEASE_PREFIX$node" -o jsonpath='{.metadata.annotations.ferry\.dev/grpc-endpoint}')"
  done
  log "controller leader: $(k -n "$NS" get lease "$LEADER_LEASE" -o jsonpath='{.spec.holderIdentity}')"
}

CLUSTER_ENV=""
# The facts `hack/cluster.sh env` prints; exports KUBECONFIG.
cluster_env() {
  CLUSTER_ENV="$("$HACK/cluster.sh" env)" || die "hack/cluster.sh env failed"
  KUBECONFIG="$(cluster_fact KUBECONFIG)"
  export KUBECONFIG
}
cluster_fact() {
  local v
  v="$(sed -n "s/^$1=//p" <<<"$CLUSTER_ENV")"
  [[ -n "$v" ]] || die "hack/cluster.sh env prints no $1"
  printf '%s\n' "$v"
}

manifest_digest() {
  tar -xOf "$1" index.json | jq -r '.manifests[0].digest'
}

cmd_install() {
  [[ $EUID -eq 0 ]] || die "must run as root (hack/cluster.sh needs it)"
  local helm ip archives agent_digest controller_digest helm_out
  if ! "$HACK/cluster.sh" status >/dev/null 2>&1; then
    log "the cluster is not (fully) up: hack/cluster.sh up"
    "$HACK/cluster.sh" up || die "hack/cluster.sh up failed"
  fi
  cluster_env
  ip="$(cluster_fact FERRY_HOST_IP)"
  [[ -x "$KUBECTL_BIN" ]] || die "no kubectl at $KUBECTL_BIN (hack/cluster.sh up builds it)"
  helm="$("$HACK/helm.sh")" || die "hack/helm.sh failed"

  log "building and importing the images"
  mapfile -t archives < <("$HACK/ferry-images.sh" import)
  ((${#archives[@]} == 2)) || die "hack/ferry-images.sh import failed"
  agent_digest="$(manifest_digest "${archives[0]}")"
  controller_digest="$(manifest_digest "${archives[1]}")"

  # The agents mount host directories: Pod Security "privileged". This
  # cluster's API server has no PodSecurity configuration (nothing is
  # enforced unless a namespace says so); the label keeps it explicit and
  # holds on clusters that default to baseline or restricted.
  if ! k get namespace "$NS" >/dev/null 2>&1; then
    k create namespace "$NS" >/dev/null
  fi
  k label --overwrite namespace "$NS" \
    pod-security.kubernetes.io/enforce=privileged \
    pod-security.kubernetes.io/warn=privileged \
    pod-security.kubernetes.io/audit=privileged >/dev/null

  # Helm installs the chart's crds/ once and never upgrades them: a cluster
  # from an earlier run keeps an older CheckpointPolicy schema, and the
  # controller's status writes with new fields then fail (server-side
  # apply answers 500). Apply the CRD first, as an upgrade must.
  log "kubectl apply --server-side charts/ferry/crds (helm does not upgrade CRDs)"
  k apply --server-side --force-conflicts --field-manager=ferry-install \
    -f "$REPO/charts/ferry/crds/" >/dev/null || die "applying the CRD failed"
  # The history database (PostgreSQL on the host): the controller records
  # every checkpoint and failover there, ferry-report reads it.
  log "history database: PostgreSQL on $ip:${FERRY_HISTORY_DB_PORT:-15432} (hack/history-db.sh)"
  "$HACK/history-db.sh" start "$ip" || die "hack/history-db.sh start failed"
  k -n "$NS" create secret generic ferry-history \
    --from-literal=url="$("$HACK/history-db.sh" url "$ip")" \
    --dry-run=client -o yaml | k apply -f - >/dev/null || die "creating the Secret ferry-history failed"
  log "helm upgrade --install $RELEASE charts/ferry -n $NS (host IP $ip)"
  helm_out="$(mktemp)"
  if ! "$helm" upgrade --install "$RELEASE" "$REPO/charts/ferry" -n "$NS" --create-namespace \
      -f "$HACK/cluster-values.yaml" \
      --set history.enabled=true --set history.urlSecret.name=ferry-history \
      --set "controller.extraEnv[0].value=$ip" \
      --set "agent.extraEnv[0].value=$ip" \
      --set-string "agent.podAnnotations.ferry\.dev/image-digest=$agent_digest" \
      --set-string "controller.podAnnotations.ferry\.dev/image-digest=$controller_digest" \
      --wait --timeout "${TIMEOUT}s" >"$helm_out" 2>&1; then
    cat "$helm_out" >&2
    rm -f "$helm_out"
    fail_with_pods "helm upgrade --install failed"
  fi
  # The release line and revision; the chart's NOTES are for a first-time user.
  grep -E '^(Release|NAME|REVISION|STATUS):' "$helm_out" | paste -sd' ' | sed 's/^/  /' >&2 || true
  rm -f "$helm_out"
  wait_until_working
  summary
  log "ferry is running: both agents Ready with their Leases, the controller Ready and leader"
  cat >&2 <<EOF
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL_BIN -n $NS get pods -o wide
  $KUBECTL_BIN -n $NS logs ds/$AGENT_DS          # or -l app.kubernetes.io/component=agent
  $KUBECTL_BIN -n $NS logs deploy/$CONTROLLER_DEPLOY
EOF
}

cmd_status() {
  cluster_env
  local left
  left="$(missing)"
  [[ -z "$left" ]] || fail_with_pods "$(paste -sd';' <<<"$left")"
  summary
}

case "${1:-}" in
  "") cmd_install ;;
  --no-build) export FERRY_SKIP_CARGO=1; cmd_install ;;
  status) cmd_status ;;
  *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
