# shellcheck shell=bash
# hack/cluster.sh's teardown: stopping a node's processes and pods, failing
# and partitioning a node on purpose, `down`, and the leftover check.
# Sourced by hack/cluster.sh, whose facts and helpers it uses.

# ---- stopping ---------------------------------------------------------------
# Processes in any of the node's cgroups (containers and pause processes).
cgroup_pids() {
  local cg h
  cg="$(node_cgroup "$1")"
  while read -r h; do
    [[ -d "$h$cg" ]] && find "$h$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
  done < <(cgroup_v1_hierarchies)
  [[ -d "$CGROUP_HIERARCHIES/unified$cg" ]] &&
    find "$CGROUP_HIERARCHIES/unified$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
  true
}

# The node's shims: containerd-shim-runc-v2 started with -address <its socket>.
shim_pids() {
  local sock p
  sock="$(node_sock "$1")"
  for p in $(pgrep -f containerd-shim-runc-v2 || true); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "-address $sock " && echo "$p"
  done
  true
}

kill_node_processes() {
  local node="$1" p pids
  pids="$(shim_pids "$node") $(cgroup_pids "$node")"
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  sleep 0.3
}

# Stop and remove every pod sandbox through CRI, so containerd tears down
# CNI (veth, IPAM), netns and shm mounts itself.
drain_node_runtime() {
  local node="$1" crictl=(timeout 60 "$(node_containerd_bin "$1")/crictl" --timeout 30s -r "unix://$(node_sock "$1")")
  running "containerd-$node" || return 0
  local pods
  pods="$("${crictl[@]}" pods -q 2>/dev/null || true)"
  if [[ -n "$pods" ]]; then
    # shellcheck disable=SC2086
    "${crictl[@]}" stopp $pods >/dev/null 2>&1 || log "$node: crictl stopp reported an error"
    # shellcheck disable=SC2086
    "${crictl[@]}" rmp -f $pods >/dev/null 2>&1 || log "$node: crictl rmp reported an error"
  fi
}

# Whatever a crashed or killed runtime left: mounts, netns, links, rules, cgroups.
sweep() {
  local node m p
  # Mounts under our state/runtime dirs, deepest first.
  for ((m = 0; m < 3; m++)); do
    local mounts
    mounts="$(awk -v s="$STATE/" -v r="$RUN/" 'index($2, s) == 1 || index($2, r) == 1 || $2 == substr(r, 1, length(r)-1) {print $2}' /proc/mounts | sort -r)"
    [[ -n "$mounts" ]] || break
    while read -r mp; do
      mp="$(printf '%b' "$mp")"
      umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done <<<"$mounts"
  done
  # The kubelet's own chains (it creates them whatever the config says):
  # KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY, KUBE-FIREWALL (+ INPUT/OUTPUT jumps).
  local ipt tbl chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    while "$ipt" -w -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -w -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    for tbl in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        if "$ipt" -w -t "$tbl" -F "$chain" 2>/dev/null; then
          "$ipt" -w -t "$tbl" -X "$chain" 2>/dev/null || true
        fi
      done
    done
  done
  # nft tables that iptables-nft created for them (not there before `up`) and
  # that now hold no rule.
  if [[ -f "$RUN/nft-tables.orig" ]]; then
    local fam name
    while read -r _ fam name; do
      [[ -n "$name" ]] || continue
      grep -qxF "table $fam $name" "$RUN/nft-tables.orig" && continue
      if ! nft -a list table "$fam" "$name" 2>/dev/null | grep -vE '^\s*(table|chain|type) |^\s*}' | grep -q '# handle'; then
        nft delete table "$fam" "$name" 2>/dev/null || true
      fi
    done < <(nft list tables 2>/dev/null)
  fi
  for node in "${NODES[@]}"; do
    local br veth h cg
    br="$(node_bridge "$node")"
    if ip link show "$br" >/dev/null 2>&1; then
      for veth in $(ip -o link show master "$br" | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip link del "$veth" 2>/dev/null || true
      done
      ip link del "$br" 2>/dev/null || true
    fi
    # CNI's iptables chains/rules carry a comment with the network name.
    local tbl
    for tbl in filter nat mangle; do
      local rules rule
      rules="$(iptables-save -t "$tbl" 2>/dev/null | grep -E "^-A .*name: \\\\?\"?$node\\\\?\"? " || true)"
      while read -r rule; do
        if [[ -n "$rule" ]]; then eval "iptables -t $tbl ${rule/#-A/-D}" 2>/dev/null || true; fi
      done <<<"$rules"
    done
    rm -rf "/var/lib/cni/networks/$node" /var/lib/cni/results/"$node"-* 2>/dev/null || true
    # A killed container leaves its cgroup busy for a moment: retry for 5 s.
    cg="$(node_cgroup "$node")"
    local try
    for ((try = 0; try < 25; try++)); do
      local left=0
      while read -r h; do
        if [[ -d "$h$cg" ]]; then
          find "$h$cg" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
        fi
      done < <(cgroup_v1_hierarchies; echo "$CGROUP_HIERARCHIES/unified")
      ((left)) || break
      for p in $(cgroup_pids "$node"); do kill -KILL "$p" 2>/dev/null || true; done
      sleep 0.2
    done
  done
  true
}

cmd_down() {
  local purge=0 node c
  [[ "${1:-}" == --purge ]] && purge=1
  [[ -d "$RUN" || -d "$STATE" ]] || { log "nothing to stop"; cmd_check; return; }
  heal
  for node in "${NODES[@]}"; do stop_proc "kubelet-$node"; done
  for node in "${NODES[@]}"; do
    drain_node_runtime "$node"
    stop_proc "containerd-$node"
    kill_node_processes "$node"
  done
  for ((c = ${#CONTROL_PLANE[@]} - 1; c >= 0; c--)); do stop_proc "${CONTROL_PLANE[c]}"; done
  # The history database the demo records in (hack/history-db.sh).
  FERRY_CLUSTER_STATE="$STATE" "$HACK/history-db.sh" stop || true
  sweep
  if [[ -f "$RUN/criu-runc-conf.created" ]]; then
    rm -f "$CRIU_RUNC_CONF"
    rmdir "$(dirname "$CRIU_RUNC_CONF")" 2>/dev/null || true
  fi
  if [[ -f "$RUN/ip_forward.orig" ]]; then
    sysctl -qw "net.ipv4.ip_forward=$(cat "$RUN/ip_forward.orig")" || true
  fi
  rm -rf "$RUN"
  if ((purge)); then
    rm -rf "$STATE"
    log "state $STATE deleted"
  fi
  cmd_check
}

cmd_fail_node() {
  local node="$1"
  node_index "$node" >/dev/null
  local k c
  k="$(pid_of "kubelet-$node" || true)"
  c="$(pid_of "containerd-$node" || true)"
  [[ -n "$k" ]] && kill -KILL "$k"
  [[ -n "$c" ]] && kill -KILL "$c"
  kill_node_processes "$node"
  rm -f "$PIDS/kubelet-$node.pid" "$PIDS/containerd-$node.pid"
  log "$node failed on purpose: kubelet, containerd, shims and containers killed (hack/cluster.sh restore-node $node brings it back)"
}

# A partition is the chain FERRY-PARTITION, jumped to first from INPUT and
# FORWARD (before any ESTABLISHED accept, so open connections stall too).
# The host itself still reaches every pod: a prober there sees both copies.
PARTITION_CHAIN=FERRY-PARTITION

cmd_partition() {
  local node="$1" other subnet p
  node_index "$node" >/dev/null
  subnet="$(node_subnet "$node")"
  if ! iptables -w -n -L "$PARTITION_CHAIN" >/dev/null 2>&1; then
    iptables -w -N "$PARTITION_CHAIN"
    iptables -w -I INPUT 1 -j "$PARTITION_CHAIN"
    iptables -w -I FORWARD 1 -j "$PARTITION_CHAIN"
  fi
  iptables -w -A "$PARTITION_CHAIN" -s "$subnet" -p tcp --dport "$APISERVER_PORT" -j DROP
  for other in "${NODES[@]}"; do
    [[ "$other" == "$node" ]] && continue
    iptables -w -A "$PARTITION_CHAIN" -s "$subnet" -d "$(node_subnet "$other")" -j DROP
    iptables -w -A "$PARTITION_CHAIN" -s "$(node_subnet "$other")" -d "$subnet" -j DROP
  done
  for p in "kubelet-$node" "containerd-$node"; do
    pid_of "$p" >/dev/null || die "$node is not running ($p): nothing to partition"
    kill -STOP "$(pid_of "$p")"
  done
  log "$node partitioned: kubelet and containerd stopped (SIGSTOP), its pods cut off from the API server and the other node's pods; its containers keep running (hack/cluster.sh heal $node)"
}

# Removes every partition rule of $1 (of all nodes with no argument) and
# continues its kubelet and containerd.
heal() {
  local node rule subnet p nodes=("$@")
  ((${#nodes[@]})) || nodes=("${NODES[@]}")
  for node in "${nodes[@]}"; do
    subnet="$(node_subnet "$node")"
    while read -r rule; do
      if [[ -n "$rule" ]]; then eval "iptables -w ${rule/#-A/-D}"; fi
    done < <(iptables-save -t filter 2>/dev/null | grep -E "^-A $PARTITION_CHAIN " | grep -F -- "$subnet" || true)
    for p in "containerd-$node" "kubelet-$node"; do
      if pid_of "$p" >/dev/null; then kill -CONT "$(pid_of "$p")"; fi
    done
  done
  if iptables -w -n -L "$PARTITION_CHAIN" >/dev/null 2>&1 &&
    [[ -z "$(iptables-save -t filter | grep -E "^-A $PARTITION_CHAIN " || true)" ]]; then
    while iptables -w -D INPUT -j "$PARTITION_CHAIN" 2>/dev/null; do :; done
    while iptables -w -D FORWARD -j "$PARTITION_CHAIN" 2>/dev/null; do :; done
    iptables -w -X "$PARTITION_CHAIN"
  fi
}

cmd_heal() {
  node_index "$1" >/dev/null
  heal "$1"
  log "$1 healed: its traffic flows again, kubelet and containerd continue (SIGCONT)"
}

# ---- check / status ---------------------------------------------------------
# Leftovers of a stopped cluster. What is checked and how:
#   processes  any process whose command line names $STATE or $RUN, or one of
#              our shims (-address $RUN/...), or a process in a node cgroup
#   mounts     /proc/mounts entries under $STATE or $RUN, overlay/shm/netns
#              (nsfs) mounts that name them
#   netns      files in $RUN/*/netns (containerd's, netns_mounts_under_state_dir)
#   links      the nodes' bridges and veths enslaved to them
#   iptables   iptables-save lines naming a node's CNI network, CNI-* chains, and
#              the kubelet's KUBE-FIREWALL/KUBE-KUBELET-CANARY/KUBE-IPTABLES-HINT
#              chains (iptables and ip6tables)
#   nft        `nft list ruleset` naming a node's network or a CNI-*/CRIU table
#   cgroups    the node's cgroupRoot directory in any v1 hierarchy (and unified)
cmd_check() {
  local bad=() node p h cg
  for p in $(pgrep -f -- "$STATE/|$RUN/|$STATE |$RUN " || true); do
    [[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
    grep -qa -- "hack/cluster.sh" "/proc/$p/cmdline" 2>/dev/null && continue
    bad+=("process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-160)")
  done
  while read -r src mp fstype _; do
    case "$mp" in "$STATE"/* | "$RUN" | "$RUN"/*) bad+=("mount $fstype $src on $mp") ;; esac
  done </proc/mounts
  for node in "${NODES[@]}"; do
    for p in $(cgroup_pids "$node"); do bad+=("process $p in cgroup $(node_cgroup "$node")"); done
    ip link show "$(node_bridge "$node")" >/dev/null 2>&1 && bad+=("link $(node_bridge "$node")")
    if iptables-save 2>/dev/null | grep -qE "name: \\\\?\"?$node\\\\?\"? "; then
      bad+=("iptables rules of CNI network $node")
    fi
    if nft list ruleset 2>/dev/null | grep -qE "$node|$(node_bridge "$node")"; then
      bad+=("nft rules naming $node")
    fi
    cg="$(node_cgroup "$node")"
    while read -r h; do
      [[ -d "$h$cg" ]] && bad+=("cgroup $h$cg")
    done < <(cgroup_v1_hierarchies; echo "$CGROUP_HIERARCHIES/unified")
  done
  local ipt
  if iptables-save -t filter 2>/dev/null | grep -q "^:$PARTITION_CHAIN "; then
    bad+=("iptables chain $PARTITION_CHAIN (hack/cluster.sh heal NODE)")
  fi
  for ipt in iptables-save ip6tables-save; do
    if "$ipt" 2>/dev/null | grep -qE '^:(CNI-|KUBE-FIREWALL|KUBE-KUBELET-CANARY|KUBE-IPTABLES-HINT)'; then
      bad+=("$ipt: chains $("$ipt" 2>/dev/null | grep -oE '^:(CNI-|KUBE-)[A-Z0-9-]*' | sort -u | tr '\n' ' ')")
    fi
  done
  if [[ -d "$RUN" ]]; then
    local ns
    for ns in "$RUN"/*/netns/*; do [[ -e "$ns" ]] && bad+=("netns file $ns"); done
  fi
  if ((${#bad[@]})); then
    log "error: leftovers of the cluster:"
    printf '  %s\n' "${bad[@]}" >&2
    return 1
  fi
  log "check: no process, mount, netns, link, iptables/nft rule or cgroup of the cluster left"
}
