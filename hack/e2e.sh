#!/usr/bin/env bash
# Tier 5: the end-to-end test on a real two-node cluster (hack/cluster.sh:
# kubelets, containerd 2.3 on one node and 2.4 on the other, runc, CRIU)
# with ferry installed by helm. Runs both failure scenarios of the demo, each
# with the controller leader placed on the failed node and on the surviving
# one, each restoring once onto each node, with assertions (the counter
# continues from the checkpoint, the ballast verifies, exactly one app pod
# owned by its ReplicaSet is left), then what must not fail over and a
# partition (hack/chaos.sh), strategy StateApi and the history database
# going away (hack/chaos-state.sh), forged, foreign and reused restore
# grants on both nodes (hack/chaos-grants.sh), then tears the cluster down and fails if
# anything is left behind (processes, mounts, network namespaces, iptables
# or nft rules, cgroups).
#
# Needs root; see hack/demo.sh. Prints how long it took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
status=0
# hack/chaos.sh attacks an agent with hack/testenv's agent-attack. Built
# here, before any cluster runs, with the test build's features, so after
# hack/test.sh's `cargo test` nothing is compiled again.
echo "==> cargo test --no-run (builds the attack tool of hack/chaos.sh)" >&2
cargo test --locked --workspace --no-run --quiet 2>/dev/null ||
  cargo test --locked --workspace --no-run
export FERRY_AGENT_ATTACK="${CARGO_TARGET_DIR:-$PWD/target}/debug/agent-attack"
export FERRY_GRANT_HOLD="${CARGO_TARGET_DIR:-$PWD/target}/debug/grant-hold"
hack/demo.sh --assert || status=$?
if ((status == 0)); then
  hack/chaos.sh || status=$?
fi
if ((status == 0)); then
  hack/chaos-state.sh || status=$?
fi
if ((status == 0)); then
  hack/chaos-grants.sh || status=$?
fi
# --purge: the next run starts from empty node stores, so nothing an
# earlier run left (images, archives) can pass or fail this one, and a
# reused CI machine's disk does not fill up run after run.
if ((status != 0)); then
  # The purge below deletes the components' logs with the state.
  kept="${TMPDIR:-/tmp}/ferry-e2e-logs"
  rm -rf "$kept" && cp -r /var/lib/ferry-cluster/logs "$kept" 2>/dev/null &&
    echo "==> the cluster's logs are kept in $kept" >&2
fi
echo "==> hack/cluster.sh down --purge (and its leftover check)" >&2
hack/cluster.sh down --purge || status=1
echo "==> tier 5 (e2e) took $((SECONDS - started))s, exit $status" >&2
exit "$status"
