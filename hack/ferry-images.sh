#!/usr/bin/env bash
# The ferry agent and controller as OCI image archives, built from the
# release binaries without a registry or a Dockerfile (hack/images.sh's
# oci_from_rootfs), and imported into the nodes of hack/cluster.sh.
#
#   hack/ferry-images.sh build     # cargo build --release + both archives; prints their paths
#   hack/ferry-images.sh import    # build, then import into every node whose containerd
#                                  # lacks these exact images (cluster must be up)
#
# Images (entrypoint = the binary; the chart passes only args):
#   localhost/ferry/agent:dev       /ferry-agent, /usr/local/bin/ctr (containerd's
#                                   ctr: the agent imports checkpoint images into its
#                                   node's containerd with it), empty /tmp
#   localhost/ferry/controller:dev  /ferry-controller, empty /tmp
# Each rootfs holds the binary, the shared libraries `ldd` lists and the
# dynamic loader, at their host paths. Archives are reproducible, so a
# second run with unchanged binaries rebuilds nothing and imports nothing.
#
# Environment: FERRY_CACHE (default /var/cache/ferry), CARGO_TARGET_DIR
# (default $FERRY_CACHE/cargo-target; never the checkout's target/),
# IMAGES_DIR (default $FERRY_CACHE/images), FERRY_IMAGE_TAG (default dev),
# FERRY_SKIP_CARGO=1 (use the binaries already in CARGO_TARGET_DIR).
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK/.." && pwd)"
FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
IMAGES_DIR="${IMAGES_DIR:-$FERRY_CACHE/images}"
TAG="${FERRY_IMAGE_TAG:-dev}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.7}"
CTR="$FERRY_CACHE/containerd-$CONTAINERD_VERSION/bin/ctr"
NODES=(ferry-a ferry-b)
RUN="${FERRY_CLUSTER_RUN:-/run/ferry-cluster}"
# Bump when the rootfs layout below changes, so archives are rebuilt.
LAYOUT_VERSION=1

# shellcheck source=hack/images.sh
source "$HACK/images.sh"

LOG_NAME=ferry-images.sh
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_binaries() {
  [[ "$CARGO_TARGET_DIR" != "$REPO/target" ]] || die "CARGO_TARGET_DIR must not be the checkout's target/"
  if [[ "${FERRY_SKIP_CARGO:-0}" == 1 ]]; then
    log "FERRY_SKIP_CARGO=1: using the binaries in $CARGO_TARGET_DIR/release"
  else
    # Minutes on a fresh machine, and cargo is silent while it links.
    progress "ferry-agent and ferry-controller (cargo build --release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" \
      "$FERRY_CACHE/logs/cargo-release.log" \
      bash -c 'cd "$1" && cargo build --release --locked -p ferry-agent -p ferry-controller' _ "$REPO" ||
      die "cargo build failed"
  fi
  local b
  for b in ferry-agent ferry-controller; do
    [[ -x "$CARGO_TARGET_DIR/release/$b" ]] || die "no $CARGO_TARGET_DIR/release/$b"
  done
}

# The absolute paths of the shared libraries and the loader BINARY needs.
shared_libs() {
  local bin="$1" out
  out="$(ldd "$bin" 2>&1)" || {
    # A static binary: `ldd` says so and fails; nothing to copy.
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return 0
    die "ldd $bin failed: $out"
  }
  if grep -q 'not found' <<<"$out"; then
    die "ldd $bin: a library is missing: $(grep 'not found' <<<"$out")"
  fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out" | sort -u
}

# make_rootfs DIR BINARY:/PATH... : a fresh rootfs in DIR with each BINARY at
# /PATH, the shared libraries of all of them, and an empty /tmp.
make_rootfs() {
  local dir="$1" spec src dst lib
  shift
  rm -rf "$dir"
  mkdir -p "$dir/tmp"
  chmod 1777 "$dir/tmp"
  for spec in "$@"; do
    src="${spec%%:*}" dst="${spec#*:}"
    install -D -m 0755 "$src" "$dir$dst"
    while read -r lib; do
      [[ -n "$lib" ]] || continue
      [[ -e "$dir$lib" ]] && continue
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done < <(shared_libs "$src")
  done
}

# build_image NAME ARCHIVE ENTRYPOINT BINARY:/PATH...: (re)builds ARCHIVE
# unless it was built from the same inputs (hashes in ARCHIVE.inputs).
build_image() {
  local name="$1" out="$2" entry="$3" spec inputs rootfs
  shift 3
  inputs="$(
    printf 'layout %s\nname %s\nentrypoint %s\n' "$LAYOUT_VERSION" "$name" "$entry"
    for spec in "$@"; do
      printf '%s %s\n' "${spec#*:}" "$(sha256sum <"${spec%%:*}" | cut -d' ' -f1)"
      while read -r lib; do
        [[ -n "$lib" ]] && printf '%s %s\n' "$lib" "$(sha256sum <"$lib" | cut -d' ' -f1)"
      done < <(shared_libs "${spec%%:*}")
    done
  )"
  if [[ -f "$out" && -f "$out.inputs" && "$(<"$out.inputs")" == "$inputs" ]]; then
    log "$name: unchanged ($out)"
    printf '%s\n' "$out"
    return 0
  fi
  rootfs="$IMAGES_DIR/$(basename "$out" .oci.tar)-rootfs"
  make_rootfs "$rootfs" "$@"
  # The loader must run the entrypoint inside the rootfs.
  if command -v chroot >/dev/null && ! chroot "$rootfs" "$entry" --help >/dev/null 2>&1; then
    die "$name: $entry does not run in its rootfs $rootfs (missing library?)"
  fi
  oci_from_rootfs "$rootfs" "$name" "$out" "$entry"
  printf '%s\n' "$inputs" >"$out.inputs"
  rm -rf "$rootfs"
  log "$name: built $out ($(du -h "$out" | cut -f1))"
  printf '%s\n' "$out"
}

cmd_build() {
  command -v jq >/dev/null || die "jq is required (apt-get install jq)"
  [[ -x "$CTR" ]] || die "no $CTR: run hack/containerd.sh (or hack/cluster.sh up) first"
  build_binaries
  mkdir -p "$IMAGES_DIR"
  local rel="$CARGO_TARGET_DIR/release"
  # ferry-runc runs on the node (the agent installs it for the runtime
  # handler): built static, so it runs whatever the node's libc.
  local ferry_runc
  ferry_runc="$(progress "ferry-runc (static)" "$FERRY_CACHE/logs/cargo-static.log" \
    "$REPO/hack/static-binary.sh" ferry-runc)" || die "building ferry-runc failed"
  build_image "localhost/ferry/agent:$TAG" "$IMAGES_DIR/ferry-agent.oci.tar" /ferry-agent \
    "$rel/ferry-agent:/ferry-agent" "$CTR:/usr/local/bin/ctr" "$ferry_runc:/ferry-runc"
  build_image "localhost/ferry/controller:$TAG" "$IMAGES_DIR/ferry-controller.oci.tar" /ferry-controller \
    "$rel/ferry-controller:/ferry-controller"
}

# The image name and manifest digest an archive holds: "NAME DIGEST".
archive_image() {
  tar -xOf "$1" index.json | jq -r '.manifests[0] | "\(.annotations["io.containerd.image.name"]) \(.digest)"'
}

# Succeeds when NODE's containerd has NAME and NAME's repo@DIGEST at DIGEST
# (what `hack/images.sh import` leaves).
node_has_image() {
  local node="$1" name="$2" digest="$3" listing
  listing="$("$CTR" --address "$RUN/$node/containerd.sock" -n k8s.io images ls 2>/dev/null)" || return 1
  awk -v n="$name" -v r="${name%:*}@$digest" -v d="$digest" \
    '$1 == n && $3 == d {a=1} $1 == r && $3 == d {b=1} END {exit !(a && b)}' <<<"$listing"
}

cmd_import() {
  local archives archive node name digest
  mapfile -t archives < <(cmd_build)
  ((${#archives[@]} == 2)) || die "building the images failed"
  for node in "${NODES[@]}"; do
    [[ -S "$RUN/$node/containerd.sock" ]] || die "no containerd socket for $node ($RUN/$node/containerd.sock): is the cluster up (hack/cluster.sh up)?"
    for archive in "${archives[@]}"; do
      read -r name digest < <(archive_image "$archive")
      if node_has_image "$node" "$name" "$digest"; then
        log "$node: $name already at ${digest:0:19}"
        continue
      fi
      "$HACK/cluster.sh" import "$node" "$archive" || die "importing $archive into $node failed"
      node_has_image "$node" "$name" "$digest" || die "$node: $name not at $digest after the import"
      log "$node: imported $name (${digest:0:19})"
    done
  done
  printf '%s\n' "${archives[@]}"
}

case "${1:-}" in
  build) cmd_build ;;
  import) cmd_import ;;
  *) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
