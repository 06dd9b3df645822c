#!/usr/bin/env bash
# The LSH-compressed dispatch experiment of issue 9 (docs/lsh.md): the small expert-parallel model
# at NP ranks, the same global batch (16 sequences of 128 tokens) and seed for every run; one
# uncompressed baseline and every setting in SETTINGS; then one table (compression ratio, final
# validation loss and its gap to the baseline, median step time, wire bytes per step). Finished
# runs (their last step in metrics.jsonl) are skipped, so an interrupted grid resumes.
#   bench/lsh_experiment.sh [OUT_DIR]
# env: NP (4), STEPS (250 = 0.51M tokens), SEED (1), DISPATCH (auto), WIRE (fp32 | bf16, the wire
#      of the baseline and of settings that name none), MOEMPI (build/moempi), SETTINGS (default:
#      the issue's grid, num_hashes {2,4,6,8} x buckets_per_hash {2,4} x residual {true,false}, and
#      a bf16 wire for the residual-free runs). A setting is
#      name=H:b:residual[:wire[:max_residual[:eval]]] (eval: exact, the default, or compressed:
#      compression.compress_eval), e.g.
#      SETTINGS="h6b4=6:4:false h6b4r=6:4:true h6b4_bf16=6:4:false:bf16 h6b2m05=6:2:false:fp32:0.5".
#      AB_ROUNDS (0): then times the baseline and every setting side by side, AB_STEPS (20) steps
#      each, alternated AB_ROUNDS times, and reports the median step time of each (the training
#      runs above run one after another, so their step times are not a comparison on a shared machine).
#      STEPS=0 runs only the side-by-side timing.
#      NETNS_RATE (unset): as root, the side-by-side runs go over an emulated cluster instead, NP
#      nodes x 1 rank joined by TCP shaped to this rate (e.g. 200mbit; launch/netns_cluster.sh), so
#      every expert-parallel exchange crosses a limited link; use DISPATCH=flat.
# The issue's full plan is this grid at 0.5M tokens at 4 ranks, then the baseline and the best three
# at 2M tokens:
#   NP=4 bench/lsh_experiment.sh runs/lsh_grid
#   NP=4 STEPS=1000 SETTINGS="<best three>" AB_ROUNDS=3 bench/lsh_experiment.sh runs/lsh_long
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lsh_experiment}
NP=${NP:-4}
STEPS=${STEPS:-250}
SEED=${SEED:-1}
DISPATCH=${DISPATCH:-auto}
WIRE=${WIRE:-fp32}
MOEMPI=${MOEMPI:-build/moempi}
AB_ROUNDS=${AB_ROUNDS:-0}
AB_STEPS=${AB_STEPS:-20}
if [ -z "${SETTINGS:-}" ]; then
  SETTINGS=""
  for h in 2 4 6 8; do
    for b in 2 4; do
      SETTINGS+=" h${h}b${b}r=$h:$b:true h${h}b${b}=$h:$b:false h${h}b${b}_bf16=$h:$b:false:bf16"
    done
  done
fi
MPIRUN=(mpirun --oversubscribe -x OPENBLAS_NUM_THREADS=1)
NETNS_RATE=${NETNS_RATE:-}
CLUSTER=$PWD/launch/netns_cluster.sh
export MOEMPI_NETNS_PREFIX=moempilsh MOEMPI_NETNS_SUBNET=10.79.0  # its own namespaces
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
MB=$((16 / NP))   # 16 sequences of 128 tokens per step at any NP
mkdir -p "$OUT"
CPU=$(lscpu | sed -n 's/^Model name: *//p')

# The runs: name -> --set arguments.
declare -A ARGS=([none]="--set moe.dispatch.wire_dtype=$WIRE")
names=(none)
for s in $SETTINGS; do
  name=${s%%=*}
  IFS=: read -r h b res wire spread eval <<<"${s#*=}"
  case ${eval:-exact} in exact) ce=false ;; compressed) ce=true ;; *) echo "$s: eval '$eval' is not exact or compressed" >&2; exit 2 ;; esac
  names+=("$name")
  ARGS[$name]="--set moe.dispatch.wire_dtype=${wire:-$WIRE} --set moe.dispatch.compression.type=lsh
    --set moe.dispatch.compression.num_hashes=$h --set moe.dispatch.compression.buckets_per_hash=$b
    --set moe.dispatch.compression.residual=$res --set moe.dispatch.compression.max_residual=${spread:-0}
    --set moe.dispatch.compression.compress_eval=$ce"
done

train() {  # dir steps name [more moempi arguments]
  local dir=$1 steps=$2 name=$3
  shift 3
  local launch=("${MPIRUN[@]}")
  if [ -n "${USE_NETNS:-}" ]; then
    launch=("$CLUSTER" run 1 -- -x OPENBLAS_NUM_THREADS=1)
    dir=$(realpath -m "$dir")
  fi
  # shellcheck disable=SC2086
  "${launch[@]}" -np "$NP" "$(realpath "$MOEMPI")" train "$PWD/configs/small_ep.yaml" --set job.seed="$SEED" \
    --set train.steps="$steps" --set train.micro_batch="$MB" --set eval.interval=50 --set eval.batches=8 \
    --set moe.dispatch.type="$DISPATCH" --set job.run_dir="$dir" ${ARGS[$name]} "$@" > "$dir.log" 2>&1
}

for name in "${names[@]}"; do
  [ "$STEPS" -gt 0 ] || break  # STEPS=0: only the side-by-side timing
  dir="$OUT/$name"
  if [ -s "$dir/metrics.jsonl" ] && grep -q "\"step\":$STEPS," "$dir/metrics.jsonl"; then continue; fi
  echo "run $name -> $dir"
  train "$dir" "$STEPS" "$name"
done

value() { grep -o "\"$2\":[^,}]*" "$1" | cut -d: -f2; }  # every value of a key in a JSONL file
median() { sort -g | awk '{a[NR]=$1} END {if (NR) printf "%.1f", a[int((NR+1)/2)]; else printf "-"}'; }
describe() {  # the run's dispatch settings, from its job.yaml
  local y="$OUT/$1/job.yaml"
  local t h b r w m e
  t=$(sed -n '/compression:/,/^  [a-z]/p' "$y" | grep -o 'type: [a-z]*' | head -1 | cut -d' ' -f2)
  w=$(grep -o 'wire_dtype: [a-z0-9]*' "$y" | cut -d' ' -f2)
  if [ "$t" = lsh ]; then
    h=$(grep -o 'num_hashes: [0-9]*' "$y" | cut -d' ' -f2)
    b=$(grep -o 'buckets_per_hash: [0-9]*' "$y" | cut -d' ' -f2)
    r=$(grep -o ' residual: [a-z]*' "$y" | cut -d' ' -f3)
    m=$(grep -o 'max_residual: [0-9.e+-]*' "$y" | cut -d' ' -f2)
    e=$(grep -o 'compress_eval: [a-z]*' "$y" | cut -d' ' -f2)
    case $e in true) e=compressed ;; false) e=exact ;; *) e="compressed (a run from before compress_eval)" ;; esac
    echo "lsh H=$h b=$b residual=$r max_residual=${m:-0}, wire $w, eval $e"
  else
    echo "uncompressed, wire $w"
  fi
}
[ "$STEPS" -gt 0 ] && base_val=$(value "$OUT/none/metrics.jsonl" val_loss | tail -1) && {
  echo "# $(date -u +%FT%TZ) | CPU: $CPU (shared machine) | NP $NP | $STEPS steps x 2048 tokens | seed $SEED | dispatch $DISPATCH"
  echo
  echo "| run | setting | compression ratio (mean over logged steps) | final val loss | vs none | step ms (median, sequential runs) | wire MB/step (rank 0, median) |"
  echo "|---|---|---|---|---|---|---|"
  for name in "${names[@]}"; do
    f="$OUT/$name/metrics.jsonl"
    [ -s "$f" ] || continue
    ratio=$(value "$f" compression_ratio | awk '{s+=$1} END {printf "%.3f", s/NR}')
    val=$(value "$f" val_loss | tail -1)
    gap=$(awk -v a="$val" -v b="$base_val" 'BEGIN {printf "%+.1f%%", 100 * (a - b) / b}')
    ms=$(value "$f" step_ms | tail -n +2 | median)
    mb=$(value "$f" wire_bytes | tail -n +2 | awk '{print $1 / 1e6}' | median)
    printf '| %s | %s | %s | %.4f | %s | %s | %s |\n' "$name" "$(describe "$name")" "$ratio" "$val" "$gap" "$ms" "$mb"
  done
} | tee "$OUT/table.md"
[ "$STEPS" -gt 0 ] || : > "$OUT/table.md"

if [ "$AB_ROUNDS" -gt 0 ]; then
  mkdir -p "$OUT/ab"
  if [ -n "$NETNS_RATE" ]; then
    "$CLUSTER" up "$NP" "$NETNS_RATE" > "$OUT/ab/cluster.log" 2>&1
    trap '"$CLUSTER" down > /dev/null 2>&1' EXIT
    USE_NETNS=1
  fi
  for r in $(seq 1 "$AB_ROUNDS"); do
    for name in "${names[@]}"; do
      dir="$OUT/ab/${name}_r$r"
      [ -s "$dir/metrics.jsonl" ] && grep -q "\"step\":$AB_STEPS," "$dir/metrics.jsonl" && continue
      train "$dir" "$AB_STEPS" "$name" --set eval.interval=0 --set train.log_interval=1
    done
  done
  {
    echo
    echo "Side by side ($AB_ROUNDS alternated rounds of $AB_STEPS steps each, step 1 dropped; median over all rounds' logged steps)${NETNS_RATE:+, over $NP emulated nodes x 1 rank, inter-node TCP at $NETNS_RATE}:"
    echo
    echo "| run | step ms (median) | vs none |"
    echo "|---|---|---|"
    base_ms=$(cat "$OUT"/ab/none_r*/metrics.jsonl | grep -v '"step":1,' | grep -o '"step_ms":[^,}]*' | cut -d: -f2 | median)
    for name in "${names[@]}"; do
      ms=$(cat "$OUT"/ab/"${name}"_r*/metrics.jsonl | grep -v '"step":1,' | grep -o '"step_ms":[^,}]*' | cut -d: -f2 | median)
      printf '| %s | %s | %s |\n' "$name" "$ms" "$(awk -v a="$ms" -v b="$base_ms" 'BEGIN {printf "%.2fx", b / a}')"
    done
  } | tee -a "$OUT/table.md"
fi
if [ "$STEPS" -gt 0 ]; then "$MOEMPI" plot "${names[@]/#/$OUT/}" -o "$OUT/plots" > /dev/null 2>&1 || echo "(moempi plot failed; table only)"; fi
echo "table: $OUT/table.md"
