#!/usr/bin/env bash
# The LSH-compressed dispatch experiment of issue 9 (docs/lsh.md): the small expert-parallel model
# at NP ranks, the same global batch (16 sequences of 128 tokens) and seed for every run; one
# uncompressed baseline and every setting in SETTINGS; then one table (compression ratio, final
# validation loss and its gap to the baseline, median step time, wire bytes per step). Finished
# runs (their last step in metrics.jsonl) are skipped, so an interrupted grid resumes.
#   bench/lsh_experiment.sh [OUT_DIR]
# env: NP (4), STEPS (250 = 0.51M tokens), SEED (1), DISPATCH (auto), WIRE (fp32 | bf16, the
#      default wire of every run), MOEMPI (build/moempi), SETTINGS (default: the issue's grid,
#      num_hashes {2,4,6,8} x buckets_per_hash {2,4} x residual {true,false}, plus bf16 wire for
#      the residual runs). A setting is name=H:b:residual[:wire], e.g. "h6b2r=6:2:true h6b2=6:2:false".
# The issue's full plan is this grid at 0.5M tokens, then the baseline and the best three at 2M:
#   NP=4 bench/lsh_experiment.sh runs/lsh_grid
#   NP=4 STEPS=1000 SETTINGS="h6b2r=6:2:true ..." bench/lsh_experiment.sh runs/lsh_long
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lsh_experiment}
NP=${NP:-4}
STEPS=${STEPS:-250}
SEED=${SEED:-1}
DISPATCH=${DISPATCH:-auto}
WIRE=${WIRE:-fp32}
MOEMPI=${MOEMPI:-build/moempi}
if [ -z "${SETTINGS:-}" ]; then
  SETTINGS=""
  for h in 2 4 6 8; do
    for b in 2 4; do
      SETTINGS+=" h${h}b${b}r=$h:$b:true h${h}b${b}=$h:$b:false h${h}b${b}r_bf16=$h:$b:true:bf16"
    done
  done
fi
MPIRUN=(mpirun --oversubscribe -x OPENBLAS_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
MB=$((16 / NP))   # 16 sequences of 128 tokens per step at any NP
mkdir -p "$OUT"
CPU=$(lscpu | sed -n 's/^Model name: *//p')

run() {  # name, then --set arguments
  local name=$1; shift
  local dir="$OUT/$name"
  if [ -s "$dir/metrics.jsonl" ] && grep -q "\"step\":$STEPS," "$dir/metrics.jsonl"; then return; fi
  echo "run $name -> $dir"
  "${MPIRUN[@]}" -np "$NP" "$MOEMPI" train configs/small_ep.yaml --set job.seed="$SEED" \
    --set train.steps="$STEPS" --set train.micro_batch="$MB" --set eval.interval=50 --set eval.batches=8 \
    --set moe.dispatch.type="$DISPATCH" --set job.run_dir="$dir" "$@" > "$dir.log" 2>&1
}

names=(none)
run none --set moe.dispatch.wire_dtype="$WIRE"
for s in $SETTINGS; do
  name=${s%%=*}
  IFS=: read -r h b res wire <<<"${s#*=}"
  names+=("$name")
  run "$name" --set moe.dispatch.wire_dtype="${wire:-$WIRE}" --set moe.dispatch.compression.type=lsh \
    --set moe.dispatch.compression.num_hashes="$h" --set moe.dispatch.compression.buckets_per_hash="$b" \
    --set moe.dispatch.compression.residual="$res"
done

value() { grep -o "\"$2\":[^,}]*" "$1" | cut -d: -f2; }  # every value of a key in a JSONL file
median() { sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'; }
base_val=$(value "$OUT/none/metrics.jsonl" val_loss | tail -1)
{
  echo "# $(date -u +%FT%TZ) | CPU: $CPU (shared machine) | NP $NP | $STEPS steps x 2048 tokens | seed $SEED | dispatch $DISPATCH"
  echo
  echo "| run | setting | compression ratio (mean) | final val loss | vs none | step ms (median) | wire MB/step (rank 0, median) |"
  echo "|---|---|---|---|---|---|---|"
  for name in "${names[@]}"; do
    f="$OUT/$name/metrics.jsonl"
    [ -s "$f" ] || continue
    setting=$(grep -o 'compression:.*' "$OUT/$name/job.yaml" >/dev/null 2>&1; sed -n '/compression:/,/^  [a-z]/p' "$OUT/$name/job.yaml" \
      | grep -E 'type|num_hashes|buckets_per_hash|residual' | awk '{printf "%s%s", (NR>1?" ":""), $0}' | tr -s ' ')
    wire=$(grep -o 'wire_dtype: [a-z0-9]*' "$OUT/$name/job.yaml" | cut -d' ' -f2)
    ratio=$(value "$f" compression_ratio | awk '{s+=$1} END {printf "%.3f", s/NR}')
    val=$(value "$f" val_loss | tail -1)
    gap=$(awk -v a="$val" -v b="$base_val" 'BEGIN {printf "%+.2f%%", 100 * (a - b) / b}')
    ms=$(value "$f" step_ms | tail -n +2 | median)
    mb=$(value "$f" wire_bytes | tail -n +2 | awk '{print $1 / 1e6}' | median)
    printf '| %s | %s, wire %s | %s | %s | %s | %s | %s |\n' "$name" "$setting" "$wire" "$ratio" "$val" "$gap" "$ms" "$mb"
  done
} | tee "$OUT/table.md"
"$MOEMPI" plot "${names[@]/#/$OUT/}" -o "$OUT/plots" > /dev/null 2>&1 || echo "(moempi plot failed; table only)"
echo "table: $OUT/table.md"
