#!/usr/bin/env bash
# FSSDP re-materialisation side by side (runs alternated): small model (configs/small_ep.yaml),
# forced Zipf(1.2), parallel.fssdp.rematerialize false against true. Per run: the median step ms of
# steps 3..STEPS, the most replica bytes any rank held at once (metrics replica_bytes_max, max over
# the steps) and rank 0's sparse-collective bytes per step (median); then the medians over the
# runs, and whether the two settings logged the same losses (they must: same math).
#   bench/fssdp_remat.sh [OUT_DIR]      env: NP (2), STEPS (12), ROUNDS (3), BUDGET (2), MOEMPI (build/moempi)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fssdp_remat}
NP=${NP:-2} STEPS=${STEPS:-12} ROUNDS=${ROUNDS:-3} BUDGET=${BUDGET:-2} MOEMPI=${MOEMPI:-build/moempi}
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
export OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) | CPU: $(lscpu | sed -n 's/^Model name: *//p') | NP $NP | small_ep, zipf:1.2, budget $BUDGET | median step ms of steps 3..$STEPS"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { grep -o "\"$1\":[^,}]*" "$2" | cut -d: -f2; }
declare -A ms=([false]="" [true]="") peak=([false]="" [true]="") sparse=([false]="" [true]="") losses=()
for r in $(seq "$ROUNDS"); do
  for rm in false true; do
    d="$OUT/rm_${rm}_$r"
    "${MPIRUN[@]}" -np "$NP" "$MOEMPI" train configs/small_ep.yaml --set parallel.strategy=fssdp --set parallel.ep=0 \
      --set parallel.fssdp.rematerialize=$rm --set parallel.fssdp.max_materialized_experts="$BUDGET" \
      --set moe.force_routing=zipf:1.2 --set train.steps="$STEPS" --set eval.interval=0 --set train.log_interval=1 \
      --set job.run_dir="$d" --set checkpoint.resume=never > "$d.log" 2>&1
    ms[$rm]+="$(field step_ms "$d/metrics.jsonl" | tail -n +3 | median) "
    peak[$rm]+="$(field replica_bytes_max "$d/metrics.jsonl" | sort -g | tail -1) "
    sparse[$rm]+="$(field sparse_bytes "$d/metrics.jsonl" | tail -n +3 | median) "
    losses[$rm]=$(field loss "$d/metrics.jsonl" | tr '\n' ' ')
  done
done
for rm in false true; do
  m=$(printf '%s\n' ${ms[$rm]} | median) p=$(printf '%s\n' ${peak[$rm]} | median) s=$(printf '%s\n' ${sparse[$rm]} | median)
  echo "| rematerialize $rm | step ${m%.*} ms (${ms[$rm]% }) | replica bytes max $p | sparse bytes per step (rank 0) $s |"
  eval "m_$rm=$m p_$rm=$p s_$rm=$s"
done
awk -v a="$m_true" -v b="$m_false" -v pa="$p_true" -v pb="$p_false" -v sa="$s_true" -v sb="$s_false" \
  'BEGIN {printf "| true / false | step time %.3f | replica bytes %.3f (saved %.1f%%) | sparse bytes %.2f |\n", a / b, pa / pb, 100 * (1 - pa / pb), sa / sb}'
if [ "${losses[false]}" = "${losses[true]}" ]; then echo "losses identical (${STEPS} steps)"
else echo "LOSSES DIFFER: ${losses[false]} vs ${losses[true]}"; exit 1; fi
