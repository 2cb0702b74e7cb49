#!/usr/bin/env bash
# Proves the CRIU from hack/criu.sh works on this machine: `criu check`, then
# a process tree holding TCP sockets (a listening socket and an established
# loopback connection with both ends in the tree) is dumped with
# --tcp-established, killed, restored, and must go on working: the
# established connection keeps carrying data, the listener accepts new
# connections, and the counter continues from where it was.
#
# Exits non-zero and says which step failed (with the CRIU log) otherwise.
# Needs root. Environment: FERRY_CACHE (see hack/criu.sh), KEEP=1 keeps the
# work directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_NAME=criu-selftest
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fail() {
  log "FAILED: $1"
  shift
  local f
  for f in "$@"; do
    [[ -f "$f" ]] || continue
    log "---- last lines of $f"
    tail -n 20 "$f" >&2
  done
  exit 1
}

[[ $EUID -eq 0 ]] || fail "must run as root"
CRIU="$(hack/criu.sh | tail -n1)" || fail "hack/criu.sh did not provide criu"
log "criu: $CRIU ($("$CRIU" --version | head -n1))"

WORK="$(mktemp -d /tmp/ferry-criu-selftest.XXXXXX)"
PORT=$((20000 + RANDOM % 20000))
PID=""
cleanup() {
  local rc=$?
  set +e +o pipefail
  [[ -n "$PID" ]] && kill -9 "$PID" 2>/dev/null || true
  # A failed dump/restore with the nftables lock can leave its table behind.
  if [[ -n "$PID" ]] && nft list table inet "CRIU-$PID" >/dev/null 2>&1; then
    nft delete table inet "CRIU-$PID" || true
  fi
  # ... and the iptables lock (the default) leaves DROP rules for the
  # dumped connections in this (the host's) namespace until a restore.
  local chain rule
  for chain in INPUT OUTPUT; do
    iptables -S "$chain" 2>/dev/null | grep -e "--mark 0xc114" | grep -e "port $PORT " |
      sed 's/^-A /-D /' | while read -r rule; do eval "iptables $rule" || true; done
  done
  if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

log "step 1: criu check"
"$CRIU" check >"$WORK/check.log" 2>&1 || fail "criu check" "$WORK/check.log"
log "criu check: $(tail -n1 "$WORK/check.log")"

# The workload: one process with a listener, a client socket connected to it
# and the accepted end. Every 100 ms it sends the counter through the
# connection, reads it back on the other end, and logs it. New connections to
# the listener get "counter <n>".
cat >"$WORK/tcp-holder.py" <<'EOF'
import os, select, socket, sys, time
port = int(sys.argv[1])
out = open(sys.argv[2], "a", buffering=1)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(8)
cli = socket.create_connection(("127.0.0.1", port))
peer, _ = srv.accept()
n = 0
out.write("ready pid=%d\n" % os.getpid())
while True:
    n += 1
    cli.sendall(b"%d\n" % n)
    got = b""
    while not got.endswith(b"\n"):
        chunk = peer.recv(64)
        if not chunk:
            out.write("connection closed\n"); sys.exit(3)
        got += chunk
    if int(got) != n:
        out.write("mismatch sent=%d got=%s\n" % (n, got)); sys.exit(4)
    out.write("tick %d %.3f\n" % (n, time.time()))
    deadline = time.time() + 0.1
    while True:
        left = deadline - time.time()
        if left <= 0: break
        r, _, _ = select.select([srv], [], [], left)
        if r:
            c, _ = srv.accept(); c.sendall(b"counter %d\n" % n); c.close()
EOF

ask() { # prints the listener's answer
  python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1",int(sys.argv[1])),timeout=2); print(s.recv(64).decode().strip())' "$PORT"
}
last_tick() { awk '$1=="tick"{n=$2} END{print n+0}' "$WORK/app.log"; }

log "step 2: start the workload (setsid, stdio on /dev/null, port $PORT)"
# In a subshell so it is not our child (a zombie would keep its pid busy).
(setsid python3 "$WORK/tcp-holder.py" "$PORT" "$WORK/app.log" </dev/null >/dev/null 2>&1 &)
for _ in $(seq 50); do grep -q '^ready' "$WORK/app.log" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$WORK/app.log" 2>/dev/null || fail "workload did not start" "$WORK/app.log"
PID="$(awk '/^ready/{sub("pid=","",$2); print $2}' "$WORK/app.log")"
sleep 1
ask >/dev/null || fail "listener does not answer before the dump" "$WORK/app.log"
before="$(last_tick)"
((before > 3)) || fail "counter does not advance before the dump (at $before)" "$WORK/app.log"

log "step 3: criu dump --tcp-established (pid $PID, counter at $before)"
mkdir -p "$WORK/images"
t0=$(date +%s%N)
"$CRIU" dump --tree "$PID" --images-dir "$WORK/images" --tcp-established \
  --log-file dump.log -v4 ||
  fail "criu dump" "$WORK/images/dump.log"
t1=$(date +%s%N)
# The dumped process is killed; wait until it is reaped (PID 1 adopted it),
# since restore needs its pid free.
for _ in $(seq 100); do [[ -e /proc/$PID ]] || break; sleep 0.05; done
[[ -e /proc/$PID ]] && fail "process $PID still exists 5 s after criu dump (without --leave-running)"
dumped="$(last_tick)"
log "dump: $(((t1 - t0) / 1000000)) ms, images $(du -sh "$WORK/images" | cut -f1), counter at $dumped"
ask >/dev/null 2>&1 && fail "something still answers on port $PORT after the dump"

log "step 4: criu restore --restore-detached"
t0=$(date +%s%N)
"$CRIU" restore --images-dir "$WORK/images" --tcp-established --restore-detached \
  --log-file restore.log -v4 ||
  fail "criu restore" "$WORK/images/restore.log"
t1=$(date +%s%N)
log "restore: $(((t1 - t0) / 1000000)) ms"
kill -0 "$PID" 2>/dev/null || fail "restored process $PID is not running" "$WORK/images/restore.log" "$WORK/app.log"

log "step 5: the restored process goes on working"
sleep 1
after="$(last_tick)"
((after > dumped + 3)) ||
  fail "counter did not advance after restore (dumped at $dumped, now $after): the established connection does not carry data" "$WORK/app.log"
grep -qE '^(connection closed|mismatch)' "$WORK/app.log" && fail "established connection broke" "$WORK/app.log"
answer="$(ask)" || fail "listener does not accept connections after restore" "$WORK/app.log"
[[ "$answer" =~ ^counter\ ([0-9]+)$ ]] || fail "unexpected answer from the listener: $answer"
((BASH_REMATCH[1] > dumped)) || fail "listener answered $answer, not past the dumped counter $dumped"
first_after="$(awk -v d="$dumped" '$1=="tick" && $2==d+1 {print $2}' "$WORK/app.log")"
[[ "$first_after" == "$((dumped + 1))" ]] || fail "counter did not continue at $((dumped + 1))" "$WORK/app.log"

kill -9 "$PID"
PID=""
log "OK: criu check passes; TCP listener + established connection dumped and restored; counter continued $dumped -> $after"
