#!/usr/bin/env bash
# FSSDP through the binary (2 ranks, tiny model, forced Zipf(1.2)): parallel.fssdp.rematerialize
# true logs the losses of false to the last digit with less replica memory (replica_bytes_max);
# reshard_interval 2 logs a re-sharding that moves experts, and a run stopped after it and resumed
# from its checkpoint logs the uninterrupted run's losses exactly; the start-up prints the allocated
# memory with the experts' optimizer state at 1/2; bad values are one error naming the key.
source "$(dirname "$0")/lib.bash"

common=(--set parallel.strategy=fssdp --set parallel.ep=0 --set moe.force_routing=zipf:1.2 --set train.steps=6
        --set train.log_interval=1 --set eval.interval=0 --set checkpoint.resume=never)
for rm in false true; do
  "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" --set parallel.fssdp.rematerialize=$rm \
    --set job.run_dir="$TMP/rm_$rm" > "$TMP/rm_$rm.log" 2>&1
done
if [ -n "$(jsonl_values "$TMP/rm_false/metrics.jsonl" loss)" ] &&
   [ "$(jsonl_values "$TMP/rm_false/metrics.jsonl" loss)" = "$(jsonl_values "$TMP/rm_true/metrics.jsonl" loss)" ]; then
  pass "rematerialize: true logs the losses of false exactly"
else
  fail "rematerialize changed the losses: $(jsonl_values "$TMP/rm_true/metrics.jsonl" loss | tr '\n' ' ')"
fi
peak_false=$(jsonl_values "$TMP/rm_false/metrics.jsonl" replica_bytes_max | sort -g | tail -1)
peak_true=$(jsonl_values "$TMP/rm_true/metrics.jsonl" replica_bytes_max | sort -g | tail -1)
[ "${peak_false:-0}" -gt 0 ] && [ "${peak_true:-0}" -lt "$peak_false" ] &&
  pass "rematerialize holds fewer replica bytes at once ($peak_true < $peak_false)" ||
  fail "replica_bytes_max: rematerialize $peak_true, without $peak_false"
grep -q "memory allocated on rank 0: params .* (experts .*), grads .*, optimizer .* (experts .*) | expert optimizer state .* (0.500) | fssdp replicas up to" "$TMP/rm_false.log" &&
  pass "the start-up prints the allocated memory, expert optimizer state 1/2" ||
  fail "allocated memory line: $(grep 'memory allocated' "$TMP/rm_false.log")"

rs=(--set parallel.fssdp.reshard_interval=2 --set checkpoint.interval=1)
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" "${rs[@]}" --set job.run_dir="$TMP/full" \
  > "$TMP/full.log" 2>&1
grep -q "step 2: fssdp re-sharded expert ownership: [1-9][0-9]* experts moved" "$TMP/full.log" &&
  pass "reshard_interval 2: $(grep -o 'step 2: fssdp re-sharded.*' "$TMP/full.log")" ||
  fail "no re-sharding at step 2: $(grep -i 'shard\|error' "$TMP/full.log" | head -3)"
moved=$(grep -o 'step 2: fssdp re-sharded expert ownership: [0-9]*' "$TMP/full.log" | grep -o '[0-9]*$')
[ "$(jsonl_values "$TMP/full/metrics.jsonl" experts_moved | sed -n 2p)" = "${moved:-x}" ] &&
  [ "$(jsonl_values "$TMP/full/metrics.jsonl" experts_moved | sed -n 1p)" = 0 ] &&
  pass "metrics.jsonl: experts_moved $moved at step 2, 0 at step 1" ||
  fail "experts_moved in metrics.jsonl: $(jsonl_values "$TMP/full/metrics.jsonl" experts_moved | tr '\n' ' ')"
MOEMPI_TEST_STOP_AFTER=3 "${MPIRUN[@]}" -np 2 -x MOEMPI_TEST_STOP_AFTER "$MOEMPI" train configs/tiny.yaml "${common[@]}" \
  "${rs[@]}" --set job.run_dir="$TMP/cut" > "$TMP/cut1.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" "${rs[@]}" --set checkpoint.resume=auto \
  --set job.run_dir="$TMP/cut" > "$TMP/cut2.log" 2>&1
if grep -q "resuming from .*step_3" "$TMP/cut2.log" &&
   [ "$(jsonl_values "$TMP/full/metrics.jsonl" loss)" = "$(jsonl_values "$TMP/cut/metrics.jsonl" loss)" ]; then
  pass "stopped after step 3 (owners moved at step 2) and resumed: the uninterrupted losses exactly"
else
  fail "resume across a re-sharding: $(jsonl_values "$TMP/cut/metrics.jsonl" loss | tr '\n' ' ') vs $(jsonl_values "$TMP/full/metrics.jsonl" loss | tr '\n' ' ')"
fi

# Re-sharding every step for 40 steps, stopped after step 20 and resumed: where a staying expert
# sits in storage depends on the history of re-shardings, which the resumed job does not repeat;
# the gradient norm (it feeds clipping) must not depend on it, so both runs log the same bits.
many=(--set train.steps=40 --set moe.num_experts=8 --set parallel.fssdp.reshard_interval=1 --set checkpoint.interval=1)
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" "${many[@]}" --set job.run_dir="$TMP/many" \
  > "$TMP/many.log" 2>&1
MOEMPI_TEST_STOP_AFTER=20 "${MPIRUN[@]}" -np 2 -x MOEMPI_TEST_STOP_AFTER "$MOEMPI" train configs/tiny.yaml "${common[@]}" \
  "${many[@]}" --set job.run_dir="$TMP/many_cut" > "$TMP/many_cut1.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" "${many[@]}" --set checkpoint.resume=auto \
  --set job.run_dir="$TMP/many_cut" > "$TMP/many_cut2.log" 2>&1
reshards=$(grep -c "fssdp re-sharded expert ownership" "$TMP/many.log" || true)
if [ "${reshards:-0}" -ge 2 ] && grep -q "resuming from .*step_20" "$TMP/many_cut2.log" &&
   [ "$(jsonl_values "$TMP/many/metrics.jsonl" grad_norm | wc -l)" -eq 40 ] &&
   [ "$(jsonl_values "$TMP/many/metrics.jsonl" grad_norm)" = "$(jsonl_values "$TMP/many_cut/metrics.jsonl" grad_norm)" ] &&
   [ "$(jsonl_values "$TMP/many/metrics.jsonl" loss)" = "$(jsonl_values "$TMP/many_cut/metrics.jsonl" loss)" ]; then
  pass "$reshards re-shardings in 40 steps, stopped after step 20 and resumed: the same losses and gradient norms exactly"
else
  fail "resume after $reshards re-shardings: grad_norm differs at lines $(diff <(jsonl_values "$TMP/many/metrics.jsonl" grad_norm) \
    <(jsonl_values "$TMP/many_cut/metrics.jsonl" grad_norm) | grep -c '^<')"
fi

expect_error "negative interval" "parallel.fssdp.reshard_interval" ">= 0" -- \
  "$MOEMPI" validate configs/tiny.yaml --set parallel.fssdp.reshard_interval=-1
expect_error "rematerialize not a bool" "parallel.fssdp.rematerialize" "true or false" -- \
  "$MOEMPI" validate configs/tiny.yaml --set parallel.fssdp.rematerialize=maybe
finish
