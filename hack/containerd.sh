#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 at a pinned version with
# Go from the module proxy into $FERRY_CACHE/containerd-<version>/bin and
# prints that directory on stdout. A second run only checks the binaries.
# crictl (cri-tools, the matching Kubernetes minor) goes into the same
# directory: cluster.sh uses it to stop and remove pod sandboxes cleanly.
#
#   hack/containerd.sh          # e.g. /var/cache/ferry/containerd-v2.3.7/bin
#
# Why 2.3.x: containerd restores a container from a checkpoint OCI image
# through CRI CreateContainer only in 2.2.x/2.3.x (with
# `enable_experimental_restore_via_create = true`); 2.4 removed it.
# The module has no replace directives, so `go install pkg@version` works.
# All three are built with CGO_ENABLED=0 (no btrfs/devmapper snapshotters,
# which cluster.sh does not use), so they are static.
#
# Environment: FERRY_CACHE (default /var/cache/ferry),
#              CONTAINERD_VERSION (default v2.3.7), CRICTL_VERSION (default v1.34.0).
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.7}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"
FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
BIN="$FERRY_CACHE/containerd-$CONTAINERD_VERSION/bin"
BINARIES=(containerd ctr containerd-shim-runc-v2 crictl)

LOG_NAME=containerd.sh
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

has_all() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  "$BIN/containerd" --version 2>/dev/null | grep -qF " $CONTAINERD_VERSION "
}

if has_all; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || die "go is required"
mkdir -p "$BIN"
pkg=github.com/containerd/containerd/v2
ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs osusergo netgo static_build"
gobin="$BIN/.gobin"
buildlog="$FERRY_CACHE/containerd-$CONTAINERD_VERSION/build.log"
: >"$buildlog"
for b in "${BINARIES[@]}"; do
  if [[ -x "$BIN/$b" ]]; then
    [[ "$b" != containerd ]] && continue
    "$BIN/containerd" --version 2>/dev/null | grep -qF " $CONTAINERD_VERSION " && continue
  fi
  btags="$tags" bldflags="$ldflags" src="$pkg/cmd/$b@$CONTAINERD_VERSION"
  [[ "$b" == containerd-shim-runc-v2 ]] && btags="$tags no_grpc"
  if [[ "$b" == crictl ]]; then
    btags="" src="sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    bldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
  fi
  log "building $src (a few minutes on first run; log: $buildlog)"
  CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN="$gobin" \
    go install -trimpath -tags "$btags" -ldflags "$bldflags" "$src" >>"$buildlog" 2>&1 ||
    die "go install $b failed; last lines of $buildlog:
$(tail -n 20 "$buildlog")"
  mv -f "$gobin/$b" "$BIN/$b"
done
rmdir "$gobin" 2>/dev/null || true
has_all || die "incomplete build in $BIN"
log "$("$BIN/containerd" --version)"
echo "$BIN"
