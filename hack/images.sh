#!/usr/bin/env bash
# OCI image archives built locally, without a registry or a daemon: a
# hand-written OCI image layout (tar + sha256sum + jq) packed as a tar that
# `ctr images import` and `skopeo copy oci-archive:...` read.
#
#   hack/images.sh all                   # pause + test-app into $IMAGES_DIR, prints the archive paths
#   hack/images.sh pause                 # prints the pause archive path
#   hack/images.sh test-app              # prints the test-app archive path
#   hack/images.sh from-rootfs ROOTFS NAME OUT ENTRYPOINT [ARG...]
#                                        # any rootfs dir + entrypoint -> OCI archive OUT
#   hack/images.sh checkpoint ARCHIVE NAME CONTAINER OUT
#                                        # kubelet checkpoint tar -> OCI checkpoint image
#   hack/images.sh import CTR ADDRESS OUT...
#                                        # ctr -n k8s.io images import + the CRI-style
#                                        # references (name@digest, image ID)
#
# Sourcing the file gives the functions (oci_from_rootfs, oci_checkpoint,
# oci_import) without running anything.
#
# Images:
#   registry.k8s.io/pause:3.10.2   a static C sleeper (pause(2), reaps children,
#                                  exits on SIGINT/SIGTERM), FROM scratch. The name
#                                  is containerd 2.3's default sandbox image, and
#                                  cluster.sh sets it explicitly too.
#   localhost/ferry/test-app:dev   /test-app (static ferry-test-app) alone,
#                                  entrypoint ["/test-app"].
# Archives are reproducible (sorted entries, mtime 0, uid/gid 0): the same
# inputs give the same digests, so every node gets the same image IDs (the
# containerd restore path requires the checkpoint's base image under the same
# ID on the target node).
#
# Environment: FERRY_CACHE (default /var/cache/ferry), IMAGES_DIR (default
# $FERRY_CACHE/images).
set -euo pipefail

FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
IMAGES_DIR="${IMAGES_DIR:-$FERRY_CACHE/images}"
PAUSE_IMAGE="${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.2}"
TEST_APP_IMAGE="${TEST_APP_IMAGE:-localhost/ferry/test-app:dev}"
_IMAGES_HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_img_log() { printf 'images.sh: %s\n' "$*" >&2; }
_img_die() { _img_log "error: $*"; return 1; }

# _img_blob LAYOUT FILE MEDIATYPE: moves FILE into LAYOUT/blobs/sha256 and
# prints a descriptor JSON.
_img_blob() {
  local layout="$1" file="$2" mediatype="$3" digest size
  digest="$(sha256sum "$file" | cut -d' ' -f1)"
  size="$(stat -c %s "$file")"
  mkdir -p "$layout/blobs/sha256"
  mv -f "$file" "$layout/blobs/sha256/$digest"
  jq -cn --arg m "$mediatype" --arg d "sha256:$digest" --argjson s "$size" \
    '{mediaType: $m, digest: $d, size: $s}'
}

# _img_pack LAYOUT OUT: tars an OCI layout into OUT (atomically).
_img_pack() {
  local layout="$1" out="$2"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$layout" -cf "$out.tmp" oci-layout index.json blobs
  mv -f "$out.tmp" "$out"
}

# _img_ref_tag NAME: the tag part of an image name (for org.opencontainers.image.ref.name).
_img_ref_tag() {
  local n="${1##*/}"
  [[ "$n" == *:* ]] && printf '%s' "${n##*:}" || printf 'latest'
}

# oci_from_rootfs ROOTFS NAME OUT ENTRYPOINT [ARG...]
# One uncompressed layer with ROOTFS's content; config with Entrypoint.
oci_from_rootfs() {
  local rootfs="$1" name="$2" out="$3"
  shift 3
  (($#)) || { _img_die "oci_from_rootfs: an entrypoint is required"; return 1; }
  [[ -d "$rootfs" ]] || { _img_die "no rootfs directory $rootfs"; return 1; }
  local work layer diffid config manifest
  work="$(mktemp -d)"
  mkdir -p "$work/layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$rootfs" -cf "$work/layer.tar" .
  diffid="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
  layer="$(_img_blob "$work/layout" "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)"
  jq -cn --arg diffid "$diffid" --args '{
      architecture: "amd64", os: "linux",
      created: "1970-01-01T00:00:00Z",
      config: {Entrypoint: $ARGS.positional, WorkingDir: "/",
               Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
      rootfs: {type: "layers", diff_ids: [$diffid]},
      history: [{created: "1970-01-01T00:00:00Z", created_by: "ferry hack/images.sh"}]
    }' "$@" >"$work/config.json"
  config="$(_img_blob "$work/layout" "$work/config.json" application/vnd.oci.image.config.v1+json)"
  jq -cn --argjson config "$config" --argjson layer "$layer" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: $config, layers: [$layer]
    }' >"$work/manifest.json"
  manifest="$(_img_blob "$work/layout" "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)"
  jq -cn --argjson m "$manifest" --arg name "$name" --arg tag "$(_img_ref_tag "$name")" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [$m + {platform: {architecture: "amd64", os: "linux"},
                        annotations: {"io.containerd.image.name": $name,
                                      "org.opencontainers.image.ref.name": $tag}}]
    }' >"$work/layout/index.json"
  _img_pack "$work/layout" "$out"
  rm -rf "$work"
}

# oci_checkpoint ARCHIVE NAME CONTAINER OUT
# A checkpoint OCI image for containerd 2.2/2.3 (CRI CreateContainer restore)
# and CRI-O: one layer that is the checkpoint archive itself (the kubelet
# writes an uncompressed tar: config.dump, spec.dump, status.dump,
# checkpoint/, rootfs-diff.tar, ...). containerd reads the image's target
# blob (here the manifest) and restores when its annotations contain
# org.criu.checkpoint.container.name; the base image comes from config.dump
# (rootfsImageRef), not from these annotations, which are informational.
oci_checkpoint() {
  local archive="$1" name="$2" container="$3" out="$4"
  [[ -f "$archive" ]] || { _img_die "no checkpoint archive $archive"; return 1; }
  local work layer diffid config manifest mediatype cfgdump
  work="$(mktemp -d)"
  mkdir -p "$work/layout"
  cfgdump="$(tar -xOf "$archive" config.dump 2>/dev/null)" ||
    { rm -rf "$work"; _img_die "$archive has no config.dump: not a kubelet checkpoint archive?"; return 1; }
  case "$(file -b --mime-type "$archive")" in
    application/gzip) mediatype=application/vnd.oci.image.layer.v1.tar+gzip
      diffid="sha256:$(gzip -dc "$archive" | sha256sum | cut -d' ' -f1)" ;;
    *) mediatype=application/vnd.oci.image.layer.v1.tar
      diffid="sha256:$(sha256sum "$archive" | cut -d' ' -f1)" ;;
  esac
  cp "$archive" "$work/layer"
  layer="$(_img_blob "$work/layout" "$work/layer" "$mediatype")"
  jq -cn --arg diffid "$diffid" '{
      architecture: "amd64", os: "linux",
      created: (now | todate),
      config: {},
      rootfs: {type: "layers", diff_ids: [$diffid]},
      history: [{created: (now | todate), created_by: "ferry hack/images.sh checkpoint"}]
    }' >"$work/config.json"
  config="$(_img_blob "$work/layout" "$work/config.json" application/vnd.oci.image.config.v1+json)"
  jq -cn --argjson config "$config" --argjson layer "$layer" --arg c "$container" \
    --argjson dump "$cfgdump" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: $config, layers: [$layer],
      annotations: {
        "org.criu.checkpoint.container.name": $c,
        "org.criu.checkpoint.rootfsImageName": ($dump.rootfsImageName // ""),
        "org.criu.checkpoint.rootfsImageRef": ($dump.rootfsImageRef // ""),
        "org.criu.checkpoint.runtime.name": ($dump.runtime // ""),
        "org.criu.checkpoint.engine.name": "containerd",
        "io.kubernetes.cri-o.annotations.checkpoint.name": $c
      }
    }' >"$work/manifest.json"
  manifest="$(_img_blob "$work/layout" "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)"
  jq -cn --argjson m "$manifest" --arg name "$name" --arg tag "$(_img_ref_tag "$name")" --arg c "$container" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [$m + {platform: {architecture: "amd64", os: "linux"},
                        annotations: {"io.containerd.image.name": $name,
                                      "org.opencontainers.image.ref.name": $tag}}],
      annotations: {"org.criu.checkpoint.container.name": $c}
    }' >"$work/layout/index.json"
  _img_pack "$work/layout" "$out"
  rm -rf "$work"
}

# oci_import CTR ADDRESS ARCHIVE...
# Imports into the k8s.io namespace (unpacked for the default snapshotter)
# and adds the references the CRI plugin adds on a pull: NAME@<manifest
# digest> and the image ID (sha256:<config digest>). Without the
# repo-digest reference a container's status ImageRef is the bare image ID,
# which a checkpoint records as rootfsImageRef, and containerd's restore looks
# that up with GetImage (no such image) and then tries to pull it.
oci_import() {
  local ctr="$1" address="$2"
  shift 2
  local archive name digest id err
  err="$(mktemp)"
  # ctr warns on every call that cgroup v1 is deprecated: show stderr only on failure.
  _ctr() { "$ctr" --address "$address" -n k8s.io "$@" >/dev/null 2>"$err" || { cat "$err" >&2; return 1; }; }
  for archive in "$@"; do
    _ctr images import --local "$archive" ||
      { rm -f "$err"; _img_die "ctr images import $archive at $address failed"; return 1; }
    while read -r name digest; do
      [[ -n "$name" ]] || continue
      id="$(tar -xOf "$archive" "blobs/sha256/${digest#sha256:}" | jq -r .config.digest)"
      local repo="$name"
      [[ "${name##*/}" == *:* ]] && repo="${name%:*}"
      if ! _ctr images tag --force "$name" "$repo@$digest" || ! _ctr images tag --force "$name" "$id"; then
        rm -f "$err"
        _img_die "tagging $name at $address failed"
        return 1
      fi
    done < <(tar -xOf "$archive" index.json | jq -r '.manifests[] | "\(.annotations["io.containerd.image.name"] // "") \(.digest)"')
  done
  rm -f "$err"
}

# The static pause binary, built once with the system C compiler.
_img_pause_rootfs() {
  local dir="$IMAGES_DIR/pause-rootfs"
  if [[ ! -x "$dir/pause" ]]; then
    command -v gcc >/dev/null || { _img_die "gcc is required for the pause image"; return 1; }
    mkdir -p "$dir"
    local src
    src="$(mktemp --suffix=.c)"
    cat >"$src" <<'C'
/* ferry pause: the sandbox process of a pod. Sleeps, reaps zombies, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction t = {0}, c = {0};
  t.sa_handler = on_term;
  c.sa_handler = on_chld;
  c.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGINT, &t, NULL);
  sigaction(SIGTERM, &t, NULL);
  sigaction(SIGCHLD, &c, NULL);
  for (;;) pause();
  return 0;
}
C
    gcc -static -Os -s -o "$dir/pause.tmp" "$src" && mv "$dir/pause.tmp" "$dir/pause"
    rm -f "$src"
  fi
  printf '%s\n' "$dir"
}

images_pause() {
  local out="$IMAGES_DIR/pause.oci.tar" rootfs
  rootfs="$(_img_pause_rootfs)"
  if [[ ! -f "$out" || "$rootfs/pause" -nt "$out" ]]; then
    oci_from_rootfs "$rootfs" "$PAUSE_IMAGE" "$out" /pause
    _img_log "built $out ($PAUSE_IMAGE)"
  fi
  printf '%s\n' "$out"
}

images_test_app() {
  local out="$IMAGES_DIR/test-app.oci.tar" bin rootfs="$IMAGES_DIR/test-app-rootfs"
  bin="$("$_IMAGES_HACK/test-app-bundle.sh" --print-binary)"
  mkdir -p "$rootfs"
  if ! cmp -s "$bin" "$rootfs/test-app"; then
    cp "$bin" "$rootfs/test-app.tmp" && mv -f "$rootfs/test-app.tmp" "$rootfs/test-app"
  fi
  if [[ ! -f "$out" || "$rootfs/test-app" -nt "$out" ]]; then
    oci_from_rootfs "$rootfs" "$TEST_APP_IMAGE" "$out" /test-app
    _img_log "built $out ($TEST_APP_IMAGE)"
  fi
  printf '%s\n' "$out"
}

_images_main() {
  command -v jq >/dev/null || _img_die "jq is required (apt-get install jq)"
  local cmd="${1:-all}"
  (($#)) && shift
  case "$cmd" in
    all) images_pause; images_test_app ;;
    pause) images_pause ;;
    test-app) images_test_app ;;
    from-rootfs) (($# >= 4)) || _img_die "usage: from-rootfs ROOTFS NAME OUT ENTRYPOINT [ARG...]"
      oci_from_rootfs "$@" ;;
    checkpoint) (($# == 4)) || _img_die "usage: checkpoint ARCHIVE NAME CONTAINER OUT"
      oci_checkpoint "$@" ;;
    import) (($# >= 3)) || _img_die "usage: import CTR ADDRESS ARCHIVE..."
      oci_import "$@" ;;
    -h | --help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) _img_die "unknown command $cmd (try --help)" ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _images_main "$@"
fi
