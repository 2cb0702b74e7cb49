# shellcheck shell=bash
# What the hack/ scripts share: logging, errors and waiting. Source it with
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# log and die write "<LOG_NAME>: ..." to stderr; LOG_NAME defaults to the
# script's file name.

log() { printf '%s: %s\n' "${LOG_NAME:-${0##*/}}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# A headline for a reader following along (stdout).
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

now() { date +%s.%N; }
# Seconds from epoch $1 to epoch $2, one decimal.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
iso_to_epoch() { date -d "$1" +%s.%N; }

# poll SECONDS CMD...: runs CMD every 0.2 s until it succeeds; returns 1 once
# SECONDS have passed without success.
poll() {
  local limit="$1" started
  shift
  started=$(now)
  until "$@"; do
    (($(printf '%.0f' "$(secs "$started" "$(now)")") > limit)) && return 1
    sleep 0.2
  done
}

# hold SECONDS CMD...: CMD must keep succeeding for SECONDS (checked every
# 0.5 s); returns 1 at its first failure.
hold() {
  local limit="$1" started
  shift
  started=$(now)
  while (($(printf '%.0f' "$(secs "$started" "$(now)")") < limit)); do
    "$@" || return 1
    sleep 0.5
  done
}
