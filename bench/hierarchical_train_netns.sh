#!/usr/bin/env bash
# Training on an emulated 2-node cluster (root; launch/netns_cluster.sh), inter-node bandwidth
# shaped with tc tbf: the small model (configs/small_ep.yaml, k = 2), flat against hierarchical
# 2dh + dedup, alternated in one run, at 2 nodes x 1 rank and 2 nodes x 2 ranks (16 sequences per
# step in both: train.micro_batch 8 and 4); then node-limited routing (moe.max_nodes_per_token 1)
# against unrestricted routing, same seed, a fixed budget of steps, loss and validation loss at the
# end. Prints per run the median over steps 2.. (step 1 warms up) of the step, the dispatcher time
# by call, and the inter-node bytes of the step summed over every rank. bench/README.md holds the
# figures. Usage:
#   [BUDGET_LAYOUTS=2] bench/hierarchical_train_netns.sh build/moempi [RATE] [STEPS] [REPEATS] [BUDGET] [LAYOUTS]
set -euo pipefail
MOEMPI=$(realpath "$1")
RATE=${2:-200mbit}
STEPS=${3:-8}
REPEATS=${4:-3}
BUDGET=${5:-30}
LAYOUTS=${6:-"1 2"}   # ranks per node
BUDGET_LAYOUTS=${BUDGET_LAYOUTS:-2}
SRC=$(cd "$(dirname "$0")/.." && pwd)
export MOEMPI_NETNS_PREFIX=${MOEMPI_NETNS_PREFIX:-moempihtr} MOEMPI_NETNS_SUBNET=${MOEMPI_NETNS_SUBNET:-10.78.0}
CLUSTER="$SRC/launch/netns_cluster.sh"
OUT=$(mktemp -d)
trap '"$CLUSTER" down > /dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
"$CLUSTER" up 2 "$RATE"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'); inter-node rate $RATE (tc tbf); the machine is shared"

summary() {  # metrics.jsonl label
  python3 - "$@" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if "step_ms" in r]
timed = rows[1:] if len(rows) > 1 else rows  # step 1 warms up
med = lambda f: statistics.median(f(r) for r in timed)
short = {"plan": "plan", "dispatch": "disp", "combine": "comb", "combine_backward": "cbwd", "dispatch_backward": "dbwd"}
calls = " ".join(f"{s} {med(lambda r: r['a2a_call_ms'][c]):5.0f}" for c, s in short.items())
last = rows[-1]
val = f" val {last['val_loss']:.4f}" if "val_loss" in last else ""
print(f"{sys.argv[2]:34s} step {med(lambda r: r['step_ms']):7.0f} ms  a2a {med(lambda r: r['step_ms'] * r['a2a_frac']):6.0f} ms"
      f"  [{calls}]  inter {med(lambda r: r['a2a_bytes_inter_all']) / 1e6:6.2f} MB  intra "
      f"{med(lambda r: r['a2a_bytes_intra_all']) / 1e6:6.2f} MB  loss@{last['step']} {last['loss']:.4f}{val}")
PY
}

train() {  # G label steps extra-args...
  local G=$1 label=$2 steps=$3; shift 3
  "$CLUSTER" run "$G" -- -np $((2 * G)) -x OPENBLAS_NUM_THREADS=1 "$MOEMPI" train "$SRC/configs/small_ep.yaml" \
    --set train.steps="$steps" --set train.log_interval=1 --set eval.interval=0 \
    --set train.micro_batch=$((8 / G)) --set metrics.jsonl=true --set job.run_dir="$OUT/$label" "$@" \
    > "$OUT/$label.log" 2>&1 || { echo "run $label failed:"; tail -20 "$OUT/$label.log"; exit 1; }
  summary "$OUT/$label/metrics.jsonl" "$label"
}

flat=(--set moe.dispatch.type=flat)
hier=(--set moe.dispatch.type=hierarchical --set moe.dispatch.algorithm=2dh --set moe.dispatch.dedup=true)
for G in $LAYOUTS; do
  echo "== 2 nodes x $G rank(s), flat vs hierarchical 2dh + dedup, $STEPS steps, alternated"
  for r in $(seq "$REPEATS"); do
    train "$G" "2x$G-flat-$r" "$STEPS" "${flat[@]}"
    train "$G" "2x$G-hier-$r" "$STEPS" "${hier[@]}"
  done
done
[ "$BUDGET" -gt 0 ] || exit 0
for G in $BUDGET_LAYOUTS; do
  echo "== 2 nodes x $G rank(s), node-limited routing: max_nodes_per_token 1 vs 0 (off), $BUDGET steps, same seed"
  ev=(--set eval.interval="$BUDGET" --set eval.batches=4)
  for d in hier flat; do
    if [ $d = hier ]; then disp=("${hier[@]}"); else disp=("${flat[@]}"); fi
    train "$G" "2x$G-$d-M0" "$BUDGET" "${disp[@]}" "${ev[@]}" --set moe.max_nodes_per_token=0
    train "$G" "2x$G-$d-M1" "$BUDGET" "${disp[@]}" "${ev[@]}" --set moe.max_nodes_per_token=1
  done
done
