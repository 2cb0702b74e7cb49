#!/usr/bin/env bash
# Builds ferry-test-app as a static binary (cached) and writes an OCI runtime
# bundle for runc into <dir>: rootfs/test-app (the only file) and a
# config.json made from `runc spec`. Prints <dir> on stdout.
#
#   hack/test-app-bundle.sh [options] <dir>
#     --ballast-mib N     ballast of the app (default $BALLAST_MIB or 64)
#     --netns PATH        network namespace the container joins
#                         (default $NETNS or /run/netns/ferry-a); must exist at `runc run`
#     --listen ADDR       listen address (default 0.0.0.0:8080)
#     --id NAME           used for the cgroup path /ferry/NAME (default: basename of <dir>)
#     --print-binary      only build, print the binary's path, write no bundle
#
# The binary is fully static (hack/static-binary.sh).
set -euo pipefail
CALLER_PWD="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
BALLAST_MIB="${BALLAST_MIB:-64}"
NETNS="${NETNS:-/run/netns/ferry-a}"
LISTEN="0.0.0.0:8080"
ID=""
PRINT_BINARY=0

LOG_NAME=test-app-bundle
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

DIR=""
while (($#)); do
  case "$1" in
    --ballast-mib) BALLAST_MIB="${2:?--ballast-mib needs a value}"; shift 2 ;;
    --netns) NETNS="${2:?--netns needs a path}"; shift 2 ;;
    --listen) LISTEN="${2:?--listen needs an address}"; shift 2 ;;
    --id) ID="${2:?--id needs a name}"; shift 2 ;;
    --print-binary) PRINT_BINARY=1; shift ;;
    -h | --help) usage ;;
    -*) die "unknown option $1" ;;
    *) [[ -z "$DIR" ]] || die "only one <dir>"; DIR="$1"; shift ;;
  esac
done
[[ "$BALLAST_MIB" =~ ^[0-9]+$ ]] || die "--ballast-mib must be a number, not '$BALLAST_MIB'"
((PRINT_BINARY)) || [[ -n "$DIR" ]] || usage

# ---- the static binary -----------------------------------------------------
BIN="$(hack/static-binary.sh ferry-test-app)" || die "hack/static-binary.sh ferry-test-app failed"

if ((PRINT_BINARY)); then
  printf '%s\n' "$BIN"
  exit 0
fi

# ---- the bundle ------------------------------------------------------------
command -v runc >/dev/null || die "runc is not installed (hack/criu.sh installs it)"
command -v jq >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null 2>&1; } ||
    die "installing jq failed"
}
[[ "$DIR" == /* ]] || DIR="$CALLER_PWD/$DIR"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
[[ -n "$ID" ]] || ID="$(basename "$DIR")"
mkdir -p "$DIR/rootfs"
# Copy, not link: the bundle must stay valid while the cache is rebuilt.
if ! cmp -s "$BIN" "$DIR/rootfs/test-app"; then
  cp "$BIN" "$DIR/rootfs/test-app.tmp" && mv -f "$DIR/rootfs/test-app.tmp" "$DIR/rootfs/test-app"
fi

spec_dir="$(mktemp -d)"
trap 'rm -rf "$spec_dir"' EXIT
(cd "$spec_dir" && runc spec) || die "runc spec failed"
# runc spec's defaults, changed to: our args, no terminal, join the given
# network namespace by path (no new one), a cgroup path of our own, and a
# hostname. The rootfs stays writable: with `root.readonly` the dumped root
# mount is read-only and `criu restore` fails in the container's mount
# namespace ("mnt: Can't create a temporary directory: Read-only file
# system"), whatever the restoring bundle says.
jq --arg netns "$NETNS" --arg listen "$LISTEN" --arg ballast "$BALLAST_MIB" \
  --arg cgroup "/ferry/$ID" '
  .process.args = ["/test-app", "--listen", $listen, "--ballast-mib", $ballast]
  | .process.terminal = false
  | .process.cwd = "/"
  | .hostname = "ferry-test-app"
  | .root = {path: "rootfs", readonly: false}
  | .linux.namespaces = ([.linux.namespaces[] | select(.type != "network")]
                         + [{type: "network", path: $netns}])
  | .linux.cgroupsPath = $cgroup
  | .annotations = {"dev.ferry.test-app.ballast-mib": $ballast}
' "$spec_dir/config.json" >"$DIR/config.json.tmp" || die "adapting config.json with jq failed"
mv -f "$DIR/config.json.tmp" "$DIR/config.json"
log "bundle $DIR: $(file -b "$BIN" | cut -d, -f1-2), ballast $BALLAST_MIB MiB, netns $NETNS, cgroup /ferry/$ID"
printf '%s\n' "$DIR"
