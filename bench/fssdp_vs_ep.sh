#!/usr/bin/env bash
# FSSDP against EP side by side (runs alternated), small model, forced Zipf(1.2), balanced and
# natural routing: median step ms of steps 3..STEPS (fssdp has no load history at step 1).
#   bench/fssdp_vs_ep.sh [OUT_DIR]      env: NP (2), STEPS (12), ROUNDS (3), MOEMPI (build/moempi)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fssdp_vs_ep}
NP=${NP:-2} STEPS=${STEPS:-12} ROUNDS=${ROUNDS:-3} MOEMPI=${MOEMPI:-build/moempi}
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
export OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) | CPU: $(lscpu | sed -n 's/^Model name: *//p') | NP $NP | small_ep | median step ms of steps 3..$STEPS"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for force in zipf:1.2 balanced none; do
  declare -A runs=([ep]="" [fssdp]="")
  for r in $(seq "$ROUNDS"); do
    for s in ep fssdp; do
      d="$OUT/${force/:/_}_${s}_$r"
      "${MPIRUN[@]}" -np "$NP" "$MOEMPI" train configs/small_ep.yaml --set parallel.strategy=$s --set parallel.ep=0 \
        --set moe.force_routing=$force --set train.steps="$STEPS" --set eval.interval=0 --set train.log_interval=1 \
        --set job.run_dir="$d" --set checkpoint.resume=never > "$d.log" 2>&1
      runs[$s]+="$(grep -o '"step_ms":[^,]*' "$d/metrics.jsonl" | cut -d: -f2 | tail -n +3 | median) "
    done
  done
  ep=$(printf '%s\n' ${runs[ep]} | median) fs=$(printf '%s\n' ${runs[fssdp]} | median)
  echo "| $force | ep ${ep%.*} ms (${runs[ep]% }) | fssdp ${fs%.*} ms (${runs[fssdp]% }) | fssdp/ep $(awk -v a="$fs" -v b="$ep" 'BEGIN {printf "%.2f", a / b}') |"
done
