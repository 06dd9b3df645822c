#!/usr/bin/env bash
# The bench/README.md "Hierarchical dispatch" figures on an emulated 2-node cluster (root): two
# network namespaces x 2 ranks (launch/netns_cluster.sh), inter-node bandwidth shaped with tc tbf
# (default 200mbit), flat in the same run. Prints bench dispatch (hierarchical vs flat, --versus),
# bench alltoall (2dh vs flat) and the small model's training step (flat and hierarchical+dedup
# alternated, STEPS steps each, REPEATS times). Usage:
#   bench/hierarchical_netns.sh build/moempi [RATE] [STEPS] [REPEATS]
set -euo pipefail
MOEMPI=$(realpath "$1")
RATE=${2:-200mbit}
STEPS=${3:-6}
REPEATS=${4:-2}
SRC=$(cd "$(dirname "$0")/.." && pwd)
export MOEMPI_NETNS_PREFIX=${MOEMPI_NETNS_PREFIX:-moempihier} MOEMPI_NETNS_SUBNET=${MOEMPI_NETNS_SUBNET:-10.79.0}
CLUSTER="$SRC/launch/netns_cluster.sh"
OUT=$(mktemp -d)
trap '"$CLUSTER" down > /dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
"$CLUSTER" up 2 "$RATE"
run() { "$CLUSTER" run 2 -- -np 4 -x OPENBLAS_NUM_THREADS=1 "$MOEMPI" "$@"; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'); inter-node rate $RATE (tc tbf); the machine is shared"

for spec in "--algorithm 2dh --dedup" "--algorithm leader --dedup" "--algorithm 2dh"; do
  run bench dispatch --dispatcher hierarchical $spec --versus flat -T 512 -D 256 -E 8 -k 2 \
    --pattern balanced,hot_expert,zipf -n 10 -w 2 | grep -v "^# [a-z ]*=\|^#   "
done
run bench alltoall --dispatcher hierarchical --algorithm 2dh --versus flat -b 1K -e 256K -f 4 -n 10 -w 2 \
  | grep -v "^# [a-z ]*=\|^#   "

# Training: configs/small_ep.yaml at 4 ranks (micro_batch 4, k = 2), flat vs hierarchical+dedup.
common=(--set train.steps=$STEPS --set train.log_interval=1 --set eval.interval=0 --set train.micro_batch=4
        --set metrics.jsonl=true)
for r in $(seq "$REPEATS"); do
  for d in flat hier; do
    extra=(--set moe.dispatch.type=flat)
    [ "$d" = hier ] && extra=(--set moe.dispatch.type=hierarchical --set moe.dispatch.dedup=true)
    run train "$SRC/configs/small_ep.yaml" "${common[@]}" "${extra[@]}" --set job.run_dir="$OUT/$d$r" > "$OUT/$d$r.log" 2>&1
    python3 - "$OUT/$d$r/metrics.jsonl" "$d" "$r" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]  # step 1 warms up
ms = statistics.median(r["step_ms"] for r in rows)
a2a = statistics.median(r["step_ms"] * r["a2a_frac"] for r in rows)
print(f"train {sys.argv[2]:5s} run {sys.argv[3]}: median step {ms:8.1f} ms, dispatcher {a2a:8.1f} ms, "
      f"inter-node bytes (rank 0, last step) {rows[-1]['a2a_bytes_inter']}, loss at step {rows[-1]['step']} {rows[-1]['loss']:.4f}")
PY
  done
done
