#!/usr/bin/env bash
# Benchmark on the local cluster: what a container failure costs a counter
# app with 16, 64 and 256 MiB of memory ballast under each way of keeping
# its state:
#   Checkpoint  ferry restores the newest replicated CRIU checkpoint on the
#               other node (memory, ballast and counter as they were);
#   StateApi    ferry starts a fresh copy on the other node and writes the
#               state it last read with GET into it with PUT before it takes
#               traffic (the counter only; the app rebuilds its ballast);
#   cold        no policy: the kubelet restarts the container in place and
#               the app starts from zero.
# Each case runs the app until a state of it is replicated (or 15 s for a
# cold restart), kills it 2 s later through its /kill endpoint, and
# measures the downtime (kill → the surviving copy answers) and the work
# lost (counter at the kill − counter at the first answer, 100 ms per
# step). Writes docs/bench-strategies.md, .dat and .png (gnuplot, installed
# from Debian when missing) and prints the table.
#
#   hack/bench-strategies.sh [--sizes "16 64 256"] [--rounds 3] [--rows FILE]
#     --rows FILE  write the documents from the rows of an earlier run
#                  (the raw rows in docs/bench-strategies.md), measure nothing
# FERRY_BENCH_NOTE, if set, is added to the document (what else ran);
# FERRY_BENCH_COMMIT names the measured commit (default HEAD).
#
# Needs root and the local cluster with ferry (hack/demo.sh leaves it up;
# or hack/cluster.sh up && hack/ferry-install.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES="16 64 256"
ROUNDS=3
ROWS=""
while (($#)); do
  case "$1" in
    --sizes) SIZES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --rows) ROWS="$2"; shift 2 ;;
    *) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

source hack/lib.sh
source hack/lib-ferry.sh
source hack/lib-bench.sh
NS=bench
APP=bench
PERIOD_MS=100
# The app prefers this node; ferry's replacements run on the other one,
# where the controller leader stays out of the failure's way.
APP_NODE=ferry-a
ASSERT=1

use_local_cluster

log() { printf '    %s\n' "$*"; }

RESULTS="$(mktemp)"
if [[ -n "$ROWS" ]]; then
  cp "$ROWS" "$RESULTS"
  ROUNDS="$(awk '{ print $3 }' "$RESULTS" | sort -n | tail -n1)"
else
  say "Benchmark: Checkpoint vs StateApi vs cold restart at ballast $SIZES MiB, $ROUNDS rounds"
  ferry_on_both_nodes || die "ferry is not running on both nodes (hack/ferry-install.sh)"
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  place_leader "$(other_node "$APP_NODE")" || die "could not place the controller leader"
  for round in $(seq 1 "$ROUNDS"); do
    for ballast in $SIZES; do
      for strategy in Checkpoint StateApi cold; do
        run_case "$strategy" "$ballast" "$round" || die "the $strategy case at $ballast MiB failed"
      done
    done
  done
  kubectl delete namespace "$NS" --wait=false >/dev/null
fi

# Per strategy and size: median (min–max) downtime, median work lost, and
# the state's age at the kill.
# Per strategy and size: the median (min–max) downtime, the median work
# lost, and the archive's size. (The rows' state age, from the policy's
# status, is not summarised: the status shows a checkpoint up to an
# interval late, so the work lost is the truer age of what was restored.)
SUMMARY="$(sort -k1,1 -k2,2n "$RESULTS" | awk "$MEDIAN_AWK"'
  function flush(   m) {
    if (n == 0) return
    m = median(d, n)
    printf "%s %s %s %s %s %s %s\n", s, b, m, d[1], d[n], median(lost, n), size[n]
  }
  $1 != s || $2 != b { flush(); n = 0; s = $1; b = $2 }
  { n++; d[n] = $4; lost[n] = $5; size[n] = $7 }
  END { flush() }')"

DOC=docs/bench-strategies.md
DAT=docs/bench-strategies.dat
PNG=docs/bench-strategies.png
{
  echo "# ballast_mib checkpoint_down_s stateapi_down_s cold_down_s checkpoint_lost_s stateapi_lost_s cold_lost_s"
  for ballast in $SIZES; do
    awk -v b="$ballast" '
      $2 == b { down[$1] = $3; lost[$1] = $6 }
      END { printf "%s %s %s %s %s %s %s\n", b, down["Checkpoint"], down["StateApi"], down["cold"], lost["Checkpoint"], lost["StateApi"], lost["cold"] }' <<<"$SUMMARY"
  done
} >"$DAT"

{
  cat <<EOF
# Container failure: Checkpoint vs StateApi vs cold restart

Measured by \`hack/bench-strategies.sh\` on the local cluster
(hack/cluster.sh: two kubelets, containerd 2.3, runc, CRIU; ferry installed
by helm) on $(date -u +%Y-%m-%d), $(nproc) vCPUs, $ROUNDS rounds per cell,
commit ${FERRY_BENCH_COMMIT:-$(git rev-parse --short HEAD)}. The app is ferry's test counter (a
step every 100 ms beside N MiB of patterned memory). Each case runs it until
a state of it is replicated to the other node (a cold restart: 15 s), kills
it 2 s later through \`/kill\`, and measures:

- **downtime**: from the kill to the surviving copy answering (median, min–max);
- **work lost**: the counter at the kill minus the counter at its first
  answer, at 100 ms per step (median): how old the restored state was; a
  cold restart loses everything.

| strategy | ballast MiB | downtime s (min–max) | work lost s | archive bytes |
|---|---|---|---|---|
EOF
  awk '{ printf "| %s | %s | %s (%s–%s) | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' <<<"$SUMMARY"
  cat <<EOF

- **Checkpoint** restores the whole process on the other node: counter and
  ballast as they were at the checkpoint; the work lost is the age of the
  checkpoint at the failure. Its downtime grows with memory because this
  backend (the checkpoint image, containerd 2.3) builds an image of the
  archive and imports it into containerd before CRIU restores it;
  ferry's runtime handler (ferry-runc) restores from the unpacked archive
  without either.
- **StateApi** starts a fresh copy on the other node, which rebuilds its
  ballast, and ferry writes the last state it read (the counter only) into
  it before it takes traffic. A real application's API carries only what it
  exposes; anything else (caches, connections) starts over.
- **cold**: without ferry the kubelet restarts the container in place; it
  comes back from zero and everything it had done is lost.

![downtime by strategy and ballast](bench-strategies.png)
${FERRY_BENCH_NOTE:+
$FERRY_BENCH_NOTE
}

Raw rows (strategy, ballast MiB, round, downtime s, work lost s, state age
s as the policy's status showed it, archive bytes):

\`\`\`
$(cat "$RESULTS")
\`\`\`
EOF
} >"$DOC"

if ! command -v gnuplot >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q gnuplot-nox >/dev/null 2>&1 ||
    die "gnuplot is missing and apt-get install gnuplot-nox failed"
fi
gnuplot <<EOF
set terminal pngcairo size 1000,600
set output '$PNG'
set title 'container failure: downtime and work lost by strategy and memory ballast (local cluster)'
set xlabel 'ballast (MiB)'
set ylabel 'seconds'
set logscale x 2
set key left top
set grid
plot '$DAT' using 1:2 with linespoints title 'Checkpoint: downtime', \
  '' using 1:3 with linespoints title 'StateApi: downtime', \
  '' using 1:4 with linespoints title 'cold restart: downtime', \
  '' using 1:5 with linespoints dashtype 2 title 'Checkpoint: work lost', \
  '' using 1:6 with linespoints dashtype 2 title 'StateApi: work lost', \
  '' using 1:7 with linespoints dashtype 2 title 'cold restart: work lost'
EOF
rm -f "$RESULTS"
say "Container failure by strategy (median of $ROUNDS; $DOC, $PNG)"
{
  printf 'strategy\tballast MiB\tdowntime s\tmin\tmax\twork lost s\tarchive bytes\n'
  tr ' ' '\t' <<<"$SUMMARY"
} | column -t -s $'\t'
