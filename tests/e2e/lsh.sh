#!/usr/bin/env bash
# LSH-compressed dispatch through the binary a user runs: training with
# moe.dispatch.compression.type lsh at 1, 2 and 4 ranks (over shm, flat and hierarchical), the compression ratio in
# the step line ("lsh 0.21") and compression_ratio / wire_bytes in metrics.jsonl, bit-identical
# reruns, and one error naming moe.dispatch.compression.<key> with exit code 2 for bad keys.
source "$(dirname "$0")/lib.bash"

short=(--set train.steps=6 --set train.log_interval=3 --set eval.interval=3 --set eval.batches=1)
lsh=(--set moe.dispatch.compression.type=lsh --set moe.dispatch.compression.num_hashes=2
     --set moe.dispatch.compression.buckets_per_hash=2 --set moe.dispatch.compression.min_tokens=2)
m="$TMP/one/metrics.jsonl"
if "$MOEMPI" train configs/tiny.yaml "${short[@]}" "${lsh[@]}" --set job.run_dir="$TMP/one" > "$TMP/one.log" 2>&1; then
  pass "1 rank with lsh trains"
else
  fail "1 rank with lsh: $(tail -3 "$TMP/one.log")"
fi
grep -qE '^step 6/6 \| .* \| lsh 0\.[0-9]{2} \|' "$TMP/one.log" && pass "step line has lsh <ratio>" \
  || fail "step line: $(grep '^step 6' "$TMP/one.log")"
for key in compression_ratio wire_bytes; do
  grep -q "\"$key\":" "$m" && pass "jsonl has $key" || fail "jsonl lacks $key"
done
ratio=$(jsonl_values "$m" compression_ratio | tail -1)
awk -v r="$ratio" 'BEGIN {exit !(r > 0 && r < 0.5)}' && pass "compression ratio $ratio < 0.5" || fail "compression ratio $ratio"
"$MOEMPI" train configs/tiny.yaml "${short[@]}" "${lsh[@]}" --set job.run_dir="$TMP/again" > /dev/null 2>&1
[ "$(jsonl_values "$m" loss)" == "$(jsonl_values "$TMP/again/metrics.jsonl" loss)" ] && pass "rerun is bit-identical" \
  || fail "rerun losses differ"
"$MOEMPI" train configs/tiny.yaml "${short[@]}" --set job.run_dir="$TMP/none" > /dev/null 2>&1
[ "$(jsonl_values "$TMP/none/metrics.jsonl" compression_ratio | sort -u)" == "1.0" ] && pass "ratio 1 without compression" \
  || fail "ratio without compression: $(jsonl_values "$TMP/none/metrics.jsonl" compression_ratio | sort -u)"
grep -q '| lsh ' <("$MOEMPI" train configs/tiny.yaml "${short[@]}" --set job.run_dir="$TMP/none2" 2>&1) \
  && fail "lsh field without compression" || pass "no lsh field without compression"

# Two ranks, expert parallel, over shm and flat: the same losses (compression is per sender).
for inner in shm flat; do
  if timeout 300 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${short[@]}" "${lsh[@]}" \
      --set moe.dispatch.type=$inner --set job.run_dir="$TMP/np2_$inner" > "$TMP/np2_$inner.log" 2>&1; then
    pass "2 ranks, lsh over $inner trains"
  else
    fail "2 ranks, lsh over $inner: $(tail -3 "$TMP/np2_$inner.log")"
  fi
done
[ -n "$(jsonl_values "$TMP/np2_shm/metrics.jsonl" loss)" ] && \
  [ "$(jsonl_values "$TMP/np2_shm/metrics.jsonl" loss)" == "$(jsonl_values "$TMP/np2_flat/metrics.jsonl" loss)" ] \
  && pass "lsh over shm and over flat: identical losses" || fail "lsh over shm and flat differ"
# Over hierarchical (virtual nodes): 2 nodes x 1 rank against the flat run above, and 4 ranks as
# 2 nodes x 2 against flat at 4 ranks. Each centroid travels to one expert with weight 1, so the inner exchange's order of
# summation does not matter: the same losses to the last bit.
hier_run() {  # name, ranks, ranks per node, dispatcher
  timeout 300 "${MPIRUN[@]}" -np "$2" "$MOEMPI" train configs/tiny_ep.yaml "${short[@]}" "${lsh[@]}" \
    --set parallel.ranks_per_node="$3" --set moe.dispatch.type="$4" \
    --set job.run_dir="$TMP/$1" > "$TMP/$1.log" 2>&1 && grep -q "dispatch $4" "$TMP/$1.log" \
    || fail "$1: lsh over $4 at $2 ranks: $(tail -3 "$TMP/$1.log")"
}
hier_run np2_hier 2 1 hierarchical
hier_run np4_hier 4 2 hierarchical
hier_run np4_flat 4 2 flat
for n in 2 4; do
  a=$(jsonl_values "$TMP/np${n}_hier/metrics.jsonl" loss)
  b=$(jsonl_values "$TMP/np${n}_flat/metrics.jsonl" loss)
  [ -n "$a" ] && [ "$a" == "$b" ] && pass "$n ranks: lsh over hierarchical logs lsh over flat's losses" \
    || fail "$n ranks: lsh over hierarchical against flat: $(echo $a) / $(echo $b)"
done
bytes=$(jsonl_values "$TMP/np2_flat/metrics.jsonl" wire_bytes | tail -1)
[ "${bytes:-0}" -gt 0 ] && pass "wire_bytes $bytes > 0 at 2 ranks" || fail "wire_bytes at 2 ranks: $bytes"

# bf16 wire through the binary: auto picks flat and says why; the bytes on the wire are half of
# fp32's (the same routing at step 1: same seed, same initial weights); training works.
for wire in fp32 bf16; do
  timeout 300 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${short[@]}" --set moe.dispatch.type=flat \
    --set moe.dispatch.wire_dtype=$wire --set job.run_dir="$TMP/wire_$wire" > "$TMP/wire_$wire.log" 2>&1 \
    && pass "2 ranks, flat, wire $wire trains" || fail "wire $wire: $(tail -3 "$TMP/wire_$wire.log")"
done
b32=$(jsonl_values "$TMP/wire_fp32/metrics.jsonl" wire_bytes | head -1)
b16=$(jsonl_values "$TMP/wire_bf16/metrics.jsonl" wire_bytes | head -1)
[ -n "$b16" ] && [ "$((2 * b16))" -eq "$b32" ] && pass "bf16 wire bytes at step 1: $b16 = $b32 / 2" \
  || fail "wire bytes at step 1: bf16 $b16, fp32 $b32"
timeout 300 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${short[@]}" --set moe.dispatch.wire_dtype=bf16 \
  --set job.run_dir="$TMP/wire_auto" > "$TMP/wire_auto.log" 2>&1
grep -q "chose flat (moe.dispatch.wire_dtype is bf16" "$TMP/wire_auto.log" && pass "auto picks flat for a bf16 wire" \
  || fail "auto with bf16: $(grep 'auto' "$TMP/wire_auto.log" | head -2)"
expect_error "bf16 on shm" "moe.dispatch.wire_dtype bf16 does not apply to moe.dispatch.type shm" -- \
  "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml --set moe.dispatch.type=shm --set moe.dispatch.wire_dtype=bf16 \
  --set job.run_dir="$TMP/wire_shm"
expect_error "bf16 on hierarchical" "moe.dispatch.wire_dtype bf16 does not apply to moe.dispatch.type hierarchical" -- \
  "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml --set moe.dispatch.type=hierarchical \
  --set parallel.ranks_per_node=1 --set moe.dispatch.wire_dtype=bf16 --set job.run_dir="$TMP/wire_hier"

# Bad keys: one error naming moe.dispatch.compression.<key>, exit code 2.
t=configs/tiny.yaml
expect_error "num_hashes range" "moe.dispatch.compression.num_hashes" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.type=lsh --set moe.dispatch.compression.num_hashes=0
expect_error "odd buckets_per_hash" "moe.dispatch.compression.buckets_per_hash (3) must be even" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.type=lsh --set moe.dispatch.compression.buckets_per_hash=3
expect_error "buckets_per_hash above 2 x d_model" "moe.dispatch.compression.buckets_per_hash (1000)" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.type=lsh --set moe.dispatch.compression.buckets_per_hash=1000
expect_error "unknown compression key" "moe.dispatch.compression.num_hash: unknown key" "did you mean 'num_hashes'" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.type=lsh --set moe.dispatch.compression.num_hash=4
expect_error "lsh key without lsh" "moe.dispatch.compression.residual: belongs to moe.dispatch.compression.type lsh" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.residual=false
expect_error "unknown compression type" "moe.dispatch.compression.type" "none, lsh" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.type=lzh
expect_error "residual not a bool" "moe.dispatch.compression.residual" -- \
  "$MOEMPI" validate $t --set moe.dispatch.compression.type=lsh --set moe.dispatch.compression.residual=maybe
expect_error "wire dtype" "moe.dispatch.wire_dtype" "fp32, bf16" -- \
  "$MOEMPI" validate $t --set moe.dispatch.wire_dtype=fp16
finish
