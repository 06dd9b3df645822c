#!/usr/bin/env bash
# FSSDP against EP side by side (runs alternated), small model (configs/small_ep.yaml), forced
# Zipf(1.2), balanced and natural routing: median step ms of steps 3..STEPS per run (fssdp has no
# load history at step 1), then the median over ROUNDS runs. Variants: ep, and fssdp at each
# replica budget in BUDGETS (parallel.fssdp.max_materialized_experts); with RESHARD=N also fssdp at
# the first budget re-sharding every N steps.
#   bench/fssdp_vs_ep.sh [OUT_DIR]
#   env: NP (2), STEPS (12), ROUNDS (3), BUDGETS ("2"), RESHARD (0), FORCINGS ("zipf:1.2 balanced none"),
#        MOEMPI (build/moempi), EXTRA (more --set KEY=VALUE words for every run, e.g. "--set moe.d_ff_expert=1024")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fssdp_vs_ep}
NP=${NP:-2} STEPS=${STEPS:-12} ROUNDS=${ROUNDS:-3} BUDGETS=${BUDGETS:-2} RESHARD=${RESHARD:-0}
FORCINGS=${FORCINGS:-zipf:1.2 balanced none} MOEMPI=${MOEMPI:-build/moempi}
read -r -a extra <<< "${EXTRA:-}"
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
export OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) | CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores) | NP $NP | small_ep ${EXTRA:-} | median step ms of steps 3..$STEPS, $ROUNDS runs alternated"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
variants=(ep)
for b in $BUDGETS; do variants+=("fssdp_b$b"); done
first=${BUDGETS%% *}
[ "$RESHARD" -gt 0 ] && variants+=("fssdp_b${first}_rs$RESHARD")
for force in $FORCINGS; do
  declare -A runs=() reps=()
  for r in $(seq "$ROUNDS"); do
    for v in "${variants[@]}"; do
      d="$OUT/${force/:/_}_${v}_$r"
      args=(--set parallel.strategy=ep)
      if [[ $v == fssdp_* ]]; then
        b=${v#fssdp_b}; b=${b%%_*}
        args=(--set parallel.strategy=fssdp --set parallel.fssdp.max_materialized_experts="$b")
        [[ $v == *_rs* ]] && args+=(--set parallel.fssdp.reshard_interval="${v##*_rs}")
      fi
      "${MPIRUN[@]}" -np "$NP" "$MOEMPI" train configs/small_ep.yaml "${args[@]}" --set parallel.ep=0 \
        --set moe.force_routing=$force --set train.steps="$STEPS" --set eval.interval=0 --set train.log_interval=1 \
        --set job.run_dir="$d" --set checkpoint.resume=never "${extra[@]}" > "$d.log" 2>&1
      runs[$v]+="$(grep -o '"step_ms":[^,]*' "$d/metrics.jsonl" | cut -d: -f2 | tail -n +3 | median | xargs printf '%.0f') "
      reps[$v]="$( (grep -o '"replicas":[^,]*' "$d/metrics.jsonl" || true) | cut -d: -f2 | tail -n +3 | median)"
    done
  done
  ep=$(printf '%s\n' ${runs[ep]} | median)
  echo "| $force | ep | ${ep%.*} ms (${runs[ep]% }) | 1.00 | |"
  for v in "${variants[@]:1}"; do
    fs=$(printf '%s\n' ${runs[$v]} | median)
    echo "| $force | $v | ${fs%.*} ms (${runs[$v]% }) | $(awk -v a="$fs" -v b="$ep" 'BEGIN {printf "%.2f", a / b}') | ${reps[$v]:-} replicas |"
  done
  unset runs reps
done
