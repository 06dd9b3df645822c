#!/usr/bin/env bash
# Checkpoints through the binary (runtime/checkpoint/checkpoint.h):
# 1. resume: a run stopped after step 7 and resumed with --resume (from step 6) logs the
#    uninterrupted run's losses bit for bit; metrics.jsonl holds every step once; the step line
#    says where it resumed from;
# 2. the reshard matrix: one run passed along ep=4 (4 ranks) -> 1 rank -> dp=2 -> ep=2 -> ep=3
#    (3 ranks), and fssdp -> ep -> fssdp, train.global_batch fixed (grad_accum derived); the first step after each load
#    against the same step in the layout that saved it: relative difference < 1e-6 (same
#    parameters and data; only the order of the loss sum differs); the final loss against one
#    uninterrupted rank < 1e-4 (fp32 summation order of the gradient all-reduce);
# 3. ckpt inspect / verify, and every damage case refused with exit 2 naming the file or tensor;
#    resume falls back to the previous complete checkpoint and says so;
# 4. the data position (train/sequences) continues across a change of sequences per step.
source "$(dirname "$0")/lib.bash"

common=(--set moe.num_experts=12 --set moe.d_ff_expert=32 --set model.seq_len=32
        --set train.micro_batch=2 --set train.global_batch=24 --set train.steps=12 --set train.log_interval=1
        --set eval.interval=0 --set checkpoint.interval=2 --set checkpoint.keep_last=0
        --set moe.balancing.1.type=loss_free_bias --set moe.balancing.2.type=global_batch_aux_loss)
ep() { echo --set parallel.strategy=ep --set parallel.ep="$1"; }
dp() { echo --set parallel.strategy=dp --set parallel.ep=1; }

# --- 1. resume, 2 ranks, expert parallel -------------------------------------------------------
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" $(ep 2) --set job.run_dir="$TMP/full" > "$TMP/full.log" 2>&1
MOEMPI_TEST_STOP_AFTER=7 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" $(ep 2) \
  --set job.run_dir="$TMP/cut" > "$TMP/cut1.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" $(ep 2) --set job.run_dir="$TMP/cut" \
  --resume > "$TMP/cut2.log" 2>&1
if cmp -s <(jsonl_values "$TMP/full/metrics.jsonl" loss) <(jsonl_values "$TMP/cut/metrics.jsonl" loss); then
  pass "resume: 12 losses bit-identical to the uninterrupted run"
else
  fail "resume: losses differ: $(paste <(jsonl_values "$TMP/full/metrics.jsonl" loss) <(jsonl_values "$TMP/cut/metrics.jsonl" loss) | tr '\n' ' ')"
fi
steps=$(jsonl_values "$TMP/cut/metrics.jsonl" step | tr '\n' ' ')
[ "$steps" = "1 2 3 4 5 6 7 8 9 10 11 12 " ] && pass "metrics.jsonl: every step once" || fail "metrics.jsonl steps: $steps"
grep -q "step 7/12 .*| resumed from step 6" "$TMP/cut2.log" && pass "step line: resumed from step 6" \
  || fail "no 'resumed from step 6' in: $(grep 'step 7/' "$TMP/cut2.log")"
grep -q '"resumed_from":6' "$TMP/cut/metrics.jsonl" && pass "jsonl: resumed_from 6" || fail "jsonl lacks resumed_from"

# --- 2. reshard matrix ---------------------------------------------------------------------------
"$MOEMPI" train configs/tiny.yaml "${common[@]}" $(dp) --set job.run_dir="$TMP/one" > "$TMP/one.log" 2>&1
loss_at() { sed -n "/\"step\":$2[,}]/{s/.*\"loss\":\([^,}]*\).*/\1/p}" "$1"; }
rel() { awk -v a="$1" -v b="$2" 'BEGIN { d = (a - b) / (a < 0 ? -a : a); printf "%.2e", d < 0 ? -d : d }'; }
run_stage() {  # np stop layout...
  local np=$1 stop=$2; shift 2
  if [ "$stop" -gt 0 ]; then
    MOEMPI_TEST_STOP_AFTER=$stop "${MPIRUN[@]}" -np "$np" "$MOEMPI" train configs/tiny.yaml "${common[@]}" "$@" \
      --set job.run_dir="$TMP/chain" --resume > "$TMP/chain_$stop.log" 2>&1
  else
    "${MPIRUN[@]}" -np "$np" "$MOEMPI" train configs/tiny.yaml "${common[@]}" "$@" \
      --set job.run_dir="$TMP/chain" --resume > "$TMP/chain_end.log" 2>&1
  fi
}
run_stage 4 3 $(ep 4); cp "$TMP/chain/metrics.jsonl" "$TMP/m3.jsonl"
prev=m3; names=("ep=4 (4 ranks)")
for stage in "1 5 dp 1 rank" "2 7 dp dp=2" "2 9 ep2 ep=2" "3 0 ep3 ep=3 (3 ranks)"; do
  set -- $stage
  np=$1 stop=$2 kind=$3; shift 3; label="$*"
  case $kind in dp) layout=($(dp));; ep2) layout=($(ep 2));; ep3) layout=($(ep 3));; esac
  run_stage "$np" "$stop" "${layout[@]}"
  log="$TMP/chain_$stop.log"; [ "$stop" -eq 0 ] && log="$TMP/chain_end.log"
  first=$(( $(grep -o 'resumed from step [0-9]*' "$log" | grep -o '[0-9]*$') + 1 ))
  a=$(loss_at "$TMP/$prev.jsonl" "$first"); b=$(loss_at "$TMP/chain/metrics.jsonl" "$first")
  d=$(rel "$a" "$b")
  if [ -n "$a" ] && [ -n "$b" ] && awk -v d="$d" 'BEGIN { exit !(d < 1e-6) }'; then
    pass "reshard ${names[-1]} -> $label: first step $first loss $b vs $a in the saving layout (rel diff $d)"
  else
    fail "reshard ${names[-1]} -> $label: first step $first loss '$b' vs '$a' (rel diff $d)"
  fi
  grep -q "grad_accum: $((24 / (2 * np)))" "$log" || fail "$label: grad_accum not derived from train.global_batch 24"
  names+=("$label"); prev=m$stop; [ "$stop" -gt 0 ] && cp "$TMP/chain/metrics.jsonl" "$TMP/m$stop.jsonl"
done
a=$(loss_at "$TMP/one/metrics.jsonl" 12); b=$(loss_at "$TMP/chain/metrics.jsonl" 12); d=$(rel "$a" "$b")
awk -v d="$d" 'BEGIN { exit !(d < 1e-4) }' && pass "reshard chain: step 12 loss $b vs $a on one rank throughout (rel diff $d)" \
  || fail "reshard chain: step 12 loss $b vs $a (rel diff $d)"
grep -q "spec changed since the checkpoint (saved -> now): .*parallel.strategy: ep -> dp" "$TMP/chain_5.log" &&
  grep -q "train.grad_accum: 3 -> 12" "$TMP/chain_5.log" && pass "resume names the spec changes (strategy, derived grad_accum)" ||
  fail "no spec change line: $(grep -i 'spec changed' "$TMP/chain_5.log")"
"$MOEMPI" validate configs/tiny_ep.yaml --set train.global_batch=32 --np 2 > "$TMP/val.log" 2>&1 &&
  pass "global_batch with parallel.ep 0 (all ranks) validates" || fail "validate tiny_ep global_batch: $(cat "$TMP/val.log")"
expect_error "global_batch impossible at 5 ranks" "train.global_batch (24)" "train.micro_batch (2) × world size (5) = 10" -- \
  "$MOEMPI" validate configs/tiny.yaml "${common[@]}" --np 5

# fssdp (3 ranks) -> ep=3: the fssdp load history is strategy state, ignored by ep; ep -> fssdp
# starts it afresh. Both continue.
"${MPIRUN[@]}" -np 3 "$MOEMPI" train configs/tiny.yaml "${common[@]}" --set parallel.strategy=fssdp --set parallel.ep=3 \
  --set train.steps=4 --set job.run_dir="$TMP/fs" > "$TMP/fs1.log" 2>&1
"${MPIRUN[@]}" -np 3 "$MOEMPI" train configs/tiny.yaml "${common[@]}" $(ep 3) --set train.steps=6 \
  --set job.run_dir="$TMP/fs" > "$TMP/fs2.log" 2>&1 || true
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" --set parallel.strategy=fssdp --set parallel.ep=2 \
  --set train.steps=8 --set job.run_dir="$TMP/fs" > "$TMP/fs3.log" 2>&1 || true
if grep -q "step 5/6 .*resumed from step 4" "$TMP/fs2.log" && grep -q "step 7/8 .*resumed from step 6" "$TMP/fs3.log"; then
  pass "reshard fssdp (3 ranks) -> ep=3 -> fssdp (2 ranks)"
else
  fail "fssdp reshard: $(grep -hE 'error|refused' "$TMP/fs2.log" "$TMP/fs3.log" | head -3)"
fi

# --- 3. inspect, verify, damage ------------------------------------------------------------------
ck="$TMP/cut/ckpt"
out=$("$MOEMPI" ckpt inspect "$TMP/cut" 2>&1) && code=0 || code=$?
if [ "$code" -eq 0 ] && grep -q "^step 12 " <<<"$out" && grep -q "layout: world 2 | strategy ep | ep 2" <<<"$out" &&
   grep -q "param/layers.1.moe.router.w  *f32   \[64, 12\]" <<<"$out" && grep -q "optim/adamw.v/layers.0.moe.experts.11.w2" <<<"$out" &&
   grep -q "balancing/layers.0.loss_free_bias.bias_E" <<<"$out" && grep -q "checksums: ok" <<<"$out" && grep -q "^  strategy: ep" <<<"$out"; then
  pass "ckpt inspect: step, layout, tensors with shapes, spec, checksums"
else
  fail "ckpt inspect (exit $code): $out"
fi
"$MOEMPI" ckpt verify "$ck/latest" > "$TMP/v.log" 2>&1 && grep -q "step_12: ok" "$TMP/v.log" && pass "ckpt verify: ok, exit 0" \
  || fail "ckpt verify: $(cat "$TMP/v.log")"
damage() {  # name: copies step_12 to $TMP/d_<name>/step_12 and echoes it
  rm -rf "$TMP/d_$1"; mkdir -p "$TMP/d_$1"; cp -r "$ck/step_12" "$TMP/d_$1/"; echo "$TMP/d_$1/step_12"
}
d=$(damage trunc); truncate -s -100 "$d/shard_1.bin"
expect_error "verify: truncated shard" "shard_1.bin" "truncated" -- "$MOEMPI" ckpt verify "$d"
d=$(damage flip); printf '\x55' | dd of="$d/shard_0.bin" bs=1 seek=4096 conv=notrunc status=none
expect_error "verify: flipped byte" "shard_0.bin: checksum mismatch in tensor 'param/" -- "$MOEMPI" ckpt verify "$d"
d=$(damage missing); rm "$d/shard_1.bin"
expect_error "verify: missing shard" "shard_1.bin: missing shard" -- "$MOEMPI" ckpt verify "$d"
d=$(damage stale); cp "$ck/step_10/manifest.pb" "$d/manifest.pb"
expect_error "verify: stale manifest" "manifest is for step 10, but the directory is step 12" -- "$MOEMPI" ckpt verify "$d"
d=$(damage foreign); rm -rf "$d"; cp -r "$TMP/full/ckpt/step_12" "$d"; cp "$ck/step_12/manifest.pb" "$d/manifest.pb"
expect_error "verify: foreign manifest (another run's shards)" "shard of another checkpoint" -- "$MOEMPI" ckpt verify "$d"
d=$(damage manifest); printf '\x55' | dd of="$d/manifest.pb" bs=1 seek=200 conv=notrunc status=none
expect_error "verify: flipped manifest byte" "manifest.pb" -- "$MOEMPI" ckpt verify "$d"

# Another model shape: refused, naming the tensor and both shapes (every candidate), exit 2.
code=0
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" $(ep 2) --set job.run_dir="$TMP/cut" \
  --set model.d_model=32 --set train.steps=14 > "$TMP/shape.log" 2>&1 || code=$?
if [ "$code" -eq 2 ] && grep -q "no usable checkpoint" "$TMP/shape.log" && grep -q "another model shape" "$TMP/shape.log" &&
   grep -q "f32 \[256, 64\] in the checkpoint but f32 \[256, 32\] in this job" "$TMP/shape.log"; then
  pass "another model shape: refused with exit 2"
else
  fail "another model shape (exit $code): $(tail -3 "$TMP/shape.log")"
fi

# resume auto falls back: the newest checkpoint (step 12) damaged on rank 1's shard; train 14 steps
# from step 10 -> steps 11 and 12 again, bit-identical to the uninterrupted run.
cp -r "$TMP/cut" "$TMP/fb"
printf '\x55' | dd of="$TMP/fb/ckpt/step_12/shard_1.bin" bs=1 seek=$(( $(stat -c %s "$TMP/fb/ckpt/step_12/shard_1.bin") - 200 )) conv=notrunc status=none
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" $(ep 2) --set job.run_dir="$TMP/fb" > "$TMP/fb.log" 2>&1 || true
if grep -q "checkpoint refused: .*step_12/shard_1.bin: checksum mismatch" "$TMP/fb.log" && grep -q "fell back to .*step_10" "$TMP/fb.log" &&
   cmp -s <(jsonl_values "$TMP/full/metrics.jsonl" loss) <(jsonl_values "$TMP/fb/metrics.jsonl" loss); then
  pass "resume auto: damaged step_12 refused, fell back to step_10, steps 11-12 bit-identical"
else
  fail "fallback: $(grep -E 'refused|fell back|error' "$TMP/fb.log")"
fi
# The data position is saved (train/sequences), not derived from the step: 4 steps at 2 ranks x 2
# sequences, then resumed on 1 rank without train.global_batch (2 sequences per step): step 5 reads
# from sequence 16 on, so tokens seen = (16 + 2) x 32 = 576 (step x the new layout would say 320).
seq=(--set moe.num_experts=12 --set moe.d_ff_expert=32 --set model.seq_len=32 --set train.micro_batch=2
     --set train.grad_accum=1 --set train.log_interval=1 --set eval.interval=0 --set checkpoint.interval=2
     --set checkpoint.keep_last=0 $(dp) --set job.run_dir="$TMP/seq")
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${seq[@]}" --set train.steps=4 > "$TMP/seq1.log" 2>&1
"$MOEMPI" train configs/tiny.yaml "${seq[@]}" --set train.steps=6 --resume > "$TMP/seq2.log" 2>&1
tokens=$(jsonl_values "$TMP/seq/metrics.jsonl" tokens | tr '\n' ' ')
[ "$tokens" = "128 256 384 512 576 640 " ] && pass "data position across 2 -> 1 ranks: tokens $tokens" \
  || fail "data position across 2 -> 1 ranks: tokens $tokens (want 128 256 384 512 576 640)"

# A checkpoint directory that cannot be read is an error, not a fresh start (which would bury the
# checkpoints): here run_dir/ckpt is a file; 2 ranks, exit 2, one message naming it.
mkdir -p "$TMP/badck" && echo x > "$TMP/badck/ckpt"
expect_error "unreadable checkpoint directory" "$TMP/badck/ckpt is not a directory" -- \
  "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${seq[@]}" --set train.steps=2 --set job.run_dir="$TMP/badck"
finish
