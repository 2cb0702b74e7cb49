#!/usr/bin/env bash
# Provides a working CRIU (plus runc, iptables and nftables) on a Debian
# bookworm machine and prints the path of the criu binary as the last line of
# stdout.
#
#   hack/criu.sh                    # prints e.g. /var/cache/ferry/criu-4.2.1-ferry1/sbin/criu
#   source hack/criu.sh             # exports FERRY_CRIU and puts its directory first in PATH
#                                   # (runc looks for `criu` in PATH)
#
# Why not bookworm's criu: 3.17 fails on this kernel (`vdso: Unexpected rt
# vDSO area bounds`), and 4.1.x cannot dump any process with a TCP socket on
# Linux >= 6.16 (getsockopt(SO_PASSCRED) on INET sockets returns EOPNOTSUPP).
# So this builds CRIU 4.2.1 from Debian sid's source package (orig tarball,
# fetched and hash-checked by apt-get source) with bookworm's build
# dependencies, installs it into $FERRY_CACHE/criu-<version> and leaves a
# stamp file; later runs only check the stamp and the packages (well under a
# second).
#
# Environment:
#   FERRY_CACHE         cache root (default /var/cache/ferry)
#   CRIU_VERSION        upstream version (default 4.2.1)
#   CRIU_DEB_VERSION    Debian source version in sid (default ${CRIU_VERSION}-1)
#   FERRY_CRIU_CHECK=0  skip `criu check` after a build
#
# Needs root (apt-get, make install into the cache, criu check).

_ferry_criu_main() {
  set -euo pipefail

  local FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
  local CRIU_VERSION="${CRIU_VERSION:-4.2.1}"
  local CRIU_DEB_VERSION="${CRIU_DEB_VERSION:-${CRIU_VERSION}-1}"
  # "-ferry1": CRIU built with the freezer patch below; a new name so
  # caches of the unpatched build are not reused.
  local PREFIX="$FERRY_CACHE/criu-$CRIU_VERSION-ferry1"
  local BUILD="$FERRY_CACHE/criu-build/$CRIU_VERSION"
  local STAMP="$PREFIX/.ferry-installed"
  local CRIU="$PREFIX/sbin/criu"
  local SID_SOURCES=/etc/apt/sources.list.d/ferry-sid-src.sources

  log() { printf 'criu.sh: %s\n' "$*" >&2; }
  die() { log "error: $*"; exit 1; }

  [[ $EUID -eq 0 ]] || die "must run as root (apt-get, make install, criu check)"

  # Tests run in parallel and call this at once on a fresh machine: one
  # install at a time (two apt-get runs fail on dpkg's lock). The lock goes
  # with this (sub)shell.
  mkdir -p "$FERRY_CACHE"
  local lock_fd
  exec {lock_fd}>"$FERRY_CACHE/criu.lock"
  flock "$lock_fd"

  # Packages needed at run time: runc (the container runtime), iptables and
  # nftables (CRIU's network lock; `nft` is also how the lock table left in
  # the source namespace is removed), iproute2 (network namespaces), and the
  # shared libraries the criu binary links against.
  local runtime_pkgs=(runc iptables nftables iproute2 util-linux
    libprotobuf-c1 libnl-3-200 libnet1 libnftables1 libbsd0 libgnutls30 libcap2 libuuid1 libaio1)
  # Build dependencies, from bookworm (a sid deb-src entry makes sid's
  # versions visible to apt too; -t bookworm keeps apt from choosing them).
  local build_pkgs=(build-essential pkgconf dpkg-dev python3
    libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
    libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev libaio-dev)

  missing_pkgs() {
    local pkg
    for pkg in "$@"; do
      dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
        printf '%s\n' "$pkg"
    done
  }

  apt_install() {
    local -a pkgs
    mapfile -t pkgs < <(missing_pkgs "$@")
    ((${#pkgs[@]})) || return 0
    local aptlog="$FERRY_CACHE/criu-apt.log"
    log "installing ${pkgs[*]} (log: $aptlog)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q -t bookworm --no-install-recommends "${pkgs[@]}" >"$aptlog" 2>&1; then
      apt-get update -q >>"$aptlog" 2>&1 || die "apt-get update failed; see $aptlog"
      apt-get install -y -q -t bookworm --no-install-recommends "${pkgs[@]}" >>"$aptlog" 2>&1 ||
        die "apt-get install ${pkgs[*]} failed; see $aptlog"
    fi
  }

  mkdir -p "$FERRY_CACHE"

  # Fast path: installed before, and the binary still runs.
  if [[ -f "$STAMP" && -x "$CRIU" ]]; then
    apt_install "${runtime_pkgs[@]}"
    if "$CRIU" --version >/dev/null 2>&1; then
      printf '%s\n' "$CRIU"
      return 0
    fi
    log "$CRIU is installed but does not run; rebuilding"
  fi

  apt_install "${runtime_pkgs[@]}" "${build_pkgs[@]}"

  # Source: the orig tarball of sid's criu source package.
  mkdir -p "$BUILD"
  # Debian's orig tarball for 4.2.1 is .tar.xz; accept any compression.
  local orig
  orig="$(ls "$BUILD"/criu_"${CRIU_VERSION}".orig.tar.* 2>/dev/null | head -n1 || true)"
  if [[ -z "$orig" ]]; then
    if [[ ! -f "$SID_SOURCES" ]]; then
      log "adding a deb-src entry for sid ($SID_SOURCES; source packages only)"
      cat >"$SID_SOURCES" <<'EOF'
# Added by ferry hack/criu.sh: source packages from sid, to build CRIU 4.2.x.
# deb-src only, so no binary package from sid is ever installed through it.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    local srclog="$BUILD/apt-source.log"
    log "downloading criu=$CRIU_DEB_VERSION source from sid (log: $srclog)"
    apt-get update -q >"$srclog" 2>&1 || die "apt-get update failed; see $srclog"
    # The debian tarball sometimes fails to download; apt fetches and checks
    # the orig tarball first, and only that is needed.
    (cd "$BUILD" && apt-get source --download-only "criu=$CRIU_DEB_VERSION") >>"$srclog" 2>&1 ||
      log "apt-get source reported an error (the debian tarball is not needed); checking the orig tarball"
    orig="$(ls "$BUILD"/criu_"${CRIU_VERSION}".orig.tar.* 2>/dev/null | head -n1 || true)"
    [[ -n "$orig" ]] || die "no orig tarball for criu $CRIU_VERSION in $BUILD; see $srclog (is criu=$CRIU_DEB_VERSION still in sid? set CRIU_DEB_VERSION)"
  fi

  local src="$BUILD/criu-$CRIU_VERSION"
  rm -rf "$src"
  tar -xf "$orig" -C "$BUILD" || die "unpacking $orig failed"
  [[ -d "$src" ]] || die "$orig did not unpack to $src"

  # CRIU waits for a cgroup-v1 freezer to report FROZEN in 100 ms steps,
  # so a checkpoint stopped the application ~100 ms longer than freezing
  # takes (measured: CRIU freezing 101 ms + frozen 90 ms for 64 MiB). Poll
  # every 5 ms instead; its retry kludges (every 32 polls) then run every
  # 160 ms, still far apart from a freeze that completes in a few ms.
  grep -q 'static const unsigned long step_ms = 100;' "$src/criu/seize.c" ||
    die "criu/seize.c no longer has the 100 ms freezer step this script patches; review the patch"
  sed -i 's/static const unsigned long step_ms = 100;/static const unsigned long step_ms = 5;/' "$src/criu/seize.c"

  local buildlog="$BUILD/make.log"
  log "building criu $CRIU_VERSION (make -j$(nproc); about 30 s on 2 cores; log: $buildlog)"
  # CRIU's Makefiles react to a few generic variables; keep the environment clean.
  (cd "$src" && env -u CFLAGS -u LDFLAGS -u PREFIX make -j"$(nproc)" criu lib) >"$buildlog" 2>&1 ||
    die "make failed; last lines of $buildlog:
$(tail -n 25 "$buildlog")"

  rm -rf "$PREFIX"
  local installlog="$BUILD/make-install.log"
  (cd "$src" && make install-criu install-lib PREFIX="$PREFIX" LIBDIR="$PREFIX/lib" SKIP_PIP_INSTALL=1) \
    >"$installlog" 2>&1 || die "make install failed; last lines of $installlog:
$(tail -n 25 "$installlog")"
  [[ -x "$CRIU" ]] || die "make install did not produce $CRIU; see $installlog"

  local version
  version="$("$CRIU" --version 2>&1)" || die "$CRIU --version failed: $version"
  log "installed: $(printf '%s' "$version" | tr '\n' ' ')"

  if [[ "${FERRY_CRIU_CHECK:-1}" != 0 ]]; then
    local checklog="$BUILD/criu-check.log"
    "$CRIU" check >"$checklog" 2>&1 || die "criu check failed:
$(cat "$checklog")"
    log "criu check: $(tail -n1 "$checklog")"
  fi

  date -u +%FT%TZ >"$STAMP"
  rm -rf "$src"   # keep the tarball and logs, drop the build tree (~150 MB)
  printf '%s\n' "$CRIU"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: run in a subshell so `set -e` and the helpers do not leak into
  # the caller, then export the result.
  FERRY_CRIU="$( (_ferry_criu_main) | tail -n1)" && [[ -x "$FERRY_CRIU" ]] || {
    echo "criu.sh: providing CRIU failed (see the messages above)" >&2
    unset -f _ferry_criu_main
    return 1
  }
  export FERRY_CRIU
  case ":$PATH:" in *":${FERRY_CRIU%/*}:"*) ;; *) export PATH="${FERRY_CRIU%/*}:$PATH" ;; esac
  unset -f _ferry_criu_main
else
  _ferry_criu_main "$@"
fi
