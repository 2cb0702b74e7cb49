#!/usr/bin/env bash
# The local checkpoint/restore demo without Kubernetes: two "nodes" as
# network namespaces, a ferry agent each (runc runtime, mutual TLS), the
# test-app in a runc container on node A with a 64 MiB ballast, checkpoints
# every 2 s replicated to node B; then node A fails (agent and container
# killed) and node B restores the newest checkpoint. Prints a timeline:
# counter at the failure and right after the restore, steps lost, time from
# the failure to serving again, checkpoint/replication/restore durations,
# and whether the ballast verified bit for bit.
#
# Needs root on Debian bookworm (apt for CRIU's build dependencies, runc and
# nftables; see hack/criu.sh). Options are passed on: --ballast-mib N,
# --checkpoints N.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
cargo build --locked --quiet --release -p ferry-agent --bins --examples
exec "${CARGO_TARGET_DIR:-target}/release/examples/demo_local" "$@"
