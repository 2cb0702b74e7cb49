#!/usr/bin/env bash
# Proves checkpoint/restore on the hack/cluster.sh cluster, end to end, the
# way ferry will do it, and prints the timings:
#   1. a Deployment of localhost/ferry/test-app:dev pinned to ferry-b
#      (--ballast-mib N) reaches Running; its counter is read over HTTP from
#      the host at the pod IP;
#   2. a ServiceAccount whose only right is `create` on `nodes/checkpoint`
#      checkpoints the container through ferry-b's kubelet API
#      (POST https://<host-ip>:10250/checkpoint/<ns>/<pod>/<container>), TLS
#      verified with the cluster CA; the archive appears in ferry-b's
#      <kubelet root>/checkpoints;
#   3. the archive becomes a checkpoint OCI image (hack/images.sh checkpoint),
#      is imported into ferry-a's containerd, and a pod pinned to ferry-a with
#      that image (imagePullPolicy: Never) continues the counter from the
#      checkpointed value with its ballast intact. It restores on ferry-a:
#      containerd 2.4 (ferry-b) removed CRI restore-via-create.
#
#   hack/cluster-cr-smoke.sh [--ballast-mib N] [--checkpoints N] [--keep]
#
# Needs the cluster up (hack/cluster.sh up). Cleans up its objects, archives
# and images unless --keep. Exit 0 only if the restored counter continued.
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
BALLAST_MIB=64
CHECKPOINTS=3
KEEP=0
NS=ferry-smoke
while (($#)); do
  case "$1" in
    --ballast-mib) BALLAST_MIB="${2:?}"; shift 2 ;;
    --checkpoints) CHECKPOINTS="${2:?}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

LOG_NAME=cr-smoke
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

eval "$("$HACK/cluster.sh" env)"
export KUBECONFIG
K="$FERRY_CACHE/kube-assets/v1.34.4-kwok-v0.8.0/kubectl"
[[ -x "$K" ]] || die "no kubectl at $K (hack/kube-assets.sh)"
"$HACK/cluster.sh" status >/dev/null || die "the cluster is not up: hack/cluster.sh up"

tmp="$(mktemp -d)"
cleanup() {
  local rc=$?
  if ((KEEP == 0)); then
    "$K" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    "$K" delete clusterrolebinding ferry-smoke-checkpoint clusterrole ferry-smoke-checkpoint >/dev/null 2>&1 || true
    rm -f "$FERRY_B_CHECKPOINTS"/checkpoint-counter-*_"$NS"-app-*.tar
    if [[ -n "${CKPT_IMAGE:-}" ]]; then
      "$FERRY_CACHE/containerd-$FERRY_A_CONTAINERD_VERSION/bin/crictl" -r "unix://$FERRY_A_CONTAINERD_SOCK" rmi "$CKPT_IMAGE" >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

"$K" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: checkpointer, namespace: $NS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ferry-smoke-checkpoint}
rules:
- apiGroups: [""]
  resources: ["nodes/checkpoint"]
  verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ferry-smoke-checkpoint}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ferry-smoke-checkpoint}
subjects: [{kind: ServiceAccount, name: checkpointer, namespace: $NS}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: counter, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: counter}}
  template:
    metadata: {labels: {app: counter}}
    spec:
      nodeSelector: {kubernetes.io/hostname: ferry-b}
      containers:
      - name: app
        image: localhost/ferry/test-app:dev
        imagePullPolicy: Never
        args: ["--listen", "0.0.0.0:8080", "--ballast-mib", "$BALLAST_MIB"]
        readinessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 1}
EOF
t0="$(now)"
"$K" -n "$NS" rollout status deployment/counter --timeout=120s >/dev/null || die "counter did not become ready"
POD="$("$K" -n "$NS" get pod -l app=counter -o jsonpath='{.items[0].metadata.name}')"
IP="$("$K" -n "$NS" get pod "$POD" -o jsonpath='{.status.podIP}')"
log "1. $NS/$POD Running on ferry-b at $IP after $(secs "$t0" "$(now)") s; counter $(curl -fsS --max-time 3 "http://$IP:8080/state")"

TOKEN="$("$K" -n "$NS" create token checkpointer)"
url="https://$FERRY_HOST_IP:$FERRY_B_KUBELET_PORT/checkpoint/$NS/$POD/app"
code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$FERRY_CLUSTER_CA" -X POST "$url")"
[[ "$code" == 401 ]] || die "an unauthenticated checkpoint got HTTP $code, not 401"
archive="" before=0 times=()
for ((i = 1; i <= CHECKPOINTS; i++)); do
  before="$(curl -fsS --max-time 3 "http://$IP:8080/state" | jq .counter)"
  t1="$(now)"
  curl -fsS --cacert "$FERRY_CLUSTER_CA" -H "Authorization: Bearer $TOKEN" -X POST "$url?timeout=60" >"$tmp/resp.json" ||
    die "checkpoint POST failed: $(cat "$tmp/resp.json")"
  t2="$(now)"
  times+=("$(secs "$t1" "$t2")")
  archive="$(jq -r '.items[0]' "$tmp/resp.json")"
  [[ -f "$archive" ]] || die "the kubelet answered $(cat "$tmp/resp.json") but $archive does not exist"
  sleep 1
done
log "2. checkpoint through the kubelet API ($BALLAST_MIB MiB ballast): ${times[*]} s; archive $archive ($(du -m "$archive" | cut -f1) MiB), counter was $before"

CKPT_IMAGE="localhost/ferry/checkpoint/$NS-$POD-app:$(date -u +%Y%m%d%H%M%S)"
t3="$(now)"
"$HACK/images.sh" checkpoint "$archive" "$CKPT_IMAGE" app "$tmp/ckpt.oci.tar"
t4="$(now)"
"$HACK/cluster.sh" import ferry-a "$tmp/ckpt.oci.tar"
t5="$(now)"
log "3. checkpoint image $CKPT_IMAGE built in $(secs "$t3" "$t4") s, imported into ferry-a in $(secs "$t4" "$t5") s"

"$K" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: counter-restored, namespace: $NS, labels: {app: counter-restored}}
spec:
  nodeName: ferry-a
  containers:
  - name: app
    image: $CKPT_IMAGE
    imagePullPolicy: Never
EOF
t6="$(now)"
"$K" -n "$NS" wait --for=jsonpath='{.status.phase}'=Running pod/counter-restored --timeout=60s >/dev/null ||
  die "the restored pod is not Running: $("$K" -n "$NS" describe pod counter-restored | tail -n 8)"
t7="$(now)"
RIP="$("$K" -n "$NS" get pod counter-restored -o jsonpath='{.status.podIP}')"
verify="$(curl -fsS --max-time 3 "http://$RIP:8080/verify")"
t8="$(now)"
source_now="$(curl -fsS --max-time 3 "http://$IP:8080/state" | jq .counter)"
restored="$(jq .counter <<<"$verify")"
log "   pod create -> Running on ferry-a: $(secs "$t6" "$t7") s; first HTTP answer after $(secs "$t6" "$t8") s"
log "   restored /verify: $verify (checkpointed at >= $before; the source is now at $source_now)"
[[ "$(jq .ballast_ok <<<"$verify")" == true ]] || die "the restored ballast is not intact"
((restored >= before && restored < source_now)) ||
  die "the restored counter $restored did not continue from the checkpoint ($before)"
echo "cr-smoke: OK: counter continued from $before to $restored on ferry-a (checkpoint ${times[*]} s, image $(secs "$t3" "$t4") s, import $(secs "$t4" "$t5") s, restore-to-Running $(secs "$t6" "$t7") s)"
