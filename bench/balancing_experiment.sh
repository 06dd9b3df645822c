#!/usr/bin/env bash
# The balancing experiment of issue 7 (docs/balancing.md): the small expert-parallel model at NP
# ranks, the same token budget for every run, SEEDS seeds each of
#   none | aux_loss | global_batch_aux_loss | loss_free_bias | global_batch_aux_loss + loss_free_bias
# then one table (final validation loss mean ± spread, MaxVio_global, specialisation per layer,
# median step time) and `moempi plot` of every run. Long: ~3 min per run at NP=2 on these machines.
#   bench/balancing_experiment.sh [OUT_DIR]      env: NP (2), STEPS (500 = 1.02M tokens at 2048
#                                                tokens/step), SEEDS ("1 2 3"), MOEMPI (build/moempi)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/balancing_experiment}
NP=${NP:-2}
STEPS=${STEPS:-500}
SEEDS=${SEEDS:-1 2 3}
MOEMPI=${MOEMPI:-build/moempi}
MPIRUN=(mpirun --oversubscribe -x OPENBLAS_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
MB=$((16 / NP))   # 16 sequences of 128 tokens per step at any NP

declare -A PASSES=(
  [none]='[]'
  [aux]='[{type: aux_loss, coeff: 0.01}]'
  [global]='[{type: global_batch_aux_loss, coeff: 0.01}]'
  [bias]='[{type: loss_free_bias, rate: 0.001, update: proportional}]'
  [global_bias]='[{type: global_batch_aux_loss, coeff: 0.01}, {type: loss_free_bias, rate: 0.001, update: proportional}]'
)
ORDER=(none aux global bias global_bias)
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) | CPU: $(lscpu | sed -n 's/^Model name: *//p') | NP $NP | $STEPS steps x 2048 tokens" | tee "$OUT/table.md"
for name in "${ORDER[@]}"; do
  for seed in $SEEDS; do
    dir="$OUT/${name}_s$seed"
    [ -s "$dir/metrics.jsonl" ] && grep -q "\"step\":$STEPS," "$dir/metrics.jsonl" && continue  # done before
    echo "run $name seed $seed -> $dir"
    "${MPIRUN[@]}" -np "$NP" "$MOEMPI" train configs/small_ep.yaml --set job.seed="$seed" \
      --set train.steps="$STEPS" --set train.micro_batch="$MB" --set eval.interval=50 \
      --set "moe.balancing=${PASSES[$name]}" --set job.run_dir="$dir" > "$dir.log" 2>&1
  done
done

value() { grep -o "\"$2\":[^,}]*" "$1" | cut -d: -f2; }  # every value of a key in a JSONL file
{
  echo "| passes | final val loss (mean ± half-range) | MaxVio_global (last eval, mean) | specialisation per layer (bits, last eval, mean) | step ms (median) |"
  echo "|---|---|---|---|---|"
  for name in "${ORDER[@]}"; do
    vals=() mv=() specs=() ms=()
    for seed in $SEEDS; do
      f="$OUT/${name}_s$seed/metrics.jsonl"
      vals+=("$(value "$f" val_loss | tail -1)")
      mv+=("$(value "$f" maxvio_global | tail -1)")
      specs+=("$(grep -o '"specialisation":\[[^]]*\]' "$f" | tail -1 | sed 's/.*\[//; s/\]//')")
      ms+=("$(value "$f" step_ms | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')")
    done
    printf '| %s | %s | %s | %s | %s |\n' "${PASSES[$name]}" \
      "$(printf '%s\n' "${vals[@]}" | awk '{s+=$1; if(NR==1||$1<lo)lo=$1; if(NR==1||$1>hi)hi=$1} END {printf "%.4f ± %.4f", s/NR, (hi-lo)/2}')" \
      "$(printf '%s\n' "${mv[@]}" | awk '{s+=$1} END {printf "%.3f", s/NR}')" \
      "$(printf '%s\n' "${specs[@]}" | awk -F, '{for(i=1;i<=NF;i++) s[i]+=$i; n=NF} END {for(i=1;i<=n;i++) printf "%s%.3f", (i>1?" / ":""), s[i]/NR}')" \
      "$(printf '%s\n' "${ms[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.0f", a[int((NR+1)/2)]}')"
  done
} | tee -a "$OUT/table.md"
dirs=()
for name in "${ORDER[@]}"; do dirs+=("$OUT/${name}_s${SEEDS%% *}"); done
"$MOEMPI" plot "${dirs[@]}" -o "$OUT/plots"
echo "table: $OUT/table.md, plots: $OUT/plots/"
