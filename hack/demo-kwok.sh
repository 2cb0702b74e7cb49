#!/usr/bin/env bash
# The controller's failover on simulated nodes (no kubelets): a real control
# plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# three kwok-simulated nodes), a
# real ferry agent per node (mutual TLS), the ferry controller with its
# admission webhook; a Deployment protected by a CheckpointPolicy gets
# checkpoints replicated to a standby node, its node is lost, and the
# Deployment's replacement pod is restored on the standby. kwok nodes have
# no kubelet, so the agents use the `synthetic` runtime, a named stand-in
# for the kubelet checkpoint API that writes real archives.
#
# Needs root on a Debian bookworm machine with Rust and Go (see
# hack/test.sh). Options: --keep  leave everything running until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Kubernetes binaries, helm and a build of ferry"
KUBEBUILDER_ASSETS="$(hack/kube-assets.sh)"
export KUBEBUILDER_ASSETS PATH="$KUBEBUILDER_ASSETS:$PATH"
cargo build --locked --quiet -p ferry-agent -p ferry-controller --bins --examples
exec "${CARGO_TARGET_DIR:-target}/debug/examples/demo" "$@"
