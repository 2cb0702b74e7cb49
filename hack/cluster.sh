#!/usr/bin/env bash
# A real two-node Kubernetes v1.34 cluster on this one machine: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, and two nodes
# "ferry-a" and "ferry-b", each with its own containerd (runc + CRIU 4.2.1
# from hack/criu.sh, ferry's runtime handler) and its own kubelet
# (ContainerCheckpoint on). ferry-a runs containerd 2.3 LTS, which still has
# CRI restore-via-create (enabled, for the image backend); ferry-b runs 2.4,
# which removed it. No kube-proxy, no DNS. See docs/cluster.md.
#
#   hack/cluster.sh up                 # build/cache what is missing, start what is not running,
#                                      # import the images, wait until both nodes are Ready
#   hack/cluster.sh down [--purge]     # stop everything, clean up, then `check` (exit 1 on leftovers);
#                                      # --purge also deletes the state ($STATE: certs, etcd, images)
#   hack/cluster.sh status             # each component running or not, node readiness
#   hack/cluster.sh check              # leftovers of a stopped cluster (processes, mounts, netns,
#                                      # links, iptables/nft rules, cgroups); exit 1 if any
#   hack/cluster.sh fail-node NODE     # kill -9 NODE's kubelet, containerd, shims and containers
#   hack/cluster.sh restore-node NODE  # start NODE's containerd and kubelet again (so does `up`)
#   hack/cluster.sh partition NODE     # cut NODE off while its containers keep running: SIGSTOP its
#                                      # kubelet and containerd, drop its pods' traffic to the API
#                                      # server and to and from the other node's pods
#   hack/cluster.sh heal NODE          # undo `partition` (so does `down`)
#   hack/cluster.sh handler NODE on|off  # give NODE's containerd ferry's runtime handler or
#                                      # take it away (restarts containerd; containers keep running)
#   hack/cluster.sh import NODE ARCHIVE...   # import OCI archives into NODE's containerd (k8s.io)
#   hack/cluster.sh env                # the facts as shell variables (eval-able)
#
# Layout: state under /var/lib/ferry-cluster (pki/, etcd/, nodes/<node>/...),
# runtime under /run/ferry-cluster (<node>/containerd.sock, pids/), every
# component's log in /var/lib/ferry-cluster/logs/<component>.log.
# Admin: export KUBECONFIG=/var/lib/ferry-cluster/admin.kubeconfig
set -euo pipefail
set -E
trap 'printf "cluster.sh: error: line %s: %s failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
STATE="${FERRY_CLUSTER_STATE:-/var/lib/ferry-cluster}"
RUN="${FERRY_CLUSTER_RUN:-/run/ferry-cluster}"
LOGS="$STATE/logs"
PKI="$STATE/pki"
PIDS="$RUN/pids"
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
# Override per node: CONTAINERD_VERSION_FERRY_A, CONTAINERD_VERSION_FERRY_B.
CONTAINERD_VERSION_FERRY_A="${CONTAINERD_VERSION_FERRY_A:-v2.3.7}"
CONTAINERD_VERSION_FERRY_B="${CONTAINERD_VERSION_FERRY_B:-v2.4.2}"
NODES=(ferry-a ferry-b)
ETCD_PORT=23790
ETCD_PEER_PORT=23800
APISERVER_PORT=6443
KCM_PORT=20257
SCHED_PORT=20259
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
CGROUP_HIERARCHIES=/sys/fs/cgroup
# Components in start order; stop goes the other way.
CONTROL_PLANE=(etcd kube-apiserver kube-controller-manager kube-scheduler)

LOG_NAME=cluster.sh
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---- per-node facts ---------------------------------------------------------
node_index() {
  case "$1" in
    ferry-a) echo 1 ;;
    ferry-b) echo 2 ;;
    *) die "unknown node '$1' (nodes: ${NODES[*]})" ;;
  esac
}
node_kubelet_port() { echo $((10249 + $(node_index "$1"))); }   # 10250, 10251
node_healthz_port() { echo $((10247 + $(node_index "$1"))); }   # 10248, 10249
node_subnet() { echo "10.88.$(node_index "$1").0/24"; }
node_gateway() { echo "10.88.$(node_index "$1").1"; }
node_bridge() { echo "$1-br"; }
node_dir() { echo "$STATE/nodes/$1"; }
node_run() { echo "$RUN/$1"; }
node_sock() { echo "$RUN/$1/containerd.sock"; }
node_kubelet_root() { echo "$STATE/nodes/$1/kubelet"; }
node_cgroup() { echo "/$1"; }
node_containerd_version() {
  case "$1" in
    ferry-a) echo "$CONTAINERD_VERSION_FERRY_A" ;;
    ferry-b) echo "$CONTAINERD_VERSION_FERRY_B" ;;
    *) die "unknown node '$1' (nodes: ${NODES[*]})" ;;
  esac
}
# containerd, ctr, crictl and containerd-shim-runc-v2 of the node's version.
node_containerd_bin() { echo "$FERRY_CACHE/containerd-$(node_containerd_version "$1")/bin"; }
# containerd 2.2 and 2.3 restore from a checkpoint image in CreateContainer
# when asked to; 2.4 removed that (docs/runtime-handler.md).
has_restore_via_create() { [[ "$(node_containerd_version "$1")" == v2.[23].* ]]; }

host_ip() {
  local ip
  ip="$(ip -4 -o route get 192.0.2.255 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')"
  [[ -n "$ip" ]] || ip="$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)"
  [[ -n "$ip" ]] || die "cannot find the host's IPv4 address"
  echo "$ip"
}

# ---- binaries ---------------------------------------------------------------
ASSETS="" CRIU=""
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm "$@" ||
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm "$@"; }
}
need_binaries() {
  [[ -n "$ASSETS" ]] && return 0
  local l="$LOGS/build.log"
  mkdir -p "$LOGS"
  # The first run builds these (minutes each); progress keeps the reader
  # told which one and for how long.
  ASSETS="$(progress "Kubernetes binaries (hack/kube-assets.sh)" "$l" \
    env KUBEBUILDER_ASSETS='' "$HACK/kube-assets.sh" --with-kubelet | tail -n1)" ||
    die "hack/kube-assets.sh --with-kubelet failed; log: $l"
  local version
  for version in $(for node in "${NODES[@]}"; do node_containerd_version "$node"; done | sort -u); do
    progress "containerd $version (hack/containerd.sh)" "$l" \
      env CONTAINERD_VERSION="$version" "$HACK/containerd.sh" >/dev/null ||
      die "hack/containerd.sh failed for $version; log: $l"
  done
  CRIU="$(progress "CRIU (hack/criu.sh)" "$l" "$HACK/criu.sh" | tail -n1)" ||
    die "hack/criu.sh failed; log: $l"
  local pkg missing=()
  # postgresql and fonts-dejavu-core: the demo's history database and
  # ferry-report's charts.
  for pkg in containernetworking-plugins jq curl openssl file gcc libc6-dev postgresql fonts-dejavu-core; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    progress "installing ${missing[*]} from Debian" "$l" apt_install "${missing[@]}" >>"$l" ||
      die "installing ${missing[*]} failed; log: $l"
  fi
  local p
  for p in jq curl openssl ip iptables-save nft; do
    command -v "$p" >/dev/null || die "$p is missing (jq curl openssl iproute2 iptables nftables)"
  done
}
KUBECTL() { "$ASSETS/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

# ---- processes --------------------------------------------------------------
# Every process is started with setsid into its own session, its pid in
# $PIDS/<name>.pid; "running" means that pid is alive and still runs the
# recorded binary.
pid_of() {
  local f="$PIDS/$1.pid" pid exe
  [[ -f "$f" ]] || return 1
  read -r pid exe <"$f" || return 1
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] || return 1
  echo "$pid"
}
running() { pid_of "$1" >/dev/null; }

start_proc() {
  local name="$1"
  shift
  local exe
  exe="$(readlink -f "$1")"
  mkdir -p "$PIDS" "$LOGS"
  printf '\n==== %s start %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOGS/$name.log"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$! i
  echo "$pid $exe" >"$PIDS/$name.pid"
  # Until the fork has exec'd the binary, /proc/<pid>/exe is bash or setsid.
  for ((i = 0; i < 50; i++)); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] && break
    [[ -d "/proc/$pid" ]] || break
    sleep 0.05
  done
}

failed() {
  local name="$1" why="$2"
  log "error: $name $why"
  log "log: $LOGS/$name.log (last lines):"
  tail -n 30 "$LOGS/$name.log" >&2 || true
  exit 1
}

# wait_for NAME SECONDS CMD...: until CMD succeeds; fails naming NAME's log.
wait_for() {
  local name="$1" secs="$2"
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    running "$name" || failed "$name" "exited while starting"
    ((SECONDS < deadline)) || failed "$name" "not ready after ${secs}s"
    sleep 0.5
  done
}

stop_proc() {
  local name="$1" pid i
  pid="$(pid_of "$name")" || { rm -f "$PIDS/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -d "/proc/$pid" ]] || break
    sleep 0.1
  done
  if [[ -d "/proc/$pid" ]]; then
    log "$name ($pid) did not stop in 10s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$PIDS/$name.pid"
}

# ---- PKI --------------------------------------------------------------------
# cert NAME CN O SANS: a key and a cert signed by the cluster CA
# (SANS like "IP:1.2.3.4,DNS:x" or "" for a client cert).
cert() {
  local name="$1" cn="$2" org="$3" sans="$4" subj ext
  [[ -f "$PKI/$name.crt" && -f "$PKI/$name.key" ]] && return 0
  subj="/CN=$cn"
  [[ -n "$org" ]] && subj="/O=$org$subj"
  ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$sans" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

kubeconfig() {
  local out="$1" name="$2" server="$3"
  [[ -f "$out" ]] && grep -qF "server: $server" "$out" && return 0
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ferry
  cluster:
    certificate-authority: $PKI/ca.crt
    server: $server
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: ferry
  context: {cluster: ferry, user: $name}
current-context: ferry
EOF
}

pki() {
  local ip="$1" node
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [[ ! -f "$PKI/ca.crt" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 \
      -subj "/CN=ferry-cluster-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  fi
  # A host IP change invalidates the serving certs: make new ones.
  if [[ -f "$PKI/host-ip" && "$(cat "$PKI/host-ip")" != "$ip" ]]; then
    log "host IP changed to $ip: new serving certificates"
    rm -f "$PKI/apiserver".* "$PKI"/kubelet-*-serving.* "$STATE"/*.kubeconfig "$STATE"/nodes/*/kubeconfig
  fi
  echo "$ip" >"$PKI/host-ip"
  if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" \
    "IP:$ip,IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin admin system:masters ""
  cert kube-controller-manager system:kube-controller-manager "" ""
  cert kube-scheduler system:kube-scheduler "" ""
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
  for node in "${NODES[@]}"; do
    cert "kubelet-$node" "system:node:$node" system:nodes ""
    cert "kubelet-$node-serving" "system:node:$node" system:nodes "IP:$ip,IP:127.0.0.1,DNS:$node,DNS:localhost"
  done
  local server="https://$ip:$APISERVER_PORT"
  kubeconfig "$STATE/admin.kubeconfig" admin "$server"
  kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager "$server"
  kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler "$server"
  for node in "${NODES[@]}"; do
    mkdir -p "$(node_dir "$node")"
    kubeconfig "$(node_dir "$node")/kubeconfig" "kubelet-$node" "$server"
  done
}

# ---- control plane ----------------------------------------------------------
apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -q ok
}

start_control_plane() {
  local ip="$1"
  if ! running etcd; then
    mkdir -p "$STATE/etcd"
    start_proc etcd "$ASSETS/etcd" --name ferry --data-dir "$STATE/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "ferry=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
      --quota-backend-bytes 2147483648
  fi
  wait_for etcd 30 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  if ! running kube-apiserver; then
    start_proc kube-apiserver "$ASSETS/kube-apiserver" \
      --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
      --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$ip" \
      --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
      --client-ca-file "$PKI/ca.crt" \
      --service-account-issuer https://kubernetes.default.svc.cluster.local \
      --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
      --service-cluster-ip-range "$SERVICE_CIDR" \
      --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
      --allow-privileged=true \
      --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
      --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
      --kubelet-certificate-authority "$PKI/ca.crt" \
      --kubelet-preferred-address-types InternalIP \
      --enable-aggregator-routing=true \
      --profiling=false --v=1
  fi
  wait_for kube-apiserver 90 apiserver_ready

  if ! running kube-controller-manager; then
    start_proc kube-controller-manager "$ASSETS/kube-controller-manager" \
      --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
      --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
      --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
      --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
      --use-service-account-credentials=true \
      --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
      --allocate-node-cidrs=false --leader-elect=false \
      --node-monitor-grace-period 20s --v=1
  fi
  if ! running kube-scheduler; then
    start_proc kube-scheduler "$ASSETS/kube-scheduler" \
      --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
      --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
      --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --v=1
  fi
  wait_for kube-controller-manager 30 curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 30 curl -fsSk --max-time 2 "https://127.0.0.1:$SCHED_PORT/healthz"
}

# ---- nodes ------------------------------------------------------------------
cgroup_v1_hierarchies() {
  awk '$3 == "cgroup" {print $2}' /proc/mounts | grep "^$CGROUP_HIERARCHIES/" || true
}

# The kubelet's cgroupRoot must exist in every v1 hierarchy (cpuset needs
# cpus/mems copied from the parent, or nothing can join it).
make_cgroups() {
  local node="$1" h cg
  cg="$(node_cgroup "$node")"
  while read -r h; do
    mkdir -p "$h$cg"
    if [[ -f "$h/cpuset.cpus" ]]; then
      [[ -n "$(cat "$h$cg/cpuset.cpus")" ]] || cat "$h/cpuset.cpus" >"$h$cg/cpuset.cpus"
      [[ -n "$(cat "$h$cg/cpuset.mems")" ]] || cat "$h/cpuset.mems" >"$h$cg/cpuset.mems"
    fi
  done < <(cgroup_v1_hierarchies)
}

write_node_config() {
  local node="$1" ip="$2" dir run sock
  dir="$(node_dir "$node")"
  run="$(node_run "$node")"
  sock="$(node_sock "$node")"
  mkdir -p "$dir/cni/net.d" "$dir/cni/ipam" "$dir/containerd" "$dir/opt" "$dir/pod-logs" \
    "$(node_kubelet_root "$node")" "$dir/kubelet-pki" "$run"
  cat >"$dir/cni/net.d/10-$node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$(node_bridge "$node")",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$(node_subnet "$node")", "gateway": "$(node_gateway "$node")"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  local path restore_via_create="" ferry_handler=""
  path="${CRIU%/*}:$(node_containerd_bin "$node"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  has_restore_via_create "$node" && restore_via_create="enable_experimental_restore_via_create = true"
  # ferry's runtime handler (docs/runtime-handler.md): runc through
  # ferry-runc, which this node's agent installs; the restore grant travels
  # as a pod annotation. `handler NODE off` leaves it out.
  [[ -e "$dir/no-ferry-handler" ]] || ferry_handler="
    [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.ferry]
      runtime_type = \"io.containerd.runc.v2\"
      pod_annotations = [\"ferry.dev/*\"]
      [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.ferry.options]
        BinaryName = \"$dir/runtime-handler/ferry-runc\"
        SystemdCgroup = false
        Root = \"$run/runc\""
  cat >"$dir/containerd.toml" <<EOF
# ferry hack/cluster.sh: containerd $(node_containerd_version "$node") for node $node
version = 3
root = "$dir/containerd"
state = "$run/containerd"
temp = "$run/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[plugins."io.containerd.shim.v1.manager"]
  # The runc shim (and runc, and CRI's CRIU check) find criu through PATH.
  env = ["PATH=$path"]
  socket_dir = "$run/s"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.cri.v1.runtime"]
  # The image backend's path (containerd 2.2/2.3 only); ferry's runtime
  # handler below needs none.
  $restore_via_create
  netns_mounts_under_state_dir = true
  # This VM's capability bounding set lacks CAP_SYS_RESOURCE: nobody can set
  # an oom_score_adj below 0, and runc fails the pause container (-998) with
  # "can't get final child's PID from pipe: EOF". Clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "${FERRY_RUNC:-$(command -v runc)}"
        SystemdCgroup = false
        # runc's state dir; its default /run/containerd/runc is shared by both nodes.
        Root = "$run/runc"$ferry_handler
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
  local kroot
  kroot="$(node_kubelet_root "$node")"
  cat >"$dir/kubelet.yaml" <<EOF
# ferry hack/cluster.sh: kubelet for node $node
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: $(node_kubelet_port "$node")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(node_healthz_port "$node")
tlsCertFile: $PKI/kubelet-$node-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-$node-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupRoot: $(node_cgroup "$node")
podLogsDir: $dir/pod-logs
failSwapOn: false
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
featureGates:
  ContainerCheckpoint: true
rotateCertificates: false
serverTLSBootstrap: false
EOF
  : "$kroot" "$ip"
}

containerd_ready() { "$(node_containerd_bin "$1")/ctr" --address "$(node_sock "$1")" version; }
kubelet_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$(node_healthz_port "$1")/healthz"; }

start_node() {
  local node="$1" ip="$2" sock
  sock="$(node_sock "$node")"
  write_node_config "$node" "$ip"
  make_cgroups "$node"
  if ! running "containerd-$node"; then
    (
      # containerd and its shims find containerd-shim-runc-v2, runc and criu through PATH.
      bin="$(node_containerd_bin "$node")"
      export PATH="${CRIU%/*}:$bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
      start_proc "containerd-$node" "$bin/containerd" --config "$(node_dir "$node")/containerd.toml"
    )
  fi
  wait_for "containerd-$node" 30 containerd_ready "$node"
  import_images "$node"
  if ! running "kubelet-$node"; then
    start_proc "kubelet-$node" "$ASSETS/kubelet" \
      --config "$(node_dir "$node")/kubelet.yaml" \
      --kubeconfig "$(node_dir "$node")/kubeconfig" \
      --root-dir "$(node_kubelet_root "$node")" \
      --cert-dir "$(node_dir "$node")/kubelet-pki" \
      --hostname-override "$node" --node-ip "$ip" --v=2
  fi
  wait_for "kubelet-$node" 60 kubelet_healthy "$node"
}

IMAGE_ARCHIVES=()
import_images() {
  local node="$1" l="$LOGS/build.log"
  if ((${#IMAGE_ARCHIVES[@]} == 0)); then
    mapfile -t IMAGE_ARCHIVES < <(progress "node images: pause and test app (hack/images.sh all)" "$l" "$HACK/images.sh" all) ||
      die "hack/images.sh all failed; log: $l"
  fi
  "$HACK/images.sh" import "$(node_containerd_bin "$node")/ctr" "$(node_sock "$node")" "${IMAGE_ARCHIVES[@]}" ||
    die "importing images into $node's containerd failed"
}

wait_nodes_ready() {
  local node deadline=$((SECONDS + 120))
  for node in "${NODES[@]}"; do
    until [[ "$(KUBECTL get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]; do
      running "kubelet-$node" || failed "kubelet-$node" "exited"
      ((SECONDS < deadline)) || failed "kubelet-$node" "node $node not Ready after 120s"
      sleep 1
    done
  done
}

# CRIU options that runc has no flag for come from /etc/criu/runc.conf,
# which both nodes' runc read. skip-in-flight: a connection still waiting in
# a listening socket's accept queue fails the dump otherwise; the process
# keeps running with it (the kubelet checkpoints with leave-running), and a
# restored copy starts without it, so its client reconnects. A busy server
# has such a connection in most dumps. An existing file is left alone.
CRIU_RUNC_CONF=/etc/criu/runc.conf
criu_config() {
  if [[ ! -e "$CRIU_RUNC_CONF" ]]; then
    mkdir -p "$(dirname "$CRIU_RUNC_CONF")"
    printf '# written by ferry hack/cluster.sh up; removed by down\nskip-in-flight\n' >"$CRIU_RUNC_CONF"
    touch "$RUN/criu-runc-conf.created"
  elif ! grep -qx 'skip-in-flight' "$CRIU_RUNC_CONF"; then
    log "warning: $CRIU_RUNC_CONF lacks skip-in-flight: checkpoints of busy servers will fail"
  fi
}

cmd_up() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  need_binaries
  local ip node
  ip="$(host_ip)"
  mkdir -p "$STATE" "$RUN" "$LOGS" "$PIDS"
  # What `down` restores or removes: the ip_forward setting, and nft tables
  # that the kubelet's iptables-nft calls create.
  [[ -f "$RUN/ip_forward.orig" ]] || cat /proc/sys/net/ipv4/ip_forward >"$RUN/ip_forward.orig"
  [[ -f "$RUN/nft-tables.orig" ]] || nft list tables >"$RUN/nft-tables.orig" 2>/dev/null || true
  # Pod-to-pod across nodes: both bridges are on this host; it routes.
  sysctl -qw net.ipv4.ip_forward=1
  criu_config
  pki "$ip"
  start_control_plane "$ip"
  for node in "${NODES[@]}"; do
    start_node "$node" "$ip"
  done
  wait_nodes_ready
  cmd_status
  cat >&2 <<EOF

cluster is up. Use it with:
  export KUBECONFIG=$STATE/admin.kubeconfig
  $ASSETS/kubectl get nodes -o wide
In-cluster clients (no kube-proxy, no DNS) need, in the pod's env:
  KUBERNETES_SERVICE_HOST=$ip  KUBERNETES_SERVICE_PORT=$APISERVER_PORT
Logs: $LOGS/<component>.log
EOF
}

cmd_restore_node() {
  local node="$1"
  node_index "$node" >/dev/null
  need_binaries
  running kube-apiserver || die "the control plane is not running: use hack/cluster.sh up"
  start_node "$node" "$(host_ip)"
  log "$node: containerd and kubelet running"
}

# Gives the node's containerd ferry's runtime handler, or takes it away, by
# restarting it with its config rewritten; the shims, and so the containers,
# keep running. The kubelet reports the change in Node.status.runtimeHandlers.
cmd_handler() { # node on|off
  local node="$1" dir
  node_index "$node" >/dev/null
  dir="$(node_dir "$node")"
  case "$2" in
    on) rm -f "$dir/no-ferry-handler" ;;
    off) touch "$dir/no-ferry-handler" ;;
    *) die "usage: handler NODE on|off" ;;
  esac
  need_binaries
  running "containerd-$node" || die "$node's containerd is not running"
  stop_proc "containerd-$node"
  start_node "$node" "$(host_ip)"
  log "$node: containerd restarted with ferry's runtime handler $2"
}

# ---- stopping, failing, partitioning, checking (hack/cluster-teardown.sh) ---
# shellcheck source=hack/cluster-teardown.sh
source "$HACK/cluster-teardown.sh"

cmd_status() {
  local c node ok=0 st
  for c in "${CONTROL_PLANE[@]}" $(for node in "${NODES[@]}"; do echo "containerd-$node kubelet-$node"; done); do
    if running "$c"; then st="running (pid $(pid_of "$c"))"; else st="not running"; ok=1; fi
    printf '%-26s %s\n' "$c" "$st"
  done
  if running kube-apiserver && [[ -x "$FERRY_CACHE/kube-assets/$KUBE_VERSION-kwok-v0.8.0/kubectl" ]]; then
    ASSETS="${ASSETS:-$FERRY_CACHE/kube-assets/$KUBE_VERSION-kwok-v0.8.0}"
    KUBECTL get nodes -o wide 2>&1 || true
  fi
  return "$ok"
}

cmd_env() {
  local ip node
  ip="$(host_ip)"
  cat <<EOF
KUBECONFIG=$STATE/admin.kubeconfig
FERRY_CLUSTER_CA=$PKI/ca.crt
FERRY_HOST_IP=$ip
KUBERNETES_SERVICE_HOST=$ip
KUBERNETES_SERVICE_PORT=$APISERVER_PORT
FERRY_LOGS=$LOGS
EOF
  for node in "${NODES[@]}"; do
    local v="${node//-/_}"
    v="${v^^}"
    cat <<EOF
${v}_KUBELET_PORT=$(node_kubelet_port "$node")
${v}_KUBELET_ROOT=$(node_kubelet_root "$node")
${v}_CHECKPOINTS=$(node_kubelet_root "$node")/checkpoints
${v}_CONTAINERD_SOCK=$(node_sock "$node")
${v}_CONTAINERD_VERSION=$(node_containerd_version "$node")
${v}_POD_SUBNET=$(node_subnet "$node")
EOF
  done
}

cmd_import() {
  local node="$1"
  shift
  node_index "$node" >/dev/null
  "$HACK/images.sh" import "$(node_containerd_bin "$node")/ctr" "$(node_sock "$node")" "$@"
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" || exit 1 ;;
  status) cmd_status || exit 1 ;;
  check) cmd_check || exit 1 ;;
  fail-node) [[ -n "${2:-}" ]] || die "usage: fail-node NODE"; cmd_fail_node "$2" ;;
  restore-node) [[ -n "${2:-}" ]] || die "usage: restore-node NODE"; cmd_restore_node "$2" ;;
  partition) [[ -n "${2:-}" ]] || die "usage: partition NODE"; cmd_partition "$2" ;;
  heal) [[ -n "${2:-}" ]] || die "usage: heal NODE"; cmd_heal "$2" ;;
  handler) (($# == 3)) || die "usage: handler NODE on|off"; cmd_handler "$2" "$3" ;;
  import) (($# >= 3)) || die "usage: import NODE ARCHIVE..."; shift; cmd_import "$@" ;;
  env) cmd_env ;;
  *) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
