#!/usr/bin/env bash
# The local demo: a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok-simulated nodes), the
# CheckpointPolicy CRD, the ferry controller, a Deployment to protect and
# the example policy; then what `kubectl get checkpointpolicies` shows and
# how the API server refuses a broken policy.
#
# Needs root on a Debian bookworm machine with Rust and Go (see
# hack/test.sh). Options: --keep  leave everything running until Ctrl-C.
#
# Until the node agent and the failover land, the pods run on simulated
# (kwok) nodes, so nothing is checkpointed yet: the policy stays Pending.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

keep=0
[[ "${1:-}" == "--keep" ]] && keep=1
export FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
work="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "Kubernetes binaries and a build of ferry"
KUBEBUILDER_ASSETS="$(hack/kube-assets.sh)"
export PATH="$KUBEBUILDER_ASSETS:$PATH"
cargo build --locked --quiet -p ferry-controller -p ferry-testenv --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

say "Local control plane with 3 simulated nodes"
"$bin/local-control-plane" 3 "$work/kubeconfig" >"$work/plane.out" 2>"$work/plane.err" &
pids+=($!)
for _ in $(seq 300); do
  grep -q '^KUBECONFIG=' "$work/plane.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/plane.err" >&2; exit 1; }
  sleep 0.2
done
grep -q '^KUBECONFIG=' "$work/plane.out" || { echo "control plane did not start; see $work/plane.err" >&2; exit 1; }
cat "$work/plane.err"
export KUBECONFIG="$work/kubeconfig"
show kubectl get nodes -L topology.kubernetes.io/zone

say "Install the CheckpointPolicy CRD and start the controller"
show kubectl apply --server-side -f charts/ferry/crds/
show kubectl wait --for=condition=Established crd/checkpointpolicies.ferry.dev --timeout=30s
"$bin/ferry-controller" --http-addr=127.0.0.1:0 --log-format=text >"$work/controller.log" 2>&1 &
pids+=($!)

say "A Deployment to protect"
kubectl create deployment counter --image=ferry-test-app:dev --replicas=2 >/dev/null
show kubectl rollout status deployment/counter --timeout=60s
show kubectl get pods -l app=counter -o wide

say "Apply the example policy"
show kubectl apply -f charts/ferry/examples/counter-policy.yaml
for _ in $(seq 100); do
  phase="$(kubectl get checkpointpolicy counter -o jsonpath='{.status.phase}')"
  [[ -n "$phase" ]] && break
  sleep 0.2
done
show kubectl get checkpointpolicies
show kubectl get checkpointpolicy counter -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'

say "The API server itself refuses a broken policy, naming the field"
broken='{"apiVersion":"ferry.dev/v1alpha1","kind":"CheckpointPolicy","metadata":{"name":"broken"},
  "spec":{"selector":{},"interval":"-5s","standbys":11,"strategy":"StateApi"}}'
printf '$ kubectl apply -f - <<< %s\n' "$broken"
kubectl apply -f - <<<"$broken" || true

say "Controller log"
tail -n 5 "$work/controller.log"

if [[ $keep == 1 ]]; then
  say "Running; KUBECONFIG=$KUBECONFIG. Ctrl-C stops and removes everything."
  wait "${pids[0]}"
fi
