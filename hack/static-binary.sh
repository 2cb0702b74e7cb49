#!/usr/bin/env bash
# Builds a workspace binary fully static, so it runs on any Linux host (the
# test-app in its OCI bundle; ferry-runc, which the agent installs on its
# node). x86_64-unknown-linux-musl when that Rust target is installed or
# `rustup target add` can fetch it (tried once; a failure is remembered in
# the cache), otherwise glibc with `-C target-feature=+crt-static`. Builds go
# to $FERRY_CACHE/cargo-target-static so the shared target dir is not
# rebuilt with other flags. Prints the binary's path.
#
#   hack/static-binary.sh PACKAGE [BINARY]   # BINARY defaults to PACKAGE
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FERRY_CACHE="${FERRY_CACHE:-/var/cache/ferry}"
STATIC_TARGET_DIR="$FERRY_CACHE/cargo-target-static"
LOG_NAME=static-binary
# shellcheck source=hack/lib.sh
source hack/lib.sh

PACKAGE="${1:?usage: hack/static-binary.sh PACKAGE [BINARY]}"
BINARY="${2:-$PACKAGE}"

mkdir -p "$STATIC_TARGET_DIR"
musl=x86_64-unknown-linux-musl
nomusl_marker="$STATIC_TARGET_DIR/.musl-target-unavailable"
target=""
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  target=$musl
elif [[ ! -f "$nomusl_marker" ]] && command -v rustup >/dev/null; then
  log "trying once: rustup target add $musl"
  if timeout 300 rustup target add "$musl" >"$STATIC_TARGET_DIR/rustup-musl.log" 2>&1; then
    target=$musl
  else
    log "no musl target (see $STATIC_TARGET_DIR/rustup-musl.log); using glibc +crt-static"
    touch "$nomusl_marker"
  fi
fi
buildlog="$STATIC_TARGET_DIR/build-$PACKAGE.log"
if [[ "$target" == "$musl" ]]; then
  (CARGO_TARGET_DIR="$STATIC_TARGET_DIR" cargo build --locked --release -p "$PACKAGE" --target "$target") \
    >"$buildlog" 2>&1 || die "cargo build (musl) of $PACKAGE failed; last lines of $buildlog:
$(tail -n 20 "$buildlog")"
else
  target=x86_64-unknown-linux-gnu
  (CARGO_TARGET_DIR="$STATIC_TARGET_DIR" RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --release -p "$PACKAGE" --target "$target") \
    >"$buildlog" 2>&1 || die "cargo build (glibc static) of $PACKAGE failed; last lines of $buildlog:
$(tail -n 20 "$buildlog")"
fi
BIN="$STATIC_TARGET_DIR/$target/release/$BINARY"
[[ -x "$BIN" ]] || die "cargo build did not produce $BIN; see $buildlog"
# `file` says "statically linked" or "static-pie linked"; ldd must not list libraries.
file -b "$BIN" | grep -Eq 'static(ally|-pie) linked' || die "$BIN is not static: $(file -b "$BIN")"
if ldd "$BIN" 2>&1 | grep -q '=>'; then die "$BIN links shared libraries: $(ldd "$BIN" 2>&1 | tr '\n' ' ')"; fi
printf '%s\n' "$BIN"
