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

# stop_job PID: ends a background job and the processes it started (a
# pipeline in a function runs in a subshell whose children outlive it).
stop_job() {
  pkill -P "$1" 2>/dev/null || true
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
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

# progress LABEL LOGFILE CMD...: runs CMD, its stderr appended to LOGFILE,
# its stdout passed on. Once CMD has run for a second (a step with nothing
# to do stays quiet), the reader (stderr) learns what runs, then sees the
# elapsed time every FERRY_PROGRESS_SECONDS (default 20) and how long it
# took; on failure, the log's last lines.
progress() {
  local label="$1" logfile="$2" started status=0 ticker self="$BASHPID"
  shift 2
  mkdir -p "$(dirname "$logfile")"
  started=$(date +%s)
  (
    # Stops with its caller, also when CMD ends the script (die).
    sleep 1
    kill -0 "$self" 2>/dev/null || exit 0
    log "$label: running (log: $logfile)"
    while sleep "${FERRY_PROGRESS_SECONDS:-20}"; do
      kill -0 "$self" 2>/dev/null || exit 0
      log "$label: still running, $(elapsed_since "$started") elapsed"
    done
  ) >&2 &
  ticker=$!
  "$@" 2>>"$logfile" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if ((status != 0)); then
    log "$label: failed after $(elapsed_since "$started") (exit $status); last lines of $logfile:"
    tail -n 20 "$logfile" >&2
  elif (($(date +%s) - started >= 2)); then
    log "$label: done in $(elapsed_since "$started")"
  fi
  return "$status"
}

# "1m05s" since epoch second $1.
elapsed_since() {
  local s=$(($(date +%s) - $1))
  if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# A script that set -e ends names the command that ended it: call
# trace_errors once, and failed_command STATUS in the EXIT trap.
trace_errors() {
  set -E
  trap 'LAST_FAILED="line $LINENO: $BASH_COMMAND (exit $?)"' ERR
}
failed_command() {
  (($1 != 0)) && [[ -n "${LAST_FAILED:-}" ]] && log "stopped (exit $1); the last command that failed: $LAST_FAILED"
  return 0
}
