#!/usr/bin/env bash
# Provides a directory in the KUBEBUILDER_ASSETS convention (kube-apiserver,
# etcd, kube-controller-manager, kube-scheduler, kwok, kubectl) and prints its
# path on stdout. Honours KUBEBUILDER_ASSETS when it already holds every
# binary; otherwise builds the Kubernetes components with Go from the module
# proxy at the pinned version, installs etcd from Debian, and caches the result
# under $FERRY_CACHE so a second run takes seconds.
#
#   hack/kube-assets.sh                 # the KUBEBUILDER_ASSETS set above
#   hack/kube-assets.sh --with-kubelet  # the same directory, with kubelet built
#                                       # into it too (hack/cluster.sh uses it)
set -euo pipefail

WITH_KUBELET=0
case "${1:-}" in
  --with-kubelet) WITH_KUBELET=1 ;;
  "") ;;
  *) echo "usage: $0 [--with-kubelet]" >&2; exit 2 ;;
esac

# Must match the k8s-openapi feature in Cargo.toml (v1_34).
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
BINARIES=(kube-apiserver etcd kube-controller-manager kube-scheduler kwok kubectl)
((WITH_KUBELET == 0)) || BINARIES+=(kubelet)

LOG_NAME=kube-assets
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

has_all() {
  local dir="$1" bin
  for bin in "${BINARIES[@]}"; do
    [[ -x "$dir/$bin" ]] || return 1
  done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if has_all "$KUBEBUILDER_ASSETS"; then
    echo "$KUBEBUILDER_ASSETS"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks some of: ${BINARIES[*]}; building them instead"
fi

ASSETS="$FERRY_CACHE/kube-assets/$KUBE_VERSION-kwok-$KWOK_VERSION"
if has_all "$ASSETS"; then
  echo "$ASSETS"
  exit 0
fi
mkdir -p "$ASSETS"

command -v go >/dev/null || { log "go is required to build the Kubernetes binaries"; exit 1; }

# etcd: Debian's etcd-server (3.4, works on loopback).
if [[ ! -x "$ASSETS/etcd" ]]; then
  if ! command -v etcd >/dev/null && [[ ! -x /usr/bin/etcd ]]; then
    log "installing etcd-server from Debian"
    if ! apt-get install -y -q etcd-server >/dev/null 2>&1; then
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >/dev/null
    fi
    # The package starts a system etcd on 2379; tests use their own ports.
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
  ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$ASSETS/etcd"
fi

# Kubernetes components: a throwaway module that pins every staging module.
minor="${KUBE_VERSION#v1.}"          # 34.4
staging_version="v0.${minor}"       # v0.34.4
moddir="$FERRY_CACHE/kube-build/$KUBE_VERSION"
mkdir -p "$moddir"
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base component-helpers
  controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
  endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
  kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller)
{
  echo "module ferry.dev/kube-build"
  echo
  echo "go 1.24"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  for m in "${staging[@]}"; do
    echo "replace k8s.io/$m => k8s.io/$m $staging_version"
  done
} >"$moddir/go.mod"
cat >"$moddir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
export GOFLAGS=-mod=mod CGO_ENABLED=0
cd "$moddir"
if [[ ! -f go.sum ]] || ! go list -tags tools ./... >/dev/null 2>&1; then
  log "resolving k8s.io/kubernetes $KUBE_VERSION modules"
  go mod tidy >&2
fi
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
components=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
((WITH_KUBELET == 0)) || components+=(kubelet)
for component in "${components[@]}"; do
  if [[ ! -x "$ASSETS/$component" ]]; then
    log "building $component $KUBE_VERSION (a few minutes on first run)"
    go build -trimpath -ldflags "$ldflags" -o "$ASSETS/$component.tmp" "k8s.io/kubernetes/cmd/$component" >&2
    mv "$ASSETS/$component.tmp" "$ASSETS/$component"
  fi
done

if [[ ! -x "$ASSETS/kwok" ]]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$ASSETS/.gobin" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  mv "$ASSETS/.gobin/kwok" "$ASSETS/kwok"
  rmdir "$ASSETS/.gobin"
fi

has_all "$ASSETS" || { log "incomplete assets in $ASSETS"; exit 1; }
echo "$ASSETS"
